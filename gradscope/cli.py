"""The command line: parse, call the library, render, map to an exit code. No computation lives here.

Exit codes: 0 no error finding; 1 error findings (warnings too with --strict); 2 bad input or usage.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console, Group
from torch import nn

from gradscope.check import check_batches
from gradscope.errors import DataError, GradscopeError
from gradscope.grads import DEFAULT_LR, DEFAULT_MAX_GRAD_NORM
from gradscope.grads import grads as grads_pass
from gradscope.load import load_batches, load_loss_fn, load_model_and_tokenizer
from gradscope.overfit import overfit as overfit_pass
from gradscope.render import CheckView, GradsView, InspectView, VerifyView, to_json
from gradscope.report import Report
from gradscope.run import LossFn
from gradscope.verify import verify as verify_pass

EXIT_OK, EXIT_FINDINGS, EXIT_BAD_INPUT = 0, 1, 2

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Read from the loss gradient which tokens a fine-tune really trains, flag every masking leak, and check the gradient that reaches the weights.",
)


class Format(str, Enum):
    text = "text"
    json = "json"


class Optimizer(str, Enum):
    adamw = "adamw"
    sgd = "sgd"


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


ModelArg = Annotated[Path, typer.Argument(help="Local Hugging Face model directory (config.json + *.safetensors), or a PEFT adapter directory (adapter_config.json).")]
DataArg = Annotated[Path, typer.Argument(help="A .safetensors batch or a .jsonl of pre-tokenized rows.")]
SamplesOpt = Annotated[int | None, typer.Option("--samples", min=1, help="Use only the first N rows.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="JSONL rows per batch (a .safetensors batch runs as is).")]
LossOpt = Annotated[str | None, typer.Option("--loss", help="FILE.py:FN or module:FN, fn(logits, labels) -> scalar, instead of the model's loss.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="torch device to run on.")]
DTypeOpt = Annotated[DType, typer.Option("--dtype", help="Model dtype (gradient norms are always computed in fp32).")]
RemoteOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow code from the model directory to run.")]
DropoutOpt = Annotated[bool, typer.Option("--keep-dropout", help="Leave dropout on (the report is then not deterministic).")]
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
    base: Path | None = None


@dataclass
class Loaded:
    """Everything named on the command line, loaded."""

    model: nn.Module
    tokenizer: Any
    loss_fn: LossFn | None
    batches: list[dict[str, torch.Tensor]]


def _quiet_transformers() -> None:
    """Keep transformers' progress bars and advice off the terminal: stderr is for gradscope's diagnostics."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _load(opts: RunOptions) -> Loaded:
    """Load the model (or adapter on its base), tokenizer, loss and batches named on the command line."""
    _quiet_transformers()
    loss_fn = load_loss_fn(opts.loss) if opts.loss else None
    model, tokenizer = load_model_and_tokenizer(
        opts.model, base=opts.base, device=opts.device, dtype=opts.dtype.value, trust_remote_code=opts.trust_remote_code
    )
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = getattr(model.config, "pad_token_id", None)
    batches = list(load_batches(opts.data, pad_token_id=pad_id, samples=opts.samples, batch_size=opts.batch_size))
    return Loaded(model, tokenizer, loss_fn, batches)


def _check(opts: RunOptions, loaded: Loaded) -> Report:
    return check_batches(
        loaded.model,
        loaded.batches,
        tokenizer=loaded.tokenizer,
        loss_fn=loaded.loss_fn,
        keep_dropout=opts.keep_dropout,
        source=str(opts.data),
    )


def _first_batch_note(report: Report, loaded: Loaded, what: str) -> None:
    """Parameter passes run on one batch, one optimizer step's worth: say so when the data holds more."""
    if len(loaded.batches) > 1:
        rows = len(loaded.batches[0]["input_ids"])
        report.notes.append(f"{what} ran on the first batch ({rows} row(s)) of {len(loaded.batches)}; use --batch-size to size it")


def exit_code(report: Report, strict: bool) -> int:
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


def _emit(report: Report, output_format: Format, output: Path | None, view: object, strict: bool) -> typer.Exit:
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
    dtype: DTypeOpt = DType.float32,
    trust_remote_code: RemoteOpt = False,
    keep_dropout: DropoutOpt = False,
    base: BaseOpt = None,
    output_format: FormatOpt = Format.text,
    output: OutputOpt = None,
    strict: StrictOpt = False,
    show: Annotated[int, typer.Option("--show", min=0, help="Token strips to show in the terminal report.")] = 8,
    params: Annotated[bool, typer.Option("--params", help="Also run the parameter-gradient pass (as gradscope grads) on the first batch.")] = False,
    lr: LrOpt = DEFAULT_LR,
    max_grad_norm: MaxNormOpt = DEFAULT_MAX_GRAD_NORM,
) -> None:
    """Run MODEL forward and backward on DATA and report which tokens the loss trains, and every leak."""
    opts = RunOptions(model, data, samples, batch_size, loss, device, dtype, trust_remote_code, keep_dropout, base)

    def work() -> Report:
        loaded = _load(opts)
        report = _check(opts, loaded)
        if params:
            grads_pass(loaded.model, loaded.batches[0], loss_fn=loaded.loss_fn, lr=lr, max_grad_norm=max_grad_norm,
                       keep_dropout=keep_dropout, report=report, source=str(data))
            _first_batch_note(report, loaded, "the parameter-gradient pass")
        return report

    report = _guarded(work)
    views = [CheckView(report, max_samples=show)] + ([GradsView(report)] if params else [])
    raise _emit(report, output_format, output, Group(*views), strict)


@app.command()
def grads(
    model: ModelArg,
    data: DataArg,
    samples: SamplesOpt = None,
    batch_size: BatchSizeOpt = 1,
    loss: LossOpt = None,
    device: DeviceOpt = "cpu",
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
) -> None:
    """The gradient that reaches the weights: per-module norms, clipping, update ratios, untrained parameters."""
    opts = RunOptions(model, data, samples, batch_size, loss, device, dtype, trust_remote_code, keep_dropout, base)

    def work() -> Report:
        loaded = _load(opts)
        first = loaded.batches[0]
        common = {"loss_fn": loaded.loss_fn, "keep_dropout": keep_dropout, "source": str(data)}
        report = grads_pass(loaded.model, first, lr=lr, max_grad_norm=max_grad_norm, **common)
        if overfit:
            overfit_pass(loaded.model, first, steps=overfit, lr=lr, optimizer=optimizer.value, report=report, **common)
        _first_batch_note(report, loaded, "gradscope grads")
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
) -> None:
    """Check autograd's gradient of the loss against finite differences on a float64 copy of the model."""
    opts = RunOptions(model, data, samples, batch_size, loss, device, DType.float32, trust_remote_code, False, base)

    def work() -> Report:
        loaded = _load(opts)
        report = verify_pass(loaded.model, loaded.batches[0], loss_fn=loaded.loss_fn, directions=directions,
                             parameters=param_sample, seed=seed, source=str(data))
        _first_batch_note(report, loaded, "gradscope verify")
        return report

    report = _guarded(work, "comparing autograd with finite differences…")
    raise _emit(report, output_format, output, VerifyView(report), strict)


@app.command()
def inspect(
    model: ModelArg,
    data: DataArg,
    row: Annotated[int, typer.Option("--row", min=0, help="The row to show (0-based).")] = 0,
    batch_size: BatchSizeOpt = 1,
    loss: LossOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DTypeOpt = DType.float32,
    trust_remote_code: RemoteOpt = False,
    keep_dropout: DropoutOpt = False,
    base: BaseOpt = None,
) -> None:
    """Show one row in detail: a per-token table and a layers x positions heat map of gradient norms."""
    # Run the row inside the batch it belongs to, so that its loss weights are the ones training sees.
    limit = None if data.suffix == ".safetensors" else (row // batch_size + 1) * batch_size
    opts = RunOptions(model, data, limit, batch_size, loss, device, dtype, trust_remote_code, keep_dropout, base)
    report = _guarded(lambda: _check(opts, _load(opts)))
    if row >= len(report.samples):
        raise _fail(DataError(f"there is no row {row}: the data has {len(report.samples)}", path=data, hint="pick --row from 0"))
    Console(highlight=False).print(InspectView(report, report.samples[row]))
    raise typer.Exit(exit_code(report, strict=False))
