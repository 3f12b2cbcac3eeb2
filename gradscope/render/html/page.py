"""HTML: a report as one self-contained page (inline CSS and JS, nothing fetched), or as a notebook fragment.

Views never import torch (nor numpy): this module reads the report's dataclasses, ``data`` encodes the numbers. Each
token is one ``<span>`` carrying its ``data-pos``, ``data-id``, ``data-role``, ``data-trained`` and ``data-flag``
(the checks that flag it); the numbers a tooltip, the shading and the heat map need travel as one compact JSON block
per sample, decoded when that sample is opened or hovered. Samples are collapsible ``<details>``: the first ones with
findings are open, every other one keeps its spans as text that the page's script inserts when it is opened, so a
64 x 2,048-token page parses and lays out only the samples one looks at.
"""

from __future__ import annotations

import html
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import gradscope.render.html.data as data
from gradscope.render.html.assets import CSS, JS
from gradscope.render.html.grads import grads_section, overfit_section, verify_section
from gradscope.render.html.strip import samples
from gradscope.report import SCAN_WARNINGS, Finding, Report, ScanReport
from gradscope.report.text import format_number as fmt
from gradscope.report.text import position_runs
from gradscope.report.verdict import headline, verdict


def to_html(report: Report | ScanReport, *, sample: int | None = None, title: str | None = None) -> str:
    """The report as one self-contained HTML page.

    Args:
        report: What ``check``, ``grads``, ``verify`` or ``scan`` returned.
        sample: Show only this sample (by its index) and its findings, opened: the ``inspect`` view.
        title: The page title (default: the command and its verdict).

    Returns:
        The page: no external resource, readable offline.
    """
    head_title = html.escape(title or _title(report))
    head = (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{head_title}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n"
    )
    page = "".join([head, *_body(report, sample, root="gs"), f"\n<script>{JS}</script>\n</body>\n</html>\n"])
    return _encodable(page)


def html_fragment(report: Report | ScanReport, *, sample: int | None = None) -> str:
    """The same view as a fragment for a notebook cell: its style and script inline, its ids unique to it."""
    root = f"gs-{secrets.token_hex(4)}"
    return _encodable("".join([f"<style>{CSS}</style>\n", *_body(report, sample, root), f"\n<script>{JS}</script>"]))


def _encodable(page: str) -> str:
    """A lone surrogate (a token's broken UTF-16 half) shown as its escape, so that the page encodes as UTF-8."""
    return re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", page)


def _title(report: Report | ScanReport) -> str:
    return f"gradscope {_command(report)}: {verdict(report).status}"


def _command(report: Report | ScanReport) -> str:
    if isinstance(report, ScanReport):
        return "scan"
    if report.verify is not None:
        return "verify"
    return "check" if report.samples else "grads"


def _body(report: Report | ScanReport, sample: int | None, root: str) -> list[str]:
    """The view's root element as pieces to concatenate: a 64 x 2,048-token page is tens of MB, and joining it
    once, at the end, copies it once."""
    if isinstance(report, ScanReport):
        parts: list[str | list[str]] = list(_scan_sections(report))
    else:
        parts = _report_sections(_only(report, sample) if sample is not None else report, root)
    pieces = [f'<div class="gs" id="{root}" data-shade="role">']
    for part in [*parts, '<div class="tip" hidden></div>\n</div>']:
        pieces.append("\n")
        if isinstance(part, list):
            pieces += part
        else:
            pieces.append(part)
    return pieces


def _only(report: Report, index: int) -> Report:
    """The report cut to one sample and the findings that concern it (its own and the batch's)."""
    samples = [s for s in report.samples if s.index == index]
    findings = [f for f in report.findings if f.sample in (index, None)]
    return replace(report, samples=samples, findings=findings)


# ------------------------------------------------------------------------------------------- check, grads, verify


def _report_sections(r: Report, root: str) -> list[str | list[str]]:
    """The sections in order; the samples' section as its pieces."""
    columns = {s.index: data.columns(s) for s in r.samples}
    parts: list[str | list[str]] = [_header(r), _notes(r.notes)]
    if r.samples:
        parts += [_legend(), _controls(columns)]
    parts += [_findings_table(r, root, linked=bool(r.samples))]
    if r.samples:
        parts.append(samples(r, columns, root))
    if r.probes:
        parts.append(_probes_table(r))
    if r.grads is not None:
        parts.append(grads_section(r.grads))
    if r.overfit is not None:
        parts.append(overfit_section(r.overfit))
    if r.verify is not None:
        parts.append(verify_section(r.verify))
    return [p for p in parts if p]


def _header(r: Report) -> str:
    subject = {"check": "masking", "grads": "gradient", "verify": "gradient"}[_command(r)]
    if r.samples and r.grads is not None:
        subject = "masking and gradient"
    summary = r.summary()
    return (
        f"<header>\n<h1>gradscope {_command(r)}</h1>\n{_verdict(r, subject)}\n"
        f'<dl class="summary">{_pairs(_model_summary(r, summary))}{_pairs(_data_summary(r.data))}</dl>\n</header>'
    )


def _verdict(r: Report | ScanReport, subject: str = "masking") -> str:
    """The terminal report's verdict line (``gradscope.report.verdict.headline``), in words a reader without colour
    reads the same."""
    v, label, rest = headline(r, subject)
    css = {"clean": "ok", "not verified": "warn", "warnings": "warn", "errors": "fail"}[v.status]
    return (
        f'<p class="verdict {css}" role="status" data-status="{html.escape(v.status)}"><b>{html.escape(label)}</b>'
        f"{html.escape(rest)}</p>"
    )


def _model_summary(r: Report, s: dict[str, Any]) -> dict[str, Any]:
    m = r.model
    out = {
        "model": m.get("name_or_path") or m.get("architecture"),
        "architecture": m.get("architecture"),
        "layers": m.get("num_layers"),
        "dtype / device": f"{m.get('dtype')} / {m.get('device')}",
        "loss": f"{m.get('loss')} = {', '.join(fmt(x) for x in r.losses)}" if r.losses else m.get("loss"),
    }
    if r.samples:
        out["tokens"] = f"{s['trained_tokens']} of {s['tokens']} trained, {s['samples']} sample(s)"
    return out


def _data_summary(data: dict[str, Any]) -> dict[str, Any]:
    """The scalar facts of where the batches came from (nested ones are in the JSON report)."""
    return {
        f"data {k}": ", ".join(map(str, v)) if isinstance(v, list) else v
        for k, v in data.items()
        if not isinstance(v, dict)
    }


def _pairs(items: dict[str, Any]) -> str:
    return "".join(
        f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items.items() if v not in (None, "")
    )


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
    items = "".join(f"<li><span {attrs}>token</span> {html.escape(text)}</li>" for attrs, text in keys)
    glyphs = (
        "<li>whitespace shown: <code>␣</code> a space-only token, <code>↵</code> a newline, <code>→</code> a tab</li>"
    )
    return (
        f'<section class="legend" aria-label="legend"><h2>Legend</h2><ul>{items}{glyphs}</ul>{_scale_key()}</section>'
    )


def _scale_key() -> str:
    return (
        '<p class="scale-key">shading by loss or gradient norm, and the heat map: '
        '<span class="ramp" aria-hidden="true"></span> low → high (norms on a log scale, loss linear); '
        '<span class="zero-key" aria-hidden="true"></span> zero</p>'
    )


def _controls(columns: dict[int, dict[str, Any]]) -> str:
    modes = [
        ("role", "role × trained"),
        ("loss", "per-token loss"),
        ("glog", "‖∂L/∂logits‖"),
        ("gemb", "‖∂L/∂embedding‖"),
    ]
    radios = "".join(
        '<label><input type="radio" name="shade" '
        f'value="{v}"{" checked" if v == "role" else ""}> {html.escape(t)}</label>'
        for v, t in modes
    )
    ranges = html.escape(json.dumps(data.ranges(columns.values())), quote=True)
    return (
        f'<fieldset class="controls" data-ranges="{ranges}"><legend>Shade tokens by</legend>{radios}'
        '<button type="button" data-act="open">open all samples</button>'
        '<button type="button" data-act="close">close all</button>'
        '<span class="hint">hover, click or focus a strip and use ← → to read a token</span></fieldset>'
    )


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
        f'<tr data-check="{html.escape(f.check)}" data-severity="{f.severity}" '
        f'data-sample="{"" if f.sample is None else f.sample}">'
        f'<td>{html.escape(f.check)}</td><td class="{f.severity}">{f.severity}</td><td>{sample}</td>'
        f"<td>{positions}</td><td>{html.escape(f.message)}</td></tr>"
    )


def _runs_text(positions: Sequence[int]) -> str:
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in position_runs(positions)) or "–"


def _position_links(f: Finding, root: str) -> str:
    """Each run of positions links to its first token."""
    links = [
        f'<a href="#{root}-s{f.sample}-p{a}" data-pos="{a}">{a if a == b else f"{a}–{b}"}</a>'
        for a, b in position_runs(f.positions)
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


# ----------------------------------------------------------------------------------------------------- scan


def _scan_sections(r: ScanReport) -> list[str]:
    src = r.source
    line = f"data {src.get('path')} ({src.get('format')}); end token ids {src.get('end_token_ids') or 'none'}"
    parts = [
        f'<header><h1>gradscope scan</h1>{_verdict(r)}<p class="source">{html.escape(line)}</p></header>',
        _notes(r.notes),
        _scan_checks(r),
        _scan_distributions(r),
        _worst_rows(r),
        _findings_table(r, "", linked=False, title="Findings (the first rows of each check and the worst rows)"),
    ]
    return [p for p in parts if p]


def _scan_checks(r: ScanReport) -> str:
    head = "<tr><th>check</th><th>rows</th><th>positions</th><th>first rows</th></tr>"
    rows = ""
    for name, entry in r.checks.items():
        if name in r.not_run:
            rows += (
                f'<tr data-check="{html.escape(name)}" data-state="not run"><td class="not-run">'
                f'{html.escape(name)}</td><td colspan="3">not run: {html.escape(r.not_run[name])}</td></tr>'
            )
            continue
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
            f"<p>tokens per row: min {length['min']}, median {length['p50']}, p90 "
            f"{length['p90']}, p99 {length['p99']}, "
            f"max {length['max']}, mean {length['mean']:.1f}</p>"
        )
    fraction = r.distributions.get("trained_fraction", {})
    counts, bins = fraction.get("rows", []), fraction.get("bins", [])
    top = max(counts, default=0) or 1
    bars = "".join(
        f'<tr><th>{bins[i]:.1f}–{bins[i + 1]:.1f}</th><td><span class="bar" '
        f'style="width:{200 * n / top:.0f}px"></span> {n}</td></tr>'
        for i, n in enumerate(counts)
    )
    if bars:
        parts.append(f'<table class="hist"><caption>rows by trained fraction of their tokens</caption>{bars}</table>')
    return f'<section class="distributions"><h2>Distributions</h2>{"".join(parts)}</section>' if parts else ""


def _worst_rows(r: ScanReport) -> str:
    if not r.worst_rows:
        return ""
    rows = "".join(
        f"<tr><td>{w['row']}</td><td>{w['positions']}</td><td>{html.escape(', '.join(w['checks']))}</td></tr>"
        for w in r.worst_rows
    )
    return (
        '<section class="worst"><h2>Worst rows</h2><table><tr><th>row</th><th>flagged '
        "positions</th><th>checks</th></tr>"
        f"{rows}</table><p>look at one with: <code>gradscope inspect MODEL DATA --row N --html "
        "FILE</code></p></section>"
    )
