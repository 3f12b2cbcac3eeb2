"""Render: turn a Report into terminal output (rich) or JSON. Each view is a small renderable class."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text

from gradscope.analyze import format_positions, name_list
from gradscope.batch import ROLE_NAMES
from gradscope.report import (
    GradReport,
    ModuleGrad,
    OverfitReport,
    ProbeReport,
    Report,
    SCAN_WARNINGS,
    SampleReport,
    ScanReport,
    TokenReport,
    VerifyReport,
)
from gradscope.roles import RoleRow

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

    def __init__(self, report: Report, subject: str = "masking") -> None:
        self.report, self.subject = report, subject

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        r, s = self.report, self.report.summary()
        if not r.samples:
            yield _batch_verdict(r, self.subject)
            return
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
        yield Text.assemble((f"✗ {self.subject} errors", "bold red"), f": {len(r.errors)} in {where} ({what})")


def _batch_verdict(r: Report, subject: str) -> Text:
    """The verdict of a report without samples (grads, verify): clean, or its errors by check."""
    names = ", ".join(sorted({f.check for f in r.warnings}))
    warnings = f", {len(r.warnings)} warning(s) ({names})" if r.warnings else ""
    if r.ok:
        return Text.assemble(("✓ clean", "bold green"), warnings)
    what = ", ".join(f"{name} ×{n}" for name, n in Counter(f.check for f in r.errors).items())
    return Text.assemble((f"✗ {subject} errors", "bold red"), f": {len(r.errors)} ({what}){warnings}")


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


def probes_table(report: Report) -> Table:
    """What each structural probe did and cost; the accumulation probe's cosine and relative error."""
    table = Table(title="Probes", title_justify="left", expand=True)
    for name in ("probe", "extra passes", "seconds", "covered"):
        table.add_column(name, justify="right" if name == "seconds" else "left", ratio=1 if name == "covered" else None)
    for name, probe in report.probes.items():
        table.add_row(name, _passes(probe), f"{probe.seconds:.3f}" if probe.ran else "–", _covered(name, probe, report))
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
        f"batch {a.batch}: cosine {_fmt(a.cosine)}, relative error {_fmt(a.relative_error, 3)}" for a in report.accumulation
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
        yield Text(_model_line(r), style="grey50")
        if _data_line(r):
            yield Text(_data_line(r), style="grey50")
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
    labels = {"reference": "gradscope's reference masking (what correct looks like)", "trl": "TRL's SFT preparation and collator",
              "collate": f"your collator {d.get('collate')}"}[d["pipeline"]]
    return f"data {d.get('source')} ({d.get('rows')} rows: {d.get('format')}); labels from {labels}"


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


def roles_sample(row: RoleRow, tokenizer: object) -> SampleReport:
    """A derived row as a SampleReport with nothing run, so that TokenStrip can draw it (labels: the reference's)."""
    tokens = [
        TokenReport(t, i, tokenizer.decode([i]), ROLE_NAMES[r], label, False, None, None, None, 0.0, 0.0)
        for t, (i, r, label) in enumerate(zip(row.input_ids, row.roles, row.labels))
    ]
    return SampleReport(index=row.index, tokens=tokens, layer_grad_norms=[])


def roles_to_json(rows: list[RoleRow], tokenizer: object, data: dict) -> str:
    """The ``gradscope roles --format json`` document."""
    out = []
    for row in rows:
        tokens = [
            {"position": t, "token_id": i, "text": tokenizer.decode([i]), "role": ROLE_NAMES[r], "message": m, "label": label}
            for t, (i, r, m, label) in enumerate(zip(row.input_ids, row.roles, row.messages, row.labels))
        ]
        out.append({"index": row.index, "format": row.kind, "completion_cut": row.cut, "tokens": tokens})
    return json.dumps({"schema_version": 1, "data": data, "rows": out}, indent=2)


class RolesView:
    """The ``gradscope roles`` terminal view: one token strip per row, coloured by role."""

    def __init__(self, rows: list[RoleRow], tokenizer: object, max_rows: int = 8) -> None:
        self.rows, self.tokenizer, self.max_rows = rows, tokenizer, max_rows

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for row in self.rows[: self.max_rows]:
            roles = [ROLE_NAMES[r] for r in row.roles]
            title = (
                f"row {row.index} ({row.kind}): {len(roles)} tokens, {roles.count('completion')} completion, "
                f"{roles.count(None)} not judged" + (f", {row.cut} completion tokens cut by --max-length" if row.cut else "")
            )
            yield TokenStrip(roles_sample(row, self.tokenizer), set(), title)
            yield Text()
        if len(self.rows) > self.max_rows:
            yield Text(f"… {len(self.rows) - self.max_rows} more row(s) not shown (--show N)", style="grey50")
        yield Text.assemble(
            "legend: ", ("prompt", ROLE_STYLES["prompt"]), "  ", ("completion", ROLE_STYLES["completion"]), "  ",
            ("not judged (template glue after a closing token)", ROLE_STYLES[None]), ("  · separates tokens", "grey42"),
        )


def render(report: Report, console: Console, *, max_samples: int = 8) -> None:
    console.print(Group(CheckView(report, max_samples=max_samples)))


# ------------------------------------------------------------------------------------ parameter gradients


BAR_WIDTH = 12
SPARKS = "▁▂▃▄▅▆▇█"


def _count(n: int) -> str:
    """153920 -> '153.9k'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def norm_bar(value: float | None, scale: _LogScale) -> Text:
    """A bar whose length is the norm on a log scale between the smallest and largest norms of the report."""
    if value is None:
        return Text("no gradient", style="red")
    if not math.isfinite(value):
        return Text("NaN/Inf", style="bold red")
    if value == 0:
        return Text("zero", style="red")
    span = math.log(scale.high) - math.log(scale.low)
    frac = 1.0 if span == 0 else (math.log(value) - math.log(scale.low)) / span
    return Text("█" * (1 + round(frac * (BAR_WIDTH - 1))), style=HEAT[scale(value)])


def module_table(g: GradReport) -> Table:
    """Per module group: trainable parameters, gradient norm with a bar, update-to-weight ratios."""
    table = Table(
        title=f"‖∇‖ per module (bar: log scale) · update/weight of one step at lr {g.lr:g}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for name in ("module", "trainable", "‖∇‖", "", "SGD", "Adam"):
        table.add_column(name, justify="left" if name in ("module", "") else "right", no_wrap=True)
    scale = _LogScale(m.grad_norm for m in g.modules if m.grad_norm is not None)
    for m in g.modules:
        if m.trainable_parameters > 0:
            table.add_row(
                m.name,
                _count(m.trainable_parameters),
                _sci(m.grad_norm),
                norm_bar(_row_norm(g, m), scale),
                _sci(m.sgd_update_ratio),
                _sci(m.adam_update_ratio),
            )
    return table


def _frozen_line(g: GradReport) -> Text | None:
    frozen = [m.name for m in g.modules if m.trainable_parameters == 0]
    if not frozen:
        return None
    count = _count(sum(m.parameters for m in g.modules if m.trainable_parameters == 0))
    return Text(f"frozen, not shown ({count} parameters): {name_list(frozen, limit=8)}", style="grey50")


def _sci(x: float | None) -> str:
    """Two significant digits, exponent form below 0.01: norms and ratios span many orders of magnitude."""
    if x is None:
        return "–"
    if not math.isfinite(x):
        return "nan"
    return f"{x:.2g}" if x == 0 or abs(x) >= 0.01 else f"{x:.1e}"


def _row_norm(g: GradReport, m: ModuleGrad) -> float | None:
    """The norm to draw: 0 when the row's trainable parameters are all untrained, NaN when one is non-finite."""
    group = m.name.removesuffix(" (adapter)")
    mine = [p for p in g.parameters if p.group == group and p.adapter == m.adapter and p.trainable]
    if any(p.status == "nonfinite" for p in mine):
        return math.nan
    if m.grad_norm is None and any(p.status == "zero_gradient" for p in mine):
        return 0.0
    return m.grad_norm


def _grads_summary(g: GradReport) -> Text:
    clip = "–" if g.clip_factor is None else f"{g.clip_factor:.3g}"
    line = (
        f"loss {_fmt(g.loss)} · global gradient norm {_fmt(g.global_norm)} · clip factor {clip} at --max-grad-norm "
        f"{g.max_grad_norm:g} · block 0 / last block {_fmt(g.depth_ratio, 3)}"
    )
    return Text(line)


def _adapter_line(g: GradReport) -> Text | None:
    a = g.adapter
    if not a:
        return None
    ad, base = a["adapter"], a["base"]
    return Text(
        f"adapter ({', '.join(a['peft_type'])}): {_count(ad['trainable_parameters'])} of {_count(ad['parameters'])} "
        f"adapter parameters trainable, ‖∇‖ {_fmt(ad['grad_norm'])}; base: {_count(base['trainable_parameters'])} of "
        f"{_count(base['parameters'])} trainable, ‖∇‖ {_fmt(base['grad_norm'])}",
        style="cyan",
    )


def sparkline(values: list[float]) -> str:
    """One character per value, on a linear scale between min and max; '×' where not finite."""
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = min(finite, default=0.0), max(finite, default=0.0)
    span = hi - lo
    return "".join(
        "×" if not math.isfinite(v) else SPARKS[0 if span == 0 else round((v - lo) / span * (len(SPARKS) - 1))] for v in values
    )


class OverfitView:
    """The ``--overfit`` loss curve: a sparkline and a few steps."""

    def __init__(self, o: OverfitReport) -> None:
        self.o = o

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        o = self.o
        verdict = ("✓ the loss drops", "bold green") if o.dropped else ("✗ the loss does not drop", "bold yellow")
        change = "" if o.drop is None else f" ({-o.drop:+.0%})"
        yield Text.assemble(
            f"overfit one batch: {o.steps} {o.optimizer} steps at lr {o.lr:g}: {_fmt(o.losses[0])} → {_fmt(o.losses[-1])}{change}  ",
            verdict,
        )
        yield Text(sparkline(o.losses), style="cyan")
        steps = sorted({round(i * o.steps / 4) for i in range(5)})
        table = Table(show_header=True, box=None)
        for step in steps:
            table.add_column(f"step {step}", justify="right")
        table.add_row(*[_fmt(o.losses[step]) for step in steps])
        yield table


class GradsView:
    """The ``gradscope grads`` terminal report (also appended by ``check --params``)."""

    def __init__(self, report: Report) -> None:
        self.report = report

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        r, g = self.report, self.report.grads
        if not r.samples:
            yield Verdict(r, "gradient")
            yield Text(_model_line(r), style="grey50")
        if g is not None:
            yield _grads_summary(g)
            adapter = _adapter_line(g)
            if adapter is not None:
                yield adapter
            yield module_table(g)
            frozen = _frozen_line(g)
            if frozen is not None:
                yield frozen
            for note in g.notes:
                yield Text(f"note: {note}", style="yellow")
        if r.overfit is not None:
            yield OverfitView(r.overfit)
        if not r.samples:
            yield from _notes_findings_verdict(r, "gradient")


def _notes_findings_verdict(r: Report, subject: str) -> RenderResult:
    for note in r.notes:
        yield Text(f"note: {note}", style="yellow")
    if r.findings:
        yield findings_table(r)
        yield Verdict(r, subject)


def verify_table(v: VerifyReport) -> Table:
    table = Table(title="autograd against finite differences, per tensor and direction", title_justify="left")
    for name in ("tensor", "direction", "autograd", "finite difference", "relative error", ""):
        table.add_column(name, justify="left" if name in ("tensor", "direction", "") else "right")
    for c in v.checks:
        mark = Text("✓", style="green") if c.ok else Text("✗", style="bold red")
        table.add_row(c.target, c.direction, f"{c.autograd:.6g}", f"{c.finite_difference:.6g}", f"{c.relative_error:.2g}", mark)
    return table


class VerifyView:
    """The ``gradscope verify`` terminal report."""

    def __init__(self, report: Report) -> None:
        self.report = report

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        r, v = self.report, self.report.verify
        yield Verdict(r, "gradient")
        yield Text(_model_line(r), style="grey50")
        if v is not None:
            yield Text(
                f"{v.dtype} copy, loss computed in {v.precision}; step {v.step:g}, tolerance {v.tolerance:g}; largest "
                f"relative error {_fmt(v.max_relative_error, 2)}"
            )
            yield verify_table(v)
            for note in v.notes:
                yield Text(f"note: {note}", style="yellow")
        yield from _notes_findings_verdict(r, "gradient")


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
    what = ", ".join(f"{name} ×{r.checks[name]['rows']}" for name in r.failed_checks)
    if r.ok and what:
        return Text.assemble(("! warnings", "bold yellow"), f" in {s['rows']} row(s): {what}")
    if r.ok:
        return Text.assemble(("✓ clean", "bold green"), f": {s['rows']} row(s), {s['trained_tokens']} of {s['tokens']} tokens trained")
    return Text.assemble(("✗ masking errors", "bold red"), f" in {s['rows']} row(s): {what}")


def _checks_table(r: ScanReport) -> Table:
    table = Table(title="Checks", title_justify="left")
    for name, justify in (("check", "left"), ("rows", "right"), ("positions", "right"), ("first rows", "left")):
        table.add_column(name, justify=justify)
    for name, entry in r.checks.items():
        style = ("yellow" if name in SCAN_WARNINGS else "red") if entry["rows"] else "green"
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
