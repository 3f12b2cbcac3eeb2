"""``gradscope roles`` and ``gradscope scan``: the data alone, no model run."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gradscope.cli.app import app, boundary, emit, fail, print_view
from gradscope.cli.options import (
    AllowUnknownOpt,
    DataArg,
    Format,
    FormatOpt,
    HtmlOpt,
    InstructionOpt,
    MaxLengthOpt,
    OutputOpt,
    ResponseOpt,
    SamplesOpt,
    StrictOpt,
    TrainOn,
    TrainOnOpt,
    TruncationOpt,
    data_options,
    quiet_transformers,
)
from gradscope.errors import InputError
from gradscope.render.inspect import RolesView
from gradscope.render.json import roles_to_json
from gradscope.render.scan import ScanView


@app.command()
def roles(
    model: Annotated[
        Path, typer.Argument(help="A model or tokenizer directory: its tokenizer (and chat template) is used.")
    ],
    data: DataArg,
    samples: SamplesOpt = None,
    response_template: ResponseOpt = None,
    instruction_template: InstructionOpt = None,
    train_on: TrainOnOpt = TrainOn.all_assistant,
    max_length: MaxLengthOpt = None,
    truncation_mode: TruncationOpt = None,
    output_format: Annotated[
        Format,
        typer.Option("--format", help="text: coloured token strips; json: every token's role (junit: not for roles)."),
    ] = Format.text,
    show: Annotated[int, typer.Option("--show", min=0, help="Rows to show in the terminal view.")] = 8,
) -> None:
    """Show how gradscope splits DATA's raw rows into prompt and completion tokens, from the tokenizer and its chat
    template; no model runs."""
    from gradscope.verbs.files import roles_files

    options = data_options(response_template, instruction_template, train_on, max_length, truncation_mode)
    if output_format is Format.junit:
        raise fail(InputError("`format` junit reports checks; roles runs none", hint="use text or json"))
    quiet_transformers()
    with boundary():
        report = roles_files(model, data, samples=samples, options=options)
    if output_format is Format.json:
        sys.stdout.write(roles_to_json(report) + "\n")
    else:
        print_view(RolesView(report, max_rows=show))


@app.command()
def scan(
    data: Annotated[
        Path,
        typer.Argument(
            help="Tokenized rows, or raw rows given a tokenizer: "
            ".jsonl, .json, .parquet, .arrow, a saved datasets directory, or a .safetensors batch."
        ),
    ],
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer",
            help="Tokenizer or model directory: names the end and pad tokens, decodes texts, tokenizes raw rows.",
        ),
    ] = None,
    end_token_id: Annotated[
        list[int] | None,
        typer.Option(
            "--end-token-id", help="A token id that closes a completion (repeatable); replaces the tokenizer's."
        ),
    ] = None,
    num_proc: Annotated[
        int,
        typer.Option(
            "--num-proc",
            min=1,
            help="Processes that check the rows, each reading its own parts of the data (Parquet row groups, Arrow "
            "record batches, JSON-lines byte ranges): this one and N-1 forked workers (1: this process alone).",
        ),
    ] = 1,
    examples: Annotated[int, typer.Option("--examples", min=1, help="Rows of each failing check given in full.")] = 3,
    worst: Annotated[int, typer.Option("--worst", min=0, help="Rows with the most flagged positions to list.")] = 10,
    output_format: FormatOpt = Format.text,
    output: OutputOpt = None,
    html: HtmlOpt = None,
    strict: StrictOpt = False,
    allow_unknown_roles: AllowUnknownOpt = False,
    response_template: ResponseOpt = None,
    instruction_template: InstructionOpt = None,
    train_on: TrainOnOpt = TrainOn.all_assistant,
    max_length: MaxLengthOpt = None,
    truncation_mode: TruncationOpt = None,
) -> None:
    """Audit every row of a dataset from its labels, without a model (same checks as check); raw rows are tokenized
    with --tokenizer and labelled as check's reference pipeline does."""
    from gradscope.scan.dataset import scan as scan_dataset

    options = data_options(response_template, instruction_template, train_on, max_length, truncation_mode)
    quiet_transformers()
    with boundary(), _progress() as advance:
        report = scan_dataset(
            data,
            tokenizer=tokenizer,
            end_token_ids=end_token_id,
            options=options,
            examples=examples,
            worst=worst,
            num_proc=num_proc,
            progress=advance,
        )
    raise emit(report, output_format.value, output, ScanView(report), strict, html, allow_unknown_roles)


@contextmanager
def _progress() -> Iterator:
    """A rich progress bar on stderr (rows scanned); yields the callback the library calls."""
    columns = (TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"), TimeElapsedColumn())
    console = Console(stderr=True)
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:  # no bar in logs
        task = bar.add_task("scan", total=None)

        def advance(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield advance
