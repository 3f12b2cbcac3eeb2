"""The HTML report in a real browser: headless Chromium (Debian's package) loads it, runs its script, and a probe
script appended to the page reads the DOM and computed styles back.

Never a silent skip in CI: without Chromium the test fails when $CI is set (``.ci/run`` installs it).
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import re
import shutil
import struct
from pathlib import Path

import pytest

from benchmarks.bench_html import synthetic_report
from gradscope.render.html import to_html
from gradscope.report import Report, SampleReport, TokenReport

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
LOAD_LIMIT_S = 15.0
"""The 64 x 2,048-token page must be parsed, scripted and laid out within this (it takes ~1-3 s; see the doc)."""

PROBE = r"""
(function(){
  const loaded = (document.body.offsetHeight, performance.now());  // parse + scripts + style and layout, from navigation
  const root = document.querySelector(".gs"), out = {loaded_ms: loaded};
  const open = [...document.querySelectorAll("details.sample[open]")];
  const style = s => {const c = getComputedStyle(s), b = s.getBoundingClientRect();
    return {sample: +s.closest("details").dataset.sample, pos: +s.dataset.pos, width: b.width, height: b.height,
            visibility: c.visibility, display: c.display, outline: c.outlineStyle, outlineWidth: parseFloat(c.outlineWidth),
            outlineColor: c.outlineColor, hatch: c.backgroundImage};};
  out.flagged = open.flatMap(d => [...d.querySelectorAll(".strip>span[data-flag]")]).map(style);
  out.plain = open.flatMap(d => [...d.querySelectorAll(".strip>span:not([data-flag])")]).slice(0, 50).map(style);
  out.canvases = open.map(d => {const c = d.querySelector("canvas"); return c ? [c.width, d.querySelectorAll(".strip>span").length] : null;});
  const first = out.flagged.length ? document.querySelector("details.sample[open] .strip>span[data-flag]") : null;
  if (first) {
    first.dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));
    const tip = root.querySelector(".tip");
    out.tip = {hidden: tip.hidden, text: tip.textContent};
  }
  const radio = root.querySelector("input[value=loss]");
  if (radio) {
    radio.checked = true; radio.dispatchEvent(new Event("change", {bubbles: true}));
    out.shaded = open.map(d => [...d.querySelectorAll(".strip>span")].filter(s => s.style.backgroundColor).length);
  }
  const link = root.querySelector(".findings a[data-pos]");
  if (link) {
    const d = document.getElementById(link.getAttribute("href").slice(1)).closest("details");
    d.open = false; link.click();
    const cur = d.querySelector(".strip>span.cur");
    out.link = {href: link.getAttribute("href"), open: d.open, cur: cur ? cur.id : null};
  }
  let t = performance.now(); window.scrollTo(0, document.body.scrollHeight); document.body.offsetHeight;
  out.scroll_ms = performance.now() - t;
  out.spans_before_open = document.querySelectorAll(".strip>span").length;
  t = performance.now(); root.querySelector("button[data-act=open]").click(); document.body.offsetHeight;
  out.open_all_ms = performance.now() - t;
  out.spans_after_open = document.querySelectorAll(".strip>span").length;
  const pre = document.createElement("pre"); pre.id = "gs-probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
"""


HEAT_PROBE = r"""
(function(){
  const d = document.querySelector("details.sample[open]"), c = d.querySelector("canvas"), b = c.getBoundingClientRect();
  const out = {width: c.width, height: c.height, px: Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data)};
  out.tips = [];
  for (let r = 2; r < c.height; r++) for (let x = 0; x < c.width; x++) {
    c.dispatchEvent(new MouseEvent("mousemove", {bubbles: true, clientX: b.left + (x + 0.5) * b.width / c.width,
                                                 clientY: b.top + (r + 0.5) * b.height / c.height}));
    out.tips.push(d.closest(".gs").querySelector(".tip").textContent.split("\n").pop());
  }
  const pre = document.createElement("pre"); pre.id = "gs-probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
"""

VIRIDIS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
"""The page's colour ramp: viridis at five stops, linear between them."""


def probe(chromium, page_html: str, path: Path, script: str = PROBE) -> dict:
    path.write_text(chromium.with_probe(page_html, script), encoding="utf-8")
    dom = chromium.dump_dom(path)
    match = re.search(r'<pre id="gs-probe">(.*?)</pre>', dom, re.S)
    assert match, "the probe script did not run: " + dom[-500:]
    return json.loads(html.unescape(match.group(1)))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def leaking(catalogue_reports) -> tuple:
    shared = catalogue_reports["llama_prompt_leak"]
    name = str(Path(shared.model["name_or_path"]).relative_to(FIXTURES.parent))  # the page names no machine's path
    report = dataclasses.replace(shared, model={**shared.model, "name_or_path": name})
    return report, to_html(report)


def test_flagged_tokens_are_visible_and_styled_as_flagged(chromium, leaking, tmp_path):
    report, page = leaking
    shot = chromium.screenshot(_write(tmp_path / "report.html", page), tmp_path / "report.png")
    assert png_size(shot) == (1280, 1600) and shot.stat().st_size > 20_000
    if os.environ.get("GRADSCOPE_SCREENSHOT"):  # docs/make_screenshot.py: the README's picture is this one
        shutil.copyfile(shot, os.environ["GRADSCOPE_SCREENSHOT"])
    got = probe(chromium, page, tmp_path / "probe.html")
    expected = sorted((f.sample, p) for f in report.findings for p in f.positions)
    assert sorted((s["sample"], s["pos"]) for s in got["flagged"]) == expected  # every flagged position, open
    for s in got["flagged"]:
        assert s["width"] > 0 and s["height"] > 0 and s["visibility"] == "visible" and s["display"] != "none"
        assert s["outline"] == "solid" and s["outlineWidth"] >= 2 and "repeating-linear-gradient" in s["hatch"]
    assert got["plain"] and all(s["outline"] == "none" and s["hatch"] == "none" for s in got["plain"])
    assert all(width == tokens for width, tokens in got["canvases"])  # one heat-map column per token
    assert (
        not got["tip"]["hidden"]
        and "FLAGGED: prompt_leak" in got["tip"]["text"]
        and "‖∂L/∂embedding‖" in got["tip"]["text"]
    )
    assert all(
        n == len(s.tokens) for n, s in zip(got["shaded"], report.samples, strict=True)
    )  # shaded by loss, every token
    assert got["link"]["open"] and got["link"]["cur"] == got["link"]["href"][1:]


def test_64_by_2048_page_loads_and_scrolls(chromium, tmp_path, record_property):
    report = synthetic_report(64, 2048)
    page = to_html(report)
    got = probe(chromium, page, tmp_path / "big.html")
    record_property("load_ms", got["loaded_ms"])
    print(
        f"\n64 x 2048 tokens, {len(page.encode()) / 1e6:.1f} MB: loaded in {got['loaded_ms']:.0f} ms, scrolled to the "
        f"end in {got['scroll_ms']:.0f} ms, all samples opened in {got['open_all_ms']:.0f} ms"
    )
    assert got["loaded_ms"] < LOAD_LIMIT_S * 1000
    assert got["scroll_ms"] < LOAD_LIMIT_S * 1000
    assert len(got["flagged"]) == sum(len(f.positions) for f in report.findings[:8])  # the first 8 leaking samples open
    assert got["spans_before_open"] == 8 * 2048 and got["spans_after_open"] == 64 * 2048  # the rest parsed on opening


def heat_report() -> Report:
    """One sample of 6 tokens: an embedding row and 3 layers of norms spanning 8 decades, with zeros, NaN, Inf and a
    missing embedding norm."""
    emb = [0.5, 2.0, 0.0, 1e-3, None, 0.25]
    layers = [
        [0.0, 1e-4, 3.3e-3, 0.02, 0.9, math.nan],
        [math.inf, 5.0, 1e-6, 12.5, 0.0, 0.07],
        [1.5e-6, 2e-6, 4e-5, 100.0, 3.0, 1e-3],
    ]
    tokens = [
        TokenReport(
            t,
            10 + t,
            f"w{t}",
            "completion",
            10 + t,
            t > 0,
            10 + t if t else None,
            1.0 if t else None,
            0.2 if t else None,
            0.1,
            emb[t],
        )
        for t in range(6)
    ]
    return Report(model={"architecture": "Tiny"}, samples=[SampleReport(0, tokens, layers)], findings=[], losses=[1.0])


def as_float32(v: float) -> float:
    return struct.unpack("<f", struct.pack("<f", v))[0]


def as_bfloat16(v: float) -> float:
    """The float32 with the low 16 bits of its pattern cleared."""
    return struct.unpack("<f", struct.pack("<I", struct.unpack("<I", struct.pack("<f", v))[0] & 0xFFFF0000))[0]


def expected_heat(sample: SampleReport) -> list[tuple[int, int, int]]:
    """Each heat-map cell's colour, row after row: zero grey, NaN/Inf/None black, else viridis at the norm's place on
    a log scale from the sample's smallest to its largest positive norm (the embedding row exact, layers bfloat16)."""
    rows = [[None if v is None else as_float32(v) for v in (t.embedding_grad_norm for t in sample.tokens)]]
    rows += [[as_bfloat16(v) for v in row] for row in sample.layer_grad_norms]
    positive = [v for row in rows for v in row if v is not None and 0 < v < math.inf]
    lo, hi = math.log(min(positive)), math.log(max(positive))
    out = []
    for v in (v for row in rows for v in row):
        if v is None or not math.isfinite(v):
            out.append((0, 0, 0))
        elif v <= 0:
            out.append((217, 217, 217))
        else:
            f = (math.log(v) - lo) / (hi - lo) * 4
            i = min(3, int(f))
            out.append(tuple(round(a + (b - a) * (f - i)) for a, b in zip(VIRIDIS[i], VIRIDIS[i + 1], strict=True)))
    return out


def test_heat_map_colours_each_norm_on_the_samples_log_scale(chromium, tmp_path):
    report = heat_report()
    got = probe(chromium, to_html(report), tmp_path / "heat.html", HEAT_PROBE)
    assert (got["width"], got["height"]) == (6, 2 + 4)  # a column per token; role, flag, embedding and 3 layer rows
    px = got["px"][2 * 6 * 4 :]
    cells = [tuple(px[o : o + 3]) for o in range(0, len(px), 4)]
    want = expected_heat(report.samples[0])
    assert len(cells) == len(want) == 24
    for n, (c, w) in enumerate(zip(cells, want, strict=True)):
        assert all(abs(a - b) <= 1 for a, b in zip(c, w, strict=True)), (
            divmod(n, 6),
            c,
            w,
        )  # (row, position): rounding only
    sample = report.samples[0]
    norms = [t.embedding_grad_norm for t in sample.tokens] + [v for row in sample.layer_grad_norms for v in row]
    for n, (tip, v) in enumerate(zip(got["tips"], norms, strict=True)):
        row, shown = divmod(n, 6)[0], tip.split("‖∂L/∂h‖ ")[-1]
        assert tip.startswith("emb: " if row == 0 else f"L{row - 1}: "), (n, tip)
        if v is None or not math.isfinite(v):
            assert shown == {None: "–", math.inf: "inf"}.get(v, "nan"), (n, tip)
        elif row == 0:  # the embedding row: the exact float32, as the token's tooltip line shows it
            assert shown == "0" if v == 0 else math.isclose(float(shown), v, rel_tol=5e-4), (n, tip)
        elif v == 0:
            assert shown == "0", (n, tip)
        else:  # a layer's cell: its bfloat16, to 3 significant digits
            assert shown.startswith("≈ ") and math.isclose(float(shown[2:]), as_bfloat16(v), rel_tol=5e-3), (n, tip)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
