"""The app and its one error boundary: every bad input and usage error becomes one ``Error:`` line and exit 2.

Library errors (``GradscopeError``) name Python parameters in backticks (`` `batch_size` ``); the boundary renders
them as the flags the user typed (``--batch-size``). Any other exception is a bug in gradscope and is not caught.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from typer._click import exceptions as click  # typer vendors click; its errors are these
from typer.core import TyperGroup

from gradscope.cli.output import write_text
from gradscope.errors import GradscopeError
from gradscope.render.json import to_json
from gradscope.render.junit import github_annotations, to_junit
from gradscope.render.sanitize import one_line, print_safe
from gradscope.report.check import Report
from gradscope.report.scan import ScanReport
from gradscope.report.verdict import verdict

EXIT_OK, EXIT_FINDINGS, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

T = TypeVar("T")


class _Boundary(TyperGroup):
    """Typer's group with click's usage errors as one ``Error:`` line (typer draws a box around them)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(
                args, prog_name, complete_var, standalone_mode=False, windows_expand_args=windows_expand_args, **extra
            )
        except click.NoArgsIsHelpError as err:
            print(err.ctx.get_help())
            code = EXIT_BAD_INPUT  # as click exits on a bare command
        except click.UsageError as err:
            command = f" (gradscope {err.ctx.info_name} --help)" if err.ctx and err.ctx.parent else ""
            message = err.format_message().replace("Value error, ", "")  # typer's validator prefix
            if (
                isinstance(err, click.MissingParameter)
                and err.param is not None
                and err.param.param_type_name == "argument"
            ):
                message = f"Missing argument {err.param.name.upper()}."
            print(f"Error: {one_line(message)}{command}", file=sys.stderr)
            code = EXIT_BAD_INPUT
        except OSError as err:
            if err.errno != errno.ENAMETOOLONG:
                raise
            # any path the user gives (model, data, --html, --loss, ...) may be stat'ed first anywhere: one rule here
            name = os.fsdecode(err.filename) if err.filename is not None else "a path"
            print(
                f"Error: {one_line(name)}: a name in this path is too long for the file system; give a shorter path",
                file=sys.stderr,
            )
            code = EXIT_BAD_INPUT
        except typer.Abort:  # EOF on a prompt; gradscope never prompts, but click may
            print("Error: interrupted", file=sys.stderr)
            code = EXIT_INTERRUPTED
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else EXIT_OK)


app = typer.Typer(
    cls=_Boundary,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Read from the loss gradient which tokens a fine-tune really trains, flag every masking "
    "leak, and check the gradient that reaches the weights.",
)


def _print_version(value: bool) -> None:
    if value:
        from gradscope import __version__

        print(f"gradscope {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print gradscope's version and exit."),
    ] = False,
) -> None:
    """The options before the command; each command imports what it runs (torch, transformers) only when called."""


FLAGS = {"end_token_ids": "--end-token-id", "parameters": "--param-sample"}
"""Parameters whose flag is not their name with dashes."""


def as_flags(text: str) -> str:
    """`` `batch_size` `` → ``--batch-size``: the library names parameters, the command line names flags."""
    return re.sub(r"`([a-z][a-z0-9_]*)`", lambda m: FLAGS.get(m.group(1), "--" + m.group(1).replace("_", "-")), text)


def fail(err: GradscopeError) -> typer.Exit:
    """One ``Error:`` line on stderr, exit status 2: the message's foreign text (paths, names, the user's exception)
    cannot break the line or steer the terminal or a CI runner (``gradscope.render.sanitize``)."""
    print(f"Error: {one_line(as_flags(str(err)))}", file=sys.stderr)
    return typer.Exit(EXIT_BAD_INPUT)


@contextmanager
def boundary() -> Iterator[None]:
    """The one place errors become exit codes: bad input exits 2 with one line, Ctrl-C exits 130 with one line."""
    try:
        yield
    except GradscopeError as err:
        raise fail(err) from None
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def guarded(work: Callable[[], T], status: str = "running forward and backward…") -> T:
    """Run the library call with a spinner on stderr, inside the boundary."""
    with boundary(), Console(stderr=True).status(status):
        return work()


def exit_code(report: Report | ScanReport, strict: bool, allow_unknown_roles: bool = False) -> int:
    """0 when the report passes, 1 when its verdict fails (``Verdict.fails``): errors; a report that is not
    verified, unless ``allow_unknown_roles``; any finding with ``strict``."""
    failing = verdict(report).fails(strict=strict, allow_unknown_roles=allow_unknown_roles)
    return EXIT_FINDINGS if failing else EXIT_OK


def in_flags(report: Report | ScanReport) -> Report | ScanReport:
    """The report's notes and messages with parameter names rendered as flags, for the command line's output."""
    report.notes = [as_flags(n) for n in report.notes]
    if isinstance(report, ScanReport):
        report.not_run = {name: as_flags(why) for name, why in report.not_run.items()}
    for finding in report.findings:
        finding.message = as_flags(finding.message)
    return report


def emit(
    report: Report | ScanReport,
    output_format: str,
    output: Path | None,
    view: object,
    strict: bool,
    html: Path | None = None,
    allow_unknown_roles: bool = False,
) -> typer.Exit:
    """Write the JSON and HTML files, print the report as asked (and GitHub annotations under Actions), and give
    the exit code."""
    in_flags(report)
    write(output, lambda: to_json(report) + "\n")
    write(html, report.to_html)
    if output_format == "json":
        sys.stdout.write(to_json(report) + "\n")
    elif output_format == "junit":
        sys.stdout.write(to_junit(report, strict=strict, allow_unknown_roles=allow_unknown_roles))
    else:
        print_view(view)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in github_annotations(report, strict=strict):
            print(line, file=sys.stderr)
    return typer.Exit(exit_code(report, strict, allow_unknown_roles))


def print_view(view: object) -> None:
    """Print a terminal view on stdout through the output rule (``gradscope.render.sanitize``)."""
    print_safe(Console(highlight=False), view)  # type: ignore[arg-type]  # every view is a rich renderable


def write(path: Path | None, text: Callable[[], str]) -> None:
    """Write a report file the user asked for, inside the boundary."""
    if path is not None:
        with boundary():
            write_text(path, text())
