"""HTML: a report as one self-contained page (inline CSS and JS, nothing fetched), or as a notebook fragment.

Views never import torch: this module reads the report's dataclasses (numpy encodes the number columns). Each token is one
``<span>`` carrying its ``data-pos``, ``data-id``, ``data-role``, ``data-trained`` and ``data-flag`` (the checks
that flag it); the numbers a tooltip, the shading and the heat map need travel as one compact JSON block per
sample, parsed only when that sample is opened or hovered. Samples are collapsible ``<details>``: a closed one is
parsed but not laid out, which keeps a 64 x 2,048-token page quick to open.
"""

from __future__ import annotations

import base64
import html
import json
import math
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from gradscope.report import SCAN_WARNINGS, Finding, GradReport, ModuleGrad, Report, SampleReport, ScanReport, TokenReport

OPEN_SAMPLES = 8
"""Samples opened when the page loads (the flagged ones first), as the terminal report's ``--show``."""

HEAT_LEVELS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_"
"""One character per heat-map cell: 0 is a zero norm, the last is NaN/Inf, the rest a log scale lo..hi."""

_SPECIAL_EDGES = (("<", ">"), ("[", "]"))


def to_html(report: Report | ScanReport, *, sample: int | None = None, title: str | None = None) -> str:
    """The report as one self-contained HTML page.

    Args:
        report: What ``check``, ``grads``, ``verify`` or ``scan`` returned.
        sample: Show only this sample (by its index) and its findings, opened: the ``inspect`` view.
        title: The page title (default: the command and its verdict).

    Returns:
        The page: no external resource, readable offline.
    """
    body = _body(report, sample, root="gs")
    head_title = html.escape(title or _title(report))
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{head_title}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n<script>{JS}</script>\n</body>\n</html>\n"
    )


def html_fragment(report: Report | ScanReport, *, sample: int | None = None) -> str:
    """The same view as a fragment for a notebook cell: its style and script inline, its ids unique to it."""
    root = f"gs-{secrets.token_hex(4)}"
    return f"<style>{CSS}</style>\n{_body(report, sample, root)}\n<script>{JS}</script>"


def _title(report: Report | ScanReport) -> str:
    return f"gradscope {_command(report)}: {'clean' if report.ok else 'errors'}"


def _command(report: Report | ScanReport) -> str:
    if isinstance(report, ScanReport):
        return "scan"
    if report.verify is not None:
        return "verify"
    return "check" if report.samples else "grads"


def _body(report: Report | ScanReport, sample: int | None, root: str) -> str:
    if isinstance(report, ScanReport):
        parts = _scan_sections(report)
    else:
        parts = _report_sections(_only(report, sample) if sample is not None else report, root)
    return f'<div class="gs" id="{root}" data-shade="role">\n' + "\n".join(parts) + '\n<div class="tip" hidden></div>\n</div>'


def _only(report: Report, index: int) -> Report:
    """The report cut to one sample and the findings that concern it (its own and the batch's)."""
    samples = [s for s in report.samples if s.index == index]
    findings = [f for f in report.findings if f.sample in (index, None)]
    return replace(report, samples=samples, findings=findings)


# ------------------------------------------------------------------------------------------- check, grads, verify


def _report_sections(r: Report, root: str) -> list[str]:
    columns = {s.index: _columns(s) for s in r.samples}
    parts = [_header(r), _notes(r.notes)]
    if r.samples:
        parts += [_legend(), _controls(columns)]
    parts += [_findings_table(r, root, linked=bool(r.samples))]
    if r.samples:
        parts.append(_samples(r, columns, root))
    if r.probes:
        parts.append(_probes_table(r))
    if r.grads is not None:
        parts.append(_grads_section(r.grads))
    if r.overfit is not None:
        parts.append(_overfit_section(r))
    if r.verify is not None:
        parts.append(_verify_section(r))
    return [p for p in parts if p]


def _header(r: Report) -> str:
    subject = {"check": "masking", "grads": "gradient", "verify": "gradient"}[_command(r)]
    if r.samples and r.grads is not None:
        subject = "masking and gradient"
    summary = r.summary()
    return (
        f'<header>\n<h1>gradscope {_command(r)}</h1>\n{_verdict(r, summary, subject)}\n'
        f'<dl class="summary">{_pairs(_model_summary(r, summary))}{_pairs(_data_summary(r.data))}</dl>\n</header>'
    )


def _verdict(r: Report, s: dict[str, Any], subject: str) -> str:
    """The terminal report's verdict line (``s``: its summary), in words a reader without colour reads the same."""
    warnings = f", {len(r.warnings)} warning(s) ({', '.join(sorted({f.check for f in r.warnings}))})" if r.warnings else ""
    if r.ok:
        what = f": {s['samples']} sample(s), {s['trained_tokens']} of {s['tokens']} tokens trained" if r.samples else ""
        return f'<p class="verdict ok" role="status"><b>✓ clean</b>{html.escape(what + warnings)}</p>'
    counts = _counts(f.check for f in r.errors)
    samples = {f.sample for f in r.errors}
    where = "the batch" if samples == {None} else f"{len(samples - {None})} of {s['samples']} sample(s)"
    where = f" in {where}" if r.samples else ""
    text = f": {len(r.errors)}{where} ({counts}){warnings}"
    return f'<p class="verdict fail" role="status"><b>✗ {subject} errors</b>{html.escape(text)}</p>'


def _counts(checks: Iterable[str]) -> str:
    seen: dict[str, int] = {}
    for name in checks:
        seen[name] = seen.get(name, 0) + 1
    return ", ".join(f"{name} ×{n}" for name, n in seen.items())


def _model_summary(r: Report, s: dict[str, Any]) -> dict[str, Any]:
    m = r.model
    out = {
        "model": m.get("name_or_path") or m.get("architecture"),
        "architecture": m.get("architecture"),
        "layers": m.get("num_layers"),
        "dtype / device": f"{m.get('dtype')} / {m.get('device')}",
        "loss": f"{m.get('loss')} = {', '.join(_fmt(x) for x in r.losses)}" if r.losses else m.get("loss"),
    }
    if r.samples:
        out["tokens"] = f"{s['trained_tokens']} of {s['tokens']} trained, {s['samples']} sample(s)"
    return out


def _data_summary(data: dict[str, Any]) -> dict[str, Any]:
    """The scalar facts of where the batches came from (nested ones are in the JSON report)."""
    return {f"data {k}": ", ".join(map(str, v)) if isinstance(v, list) else v for k, v in data.items() if not isinstance(v, dict)}


def _pairs(items: dict[str, Any]) -> str:
    return "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items.items() if v not in (None, ""))


def _notes(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f'<section class="notes"><h2>Notes</h2><ul>{items}</ul></section>'


def _legend() -> str:
    keys = [
        ('data-role="prompt"', "prompt, not trained"),
        ('data-role="completion" data-trained', "completion, trained (bold, solid underline)"),
        ('data-role="completion"', "completion, not trained"),
        ('data-role="pad"', "padding"),
        ('data-role="unknown"', "role unknown"),
        ('data-role="prompt" data-trained data-flag="example"', "flagged by a check (hatched, outlined, ! after it)"),
        ('data-role="prompt" data-special', "special token"),
    ]
    items = "".join(f'<li><span {attrs}>token</span> {html.escape(text)}</li>' for attrs, text in keys)
    glyphs = "<li>whitespace shown: <code>␣</code> a space-only token, <code>↵</code> a newline, <code>→</code> a tab</li>"
    return f'<section class="legend" aria-label="legend"><h2>Legend</h2><ul>{items}{glyphs}</ul>{_scale_key()}</section>'


def _scale_key() -> str:
    return (
        '<p class="scale-key">shading by loss or gradient norm, and the heat map: '
        '<span class="ramp" aria-hidden="true"></span> low → high (norms on a log scale, loss linear); '
        '<span class="zero-key" aria-hidden="true"></span> zero</p>'
    )


def _controls(columns: dict[int, dict[str, Any]]) -> str:
    modes = [("role", "role × trained"), ("loss", "per-token loss"), ("glog", "‖∂L/∂logits‖"), ("gemb", "‖∂L/∂embedding‖")]
    radios = "".join(
        f'<label><input type="radio" name="shade" value="{v}"{" checked" if v == "role" else ""}> {html.escape(t)}</label>'
        for v, t in modes
    )
    ranges = html.escape(json.dumps(_ranges(columns.values())), quote=True)
    return (
        f'<fieldset class="controls" data-ranges="{ranges}"><legend>Shade tokens by</legend>{radios}'
        '<button type="button" data-act="open">open all samples</button>'
        '<button type="button" data-act="close">close all</button>'
        '<span class="hint">hover, click or focus a strip and use ← → to read a token</span></fieldset>'
    )


def _ranges(columns: Iterable[dict[str, Any]]) -> dict[str, list[float | None]]:
    """Report-wide ranges of the shading quantities, so that colours compare across samples (norms: positive ones)."""
    out: dict[str, list[float | None]] = {}
    columns = list(columns)
    for key, positive in (("loss", False), ("glog", True), ("gemb", True)):
        values = np.concatenate([c[key] for c in columns])  # None: NaN
        kept = values[np.isfinite(values) & ((values > 0) if positive else True)]
        out[key] = [float(kept.min()), float(kept.max())] if kept.size else [None, None]
    return out


def _findings_table(r: Report | ScanReport, root: str, linked: bool, title: str = "Findings") -> str:
    if not r.findings:
        return '<section class="findings"><h2>Findings</h2><p>none</p></section>'
    head = "<tr><th>check</th><th>severity</th><th>sample</th><th>positions</th><th>message</th></tr>"
    rows = "".join(_finding_row(i, f, root, linked) for i, f in enumerate(r.findings))
    return f'<section class="findings"><h2>{html.escape(title)}</h2><table>{head}{rows}</table></section>'


def _finding_row(i: int, f: Finding, root: str, linked: bool) -> str:
    if f.sample is None:
        sample = "batch"
    elif linked:
        sample = f'<a href="#{root}-s{f.sample}">{f.sample}</a>'
    else:
        sample = str(f.sample)
    positions = _position_links(f, root) if linked and f.sample is not None else html.escape(_runs_text(f.positions))
    return (
        f'<tr data-check="{html.escape(f.check)}" data-severity="{f.severity}" data-sample="{"" if f.sample is None else f.sample}">'
        f'<td>{html.escape(f.check)}</td><td class="{f.severity}">{f.severity}</td><td>{sample}</td>'
        f"<td>{positions}</td><td>{html.escape(f.message)}</td></tr>"
    )


def _runs(positions: Sequence[int]) -> list[tuple[int, int]]:
    """[0, 1, 2, 7, 9, 10] -> [(0, 2), (7, 7), (9, 10)]."""
    runs: list[list[int]] = []
    for p in positions:
        if runs and p == runs[-1][1] + 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return [(a, b) for a, b in runs]


def _runs_text(positions: Sequence[int]) -> str:
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in _runs(positions)) or "–"


def _position_links(f: Finding, root: str) -> str:
    """Each run of positions links to its first token."""
    links = [
        f'<a href="#{root}-s{f.sample}-p{a}" data-pos="{a}">{a if a == b else f"{a}–{b}"}</a>' for a, b in _runs(f.positions)
    ]
    return ", ".join(links) or "–"


def _probes_table(r: Report) -> str:
    head = "<tr><th>probe</th><th>ran</th><th>backward</th><th>forward</th><th>seconds</th><th>covered</th></tr>"
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{'yes' if p.ran else 'no'}</td><td>{p.backward_passes}</td>"
        f"<td>{p.forward_passes}</td><td>{p.seconds:.3f}</td><td>{html.escape(p.note)}</td></tr>"
        for name, p in r.probes.items()
    )
    return f'<section class="probes"><h2>Probes</h2><table>{head}{rows}</table></section>'


# ------------------------------------------------------------------------------------------------ token strips


def _samples(r: Report, columns: dict[int, dict[str, Any]], root: str) -> str:
    flagged = _flags(r.findings)
    failing: dict[int, list[str]] = {}
    for f in r.findings:  # a finding without positions (no_loss) still marks its sample
        if f.sample is not None:
            failing.setdefault(f.sample, []).append(f.check)
    first = [s.index for s in r.samples if s.index in failing] or [s.index for s in r.samples]
    opened = set(first[:OPEN_SAMPLES])
    body = "\n".join(
        _sample(s, columns[s.index], flagged.get(s.index, {}), failing.get(s.index, []), root, s.index in opened)
        for s in r.samples
    )
    return f'<section class="samples"><h2>Samples ({len(r.samples)})</h2>\n{body}\n</section>'


def _flags(findings: Sequence[Finding]) -> dict[int, dict[int, list[str]]]:
    """sample -> position -> the checks that flag it."""
    out: dict[int, dict[int, list[str]]] = {}
    for f in findings:
        if f.sample is None:
            continue
        for p in f.positions:
            out.setdefault(f.sample, {}).setdefault(p, []).append(f.check)
    return out


def _sample(
    s: SampleReport, columns: dict[str, Any], flags: dict[int, list[str]], checks: list[str], root: str, opened: bool
) -> str:
    real = [t for t in s.tokens if t.role != "pad"]
    checks = list(dict.fromkeys(checks))
    mark = f' <b class="fail">✗ {html.escape(", ".join(checks))}</b>' if checks else ""
    summary = f"sample {s.index}: {len(real)} tokens, {sum(t.trained for t in real)} trained{mark}"
    label = html.escape(f"tokens of sample {s.index}", quote=True)
    return (
        f'<details class="sample" id="{root}-s{s.index}" data-sample="{s.index}"{" open" if opened else ""}>'
        f"<summary>{summary}</summary>\n"
        f"{_strip_element(_strip(s, flags, root), label, opened)}\n"
        f'{_heat_frame(s)}<script type="application/json" class="gs-sample">{_sample_json(s, columns)}</script></details>'
    )


def _strip_element(spans: str, label: str, opened: bool) -> str:
    """An opened sample's strip inline; a closed one's kept as text in a ``<script type="text/html">`` that the page's
    script inserts when the sample is opened: the browser then parses the spans of the samples one looks at only.
    (Token texts are escaped, so the block holds no ``</script``.)"""
    head = f'<div class="strip" tabindex="0" role="group" aria-label="{label}">'
    if opened:
        return f"{head}{spans}</div>"
    return f'{head}</div><script type="text/html" class="gs-strip">{spans}</script>'


def _strip(s: SampleReport, flags: dict[int, list[str]], root: str) -> str:
    """One ``<span>`` per token. The hot loop of a big page (131k tokens at 64 x 2,048): one f-string per token,
    the role's and text's parts of it worked out once per distinct value."""
    prefix = f"{root}-s{s.index}-p"
    roles = {role: f'" data-role="{role or "unknown"}"' for role in ("prompt", "completion", "pad", None)}
    shown: dict[str | int, str] = {}
    out = []
    for t in s.tokens:
        key = t.text or t.token_id  # an empty text shows its id
        tail = shown.get(key)
        if tail is None:
            tail = shown[key] = _token_tail(t.text, t.token_id)
        marks = " data-trained" if t.trained else ""
        flagged = flags.get(t.position)
        if flagged:
            marks += f' id="{prefix}{t.position}" data-flag="{" ".join(dict.fromkeys(flagged))}"'
        role = roles.get(t.role) or f'" data-role="{t.role}"'
        out.append(f'<span data-pos="{t.position}" data-id="{t.token_id}{role}{marks}{tail}')
    return "".join(out)


def _token_tail(text: str | None, token_id: int) -> str:
    """What follows a token's attributes: its special-token mark, its visible text, and a line break after a newline."""
    special = " data-special" if text and _is_special(text) else ""
    brk = "<br>" if text and "\n" in text else ""
    return f"{special}>{_visible(text, token_id)}</span>{brk}"


def _is_special(text: str) -> bool:
    """<|im_end|>, </s>, [PAD]: a bracketed word without spaces, as special tokens are written."""
    return len(text) > 2 and " " not in text and any(text[0] == a and text[-1] == b for a, b in _SPECIAL_EDGES)


def _visible(text: str | None, token_id: int) -> str:
    """The token's text, escaped, with newlines, tabs, control characters and space-only tokens made visible."""
    if not text:
        return f"[{token_id}]"
    if text.isspace() and "\n" not in text and "\t" not in text:
        return "␣" * len(text)
    if text.isprintable():
        return html.escape(text, quote=False)
    shown = text.replace("\n", "↵").replace("\t", "→")
    shown = "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in shown)
    return html.escape(shown, quote=False)


def _heat_frame(s: SampleReport) -> str:
    if not s.layer_grad_norms:
        return ""
    names = ["role", "flag", "emb"] + [f"L{i}" for i in range(len(s.layer_grad_norms))]
    rows = "".join(f"<li>{n}</li>" for n in names)
    return (
        '<figure class="heat"><figcaption>‖∂L/∂h‖ per layer output (rows) and position (columns, 0 → '
        f"{len(s.tokens) - 1}, the strip's order); top bands: role × trained, flagged</figcaption>"
        f'<div class="heat-grid"><ol class="heat-rows">{rows}</ol><div class="heat-canvas">'
        '<canvas role="img" aria-label="heat map of gradient norms"></canvas><div class="cursor" hidden></div></div></div></figure>'
    )


def _columns(s: SampleReport) -> dict[str, Any]:
    """A sample's per-token values as columns, read in one pass over its tokens: ``text`` a list, the numbers
    float64 arrays (None as NaN), ``none`` the positions of each column that hold None."""
    rows = [(t.text, t.weight, t.loss, t.logit_grad_norm, t.embedding_grad_norm, t.label, t.target_id) for t in s.tokens]
    texts, *numbers = map(list, zip(*rows)) if rows else [[]] * 7
    out: dict[str, Any] = {"text": texts, "none": {}}
    for key, values in zip((*FLOAT_COLUMNS, *INT_COLUMNS), numbers):
        out[key] = np.asarray(values, dtype=np.float64)
        nan = np.flatnonzero(np.isnan(out[key])).tolist()  # None or a real NaN: only the first is None
        out["none"][key] = [i for i in nan if values[i] is None]
    return out


def _sample_json(s: SampleReport, columns: dict[str, Any]) -> str:
    """The per-token numbers as base64 columns (float32 and int32, little-endian: exact, and no per-number
    formatting) and the heat map as one character per cell; ``none`` lists the positions where a value is None."""
    data: dict[str, Any] = {
        "text": columns["text"],
        "f32": {key: _b64(columns[key].astype("<f4")) for key in FLOAT_COLUMNS},
        "i32": {key: _b64(np.nan_to_num(columns[key], nan=INT_NONE).astype("<i4")) for key in INT_COLUMNS},
        "none": columns["none"],
    }
    if s.layer_grad_norms:
        data["heat"] = heat_cells([columns["gemb"], *s.layer_grad_norms])
    # A token's text can hold "</script>" or "<!--", which would end or change the <script> element: every "<"
    # (only ever inside a JSON string) is written as its JSON escape.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


FLOAT_COLUMNS = ("weight", "loss", "glog", "gemb")
INT_COLUMNS = ("label", "target")
INT_NONE = -(2**31)
"""The int32 written where an int column is None (``none`` lists those positions too)."""


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(array.tobytes()).decode("ascii")


def heat_cells(rows: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Rows of norms as one character per cell on a log scale between the smallest and largest positive norms.

    Args:
        rows: (rows, T) norms: the embedding row, then one per decoder layer.

    Returns:
        ``lo`` and ``hi`` (the scale's ends) and ``cells``, one string of T characters from :data:`HEAT_LEVELS` per
        row: level 0 is a zero norm, the last level NaN/Inf, level k in between ``lo * (hi/lo) ** ((k-1)/(n-3))``.
    """
    norms = np.asarray(rows, dtype=np.float64)  # (rows, T)
    finite = np.isfinite(norms)
    positive = finite & (norms > 0)
    lo, hi = (float(norms[positive].min()), float(norms[positive].max())) if positive.any() else (1.0, 1.0)
    span = math.log(hi) - math.log(lo) or 1.0
    top = len(HEAT_LEVELS) - 2
    scaled = (np.log(np.where(positive, norms, lo)) - math.log(lo)) / span * (top - 1)
    levels = np.where(positive, 1 + np.rint(scaled), np.where(finite, 0, len(HEAT_LEVELS) - 1)).astype(np.uint8)
    chars = np.frombuffer(HEAT_LEVELS.encode("ascii"), dtype=np.uint8)[levels]
    return {"lo": lo, "hi": hi, "cells": [row.tobytes().decode("ascii") for row in chars]}


# ----------------------------------------------------------------------------------------- parameter gradients


def _grads_section(g: GradReport) -> str:
    line = (
        f"loss {_fmt(g.loss)} · global gradient norm {_fmt(g.global_norm)} · clip factor {_fmt(g.clip_factor, 3)} at "
        f"max-grad-norm {g.max_grad_norm:g} · block 0 / last block {_fmt(g.depth_ratio, 3)} · lr {g.lr:g}"
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
        f"trainable, ‖∇‖ {_fmt(ad['grad_norm'])}; base: {base['trainable_parameters']} of {base['parameters']} trainable, "
        f"‖∇‖ {_fmt(base['grad_norm'])}"
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
    columns = _depth_columns(shown)
    kinds = list(dict.fromkeys(m.kind for m in shown))
    norms = [m.grad_norm for m in shown if m.grad_norm and math.isfinite(m.grad_norm)]
    lo, hi = (min(norms), max(norms)) if norms else (1.0, 1.0)
    y = _log_axis(lo, hi, top=20, bottom=height - 40)
    x = lambda col: 50 + (width - 70) * (col + 0.5) / len(columns)  # noqa: E731
    marks = "".join(_depth_mark(m, x(columns.index(_column(m))), y, height - 40, kinds) for m in shown)
    ticks = "".join(
        f'<text x="{x(i):.1f}" y="{height - 22}" text-anchor="middle">{html.escape(c)}</text>' for i, c in enumerate(columns)
    )
    return (
        f'<figure class="depth"><figcaption>‖∇‖ per module across depth (log scale; {_fmt(lo, 2)} … {_fmt(hi, 2)})'
        f"</figcaption><svg viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" role=\"img\" "
        f'aria-label="gradient norm per module across depth">{_axis(y, lo, hi, width, height)}{ticks}{marks}'
        f"{_kind_legend(kinds, width, height)}</svg></figure>"
    )


def _column(m: ModuleGrad) -> str:
    return f"L{m.layer}" if m.layer is not None else m.kind


def _depth_columns(modules: Sequence[ModuleGrad]) -> list[str]:
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
        lines += f'<text x="46" y="{y(v) + 4:.1f}" text-anchor="end">{_fmt(v, 2)}</text>'
    return lines


def _depth_mark(m: ModuleGrad, cx: float, y, baseline: float, kinds: list[str]) -> str:
    """One module's mark; without a usable norm (none, zero, NaN/Inf) a hollow mark on the baseline."""
    k = kinds.index(m.kind) % len(_KIND_MARKS)
    ok = m.grad_norm is not None and m.grad_norm > 0 and math.isfinite(m.grad_norm)
    colour = _KIND_COLOURS[k]
    shape = _shape(_KIND_MARKS[k], cx, y(m.grad_norm) if ok else baseline, colour if ok else "#fff", colour)
    title = f"<title>{html.escape(m.name)}: ‖∇‖ {_fmt(m.grad_norm) if m.grad_norm is not None else 'no gradient'}</title>"
    attrs = f'data-module="{html.escape(m.name, quote=True)}" data-norm="{"" if m.grad_norm is None else _fmt(m.grad_norm)}"'
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
        f'<tr data-module="{html.escape(m.name, quote=True)}"><td>{html.escape(m.name)}</td><td>{m.trainable_parameters}</td>'
        f"<td>{_fmt(m.grad_norm)}</td><td>{_fmt(m.sgd_update_ratio, 2)}</td><td>{_fmt(m.adam_update_ratio, 2)}</td></tr>"
        for m in modules
    )
    return f'<table class="modules">{head}{rows}</table>'


def _overfit_section(r: Report) -> str:
    o = r.overfit
    steps = "".join(f"<td>{_fmt(x)}</td>" for x in o.losses)
    heads = "".join(f"<th>{i}</th>" for i in range(len(o.losses)))
    verdict = "the loss drops" if o.dropped else "the loss does not drop"
    return (
        f'<section class="overfit"><h2>Overfit one batch</h2><p>{o.steps} {html.escape(o.optimizer)} steps at lr '
        f"{o.lr:g}: {verdict}</p><table><tr><th>step</th>{heads}</tr><tr><th>loss</th>{steps}</tr></table></section>"
    )


def _verify_section(r: Report) -> str:
    v = r.verify
    head = "<tr><th>tensor</th><th>direction</th><th>autograd</th><th>finite difference</th><th>relative error</th><th>ok</th></tr>"
    rows = "".join(
        f"<tr><td>{html.escape(c.target)}</td><td>{html.escape(c.direction)}</td><td>{c.autograd:.6g}</td>"
        f"<td>{c.finite_difference:.6g}</td><td>{c.relative_error:.2g}</td><td>{'✓' if c.ok else '✗'}</td></tr>"
        for c in v.checks
    )
    line = f"{v.dtype} copy, loss in {v.precision}; step {v.step:g}, tolerance {v.tolerance:g}"
    return f'<section class="verify"><h2>Autograd against finite differences</h2><p>{html.escape(line)}</p><table>{head}{rows}</table></section>'


# ----------------------------------------------------------------------------------------------------- scan


def _scan_sections(r: ScanReport) -> list[str]:
    src = r.source
    line = f"data {src.get('path')} ({src.get('format')}); end token ids {src.get('end_token_ids') or 'none'}"
    parts = [
        f'<header><h1>gradscope scan</h1>{_scan_verdict(r)}<p class="source">{html.escape(line)}</p></header>',
        _notes(r.notes),
        _scan_checks(r),
        _scan_distributions(r),
        _worst_rows(r),
        _findings_table(r, "", linked=False, title="Findings (the first rows of each check and the worst rows)"),
    ]
    return [p for p in parts if p]


def _scan_verdict(r: ScanReport) -> str:
    s = r.summary()
    what = ", ".join(f"{name} ×{r.checks[name]['rows']}" for name in r.failed_checks)
    if r.ok and what:
        return f'<p class="verdict warn" role="status"><b>! warnings</b> in {s["rows"]} row(s): {html.escape(what)}</p>'
    if r.ok:
        text = f": {s['rows']} row(s), {s['trained_tokens']} of {s['tokens']} tokens trained"
        return f'<p class="verdict ok" role="status"><b>✓ clean</b>{html.escape(text)}</p>'
    return f'<p class="verdict fail" role="status"><b>✗ masking errors</b> in {s["rows"]} row(s): {html.escape(what)}</p>'


def _scan_checks(r: ScanReport) -> str:
    head = "<tr><th>check</th><th>rows</th><th>positions</th><th>first rows</th></tr>"
    rows = ""
    for name, entry in r.checks.items():
        state = ("warning" if name in SCAN_WARNINGS else "error") if entry["rows"] else "pass"
        first = ", ".join(map(str, entry["first_rows"])) + (" …" if entry["rows"] > len(entry["first_rows"]) else "")
        rows += (
            f'<tr data-check="{html.escape(name)}" data-state="{state}"><td class="{state}">{html.escape(name)}</td>'
            f"<td>{entry['rows']}</td><td>{entry['positions']}</td><td>{html.escape(first)}</td></tr>"
        )
    return f'<section class="checks"><h2>Checks</h2><table>{head}{rows}</table></section>'


def _scan_distributions(r: ScanReport) -> str:
    length = r.distributions.get("length", {})
    parts = []
    if length.get("rows"):
        parts.append(
            f"<p>tokens per row: min {length['min']}, median {length['p50']}, p90 {length['p90']}, p99 {length['p99']}, "
            f"max {length['max']}, mean {length['mean']:.1f}</p>"
        )
    fraction = r.distributions.get("trained_fraction", {})
    counts, bins = fraction.get("rows", []), fraction.get("bins", [])
    top = max(counts, default=0) or 1
    bars = "".join(
        f'<tr><th>{bins[i]:.1f}–{bins[i + 1]:.1f}</th><td><span class="bar" style="width:{200 * n / top:.0f}px"></span> {n}</td></tr>'
        for i, n in enumerate(counts)
    )
    if bars:
        parts.append(f'<table class="hist"><caption>rows by trained fraction of their tokens</caption>{bars}</table>')
    return f'<section class="distributions"><h2>Distributions</h2>{"".join(parts)}</section>' if parts else ""


def _worst_rows(r: ScanReport) -> str:
    if not r.worst_rows:
        return ""
    rows = "".join(
        f"<tr><td>{w['row']}</td><td>{w['positions']}</td><td>{html.escape(', '.join(w['checks']))}</td></tr>" for w in r.worst_rows
    )
    return (
        '<section class="worst"><h2>Worst rows</h2><table><tr><th>row</th><th>flagged positions</th><th>checks</th></tr>'
        f"{rows}</table><p>look at one with: <code>gradscope inspect MODEL DATA --row N --html FILE</code></p></section>"
    )


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "–"
    return "nan" if not math.isfinite(x) else f"{x:.{digits}g}"


CSS = """
.gs{--prompt:#cfe6fb;--completion:#ffe3b3;--pad:#e6e6e6;--unknown:#ffffff;--trained:#0b2f6b;--flag:#c03a00;
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#161616;background:#fff;max-width:1200px;margin:0 auto;padding:12px}
.gs h1{font-size:20px;margin:4px 0}.gs h2{font-size:16px;margin:18px 0 6px}
.gs .verdict{font-size:16px;padding:6px 10px;border-left:6px solid;margin:6px 0}
.gs .verdict.ok{border-color:#009E73;background:#eaf7f1}.gs .verdict.fail{border-color:var(--flag);background:#fdeee6}
.gs .verdict.warn{border-color:#b08a00;background:#fff7d6}
.gs dl.summary{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:6px 0;color:#333}
.gs dl.summary dt{font-weight:600}.gs dl.summary dd{margin:0}
.gs table{border-collapse:collapse;width:100%;margin:4px 0}.gs th,.gs td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
.gs th{background:#f3f3f3}.gs td.error{color:#a32f00;font-weight:700}.gs td.warning{color:#7a5c00;font-weight:700}
.gs td.pass{color:#006b4f}
.gs .legend ul{list-style:none;padding:0;margin:0;display:flex;flex-wrap:wrap;gap:6px 18px}
.gs .controls{border:1px solid #ccc;margin:10px 0;display:flex;flex-wrap:wrap;gap:6px 14px;align-items:center}
.gs .controls .hint{color:#555}
.gs .strip{font:13px/2 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-all;
padding:6px;border:1px solid #ddd;background:#fafafa;outline-offset:2px}
.gs span[data-role]{background-color:var(--unknown);border-radius:2px;margin:0 1px 0 0;padding:1px 1px;
box-shadow:inset 0 0 0 1px rgba(0,0,0,.18)}
.gs span[data-role=prompt]{background-color:var(--prompt)}
.gs span[data-role=completion]{background-color:var(--completion)}
.gs span[data-role=pad]{background-color:var(--pad);color:#666}
.gs span[data-role=unknown]{box-shadow:inset 0 0 0 1px #888}
.gs span[data-trained]{font-weight:700;text-decoration:underline solid 2px var(--trained);text-underline-offset:3px}
.gs span[data-special]{font-size:11px;font-style:italic;letter-spacing:-.02em}
.gs span[data-flag]{outline:2px solid var(--flag);outline-offset:-1px;
background-image:repeating-linear-gradient(135deg,rgba(192,58,0,.42) 0 2px,transparent 2px 6px)}
.gs span[data-flag]::after{content:"!";color:var(--flag);font-weight:900;font-size:10px;vertical-align:super}
.gs span.cur{outline:3px solid #000;outline-offset:1px}
.gs details.sample{margin:6px 0;border:1px solid #ccc;border-radius:4px;padding:2px 8px}
.gs details.sample>summary{cursor:pointer;padding:3px 0;font-weight:600}
.gs details.sample b.fail,.gs b.fail{color:var(--flag)}
.gs .heat{margin:6px 0}.gs .heat figcaption{color:#444;font-size:12px}
.gs .heat-grid{display:flex;align-items:flex-start}
.gs .heat-rows{list-style:none;margin:0;padding:0 4px 0 0;font:10px/var(--row,8px) ui-monospace,monospace;text-align:right}
.gs .heat-rows li{height:var(--row,8px)}
.gs .heat-canvas{position:relative;flex:1}
.gs .heat-canvas canvas{width:100%;image-rendering:pixelated;display:block;cursor:crosshair;border:1px solid #bbb}
.gs .heat-canvas .cursor{position:absolute;top:0;bottom:0;width:2px;background:#000;pointer-events:none}
.gs .ramp{display:inline-block;width:120px;height:10px;vertical-align:middle;
background:linear-gradient(90deg,#440154,#3b528b,#21918c,#5ec962,#fde725)}
.gs .zero-key{display:inline-block;width:14px;height:10px;background:#d9d9d9;vertical-align:middle}
.gs .tip{position:fixed;z-index:10;background:#111;color:#fff;font:12px/1.35 ui-monospace,monospace;padding:6px 8px;
border-radius:4px;max-width:420px;pointer-events:none;white-space:pre-wrap}
.gs .hist .bar{display:inline-block;height:10px;background:#0072B2}
.gs svg text{font-size:11px;fill:#333}.gs svg .ax{stroke:#555}
@media (prefers-reduced-motion:no-preference){.gs details.sample>summary{transition:none}}
"""

JS = r"""
(function(){
const VIRIDIS=[[68,1,84],[59,82,139],[33,145,140],[94,201,98],[253,231,37]];
const LEVELS="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_";
const ROLE_RGB={prompt:[207,230,251],completion:[255,227,179],pad:[230,230,230],unknown:[255,255,255]};
function ramp(f){f=Math.max(0,Math.min(1,f));const i=Math.min(3,Math.floor(f*4)),t=f*4-i,a=VIRIDIS[i],b=VIRIDIS[i+1];
  return [0,1,2].map(k=>Math.round(a[k]+(b[k]-a[k])*t));}
function css(c){return "rgb("+c[0]+","+c[1]+","+c[2]+")";}
function fmt(v){if(v===null||v===undefined)return "–";if(Number.isNaN(v))return "nan";if(!isFinite(v))return v>0?"inf":"-inf";
  return Math.abs(v)>=0.01||v===0?(+v.toPrecision(4)).toString():v.toExponential(2);}
function column(s,Type){const b=atob(s),u=new Uint8Array(b.length);for(let i=0;i<b.length;i++)u[i]=b.charCodeAt(i);
  return Array.from(new Type(u.buffer));}
function data(d){if(d._gs)return d._gs;const g=JSON.parse(d.querySelector("script.gs-sample").textContent),out={text:g.text,heat:g.heat};
  for(const k in g.f32)out[k]=column(g.f32[k],Float32Array);for(const k in g.i32)out[k]=column(g.i32[k],Int32Array);
  for(const k in g.none)g.none[k].forEach(i=>{out[k][i]=null;});return d._gs=out;}
function init(root){
  if(root.dataset.ready)return;root.dataset.ready="1";
  const tip=root.querySelector(".tip"),controls=root.querySelector(".controls");
  const ranges=controls?JSON.parse(controls.dataset.ranges):{};
  function frac(mode,v){const r=ranges[mode];if(v===null||!isFinite(v)||!r||r[0]===null)return null;
    if(mode==="loss")return r[1]>r[0]?(v-r[0])/(r[1]-r[0]):1;
    if(v<=0)return null;return r[1]>r[0]?(Math.log(v)-Math.log(r[0]))/(Math.log(r[1])-Math.log(r[0])):1;}
  function shade(d){const mode=root.dataset.shade,spans=d.querySelectorAll(".strip>span");
    if(d._shade===mode)return;d._shade=mode;
    if(mode==="role"){spans.forEach(s=>{s.style.backgroundColor="";s.style.color="";});return;}
    const vals=data(d)[mode];
    spans.forEach((s,i)=>{const f=frac(mode,vals[i]);if(f===null){s.style.backgroundColor="#d9d9d9";s.style.color="";return;}
      const c=ramp(f);s.style.backgroundColor=css(c);s.style.color=f<0.6?"#fff":"#000";});}
  function heat(d){const c=d.querySelector("canvas");if(!c||c._drawn)return;c._drawn=1;
    const g=data(d),h=g.heat,spans=d.querySelectorAll(".strip>span"),T=spans.length,rows=h.cells.length+2;
    const rowPx=Math.max(3,Math.min(10,Math.floor(220/rows)));d.querySelector(".heat-grid").style.setProperty("--row",rowPx+"px");
    c.width=T;c.height=rows;c.style.height=(rows*rowPx)+"px";
    const ctx=c.getContext("2d"),img=ctx.createImageData(T,rows),px=img.data;
    function put(x,y,rgb){const o=(y*T+x)*4;px[o]=rgb[0];px[o+1]=rgb[1];px[o+2]=rgb[2];px[o+3]=255;}
    const n=LEVELS.length-2;
    spans.forEach((s,x)=>{const base=ROLE_RGB[s.dataset.role]||ROLE_RGB.unknown;
      put(x,0,s.hasAttribute("data-trained")?[11,47,107]:base);put(x,1,s.hasAttribute("data-flag")?[192,58,0]:[255,255,255]);});
    h.cells.forEach((row,r)=>{for(let x=0;x<T;x++){const k=LEVELS.indexOf(row[x]);
      put(x,r+2,k===0?[217,217,217]:k===n+1?[0,0,0]:ramp((k-1)/(n-1)));}});
    ctx.putImageData(img,0,0);
    c.addEventListener("mousemove",e=>{const b=c.getBoundingClientRect(),x=Math.floor((e.clientX-b.left)/b.width*T),
      r=Math.floor((e.clientY-b.top)/b.height*rows);if(x<0||x>=T)return;select(d,x,false);
      const name=r<2?["role × trained","flagged"][r]:(r===2?"emb":"L"+(r-3));
      let v="";if(r>=2){const k=LEVELS.indexOf(h.cells[r-2][x]);
        v=k===0?"0":k===n+1?"NaN/Inf":"≈ "+fmt(h.lo*Math.pow(h.hi/h.lo,(k-1)/(n-1)));}
      show(d,x,e.clientX,e.clientY,name+(v?": ‖∂L/∂h‖ "+v:""));});
    c.addEventListener("mouseleave",()=>hide());
    c.addEventListener("click",e=>{const s=d.querySelector(".strip>span.cur");if(s)s.scrollIntoView({block:"nearest"});});}
  function describe(d,i){const s=d.querySelectorAll(".strip>span")[i],g=data(d);
    const lines=["position "+i+"   id "+s.dataset.id,"text     "+JSON.stringify(g.text[i]),
      "role     "+s.dataset.role+(s.hasAttribute("data-trained")?", trained":", not trained"),
      "label    "+fmt(g.label[i])+"   target "+fmt(g.target[i]),
      "weight   "+fmt(g.weight[i])+"   loss "+fmt(g.loss[i]),
      "‖∂L/∂logits‖    "+fmt(g.glog[i]),"‖∂L/∂embedding‖ "+fmt(g.gemb[i])];
    if(s.dataset.flag)lines.push("FLAGGED: "+s.dataset.flag);return lines.join("\n");}
  function show(d,i,x,y,extra){tip.textContent=describe(d,i)+(extra?"\n"+extra:"");tip.hidden=false;
    const w=tip.offsetWidth,h=tip.offsetHeight;
    tip.style.left=Math.max(4,Math.min(innerWidth-w-4,x+12))+"px";tip.style.top=(y+h+16>innerHeight?y-h-8:y+16)+"px";}
  function hide(){tip.hidden=true;}
  function select(d,i,scroll){root.querySelectorAll(".strip>span.cur").forEach(s=>s.classList.remove("cur"));
    const spans=d.querySelectorAll(".strip>span"),s=spans[i];if(!s)return;s.classList.add("cur");d._cur=i;
    const cur=d.querySelector(".cursor");if(cur){cur.hidden=false;cur.style.left=(100*(i+0.5)/spans.length)+"%";}
    if(scroll)s.scrollIntoView({block:"nearest"});return s;}
  function fill(d){const t=d.querySelector("script.gs-strip");if(!t)return;d.querySelector(".strip").innerHTML=t.textContent;t.remove();}
  function opened(d){if(!d.open)return;fill(d);shade(d);heat(d);}
  root.querySelectorAll("details.sample").forEach(d=>{d.addEventListener("toggle",()=>opened(d));opened(d);
    const strip=d.querySelector(".strip");
    strip.addEventListener("mouseover",e=>{const s=e.target.closest("span[data-pos]");if(!s)return;
      const i=+s.dataset.pos;select(d,i,false);const b=s.getBoundingClientRect();show(d,i,b.left,b.bottom-10);});
    strip.addEventListener("mouseleave",hide);
    strip.addEventListener("click",e=>{const s=e.target.closest("span[data-pos]");if(s)d._cur=+s.dataset.pos;});
    strip.addEventListener("focus",()=>{const f=strip.querySelector("span[data-flag]"),i=d._cur??(f?+f.dataset.pos:0);
      const s=select(d,i,true);if(s){const b=s.getBoundingClientRect();show(d,i,b.left,b.bottom-10);}});
    strip.addEventListener("blur",hide);
    strip.addEventListener("keydown",e=>{const T=d.querySelectorAll(".strip>span").length;
      const step={ArrowRight:1,ArrowLeft:-1,Home:-T,End:T}[e.key];if(step===undefined)return;e.preventDefault();
      const i=Math.max(0,Math.min(T-1,(d._cur??0)+step)),s=select(d,i,true);
      if(s){const b=s.getBoundingClientRect();show(d,i,b.left,b.bottom-10);}});});
  if(controls){controls.addEventListener("change",e=>{if(e.target.name!=="shade")return;root.dataset.shade=e.target.value;
      root.querySelectorAll("details.sample[open]").forEach(opened);});
    controls.addEventListener("click",e=>{const a=e.target.dataset&&e.target.dataset.act;if(!a)return;
      root.querySelectorAll("details.sample").forEach(d=>{d.open=a==="open";opened(d);});});}
  function go(hash){if(!hash||hash.length<2)return;const m=decodeURIComponent(hash.slice(1)).match(/^(.*-s\d+)(?:-p(\d+))?$/);
    const d=m&&document.getElementById(m[1]);if(!d||!root.contains(d))return;d.open=true;opened(d);
    if(m[2]!==undefined){select(d,+m[2],true);}else{d.scrollIntoView();}}
  root.addEventListener("click",e=>{const a=e.target.closest("a[href^='#']");if(!a)return;e.preventDefault();
    history.replaceState(null,"",a.getAttribute("href"));go(a.getAttribute("href"));});
  go(location.hash);
}
document.querySelectorAll(".gs").forEach(init);
})();
"""
