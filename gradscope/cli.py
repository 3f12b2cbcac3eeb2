"""The command line: parse, call the library, render, map to an exit code. No computation lives here.

Exit codes: 0 no error finding; 1 error findings (warnings too with --strict); 2 bad input or usage.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from gradscope.checks.grads import DEFAULT_LR, DEFAULT_MAX_GRAD_NORM
from gradscope.data.load import load_data, load_role_rows
from gradscope.data.pipelines import DataOptions
from gradscope.data.tokens import config_end_token_ids, default_end_token_ids, resolve_pad_token_id
from gradscope.engine.probes import PROBES, WINDOWS_PER_ROW
from gradscope.errors import DataError, GradscopeError
from gradscope.model.load import load_model_and_tokenizer, load_tokenizer
from gradscope.model.usercode import LossFn, load_loss_fn
from gradscope.render.check import CheckView
from gradscope.render.grads import GradsView, VerifyView
from gradscope.render.inspect import InspectView, RolesView
from gradscope.render.json import roles_to_json, to_json
from gradscope.render.scan import ScanView
from gradscope.report.check import Report
from gradscope.report.scan import ScanReport
from gradscope.verbs.check import check_batches, chosen_depth, chosen_probes
from gradscope.verbs.grads import grads as grads_pass
from gradscope.verbs.overfit import overfit as overfit_pass
from gradscope.verbs.verify import verify as verify_pass

EXIT_OK, EXIT_FINDINGS, EXIT_BAD_INPUT = 0, 1, 2

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Read from the loss gradient which tokens a fine-tune really trains, flag every masking leak, and check the gradient that reaches the weights.",
)


class Format(str, Enum):
    text = "text"
    json = "json"


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Optimizer(str, Enum):
    adamw = "adamw"
    sgd = "sgd"


class TrainOn(str, Enum):
    all_assistant = "all-assistant"
    last_assistant = "last-assistant"


class Truncation(str, Enum):
    keep_start = "keep_start"
    keep_end = "keep_end"


class Pipeline(str, Enum):
    reference = "reference"
    trl = "trl"


class CollateInput(str, Enum):
    raw = "raw"
    tokens = "tokens"


ModelArg = Annotated[Path, typer.Argument(help="Local Hugging Face model directory (config.json + *.safetensors), or a PEFT adapter directory (adapter_config.json).")]
DataArg = Annotated[
    Path,
    typer.Argument(help="A .safetensors batch, pre-tokenized .jsonl, or raw rows: .jsonl, .json, .parquet or a saved dataset directory."),
]
SamplesOpt = Annotated[int | None, typer.Option("--samples", min=1, help="Use only the first N rows.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="JSONL rows per batch (a .safetensors batch runs as is).")]
LossOpt = Annotated[str | None, typer.Option("--loss", help="FILE.py:FN or module:FN, fn(logits, labels) -> scalar, instead of the model's loss.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="torch device to run on (cpu, cuda, cuda:N, mps).")]
DeviceMapOpt = Annotated[
    str | None,
    typer.Option("--device-map", help="Spread the model over the available devices through accelerate (auto, balanced, sequential); replaces --device when given."),
]
DTypeOpt = Annotated[DType, typer.Option("--dtype", help="Model dtype (gradient norms are always computed in fp32).")]
RemoteOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow code from the model directory to run.")]
DropoutOpt = Annotated[bool, typer.Option("--keep-dropout", help="Leave dropout on (the report is then not deterministic).")]
ResponseOpt = Annotated[str | None, typer.Option("--response-template", help="Text that starts each completion in 'text' rows.")]
InstructionOpt = Annotated[str | None, typer.Option("--instruction-template", help="Text that starts each prompt turn in multi-turn 'text' rows.")]
TrainOnOpt = Annotated[TrainOn, typer.Option("--train-on", help="Which assistant turns of 'messages' rows are completion.")]
MaxLengthOpt = Annotated[int | None, typer.Option("--max-length", min=1, help="Truncate each row to N tokens, as the trainer would.")]
TruncationOpt = Annotated[Truncation | None, typer.Option("--truncation-mode", help="keep_start (default) or keep_end.")]
CollateOpt = Annotated[str | None, typer.Option("--collate", help="FILE.py:FN or module:FN, your collator: fn(rows) -> batch dict.")]
CollateInputOpt = Annotated[CollateInput, typer.Option("--collate-input", help="What --collate receives: raw rows or gradscope's tokens.")]
PipelineOpt = Annotated[Pipeline, typer.Option("--pipeline", help="Who builds the labels of raw rows: gradscope's reference masking, or TRL.")]
TrlConfigOpt = Annotated[Path | None, typer.Option("--trl-config", help="JSON file of SFTConfig options for --pipeline trl.")]
CompletionOnlyOpt = Annotated[bool | None, typer.Option("--completion-only-loss/--no-completion-only-loss", help="SFTConfig.completion_only_loss.")]
AssistantOnlyOpt = Annotated[bool | None, typer.Option("--assistant-only-loss/--no-assistant-only-loss", help="SFTConfig.assistant_only_loss.")]
PackingOpt = Annotated[bool | None, typer.Option("--packing/--no-packing", help="SFTConfig.packing.")]
PaddingFreeOpt = Annotated[bool | None, typer.Option("--padding-free/--no-padding-free", help="SFTConfig.padding_free.")]
BaseOpt = Annotated[Path | None, typer.Option("--base", help="Base model directory of a PEFT adapter (default: base_model_name_or_path in its adapter_config.json).")]
FormatOpt = Annotated[Format, typer.Option("--format", help="text: a terminal report; json: schema v1 on stdout.")]
OutputOpt = Annotated[Path | None, typer.Option("--output", help="Also write the JSON report to this file.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Exit 1 on warnings too.")]
LrOpt = Annotated[float, typer.Option("--lr", min=0.0, help="Learning rate of the update-to-weight ratios and of the overfit steps.")]
MaxNormOpt = Annotated[float, typer.Option("--max-grad-norm", min=0.0, help="Clipping threshold the clip factor is computed for.")]


@dataclass
class RunOptions:
    """What every command that runs the model shares."""

    model: Path
    data: Path
    samples: int | None
    batch_size: int
    loss: str | None
    device: str
    dtype: DType
    trust_remote_code: bool
    keep_dropout: bool
    data_options: DataOptions
    base: Path | None = None
    probes: tuple[str, ...] = PROBES
    accumulate: int | None = None
    device_map: str | None = None
    windows: int = WINDOWS_PER_ROW
    depth: str = "full"


@dataclass
class Loaded:
    """Everything named on the command line, loaded."""

    model: nn.Module
    tokenizer: Any
    loss_fn: LossFn | None
    batches: list[dict[str, torch.Tensor]]
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def data_options(
    response_template: str | None = None,
    instruction_template: str | None = None,
    train_on: TrainOn = TrainOn.all_assistant,
    max_length: int | None = None,
    truncation_mode: Truncation | None = None,
    collate: str | None = None,
    collate_input: CollateInput = CollateInput.raw,
    pipeline: Pipeline = Pipeline.reference,
    trl_config: Path | None = None,
    **trl_flags: bool | None,
) -> DataOptions:
    """The data options from parsed flags; TRL flags left unset (None) defer to --trl-config and TRL's defaults."""
    return DataOptions(
        response_template=response_template,
        instruction_template=instruction_template,
        train_on=train_on.value,
        max_length=max_length,
        truncation_mode=truncation_mode.value if truncation_mode else None,
        collate=collate,
        collate_input=collate_input.value,
        pipeline=pipeline.value,
        trl_config=trl_config,
        trl_options={k: v for k, v in trl_flags.items() if v is not None},
    )


def parse_probes(spec: str) -> tuple[str, ...]:
    """``causal,packing`` -> ("causal", "packing"); ``all`` and ``none`` as said."""
    if spec.strip() == "all":
        return PROBES
    if spec.strip() == "none":
        return ()
    return tuple(name.strip() for name in spec.split(",") if name.strip())


def _quiet_transformers() -> None:
    """Keep transformers' progress bars and advice off the terminal: stderr is for gradscope's diagnostics."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        import datasets

        datasets.disable_progress_bars()  # TRL's dataset preparation (--pipeline trl)
    except ImportError:
        pass


def _load(opts: RunOptions) -> Loaded:
    """Load the model (or adapter on its base), tokenizer, loss and batches named on the command line."""
    _quiet_transformers()
    chosen_probes(opts.probes, opts.accumulate, opts.windows)  # bad probe names fail before the model loads
    chosen_depth(opts.depth)
    loss_fn = load_loss_fn(opts.loss) if opts.loss else None
    model, tokenizer = load_model_and_tokenizer(
        opts.model, base=opts.base, device=opts.device, dtype=opts.dtype.value, trust_remote_code=opts.trust_remote_code,
        device_map=opts.device_map,
    )
    prepared = load_data(
        opts.data, tokenizer=tokenizer, model=model, samples=opts.samples, batch_size=opts.batch_size,
        options=opts.data_options, pad_token_id=resolve_pad_token_id(model, tokenizer),
        end_token_ids=default_end_token_ids(model, tokenizer),
    )
    return Loaded(model, tokenizer, loss_fn, prepared.batches, prepared.data, prepared.notes)


def _check(opts: RunOptions, loaded: Loaded) -> Report:
    """The masking check of every batch."""
    report = check_batches(
        loaded.model, loaded.batches, tokenizer=loaded.tokenizer, loss_fn=loaded.loss_fn,
        keep_dropout=opts.keep_dropout, source=str(opts.data), probes=opts.probes, accumulate=opts.accumulate,
        windows=opts.windows, depth=opts.depth,
    )
    report.data = loaded.data
    report.notes = loaded.notes + report.notes
    return report


def _run(opts: RunOptions) -> Report:
    """Load everything named on the command line and check it."""
    return _check(opts, _load(opts))


def _first_batch(report: Report, loaded: Loaded, what: str) -> dict[str, torch.Tensor]:
    """Parameter passes run on one batch, one optimizer step's worth: the first; say so when the data holds more."""
    report.data = report.data or loaded.data
    if len(loaded.batches) > 1:
        rows = len(loaded.batches[0]["input_ids"])
        report.notes.append(f"{what} ran on the first batch ({rows} row(s)) of {len(loaded.batches)}; use --batch-size to size it")
    return loaded.batches[0]


def exit_code(report: Report | ScanReport, strict: bool) -> int:
    """0 clean; 1 when there are error findings, or any finding with ``strict``."""
    failing = report.findings if strict else report.errors
    return EXIT_FINDINGS if failing else EXIT_OK


def _fail(err: GradscopeError) -> typer.Exit:
    """One ``Error:`` line on stderr, exit status 2."""
    print(f"Error: {err}", file=sys.stderr)
    return typer.Exit(EXIT_BAD_INPUT)


def _guarded(work: Callable[[], Report], status: str = "running forward and backward…") -> Report:
    """Run with a spinner on stderr; bad input becomes one Error line and exit status 2."""
    try:
        with Console(stderr=True).status(status):
            return work()
    except GradscopeError as err:
        raise _fail(err) from None


def _report_or_exit(opts: RunOptions) -> Report:
    """Load and check with a spinner on stderr; bad input becomes one Error line and exit status 2."""
    return _guarded(lambda: _run(opts))


def _emit(report: Report | ScanReport, output_format: Format, output: Path | None, view: object, strict: bool) -> typer.Exit:
    """Write the JSON file, print the report as asked, and give the exit code."""
    if output is not None:
        output.write_text(to_json(report) + "\n", encoding="utf-8")
    if output_format is Format.json:
        sys.stdout.write(to_json(report) + "\n")
    else:
        Console(highlight=False).print(view)
    return typer.Exit(exit_code(report, strict))


@app.command()
def check(
    model: ModelArg,
    data: DataArg,
    samples: SamplesOpt = None,
    batch_size: BatchSizeOpt = 1,
    loss: LossOpt = None,
    device: DeviceOpt = "cpu",
    device_map: DeviceMapOpt = None,
    dtype: DTypeOpt = DType.float32,
    trust_remote_code: RemoteOpt = False,
    keep_dropout: DropoutOpt = False,
    output_format: Annotated[Format, typer.Option("--format", help="text: a terminal report; json: schema v1 on stdout.")] = Format.text,
    output: Annotated[Path | None, typer.Option("--output", help="Also write the JSON report to this file.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 on warnings too.")] = False,
    show: Annotated[int, typer.Option("--show", min=0, help="Token strips to show in the terminal report.")] = 8,
    response_template: ResponseOpt = None,
    instruction_template: InstructionOpt = None,
    train_on: TrainOnOpt = TrainOn.all_assistant,
    max_length: MaxLengthOpt = None,
    truncation_mode: TruncationOpt = None,
    collate: CollateOpt = None,
    collate_input: CollateInputOpt = CollateInput.raw,
    pipeline: PipelineOpt = Pipeline.reference,
    trl_config: TrlConfigOpt = None,
    completion_only_loss: CompletionOnlyOpt = None,
    assistant_only_loss: AssistantOnlyOpt = None,
    packing: PackingOpt = None,
    padding_free: PaddingFreeOpt = None,
    base: BaseOpt = None,
    params: Annotated[bool, typer.Option("--params", help="Also run the parameter-gradient pass (as gradscope grads) on the first batch.")] = False,
    lr: LrOpt = DEFAULT_LR,
    max_grad_norm: MaxNormOpt = DEFAULT_MAX_GRAD_NORM,
    probes: Annotated[str, typer.Option("--probes", help="Structural probes, comma-separated: causal,packing,weights (or all, none).")] = "all",
    accumulate: Annotated[int | None, typer.Option("--accumulate", min=1, help="Also run each batch as K accumulated micro-batches and compare gradients.")] = None,
    windows: Annotated[int, typer.Option("--windows", min=0, help="Random-projection windows per row for the causal and packing probes, on top of the free screen (each about one activation-only backward).")] = WINDOWS_PER_ROW,
    depth: Annotated[str, typer.Option("--depth", help="full: backward through the network (layer norms, causal and packing probes); logits: masking only, a forward and the loss's own backward (docs/performance.md).")] = "full",
) -> None:
    """Run MODEL forward and backward on DATA and report which tokens the loss trains, and every leak."""
    data_opts = data_options(
        response_template, instruction_template, train_on, max_length, truncation_mode, collate, collate_input,
        pipeline, trl_config, completion_only_loss=completion_only_loss, assistant_only_loss=assistant_only_loss,
        packing=packing, padding_free=padding_free,
    )
    opts = RunOptions(
        model, data, samples, batch_size, loss, device, dtype, trust_remote_code, keep_dropout, data_opts, base,
        parse_probes(probes), accumulate, device_map, windows, depth=depth,
    )

    def work() -> Report:
        loaded = _load(opts)
        report = _check(opts, loaded)
        if params:
            first = _first_batch(report, loaded, "the parameter-gradient pass")
            grads_pass(loaded.model, first, loss_fn=loaded.loss_fn, lr=lr, max_grad_norm=max_grad_norm,
                       keep_dropout=keep_dropout, report=report, source=str(data))
        return report

    report = _guarded(work)
    views = [CheckView(report, max_samples=show)] + ([GradsView(report)] if params else [])
    raise _emit(report, output_format, output, Group(*views), strict)


@app.command()
def inspect(
    model: ModelArg,
    data: DataArg,
    row: Annotated[int, typer.Option("--row", min=0, help="The row to show (0-based).")] = 0,
    batch_size: BatchSizeOpt = 1,
    loss: LossOpt = None,
    device: DeviceOpt = "cpu",
    device_map: DeviceMapOpt = None,
    dtype: DTypeOpt = DType.float32,
    trust_remote_code: RemoteOpt = False,
    keep_dropout: DropoutOpt = False,
    response_template: ResponseOpt = None,
    instruction_template: InstructionOpt = None,
    train_on: TrainOnOpt = TrainOn.all_assistant,
    max_length: MaxLengthOpt = None,
    truncation_mode: TruncationOpt = None,
    base: BaseOpt = None,
) -> None:
    """Show one row in detail: a per-token table and a layers x positions heat map of gradient norms."""
    # Run the row inside the batch it belongs to, so that its loss weights are the ones training sees.
    limit = None if data.suffix == ".safetensors" else (row // batch_size + 1) * batch_size
    data_opts = data_options(response_template, instruction_template, train_on, max_length, truncation_mode)
    opts = RunOptions(
        model, data, limit, batch_size, loss, device, dtype, trust_remote_code, keep_dropout, data_opts, base,
        device_map=device_map,
    )
    report = _report_or_exit(opts)
    if row >= len(report.samples):
        raise _fail(DataError(f"there is no row {row}: the data has {len(report.samples)}", path=data, hint="pick --row from 0"))
    Console(highlight=False).print(InspectView(report, report.samples[row]))
    raise typer.Exit(exit_code(report, strict=False))


@app.command()
def grads(
    model: ModelArg,
    data: DataArg,
    samples: SamplesOpt = None,
    batch_size: BatchSizeOpt = 1,
    loss: LossOpt = None,
    device: DeviceOpt = "cpu",
    device_map: DeviceMapOpt = None,
    dtype: DTypeOpt = DType.float32,
    trust_remote_code: RemoteOpt = False,
    keep_dropout: DropoutOpt = False,
    base: BaseOpt = None,
    lr: LrOpt = DEFAULT_LR,
    max_grad_norm: MaxNormOpt = DEFAULT_MAX_GRAD_NORM,
    overfit: Annotated[int, typer.Option("--overfit", min=0, help="Also take N optimizer steps on the batch alone (on a copy) and report the loss curve.")] = 0,
    optimizer: Annotated[Optimizer, typer.Option("--optimizer", help="Optimizer of the overfit steps (AdamW with weight decay 0, or SGD).")] = Optimizer.adamw,
    output_format: FormatOpt = Format.text,
    output: OutputOpt = None,
    strict: StrictOpt = False,
    response_template: ResponseOpt = None,
    instruction_template: InstructionOpt = None,
    train_on: TrainOnOpt = TrainOn.all_assistant,
    max_length: MaxLengthOpt = None,
    truncation_mode: TruncationOpt = None,
) -> None:
    """The gradient that reaches the weights: per-module norms, clipping, update ratios, untrained parameters."""
    data_opts = data_options(response_template, instruction_template, train_on, max_length, truncation_mode)
    opts = RunOptions(
        model, data, samples, batch_size, loss, device, dtype, trust_remote_code, keep_dropout, data_opts, base,
        device_map=device_map,
    )

    def work() -> Report:
        loaded = _load(opts)
        common = {"loss_fn": loaded.loss_fn, "keep_dropout": keep_dropout, "source": str(data)}
        first = loaded.batches[0]
        report = grads_pass(loaded.model, first, lr=lr, max_grad_norm=max_grad_norm, **common)
        _first_batch(report, loaded, "gradscope grads")
        if overfit:
            overfit_pass(loaded.model, first, steps=overfit, lr=lr, optimizer=optimizer.value, report=report, **common)
        return report

    report = _guarded(work)
    raise _emit(report, output_format, output, GradsView(report), strict)


@app.command()
def verify(
    model: ModelArg,
    data: DataArg,
    samples: SamplesOpt = None,
    batch_size: BatchSizeOpt = 1,
    loss: LossOpt = None,
    device: DeviceOpt = "cpu",
    trust_remote_code: RemoteOpt = False,
    base: BaseOpt = None,
    directions: Annotated[int, typer.Option("--directions", min=0, help="Random directions per tensor, after the gradient's own direction.")] = 2,
    param_sample: Annotated[int, typer.Option("--param-sample", min=0, help="Parameters to check besides the input embeddings, spread over the model.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random directions.")] = 0,
    output_format: FormatOpt = Format.text,
    output: OutputOpt = None,
    strict: StrictOpt = False,
    response_template: ResponseOpt = None,
    instruction_template: InstructionOpt = None,
    train_on: TrainOnOpt = TrainOn.all_assistant,
    max_length: MaxLengthOpt = None,
    truncation_mode: TruncationOpt = None,
) -> None:
    """Check autograd's gradient of the loss against finite differences on a float64 copy of the model."""
    data_opts = data_options(response_template, instruction_template, train_on, max_length, truncation_mode)
    opts = RunOptions(model, data, samples, batch_size, loss, device, DType.float32, trust_remote_code, False, data_opts, base)

    def work() -> Report:
        loaded = _load(opts)
        first = loaded.batches[0]
        report = verify_pass(loaded.model, first, loss_fn=loaded.loss_fn, directions=directions,
                             parameters=param_sample, seed=seed, source=str(data))
        _first_batch(report, loaded, "gradscope verify")
        return report

    report = _guarded(work, "comparing autograd with finite differences…")
    raise _emit(report, output_format, output, VerifyView(report), strict)


@app.command()
def roles(
    model: Annotated[Path, typer.Argument(help="A model or tokenizer directory: its tokenizer (and chat template) is used.")],
    data: DataArg,
    samples: SamplesOpt = None,
    response_template: ResponseOpt = None,
    instruction_template: InstructionOpt = None,
    train_on: TrainOnOpt = TrainOn.all_assistant,
    max_length: MaxLengthOpt = None,
    truncation_mode: TruncationOpt = None,
    output_format: Annotated[Format, typer.Option("--format", help="text: coloured token strips; json: every token's role.")] = Format.text,
    show: Annotated[int, typer.Option("--show", min=0, help="Rows to show in the terminal view.")] = 8,
) -> None:
    """Show how gradscope splits DATA's raw rows into prompt and completion tokens, from the tokenizer and its chat
    template; no model runs."""
    opts = data_options(response_template, instruction_template, train_on, max_length, truncation_mode)
    try:
        _quiet_transformers()
        tokenizer = load_tokenizer(model) if model.is_dir() else None
        if tokenizer is None:
            raise DataError("no tokenizer files in this directory", path=model, hint="give a model or tokenizer directory")
        ends = frozenset(config_end_token_ids(model) | default_end_token_ids(None, tokenizer))
        rows = load_role_rows(data, tokenizer, samples=samples, options=opts, end_token_ids=ends)
    except GradscopeError as err:
        raise _fail(err) from None
    if output_format is Format.json:
        info = {"source": str(data), "rows": len(rows), "train_on": opts.train_on, "max_length": opts.max_length}
        sys.stdout.write(roles_to_json(rows, tokenizer, info) + "\n")
    else:
        Console(highlight=False).print(RolesView(rows, tokenizer, max_rows=show))


@app.command()
def scan(
    data: Annotated[Path, typer.Argument(help="Tokenized rows, or raw rows given a tokenizer: .jsonl, .json, .parquet, .arrow, a saved datasets directory, or a .safetensors batch.")],
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="Tokenizer or model directory: names the end and pad tokens, decodes texts, tokenizes raw rows.")] = None,
    end_token_id: Annotated[list[int] | None, typer.Option("--end-token-id", help="A token id that closes a completion (repeatable); replaces the tokenizer's.")] = None,
    num_proc: Annotated[int, typer.Option("--num-proc", min=1, help="Processes, through datasets' Dataset.map (1: stream in this process).")] = 1,
    examples: Annotated[int, typer.Option("--examples", min=1, help="Rows of each failing check given in full.")] = 3,
    worst: Annotated[int, typer.Option("--worst", min=0, help="Rows with the most flagged positions to list.")] = 10,
    output_format: Annotated[Format, typer.Option("--format", help="text: a terminal report; json: schema v1 on stdout.")] = Format.text,
    output: Annotated[Path | None, typer.Option("--output", help="Also write the JSON report to this file.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 on warnings too.")] = False,
    response_template: ResponseOpt = None,
    instruction_template: InstructionOpt = None,
    train_on: TrainOnOpt = TrainOn.all_assistant,
    max_length: MaxLengthOpt = None,
    truncation_mode: TruncationOpt = None,
) -> None:
    """Audit every row of a dataset from its labels, without a model (same checks as check); raw rows are tokenized
    with --tokenizer and labelled as check's reference pipeline does."""
    from gradscope.scan.dataset import scan as scan_dataset

    opts = data_options(response_template, instruction_template, train_on, max_length, truncation_mode)
    try:
        _quiet_transformers()
        with _progress() as advance:
            report = scan_dataset(data, tokenizer=tokenizer, end_token_ids=end_token_id, options=opts,
                                  examples=examples, worst=worst, num_proc=num_proc, progress=advance)
    except GradscopeError as err:
        raise _fail(err) from None
    raise _emit(report, output_format, output, ScanView(report), strict)


@contextmanager
def _progress():
    """A rich progress bar on stderr (rows scanned); yields the callback the library calls."""
    columns = (TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"), TimeElapsedColumn())
    console = Console(stderr=True)
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:  # no bar in logs
        task = bar.add_task("scan", total=None)

        def advance(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield advance
