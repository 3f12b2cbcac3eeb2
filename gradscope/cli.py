"""The command line: parse, call the library, render, map to an exit code. No computation lives here.

Exit codes: 0 no error finding; 1 error findings (warnings too with --strict); 2 bad input or usage.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gradscope.check import check_batches
from gradscope.errors import DataError, GradscopeError
from gradscope.load import load_batches, load_loss_fn, load_model, load_tokenizer
from gradscope.render import CheckView, InspectView, ScanView, to_json
from gradscope.report import Report, ScanReport

EXIT_OK, EXIT_FINDINGS, EXIT_BAD_INPUT = 0, 1, 2

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Read from the loss gradient which tokens a fine-tune really trains, and flag every masking leak.",
)


class Format(str, Enum):
    text = "text"
    json = "json"


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


ModelArg = Annotated[Path, typer.Argument(help="Local Hugging Face model directory (config.json + *.safetensors).")]
DataArg = Annotated[Path, typer.Argument(help="A .safetensors batch or a .jsonl of pre-tokenized rows.")]
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
    device_map: str | None = None


def _quiet_transformers() -> None:
    """Keep transformers' progress bars and advice off the terminal: stderr is for gradscope's diagnostics."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _run(opts: RunOptions) -> Report:
    """Load everything named on the command line and check it."""
    _quiet_transformers()
    loss_fn = load_loss_fn(opts.loss) if opts.loss else None
    model = load_model(opts.model, device=opts.device, dtype=opts.dtype.value, trust_remote_code=opts.trust_remote_code,
                       device_map=opts.device_map)
    tokenizer = load_tokenizer(opts.model)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = getattr(model.config, "pad_token_id", None)
    batches = load_batches(opts.data, pad_token_id=pad_id, samples=opts.samples, batch_size=opts.batch_size)
    return check_batches(
        model, batches, tokenizer=tokenizer, loss_fn=loss_fn, keep_dropout=opts.keep_dropout, source=str(opts.data)
    )


def exit_code(report: Report | ScanReport, strict: bool) -> int:
    """0 clean; 1 when there are error findings, or any finding with ``strict``."""
    failing = report.findings if strict else report.errors
    return EXIT_FINDINGS if failing else EXIT_OK


def _fail(err: GradscopeError) -> typer.Exit:
    """One ``Error:`` line on stderr, exit status 2."""
    print(f"Error: {err}", file=sys.stderr)
    return typer.Exit(EXIT_BAD_INPUT)


def _report_or_exit(opts: RunOptions) -> Report:
    """Run with a spinner on stderr; bad input becomes one Error line and exit status 2."""
    try:
        with Console(stderr=True).status("running forward and backward…"):
            return _run(opts)
    except GradscopeError as err:
        raise _fail(err) from None


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
) -> None:
    """Run MODEL forward and backward on DATA and report which tokens the loss trains, and every leak."""
    opts = RunOptions(model, data, samples, batch_size, loss, device, dtype, trust_remote_code, keep_dropout, device_map)
    report = _report_or_exit(opts)
    if output is not None:
        output.write_text(to_json(report) + "\n", encoding="utf-8")
    if output_format is Format.json:
        sys.stdout.write(to_json(report) + "\n")
    else:
        Console(highlight=False).print(CheckView(report, max_samples=show))
    raise typer.Exit(exit_code(report, strict))


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
) -> None:
    """Show one row in detail: a per-token table and a layers x positions heat map of gradient norms."""
    # Run the row inside the batch it belongs to, so that its loss weights are the ones training sees.
    limit = None if data.suffix == ".safetensors" else (row // batch_size + 1) * batch_size
    opts = RunOptions(model, data, limit, batch_size, loss, device, dtype, trust_remote_code, keep_dropout, device_map)
    report = _report_or_exit(opts)
    if row >= len(report.samples):
        raise _fail(DataError(f"there is no row {row}: the data has {len(report.samples)}", path=data, hint="pick --row from 0"))
    Console(highlight=False).print(InspectView(report, report.samples[row]))
    raise typer.Exit(exit_code(report, strict=False))


@app.command()
def scan(
    data: Annotated[Path, typer.Argument(help="Tokenized rows: .jsonl, .parquet, .arrow, a saved datasets directory, or a .safetensors batch.")],
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="Tokenizer or model directory: names the end and pad tokens, decodes texts.")] = None,
    end_token_id: Annotated[list[int] | None, typer.Option("--end-token-id", help="A token id that closes a completion (repeatable); replaces the tokenizer's.")] = None,
    num_proc: Annotated[int, typer.Option("--num-proc", min=1, help="Processes, through datasets' Dataset.map (1: stream in this process).")] = 1,
    examples: Annotated[int, typer.Option("--examples", min=1, help="Rows of each failing check given in full.")] = 3,
    worst: Annotated[int, typer.Option("--worst", min=0, help="Rows with the most flagged positions to list.")] = 10,
    output_format: Annotated[Format, typer.Option("--format", help="text: a terminal report; json: schema v1 on stdout.")] = Format.text,
    output: Annotated[Path | None, typer.Option("--output", help="Also write the JSON report to this file.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 on warnings too.")] = False,
) -> None:
    """Audit every row of a tokenized dataset from its labels, without a model (same checks as check)."""
    from gradscope.scan import scan as scan_dataset

    try:
        with _progress() as advance:
            report = scan_dataset(data, tokenizer=tokenizer, end_token_ids=end_token_id, examples=examples,
                                  worst=worst, num_proc=num_proc, progress=advance)
    except GradscopeError as err:
        raise _fail(err) from None
    if output is not None:
        output.write_text(to_json(report) + "\n", encoding="utf-8")
    if output_format is Format.json:
        sys.stdout.write(to_json(report) + "\n")
    else:
        Console(highlight=False).print(ScanView(report))
    raise typer.Exit(exit_code(report, strict))


@contextmanager
def _progress():
    """A rich progress bar on stderr (rows scanned); yields the callback the library calls."""
    columns = (TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("scan", total=None)

        def advance(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield advance
