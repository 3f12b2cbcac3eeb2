"""The grads, overfit and verify views."""

from __future__ import annotations

import math

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from gradscope.render.check import Verdict, findings_table, model_line
from gradscope.render.inspect import HEAT, LogScale
from gradscope.report.check import Report
from gradscope.report.text import format_number, name_list
from gradscope.report.weights import GradReport, ModuleGrad, OverfitReport, VerifyReport

# ------------------------------------------------------------------------------------ parameter gradients


BAR_WIDTH = 12
SPARKS = "▁▂▃▄▅▆▇█"


def _count(n: int) -> str:
    """153920 -> '153.9k'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def norm_bar(value: float | None, scale: LogScale) -> Text:
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
    scale = LogScale(m.grad_norm for m in g.modules if m.grad_norm is not None)
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
    mine = [p for p in g.parameters if p.group == m.group and p.adapter == m.adapter and p.trainable]
    if any(p.status == "nonfinite" for p in mine):
        return math.nan
    if m.grad_norm is None and any(p.status == "zero_gradient" for p in mine):
        return 0.0
    return m.grad_norm


def _grads_summary(g: GradReport) -> Text:
    clip = "–" if g.clip_factor is None else f"{g.clip_factor:.3g}"
    line = (
        f"loss {format_number(g.loss)} · global gradient norm {format_number(g.global_norm)} · "
        f"clip factor {clip} at --max-grad-norm "
        f"{g.max_grad_norm:g} · block 0 / last block {format_number(g.depth_ratio, 3)}"
    )
    return Text(line)


def _adapter_line(g: GradReport) -> Text | None:
    a = g.adapter
    if not a:
        return None
    ad, base = a["adapter"], a["base"]
    return Text(
        f"adapter ({', '.join(a['peft_type'])}): {_count(ad['trainable_parameters'])} of {_count(ad['parameters'])} "
        f"adapter parameters trainable, ‖∇‖ {format_number(ad['grad_norm'])}; base: "
        f"{_count(base['trainable_parameters'])} of "
        f"{_count(base['parameters'])} trainable, ‖∇‖ {format_number(base['grad_norm'])}",
        style="cyan",
    )


def sparkline(values: list[float]) -> str:
    """One character per value, on a linear scale between min and max; '×' where not finite."""
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = min(finite, default=0.0), max(finite, default=0.0)
    span = hi - lo
    return "".join(
        "×" if not math.isfinite(v) else SPARKS[0 if span == 0 else round((v - lo) / span * (len(SPARKS) - 1))]
        for v in values
    )


class OverfitView:
    """The ``--overfit`` loss curve: a sparkline and a few steps."""

    def __init__(self, o: OverfitReport) -> None:
        self.o = o

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        o = self.o
        verdict = (f"✓ {o.sentence()}", "bold green") if o.dropped else (f"✗ {o.sentence()}", "bold yellow")
        yield Text.assemble(
            f"overfit one batch: {o.steps} {o.optimizer} steps at lr {o.lr:g}: "
            f"{format_number(o.losses[0])} → {format_number(o.losses[-1])}  ",
            verdict,
        )
        yield Text(sparkline(o.losses), style="cyan")
        steps = sorted({round(i * o.steps / 4) for i in range(5)})
        table = Table(show_header=True, box=None)
        for step in steps:
            table.add_column(f"step {step}", justify="right")
        table.add_row(*[format_number(o.losses[step]) for step in steps])
        yield table


class GradsView:
    """The ``gradscope grads`` terminal report (also appended by ``check --params``)."""

    def __init__(self, report: Report) -> None:
        self.report = report

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        r, g = self.report, self.report.grads
        if not r.samples:
            yield Verdict(r, "gradient")
            yield Text(model_line(r), style="grey50")
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
        table.add_row(
            c.target, c.direction, f"{c.autograd:.6g}", f"{c.finite_difference:.6g}", f"{c.relative_error:.2g}", mark
        )
    return table


class VerifyView:
    """The ``gradscope verify`` terminal report."""

    def __init__(self, report: Report) -> None:
        self.report = report

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        r, v = self.report, self.report.verify
        yield Verdict(r, "gradient")
        yield Text(model_line(r), style="grey50")
        if v is not None:
            yield Text(
                f"{v.dtype} copy, loss computed in {v.precision}; step {v.step:g}, tolerance {v.tolerance:g}; largest "
                f"relative error {format_number(v.max_relative_error, 2)}"
            )
            yield verify_table(v)
            for note in v.notes:
                yield Text(f"note: {note}", style="yellow")
        yield from _notes_findings_verdict(r, "gradient")
