"""The check view: verdict, token strips, findings and probes tables."""

from __future__ import annotations

import math

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text

from gradscope.render.sanitize import escape_controls
from gradscope.report.check import ProbeReport, Report, SampleReport, TokenReport
from gradscope.report.scan import ScanReport
from gradscope.report.text import format_number, format_positions
from gradscope.report.verdict import headline

ROLE_STYLES = {"prompt": "cyan", "completion": "green", "pad": "grey42", None: "white"}
LEAK_STYLE = "bold white on red"


def token_label(token: TokenReport) -> str:
    """A token's text made visible: newlines and tabs shown, empty or unknown text as its id."""
    if token.text is None or token.text == "":
        return f"[{token.token_id}]"
    return escape_controls(token.text.replace("\n", "↵").replace("\t", "→"))


class Verdict:
    """One line: the report's status and counts, worded by ``gradscope.report.verdict.headline``."""

    def __init__(self, report: Report, subject: str = "masking") -> None:
        self.report, self.subject = report, subject

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        v, label, rest = headline(self.report, self.subject)
        yield Text.assemble((label, STATUS_STYLES[v.status]), rest)


STATUS_STYLES = {"clean": "bold green", "not verified": "bold yellow", "warnings": "bold yellow", "errors": "bold red"}


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
    table.add_column("positions", overflow="fold")
    table.add_column("message", ratio=1, overflow="fold")  # a long word (the fix) folds, never ends in "…"
    for f in report.findings:
        severity = Text(f.severity, style="red" if f.severity == "error" else "yellow")
        sample = "batch" if f.sample is None else str(f.sample)
        # Text, not a markup string: a message that says labels[t] must not lose its brackets to rich markup.
        table.add_row(f.check, severity, sample, _short_positions(f.positions), Text(f.message))
    return table


def probes_table(report: Report) -> Table:
    """What each structural probe did and cost; the accumulation probe's cosine and relative error."""
    table = Table(title="Probes", title_justify="left", expand=True)
    for name in ("probe", "extra passes", "seconds", "covered"):
        table.add_column(name, justify="right" if name == "seconds" else "left", ratio=1 if name == "covered" else None)
    for name, probe in report.probes.items():
        table.add_row(
            name, _passes(probe), f"{probe.seconds:.3f}" if probe.ran else "–", Text(_covered(name, probe, report))
        )
    return table


def _passes(probe: ProbeReport) -> str:
    if not probe.ran:
        return "not run"
    parts = [f"{probe.backward_passes} backward"] * bool(probe.backward_passes)
    parts += [f"{probe.forward_passes} forward"] * bool(probe.forward_passes)
    how = [] if probe.batched is None else ["batched" if probe.batched else "looped"]
    how += [f"shared with {', '.join(probe.shared)}"] * bool(probe.shared)
    return (", ".join(parts) or "none") + (f" ({'; '.join(how)})" if how else "")


def _covered(name: str, probe: ProbeReport, report: Report) -> str:
    if name != "accumulate" or not report.accumulation:
        return probe.note
    results = "; ".join(
        f"batch {a.batch}: cosine {format_number(a.cosine)}, relative error {format_number(a.relative_error, 3)}"
        for a in report.accumulation
    )
    return f"{probe.note}; {results}"


def _short_positions(positions: list[int]) -> str:
    return format_positions(positions) if positions else "–"


class CheckView:
    """The ``gradscope check`` terminal report."""

    def __init__(self, report: Report, max_samples: int = 8) -> None:
        self.report, self.max_samples = report, max_samples

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        r = self.report
        yield Verdict(r, "masking and gradient" if r.grads is not None else "masking")
        yield Text(model_line(r), style="grey50")
        data_line = _data_line(r)
        if data_line:
            yield Text(data_line, style="grey50")
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
        if r.probes:
            yield probes_table(r)
        if r.findings:
            yield findings_table(r)
            yield Verdict(r, "masking and gradient" if r.grads is not None else "masking")


def _data_line(r: Report) -> str | None:
    d = r.data
    if not d.get("pipeline"):
        return None
    labels = {
        "reference": "gradscope's reference masking (what correct looks like)",
        "trl": "TRL's SFT preparation and collator",
        "collate": f"your collator {d.get('collate')}",
    }[d["pipeline"]]
    return escape_controls(f"data {d.get('source')} ({d.get('rows')} rows: {d.get('format')}); labels from {labels}")


def model_line(r: Report) -> str:
    m = r.model
    name = m.get("name_or_path") or m.get("architecture")
    losses = ", ".join("nan" if not math.isfinite(x) else f"{x:.4f}" for x in r.losses)
    loss = f"loss {m.get('loss')} = {losses}" if r.losses else f"loss {m.get('loss')}: none observed"
    return escape_controls(  # one line, whatever the path holds
        f"model {name} ({m.get('architecture')}, {m.get('num_layers')} layers, {m.get('dtype')}, {m.get('device')}); "
        + loss
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


def render(report: Report, console: Console, *, max_samples: int = 8) -> None:
    console.print(Group(CheckView(report, max_samples=max_samples)))
