"""The HTML report, parsed: every token once with its data attributes, flagged positions marked, findings linked.

Asserts on structure (html.parser), never on bytes.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from pathlib import Path

import pytest

from gradscope.render.html import html_fragment, to_html
from gradscope.render.html.data import heat_norms
from gradscope.report import Finding, ModuleGrad, Report, SampleReport, ScanReport, TokenReport

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CATALOGUE = json.loads((FIXTURES / "catalogue.json").read_text())


def flags_of(report: Report) -> dict[int, dict[int, set[str]]]:
    out: dict[int, dict[int, set[str]]] = {}
    for f in report.findings:
        if f.sample is not None:
            for p in f.positions:
                out.setdefault(f.sample, {}).setdefault(p, set()).add(f.check)
    return out


def columns(raw: dict) -> dict[str, list]:
    """A sample's JSON block decoded as the page's script decodes it: base64 little-endian columns, None where listed;
    ``heat`` the layer rows' 16-bit words."""
    out: dict[str, list] = {"text": raw["text"]}
    for group, code in (("f32", "<f4"), ("i32", "<i4")):
        for key, text in raw[group].items():
            out[key] = struct.unpack(f"{code[0]}{len(base64.b64decode(text)) // 4}{code[1]}", base64.b64decode(text))
            out[key] = [None if i in raw["none"][key] else v for i, v in enumerate(out[key])]
    if "heat" in raw:
        words = base64.b64decode(raw["heat"]["bf16"])
        out["heat"] = {"layers": raw["heat"]["layers"], "words": list(struct.unpack(f"<{len(words) // 2}H", words))}
    return out


def bf16_words(rows: list[list[float]]) -> list[int]:
    """Each value's float32 bit pattern, its top 16 bits: bfloat16 by truncation, one value at a time."""
    return [struct.unpack("<I", struct.pack("<f", v))[0] >> 16 for row in rows for v in row]


def from_bf16(word: int) -> float:
    return struct.unpack("<f", struct.pack("<I", word << 16))[0]


def close(a: float | None, b: float | None) -> bool:
    """Equal to float32 precision, NaN and Inf included."""
    if a is None or b is None:
        return a is b
    if not math.isfinite(a):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-30)


@pytest.fixture(scope="module")
def reports(catalogue_reports) -> dict[str, Report]:
    return catalogue_reports


def report_for(reports: dict, case: dict) -> Report:
    return reports[case["name"]]


def assert_tokens(page, report: Report, root: str = "gs") -> None:
    __tracebackhide__ = True
    flags = flags_of(report)
    assert sorted(page.tokens) == [s.index for s in report.samples]
    for s in report.samples:
        spans = page.tokens[s.index]
        assert [int(a["data-pos"]) for a in spans] == [t.position for t in s.tokens]  # each token once, in order
        for t, a in zip(s.tokens, spans, strict=True):
            assert int(a["data-id"]) == t.token_id
            assert a["data-role"] == (t.role or "unknown")
            assert ("data-trained" in a) == t.trained
            mine = flags.get(s.index, {}).get(t.position)
            assert set((a.get("data-flag") or "").split()) == (mine or set()), (s.index, t.position)
            assert (a.get("id") == f"{root}-s{s.index}-p{t.position}") == bool(mine)
            if t.text and t.text.isprintable() and not t.text.isspace():
                assert a["text"] == t.text
        data = columns(page.json[s.index])
        assert data["text"] == [t.text for t in s.tokens]
        assert data["label"] == [t.label for t in s.tokens]
        assert data["target"] == [t.target_id for t in s.tokens]
        for key, attr in (
            ("loss", "loss"),
            ("weight", "weight"),
            ("glog", "logit_grad_norm"),
            ("gemb", "embedding_grad_norm"),
        ):
            assert all(close(getattr(t, attr), v) for t, v in zip(s.tokens, data[key], strict=True)), key
        if s.layer_grad_norms:  # the heat map's layer rows, each norm's bfloat16; its embedding row is gemb
            assert data["heat"]["layers"] == len(s.layer_grad_norms) and {len(r) for r in s.layer_grad_norms} == {
                len(s.tokens)
            }
            assert data["heat"]["words"] == bf16_words(s.layer_grad_norms)
        else:
            assert "heat" not in data


def assert_findings_linked(page, report: Report, root: str = "gs") -> None:
    __tracebackhide__ = True
    assert [(r["data-check"], r["data-severity"], r["data-sample"]) for r in page.findings] == [
        (f.check, f.severity, "" if f.sample is None else str(f.sample)) for f in report.findings
    ]
    for row, f in zip(page.findings, report.findings, strict=True):
        for a in row["links"]:
            target = page.ids[a["href"].removeprefix("#")]  # every link lands on an element of the page
            if "data-pos" in a:
                assert target["data-flag"] and f.check in target["data-flag"].split()
        if f.sample is not None and f.positions:
            starts = {int(a["data-pos"]) for a in row["links"] if "data-pos" in a}
            runs = [p for p in f.positions if p - 1 not in f.positions]
            assert starts == set(runs)
            assert any(a["href"] == f"#{root}-s{f.sample}" for a in row["links"])


@pytest.mark.parametrize("case", CATALOGUE, ids=[c["name"] for c in CATALOGUE])
def test_catalogue_page(reports, case, html_page):
    report = report_for(reports, case)
    page = html_page(to_html(report))
    assert_tokens(page, report)
    assert_findings_linked(page, report)
    failing = [s.index for s in report.samples if any(f.sample == s.index for f in report.findings)]
    opened = [i for i, d in page.details.items() if "open" in d]
    assert opened == (failing or [s.index for s in report.samples])[:8]  # the failing samples open, as --show
    assert page.deferred == len(report.samples) - len(opened)  # the others' spans wait in a text block
    verdict = [a for tag, a in page.elements if tag == "p" and "verdict" in (a.get("class") or "")]
    status = summary_status(report)
    css = {"clean": "ok", "not verified": "warn", "warnings": "warn", "errors": "fail"}[status]
    assert [(v["class"], v["data-status"]) for v in verdict] == [("verdict " + css, status)]


def summary_status(report: Report) -> str:
    """The status the JSON summary gives (the verdict function's)."""
    return report.summary()["status"]


def test_fragment_is_the_same_view_with_its_own_ids(reports, html_page):
    report = report_for(reports, next(c for c in CATALOGUE if c["name"] == "llama_prompt_leak"))
    first, second = report._repr_html_(), html_fragment(report)
    roots = [
        next(a["id"] for t, a in html_page(x).elements if t == "div" and a.get("class") == "gs")
        for x in (first, second)
    ]
    assert roots[0] != roots[1]
    assert_tokens(html_page(first), report, root=roots[0])
    assert_findings_linked(html_page(first), report, root=roots[0])
    assert "<html" not in first and "<style>" in first and "<script>" in first
    assert not set(html_page(first).ids) & set(html_page(second).ids)


def token(position: int, text: str | None, **kw) -> TokenReport:
    values = dict(
        token_id=10 + position,
        role="completion",
        label=-100,
        trained=False,
        target_id=None,
        loss=None,
        weight=None,
        logit_grad_norm=0.0,
        embedding_grad_norm=0.5,
    )
    values.update(kw)
    return TokenReport(position=position, text=text, **values)


def one_sample(texts: list[str | None], findings: list[Finding] = (), **kw) -> Report:
    tokens = [token(i, t, **kw) for i, t in enumerate(texts)]
    sample = SampleReport(0, tokens, [[1.0] * len(tokens)])
    return Report(model={"architecture": "Tiny"}, samples=[sample], findings=list(findings), losses=[1.0])


def test_text_that_closes_a_script_or_starts_a_tag_stays_text(html_page):
    texts = ["</script><b>x", "<!--", "a&b", '"q"']
    report = one_sample(texts, [Finding("prompt_leak", "error", 0, [0], "x </script> <i>")])
    page = html_page(report.to_html())
    assert [a["text"] for a in page.tokens[0]] == texts
    assert columns(page.json[0])["text"] == texts
    plain = html_page(one_sample(["x"] * 4, [Finding("prompt_leak", "error", 0, [0], "x")]).to_html())
    tags = lambda p: [tag for tag, _ in p.elements if tag in ("b", "i")]  # noqa: E731
    assert tags(page) == tags(plain)  # no element came out of a token's text or a message
    assert_findings_linked(page, report)


def test_whitespace_and_special_tokens_are_visible(html_page):
    texts = [" ", "\n", "\t", "<|im_end|>", "", None, " the", "a\x00b", "[PAD]"]
    page = html_page(to_html(one_sample(texts)))
    spans = page.tokens[0]
    assert [a["text"] for a in spans] == ["␣", "↵", "→", "<|im_end|>", "[14]", "[15]", " the", "a\\x00b", "[PAD]"]
    assert [i for i, a in enumerate(spans) if "data-special" in a] == [3, 8]
    html = to_html(one_sample(texts))
    assert html.count("</span><br>") == 1  # a line break after the newline token, none elsewhere


def test_inspect_view_is_one_sample_and_its_findings(html_page):
    report = one_sample(
        ["a", "b"], [Finding("pad_leak", "error", 0, [1], "pad"), Finding("nonfinite", "error", None, [], "nan")]
    )
    other = SampleReport(1, [token(0, "c")], [[1.0]])
    report.samples.append(other)
    report.findings.append(Finding("prompt_leak", "error", 1, [0], "leak"))
    page = html_page(to_html(report, sample=0))
    assert sorted(page.tokens) == [0] and "open" in page.details[0]
    assert [r["data-check"] for r in page.findings] == ["pad_leak", "nonfinite"]


def test_heat_norms_are_bfloat16_truncations():
    rows = [[0.0, 1e-3, 0.1, 1.0, 3.0e38, 1e-40], [math.nan, 0.5, math.inf, 2e-3, 123.456, 1e300]]
    words = base64.b64decode(heat_norms(rows))
    got = [from_bf16(w) for w in struct.unpack(f"<{len(words) // 2}H", words)]
    assert len(got) == 12
    assert got[0] == 0.0 and math.isnan(got[6]) and got[8] == math.inf and got[11] == math.inf  # beyond float32: Inf
    assert got[3] == 1.0 and got[7] == 0.5  # exact in 8 significant bits
    for v, g in zip([*rows[0], *rows[1]], got, strict=True):
        if math.isfinite(v) and 1.2e-38 <= v <= 3.4e38:  # a normal float32, truncated: at most 2**-7 below, never above
            f32 = struct.unpack("<f", struct.pack("<f", v))[0]
            assert f32 * (1 - 2**-7) <= g <= f32, (v, g)
    assert 0 < got[5] <= 1e-40  # a float32 subnormal stays positive, shown as a norm rather than a zero
    assert heat_norms([]) == "" and heat_norms([[], []]) == ""


def test_shading_ranges_span_the_report(html_page):
    report = one_sample(["a", "b", "c"], loss=2.0)
    report.samples[0].tokens[1].loss = 5.0
    report.samples[0].tokens[2].logit_grad_norm = 0.25
    page = html_page(to_html(report))
    [controls] = [a for tag, a in page.elements if tag == "fieldset"]
    ranges = json.loads(controls["data-ranges"])
    assert ranges == {"loss": [2.0, 5.0], "glog": [0.25, 0.25], "gemb": [0.5, 0.5]}


def test_grads_page_charts_every_trainable_module(html_page, fixture_model):
    model, tokenizer = fixture_model("adapters/tiny-llama-lora-detached")
    from gradscope import grads
    from gradscope.data.load import load_batches

    [batch] = load_batches(FIXTURES / "batches/llama_clean.safetensors", pad_token_id=tokenizer.pad_token_id)
    report = grads(model, batch)
    page = html_page(report.to_html())
    trainable = [m for m in report.grads.modules if m.trainable_parameters > 0]
    marks = [a for tag, a in page.elements if tag == "g" and "mark" in (a.get("class") or "")]
    assert [a["data-module"] for a in marks] == [m.name for m in trainable]
    hollow = {a["data-module"] for a in marks if "none" in a["class"].split()}
    assert hollow == {m.name for m in trainable if not (m.grad_norm and math.isfinite(m.grad_norm))}
    rows = [a["data-module"] for tag, a in page.elements if tag == "tr" and "data-module" in a]
    assert rows == [m.name for m in report.grads.modules]
    assert [r["data-check"] for r in page.findings] == [f.check for f in report.findings] and report.findings
    assert not page.tokens


def test_depth_chart_orders_embedding_layers_head(html_page):
    from gradscope.render.html.grads import depth_chart, depth_columns

    def module(name, kind, layer):
        return ModuleGrad(name, kind, layer, False, [], 1, 1, 1.0, 1.0, None, None)

    modules = [
        module("head", "head", None),
        module("layer 1 mlp", "mlp", 1),
        module("embedding", "embedding", None),
        module("layer 0 attention", "attention", 0),
    ]
    assert depth_columns(modules) == ["embedding", "L0", "L1", "head"]
    modules[1].grad_norm, modules[3].grad_norm = None, math.nan
    marks = [a for tag, a in html_page(depth_chart(modules)).elements if tag == "g"]
    assert [(a["data-module"], "none" in a["class"].split()) for a in marks] == [
        ("head", False),
        ("layer 1 mlp", True),
        ("embedding", False),
        ("layer 0 attention", True),
    ]


def test_scan_page_lists_every_check(html_page):
    report = ScanReport(
        source={"path": "rows.jsonl", "format": "jsonl", "end_token_ids": [5]},
        rows=4,
        tokens=40,
        trained_tokens=10,
        checks={
            "no_loss": {"rows": 0, "positions": 0, "first_rows": []},
            "prompt_leak": {"rows": 2, "positions": 9, "first_rows": [1, 3]},
            "completion_truncated": {"rows": 1, "positions": 2, "first_rows": [2]},
        },
        worst_rows=[{"row": 1, "positions": 7, "checks": ["prompt_leak"]}],
        findings=[Finding("prompt_leak", "error", 1, [0, 1], "prompt tokens 0–1 are trained")],
    )
    page = html_page(report.to_html())
    states = {a["data-check"]: a["data-state"] for tag, a in page.elements if tag == "tr" and "data-state" in a}
    assert states == {"no_loss": "pass", "prompt_leak": "error", "completion_truncated": "warning"}
    assert [(r["data-check"], r["data-sample"], r["links"]) for r in page.findings] == [("prompt_leak", "1", [])]
    assert html_page(report._repr_html_()).findings


def test_every_element_closes_and_ids_are_unique_on_a_big_page(html_page):
    """Two samples of 2,048 tokens, every third one flagged: the page stays well formed."""
    texts = [f"w{i}" if i % 7 else "\n" for i in range(2048)]
    report = one_sample(texts, [Finding("prompt_leak", "error", 0, list(range(0, 2048, 3)), "leak")], trained=True)
    report.samples.append(SampleReport(1, [token(i, t) for i, t in enumerate(texts)], [[0.1] * 2048] * 4))
    page = html_page(report.to_html())
    assert len(page.tokens[0]) == len(page.tokens[1]) == 2048
    assert_findings_linked(page, report)
