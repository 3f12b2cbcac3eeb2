"""Render: turn a Report into terminal output (rich) or JSON. Each view is a small renderable class."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text

from gradscope.analyze import format_positions
from gradscope.report import Report, SampleReport, ScanReport, TokenReport

ROLE_STYLES = {"prompt": "cyan", "completion": "green", "pad": "grey42", None: "white"}
LEAK_STYLE = "bold white on red"
HEAT = ["grey23", "blue", "cyan", "green", "yellow", "dark_orange", "red"]


def to_json(report: Report | ScanReport) -> str:
    """The JSON form of a report (schema v1)."""
    return json.dumps(report.to_dict(), indent=2)


def token_label(token: TokenReport) -> str:
    """A token's text made visible: newlines and tabs shown, empty or unknown text as its id."""
    if token.text is None or token.text == "":
        return f"[{token.token_id}]"
    return token.text.replace("\n", "↵").replace("\t", "→")


class Verdict:
    """One line: clean, or how many errors of which checks in how many samples."""

    def __init__(self, report: Report) -> None:
        self.report = report

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        r, s = self.report, self.report.summary()
        if r.ok:
            extra = f", {len(r.warnings)} warning(s)" if r.warnings else ""
            yield Text.assemble(
                ("✓ clean", "bold green"),
                f": {s['samples']} sample(s), {s['trained_tokens']} of {s['tokens']} tokens trained{extra}",
            )
            return
        counts = Counter(f.check for f in r.errors)
        samples = {f.sample for f in r.errors}
        what = ", ".join(f"{name} ×{n}" for name, n in counts.items())
        where = "the batch" if samples == {None} else f"{len(samples - {None})} of {s['samples']} sample(s)"
        yield Text.assemble(("✗ masking errors", "bold red"), f": {len(r.errors)} in {where} ({what})")


class TokenStrip:
    """A sample's tokens coloured by role, trained tokens underlined, leaked positions on red."""

    def __init__(self, sample: SampleReport, flagged: set[int], title: str) -> None:
        self.sample, self.flagged, self.title = sample, flagged, title

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(self.title, style="bold")
        strip = Text()
        for token in self.sample.tokens:
            style = LEAK_STYLE if token.position in self.flagged else ROLE_STYLES.get(token.role, "white")
            if token.trained:
                style += " underline bold"
            strip.append(token_label(token), style=style)
            strip.append("·", style="grey30")
        yield strip


class Legend:
    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text.assemble(
            "legend: ",
            ("prompt", ROLE_STYLES["prompt"]),
            "  ",
            ("completion", ROLE_STYLES["completion"]),
            "  ",
            ("pad", ROLE_STYLES["pad"]),
            "  ",
            ("role unknown", ROLE_STYLES[None]),
            "  ",
            ("trained", "underline bold"),
            "  ",
            ("flagged", LEAK_STYLE),
            ("  · separates tokens", "grey42"),
        )


def findings_table(report: Report | ScanReport, title: str = "Findings") -> Table:
    table = Table(title=title, title_justify="left", show_lines=True, expand=True)
    table.add_column("check", style="bold", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("sample", justify="right")
    table.add_column("positions")
    table.add_column("message", ratio=1)
    for f in report.findings:
        severity = Text(f.severity, style="red" if f.severity == "error" else "yellow")
        sample = "batch" if f.sample is None else str(f.sample)
        table.add_row(f.check, severity, sample, _short_positions(f.positions), f.message)
    return table


def _short_positions(positions: list[int]) -> str:
    return format_positions(positions) if positions else "–"


class CheckView:
    """The ``gradscope check`` terminal report."""

    def __init__(self, report: Report, max_samples: int = 8) -> None:
        self.report, self.max_samples = report, max_samples

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        r = self.report
        yield Verdict(r)
        yield Text(_model_line(r), style="grey50")
        for note in r.notes:
            yield Text(f"note: {note}", style="yellow")
        yield Text()
        flagged = _flagged_positions(r)
        shown = [s for s in r.samples if s.index in flagged] or r.samples
        for sample in shown[: self.max_samples]:
            yield TokenStrip(sample, flagged.get(sample.index, set()), _sample_title(sample))
            yield Text()
        if len(shown) > self.max_samples:
            yield Text(f"… {len(shown) - self.max_samples} more sample(s) not shown (--show N)", style="grey50")
        yield Legend()
        if r.findings:
            yield findings_table(r)
            yield Verdict(r)


def _model_line(r: Report) -> str:
    m = r.model
    name = m.get("name_or_path") or m.get("architecture")
    losses = ", ".join("nan" if not math.isfinite(x) else f"{x:.4f}" for x in r.losses)
    return (
        f"model {name} ({m.get('architecture')}, {m.get('num_layers')} layers, {m.get('dtype')}, {m.get('device')}); "
        f"loss {m.get('loss')} = {losses}"
    )


def _sample_title(sample: SampleReport) -> str:
    real = [t for t in sample.tokens if t.role != "pad"]
    trained = sum(t.trained for t in real)
    return f"sample {sample.index}: {len(real)} tokens, {trained} trained"


def _flagged_positions(report: Report) -> dict[int, set[int]]:
    flagged: dict[int, set[int]] = {}
    for f in report.findings:
        if f.sample is not None:
            flagged.setdefault(f.sample, set()).update(f.positions)
    return flagged


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "–"
    return "nan" if not math.isfinite(x) else f"{x:.{digits}g}"


def token_table(sample: SampleReport, flagged: set[int]) -> Table:
    """Per-token table of one sample."""
    table = Table(title=f"sample {sample.index}: per token", title_justify="left")
    for name in ("pos", "token", "id", "role", "label", "trained", "target", "loss", "weight", "∇logits", "∇emb"):
        table.add_column(name, justify="left" if name in ("token", "role") else "right")
    for t in sample.tokens:
        style = LEAK_STYLE if t.position in flagged else ROLE_STYLES.get(t.role, "white")
        table.add_row(
            str(t.position),
            Text(token_label(t), style=style),
            str(t.token_id),
            t.role or "?",
            str(t.label),
            "yes" if t.trained else "",
            "" if t.target_id is None else str(t.target_id),
            _fmt(t.loss),
            _fmt(t.weight) if t.trained else "",
            _fmt(t.logit_grad_norm, 3),
            _fmt(t.embedding_grad_norm, 3),
        )
    return table


class HeatMap:
    """Layers x positions gradient norms, one cell per position, colour on a log scale."""

    def __init__(self, sample: SampleReport) -> None:
        self.sample = sample

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        rows = [("emb", [t.embedding_grad_norm for t in self.sample.tokens])]
        rows += [(f"L{i}", norms) for i, norms in enumerate(self.sample.layer_grad_norms)]
        scale = _LogScale(v for _, norms in rows for v in norms)
        width = max(8, options.max_width - 8)
        yield Text(f"sample {self.sample.index}: ‖∂L/∂h‖ per layer output (rows) and position (columns)", style="bold")
        for start in range(0, len(self.sample.tokens), width):
            yield Text(f"pos {start}–{min(start + width, len(self.sample.tokens)) - 1}", style="grey50")
            for name, norms in rows:
                line = Text(f"{name:>5}  ")
                for v in norms[start : start + width]:
                    line.append("█", style=HEAT[scale(v)])
                yield line
        yield Text.assemble("scale: ", *[("█", c) for c in HEAT], f"  {scale.low:.2g} … {scale.high:.2g} (log)")


class _LogScale:
    """Maps a norm to a HEAT index on a log scale between the smallest and largest positive norms."""

    def __init__(self, values: Iterable[float]) -> None:
        positive = [v for v in values if v > 0 and math.isfinite(v)]
        self.low = min(positive, default=1.0)
        self.high = max(positive, default=1.0)

    def __call__(self, v: float) -> int:
        if not (v > 0 and math.isfinite(v)):
            return 0 if v == 0 else len(HEAT) - 1
        span = math.log(self.high) - math.log(self.low)
        frac = 1.0 if span == 0 else (math.log(v) - math.log(self.low)) / span
        return 1 + min(len(HEAT) - 2, int(frac * (len(HEAT) - 1)))


class InspectView:
    """The ``gradscope inspect`` view of one row: findings for it, the per-token table and the heat map."""

    def __init__(self, report: Report, sample: SampleReport) -> None:
        self.report, self.sample = report, sample

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        mine = [f for f in self.report.findings if f.sample in (self.sample.index, None)]
        flagged = {p for f in mine for p in f.positions}
        yield Text(_model_line(self.report), style="grey50")
        yield token_table(self.sample, flagged)
        yield HeatMap(self.sample)
        if mine:
            sub = Report(model=self.report.model, findings=mine)
            yield findings_table(sub)
        else:
            yield Text(f"✓ no finding for sample {self.sample.index}", style="bold green")


def render(report: Report, console: Console, *, max_samples: int = 8) -> None:
    console.print(Group(CheckView(report, max_samples=max_samples)))


class ScanView:
    """The ``gradscope scan`` terminal report: verdict, counts per check, distributions, worst rows, findings."""

    def __init__(self, report: ScanReport) -> None:
        self.report = report

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        r = self.report
        yield _scan_verdict(r)
        src = r.source
        yield Text(f"data {src['path']} ({src['format']}); end token ids {src['end_token_ids'] or 'none'}", style="grey50")
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
    s = r.summary()
    if r.ok:
        return Text.assemble(("✓ clean", "bold green"), f": {s['rows']} row(s), {s['trained_tokens']} of {s['tokens']} tokens trained")
    what = ", ".join(f"{name} ×{r.checks[name]['rows']}" for name in r.failed_checks)
    return Text.assemble(("✗ masking errors", "bold red"), f" in {s['rows']} row(s): {what}")


def _checks_table(r: ScanReport) -> Table:
    table = Table(title="Checks", title_justify="left")
    for name, justify in (("check", "left"), ("rows", "right"), ("positions", "right"), ("first rows", "left")):
        table.add_column(name, justify=justify)
    for name, entry in r.checks.items():
        style = "red" if entry["rows"] else "green"
        first = ", ".join(map(str, entry["first_rows"])) + (" …" if entry["rows"] > len(entry["first_rows"]) else "")
        table.add_row(Text(name, style=style), str(entry["rows"]), str(entry["positions"]), first)
    return table


def _distributions(r: ScanReport) -> Group:
    length = r.distributions.get("length", {})
    lines = [Text("Distributions", style="bold")]
    if length.get("rows"):
        lines.append(Text(
            f"tokens per row: min {length['min']}, median {length['p50']}, p90 {length['p90']}, p99 {length['p99']}, "
            f"max {length['max']}, mean {length['mean']:.1f}"
        ))
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
