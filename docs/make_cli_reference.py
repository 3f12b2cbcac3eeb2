"""Write docs/cli.md, the command reference, from the commands' own help.

    python docs/make_cli_reference.py          # rewrite docs/cli.md
    python docs/make_cli_reference.py --check  # exit 1 if docs/cli.md is stale

The help is rendered by typer's plain (click) formatter at a fixed width, not in typer's rich panels, whose
width and colours follow the terminal: so the file is the same on every machine and terminal.
tests/docs/test_cli_reference.py fails when docs/cli.md differs from what this script writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from typer.core import TyperCommand, TyperGroup

WIDTH = 100
REFERENCE = Path(__file__).resolve().parent / "cli.md"
REFRESH = "python docs/make_cli_reference.py"

HEADER = f"""# Command reference

Generated from the commands' own `--help` by `{REFRESH}`: do not edit it by hand (a
test fails when this file is stale). `gradscope COMMAND --help` prints the same options in the terminal. What
the findings mean: [findings.md](findings.md); what DATA can be: [inputs.md](inputs.md). Exit codes: 0 clean (or
warnings), 1 error findings, or a report that is not verified (some rows' roles unknown; `--allow-unknown-roles`
lets it exit 0), or warnings too with `--strict`; 2 bad input or usage.
"""


def plain_help(command: TyperCommand | TyperGroup, ctx: typer.Context) -> str:
    """The help of ``command`` as the plain (click) formatter writes it at ``WIDTH`` columns.

    Args:
        command: a command of the typer app, as ``typer.main.get_command`` builds it.
        ctx: the context to render it in (its ``info_name`` and parents make the usage line).

    Returns:
        The help text, without trailing spaces.
    """
    command.rich_markup_mode = None  # typer's plain path; get_command builds fresh objects, so the app is untouched
    lines = command.get_help(ctx).splitlines()
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def _context(command: TyperCommand | TyperGroup, name: str, parent: typer.Context | None = None) -> typer.Context:
    return typer.Context(command, info_name=name, parent=parent, terminal_width=WIDTH, max_content_width=WIDTH)


def render_reference() -> str:
    """Return the text of docs/cli.md for the installed gradscope's commands."""
    from gradscope.cli import app

    root = typer.main.get_command(app)
    root_ctx = _context(root, "gradscope")
    parts = [HEADER, "## gradscope\n", "```text\n" + plain_help(root, root_ctx) + "\n```\n"]
    commands = root.commands if isinstance(root, TyperGroup) else {}
    parts.append("Commands:\n\n" + "".join(f"- [`gradscope {name}`](#gradscope-{name})\n" for name in commands))
    for name, command in commands.items():
        text = plain_help(command, _context(command, name, root_ctx))
        parts.append(f"## gradscope {name}\n\n```text\n{text}\n```\n")
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    text = render_reference()
    if "--check" in argv:
        if REFERENCE.exists() and REFERENCE.read_text(encoding="utf-8") == text:
            return 0
        print(f"{REFERENCE} is stale: run `{REFRESH}`", file=sys.stderr)
        return 1
    REFERENCE.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REFERENCE.parent.parent))  # the checkout's gradscope, run from anywhere
    raise SystemExit(main(sys.argv[1:]))
