"""The scan view."""

from __future__ import annotations

from rich.console import Console, ConsoleOptions, Group, JustifyMethod, RenderResult
from rich.table import Table
from rich.text import Text

from gradscope.render.check import STATUS_STYLES, findings_table
from gradscope.render.sanitize import escape_controls
from gradscope.report.scan import SCAN_WARNINGS, ScanReport
from gradscope.report.verdict import headline


class ScanView:
    """The ``gradscope scan`` terminal report: verdict, counts per check, distributions, worst rows, findings."""

    def __init__(self, report: ScanReport) -> None:
        self.report = report

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        r = self.report
        yield _scan_verdict(r)
        src = r.source
        line = f"data {src['path']} ({src['format']}); end token ids {src['end_token_ids'] or 'none'}"
        yield Text(escape_controls(line), style="grey50")
        for note in r.notes:
            yield Text(f"note: {note}", style="yellow")
        yield _checks_table(r)
        yield _distributions(r)
        if r.worst_rows:
            yield _worst_table(r)
            yield Text("look at one with: gradscope inspect MODEL DATA --row N", style="grey50")
        if r.findings:
            yield findings_table(r, "Findings (the first rows of each check and the worst rows)")
            yield _scan_verdict(r)


def _scan_verdict(r: ScanReport) -> Text:
    v, label, rest = headline(r)
    return Text.assemble((label, STATUS_STYLES[v.status]), rest)


def _checks_table(r: ScanReport) -> Table:
    table = Table(title="Checks", title_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("check", "left"),
        ("rows", "right"),
        ("positions", "right"),
        ("first rows", "left"),
    )
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for name, entry in r.checks.items():
        if name in r.not_run:
            table.add_row(Text(name, style="grey50"), "not run", "", r.not_run[name])
            continue
        style = ("yellow" if name in SCAN_WARNINGS else "red") if entry["rows"] else "green"
        first = ", ".join(map(str, entry["first_rows"])) + (" …" if entry["rows"] > len(entry["first_rows"]) else "")
        table.add_row(Text(name, style=style), str(entry["rows"]), str(entry["positions"]), first)
    return table


def _distributions(r: ScanReport) -> Group:
    length = r.distributions.get("length", {})
    lines = [Text("Distributions", style="bold")]
    if length.get("rows"):
        lines.append(
            Text(
                f"tokens per row: min {length['min']}, median {length['p50']}, p90 {length['p90']}, "
                f"p99 {length['p99']}, "
                f"max {length['max']}, mean {length['mean']:.1f}"
            )
        )
    fraction = r.distributions.get("trained_fraction", {})
    rows = fraction.get("rows", [])
    top = max(rows, default=0) or 1
    for i, count in enumerate(rows):
        low, high = fraction["bins"][i], fraction["bins"][i + 1]
        bar = "█" * round(30 * count / top)
        lines.append(Text.assemble(f"trained {low:.1f}–{high:.1f} ", (f"{bar:<30}", "cyan"), f" {count}"))
    return Group(*lines)


def _worst_table(r: ScanReport) -> Table:
    table = Table(title="Worst rows", title_justify="left")
    table.add_column("row", justify="right")
    table.add_column("flagged positions", justify="right")
    table.add_column("checks")
    for w in r.worst_rows:
        table.add_row(str(w["row"]), str(w["positions"]), ", ".join(w["checks"]))
    return table
