"""The HTML view's samples: one collapsible block per sample with its token strip, heat-map frame and number block.

Each token is one ``<span>`` with ``data-pos``, ``data-id``, ``data-role``, ``data-trained``, ``data-flag`` (and the
``id`` the findings link to when flagged). The first samples with findings are open; every other one keeps its spans
as text that the page's script inserts when it is opened.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

import gradscope.render.html.data as data
from gradscope.report import Finding, Report, SampleReport

OPEN_SAMPLES = 8
"""Samples opened when the page loads (the flagged ones first), as the terminal report's ``--show``."""

_SPECIAL_EDGES = (("<", ">"), ("[", "]"))


def samples(r: Report, columns: dict[int, dict[str, Any]], root: str) -> list[str]:
    """The samples' section as pieces to concatenate (the page joins them once)."""
    flagged = _flags(r.findings)
    failing: dict[int, list[str]] = {}
    for f in r.findings:  # a finding without positions (no_loss) still marks its sample
        if f.sample is not None:
            failing.setdefault(f.sample, []).append(f.check)
    first = [s.index for s in r.samples if s.index in failing] or [s.index for s in r.samples]
    opened = set(first[:OPEN_SAMPLES])
    out = [f'<section class="samples"><h2>Samples ({len(r.samples)})</h2>']
    for s in r.samples:
        out.append("\n")
        out += _sample(s, columns[s.index], flagged.get(s.index, {}), failing.get(s.index, []), root, s.index in opened)
    out.append("\n</section>")
    return out


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
) -> list[str]:
    real = [t.trained for t in s.tokens if t.role != "pad"]
    checks = list(dict.fromkeys(checks))
    mark = f' <b class="fail">✗ {html.escape(", ".join(checks))}</b>' if checks else ""
    summary = f"sample {s.index}: {len(real)} tokens, {real.count(True)} trained{mark}"
    label = html.escape(f"tokens of sample {s.index}", quote=True)
    head = f'<details class="sample" id="{root}-s{s.index}" data-sample="{s.index}"{" open" if opened else ""}>'
    return [
        f"{head}<summary>{summary}</summary>\n",
        *_strip_element(_strip(s, flags, root), label, opened),
        f'\n{_heat_frame(s)}<script type="application/json" class="gs-sample">',
        *_sample_json(s, columns),
        "</script></details>",
    ]


def _strip_element(spans: list[str], label: str, opened: bool) -> list[str]:
    """An opened sample's strip inline; a closed one's kept as text in a ``<script type="text/html">`` that the page's
    script inserts when the sample is opened: the browser then parses the spans of the samples one looks at only.
    (Token texts are escaped, so the block holds no ``</script``.)"""
    head = f'<div class="strip" tabindex="0" role="group" aria-label="{label}">'
    if opened:
        return [head, *spans, "</div>"]
    return [f'{head}</div><script type="text/html" class="gs-strip">', *spans, "</script>"]


def _strip(s: SampleReport, flags: dict[int, list[str]], root: str) -> list[str]:
    """One ``<span>`` per token, as a list the page joins. The hot loop of a big page (131k tokens at 64 x 2,048):
    one f-string per token, the role's and text's parts of it worked out once per distinct value."""
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
    return out


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
        '<canvas role="img" aria-label="heat map of gradient norms"></canvas><div class="cursor" '
        "hidden></div></div></div></figure>"
    )


def _sample_json(s: SampleReport, columns: dict[str, Any]) -> list[str]:
    """The sample's JSON block as pieces: its texts and number columns (``data.encoded``), then its heat map's layer
    rows (the embedding row is the ``gemb`` column), whose base64 goes in as it is: it needs no escaping, and it is
    most of the block."""
    # A token's text can hold "</script>" or "<!--", which would end or change the <script> element: every "<"
    # (only ever inside a JSON string) is written as its JSON escape.
    block = json.dumps(data.encoded(columns), ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    if not s.layer_grad_norms:
        return [block]
    return [
        block[:-1],
        f',"heat":{{"layers":{len(s.layer_grad_norms)},"bf16":"',
        data.heat_norms(s.layer_grad_norms),
        '"}}',
    ]
