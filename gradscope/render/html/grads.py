"""The HTML view of the gradient that reaches the weights: the summary, the per-module norm chart across depth
(inline SVG), the module table, and the overfit and finite-difference sections."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from gradscope.report import GradReport, ModuleGrad, OverfitReport, VerifyReport
from gradscope.report.text import format_number as fmt


def grads_section(g: GradReport) -> str:
    line = (
        f"loss {fmt(g.loss)} · global gradient norm {fmt(g.global_norm)} · clip factor {fmt(g.clip_factor, 3)} at "
        f"max-grad-norm {g.max_grad_norm:g} · block 0 / last block {fmt(g.depth_ratio, 3)} · lr {g.lr:g}"
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in g.notes)
    return (
        f'<section class="grads"><h2>Gradient reaching the weights</h2><p>{html.escape(line)}</p>'
        f"{_adapter_line(g)}{depth_chart(g.modules)}{_module_table(g.modules)}"
        f"{f'<ul class=notes>{notes}</ul>' if notes else ''}</section>"
    )


def _adapter_line(g: GradReport) -> str:
    a = g.adapter
    if not a:
        return ""
    ad, base = a["adapter"], a["base"]
    text = (
        f"adapter ({', '.join(a['peft_type'])}): {ad['trainable_parameters']} of {ad['parameters']} adapter parameters "
        f"trainable, ‖∇‖ {fmt(ad['grad_norm'])}; base: {base['trainable_parameters']} of "
        f"{base['parameters']} trainable, "
        f"‖∇‖ {fmt(base['grad_norm'])}"
    )
    return f'<p class="adapter">{html.escape(text)}</p>'


_KIND_MARKS = ["circle", "square", "diamond", "triangle", "cross"]
_KIND_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00"]


def depth_chart(modules: Sequence[ModuleGrad], width: int = 720, height: int = 220) -> str:
    """Per-module gradient norms across depth as an inline SVG: x is the layer (embedding left, head right), y the
    norm on a log scale; each kind has its own marker shape and colour; modules without a gradient sit on the
    axis as a hollow mark.

    Args:
        modules: The grads report's module groups.

    Returns:
        The ``<svg>`` element (empty string when no module is trainable).
    """
    shown = [m for m in modules if m.trainable_parameters > 0]
    if not shown:
        return ""
    columns = depth_columns(shown)
    kinds = list(dict.fromkeys(m.kind for m in shown))
    norms = [m.grad_norm for m in shown if m.grad_norm and math.isfinite(m.grad_norm)]
    lo, hi = (min(norms), max(norms)) if norms else (1.0, 1.0)
    y = _log_axis(lo, hi, top=20, bottom=height - 40)
    x = lambda col: 50 + (width - 70) * (col + 0.5) / len(columns)  # noqa: E731
    marks = "".join(_depth_mark(m, x(columns.index(_column(m))), y, height - 40, kinds) for m in shown)
    ticks = "".join(
        f'<text x="{x(i):.1f}" y="{height - 22}" text-anchor="middle">{html.escape(c)}</text>'
        for i, c in enumerate(columns)
    )
    return (
        f'<figure class="depth"><figcaption>‖∇‖ per module across depth (log scale; {fmt(lo, 2)} … {fmt(hi, 2)})'
        f'</figcaption><svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="gradient norm per module across depth">{_axis(y, lo, hi, width, height)}{ticks}{marks}'
        f"{_kind_legend(kinds, width, height)}</svg></figure>"
    )


def _column(m: ModuleGrad) -> str:
    return f"L{m.layer}" if m.layer is not None else m.kind


def depth_columns(modules: Sequence[ModuleGrad]) -> list[str]:
    """Embedding-side groups first, then the layers in order, then the rest (norm, head)."""
    before = [_column(m) for m in modules if m.layer is None and "emb" in m.kind]
    layers = [f"L{n}" for n in sorted({m.layer for m in modules if m.layer is not None})]
    after = [_column(m) for m in modules if m.layer is None and "emb" not in m.kind]
    return list(dict.fromkeys(before + layers + after))


def _log_axis(lo: float, hi: float, top: float, bottom: float):
    span = math.log(hi) - math.log(lo) or 1.0
    return lambda v: bottom - (bottom - top) * (math.log(v) - math.log(lo)) / span


def _axis(y, lo: float, hi: float, width: int, height: int) -> str:
    lines = f'<line x1="50" y1="{height - 40}" x2="{width - 20}" y2="{height - 40}" class="ax"/>'
    lines += f'<line x1="50" y1="20" x2="50" y2="{height - 40}" class="ax"/>'
    for v in (lo, hi) if hi > lo else (lo,):
        lines += f'<text x="46" y="{y(v) + 4:.1f}" text-anchor="end">{fmt(v, 2)}</text>'
    return lines


def _depth_mark(m: ModuleGrad, cx: float, y, baseline: float, kinds: list[str]) -> str:
    """One module's mark; without a usable norm (none, zero, NaN/Inf) a hollow mark on the baseline."""
    k = kinds.index(m.kind) % len(_KIND_MARKS)
    ok = m.grad_norm is not None and m.grad_norm > 0 and math.isfinite(m.grad_norm)
    colour = _KIND_COLOURS[k]
    shape = _shape(_KIND_MARKS[k], cx, y(m.grad_norm) if ok else baseline, colour if ok else "#fff", colour)
    title = (
        f"<title>{html.escape(m.name)}: ‖∇‖ {fmt(m.grad_norm) if m.grad_norm is not None else 'no gradient'}</title>"
    )
    attrs = (
        f'data-module="{html.escape(m.name, quote=True)}" data-norm="{"" if m.grad_norm is None else fmt(m.grad_norm)}"'
    )
    return f'<g class="mark{"" if ok else " none"}" {attrs}>{shape}{title}</g>'


def _shape(kind: str, cx: float, cy: float, fill: str, stroke: str) -> str:
    r = 5
    style = f'fill="{fill}" stroke="{stroke}" stroke-width="1.5"'
    if kind == "circle":
        return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r}" {style}/>'
    if kind == "square":
        return f'<rect x="{cx - r:.1f}" y="{cy - r:.1f}" width="{2 * r}" height="{2 * r}" {style}/>'
    points = {
        "diamond": [(0, -r - 1), (r + 1, 0), (0, r + 1), (-r - 1, 0)],
        "triangle": [(0, -r - 1), (r + 1, r), (-r - 1, r)],
        "cross": [(-r, -r), (r, r), (0, 0), (r, -r), (-r, r), (0, 0)],
    }[kind]
    path = " ".join(f"{cx + dx:.1f},{cy + dy:.1f}" for dx, dy in points)
    return f'<polygon points="{path}" {style}/>'


def _kind_legend(kinds: list[str], width: int, height: int) -> str:
    items = []
    for i, kind in enumerate(kinds):
        k = i % len(_KIND_MARKS)
        cx = 60 + i * 130
        items.append(_shape(_KIND_MARKS[k], cx, height - 8, _KIND_COLOURS[k], _KIND_COLOURS[k]))
        items.append(f'<text x="{cx + 10}" y="{height - 4}">{html.escape(kind)}</text>')
    return "".join(items)


def _module_table(modules: Sequence[ModuleGrad]) -> str:
    head = "<tr><th>module</th><th>trainable</th><th>‖∇‖</th><th>SGD update/weight</th><th>Adam update/weight</th></tr>"
    rows = "".join(
        f'<tr data-module="{html.escape(m.name, quote=True)}"><td>{html.escape(m.name)}</td>'
        f"<td>{m.trainable_parameters}</td>"
        f"<td>{fmt(m.grad_norm)}</td><td>{fmt(m.sgd_update_ratio, 2)}</td><td>{fmt(m.adam_update_ratio, 2)}</td></tr>"
        for m in modules
    )
    return f'<table class="modules">{head}{rows}</table>'


def overfit_section(o: OverfitReport) -> str:
    steps = "".join(f"<td>{fmt(x)}</td>" for x in o.losses)
    heads = "".join(f"<th>{i}</th>" for i in range(len(o.losses)))
    verdict = html.escape(o.sentence())
    return (
        f'<section class="overfit"><h2>Overfit one batch</h2><p>{o.steps} {html.escape(o.optimizer)} steps at lr '
        f"{o.lr:g}: {verdict}</p><table><tr><th>step</th>{heads}</tr><tr><th>loss</th>{steps}</tr></table></section>"
    )


def verify_section(v: VerifyReport) -> str:
    head = (
        "<tr><th>tensor</th><th>direction</th><th>autograd</th><th>finite difference</th><th>relative error</th>"
        "<th>ok</th></tr>"
    )
    rows = "".join(
        f"<tr><td>{html.escape(c.target)}</td><td>{html.escape(c.direction)}</td><td>{c.autograd:.6g}</td>"
        f"<td>{c.finite_difference:.6g}</td><td>{c.relative_error:.2g}</td><td>{'✓' if c.ok else '✗'}</td></tr>"
        for c in v.checks
    )
    line = f"{v.dtype} copy, loss in {v.precision}; step {v.step:g}, tolerance {v.tolerance:g}"
    return (
        f'<section class="verify"><h2>Autograd against finite differences</h2><p>{html.escape(line)}</p>'
        f"<table>{head}{rows}</table></section>"
    )
