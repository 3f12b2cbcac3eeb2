"""gradscope.scan: the vectorized checks against analyze's per-row checks, and scan against check on the catalogue."""

from __future__ import annotations

import io
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import gradscope
from gradscope.checks.masking import check_sample
from gradscope.data.chunks import Chunk
from gradscope.data.load import load_batches
from gradscope.data.pipelines import DataOptions
from gradscope.render.junit import to_junit
from gradscope.render.scan import ScanView
from gradscope.scan.dataset import scan
from gradscope.scan.roles import prefill_mask
from gradscope.scan.verdicts import CHECKS, verdicts

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CATALOGUE = json.loads((FIXTURES / "catalogue.json").read_text())
EOS, PAD_ID = 2, 0


def as_chunk(rows: list[dict[str, np.ndarray]]) -> Chunk:
    lengths = [len(r["input_ids"]) for r in rows]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    flat = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    return Chunk(
        0,
        starts,
        flat["input_ids"],
        flat["labels"],
        flat["attention_mask"],
        flat.get("completion_mask"),
        flat.get("completion_cut"),
    )


@pytest.mark.parametrize("pad_id", [PAD_ID, EOS], ids=["pad", "pad is eos"])
@pytest.mark.parametrize("roles", [True, False], ids=["roles", "no roles"])
def test_vectorized_checks_equal_analyze_row_by_row(roles, pad_id, random_rows, reference_view):
    rows = random_rows(3000, seed=1 if roles else 2, roles=roles)
    v = verdicts(as_chunk(rows), [EOS], pad_token_id=pad_id)
    seen = set()
    for i, row in enumerate(rows):
        expected = {f.check: len(f.positions) for f in check_sample(reference_view(row, i, pad_id))}
        got = {name: int(v.positions[name][i]) for name in CHECKS if v.fails[name][i]}
        for name in ("no_loss", "completion_truncated"):  # they name no positions; the scan counts tokens to rank rows
            if name in got:
                got[name] = 0
        assert got == expected, f"row {i}: {row}"
        seen.update(got)
    no_roles = {"prompt_leak", "completion_untrained", "turn_end_untrained", "completion_truncated"}
    layout = {
        "boundary_leak",
        "bos_duplicated",
        "bos_missing",
        "packed_without_boundaries",  # tests/scan/test_verdicts
        "prefill_trained",
    }  # below
    expected_checks = (set(CHECKS) if roles else set(CHECKS) - no_roles) - layout
    if pad_id == EOS:  # a pad that is an end token is never read as left padding
        expected_checks -= {"pads_attended"}
    assert seen == expected_checks  # the random rows reached every check


PREFILL = (7, 8, 9)


def _with_prefills(rows: list[dict[str, np.ndarray]], rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """The rows with the prefill written at (or right before) some completion spans' starts, trained or not."""
    k = len(PREFILL)
    for row in rows:
        completion = (row["completion_mask"] == 1) & (row["attention_mask"] == 1)
        begins = np.flatnonzero(completion & ~np.concatenate([[False], completion[:-1]]))
        for b in begins:
            at = b + rng.choice([0, -k, 1])  # at the start, right before it, or not at a start at all
            if 1 <= at and at + k <= len(row["input_ids"]) and rng.random() < 0.7:
                row["input_ids"][at : at + k] = PREFILL
                row["labels"][at : at + k] = np.where(rng.random(k) < 0.5, PREFILL, -100)
    return rows


def test_prefill_positions_and_verdicts_equal_check_row_by_row(random_rows, reference_view):
    """scan's vectorized prefill positions (prefill_trained; left out of prompt_leak / completion_untrained) against
    check's per-row SampleView.prefill, on random rows with the prefill written at, before and away from span starts."""
    rows = _with_prefills(random_rows(3000, seed=3, roles=True), np.random.default_rng(0))
    chunk = as_chunk(rows)
    chunk = replace(chunk, prefill=prefill_mask(chunk, (PREFILL,)))
    v = verdicts(chunk, [EOS], pad_token_id=PAD_ID)
    fired = 0
    for i, row in enumerate(rows):
        view = reference_view(row, i, PAD_ID, prefills=(PREFILL,))
        begin = int(chunk.starts[i])
        assert set(np.flatnonzero(chunk.prefill[begin : begin + len(row["input_ids"])]).tolist()) == set(view.prefill)
        expected = {f.check: len(f.positions) for f in check_sample(view)}
        got = {name: int(v.positions[name][i]) for name in CHECKS if v.fails[name][i]}
        for name in ("no_loss", "completion_truncated"):
            if name in got:
                got[name] = 0
        assert got == expected, f"row {i}"
        fired += "prefill_trained" in got
    assert fired > 100  # the rows reached the check


def test_a_scan_reports_a_trained_prefill_as_check_does():
    scanned = scan(
        FIXTURES / "batches" / "qwen3_prefill_trained.safetensors", tokenizer=FIXTURES / "models" / "tiny-qwen3-chat"
    )
    assert scanned.checks["prefill_trained"]["rows"] > 0 and scanned.ok  # a warning
    twin = scan(
        FIXTURES / "batches" / "qwen3_prefill_masked.safetensors", tokenizer=FIXTURES / "models" / "tiny-qwen3-chat"
    )
    assert twin.failed_checks == [] and twin.verified


def _catalogue_scan(case: dict) -> gradscope.ScanReport:
    options = DataOptions(response_template=case.get("response_template"))
    return scan(FIXTURES / case["data"], tokenizer=FIXTURES / case["model"], options=options, examples=10)


# The structural cases (causal, packed, loss and accumulation probes) need the model: scan reads labels only; and
# scan reads no raw rows beside a tokenized file (roles_from).
LABEL_CASES = [
    c
    for c in CATALOGUE
    if {e["check"] for e in c["expect"]} <= {*CHECKS, "roles_unknown"}
    and not c.get("loss")
    and not c.get("accumulate")
    and not c.get("roles_from")
]


def _as_check_names(report: gradscope.ScanReport) -> list[tuple[str, int | None]]:
    """(check, row) per failing row, as the catalogue lists findings: roles_unknown is one finding of the batch."""
    rows = [
        (name, row) for name, entry in report.checks.items() for row in entry["first_rows"] if name != "roles_unknown"
    ]
    return sorted(
        rows + ([("roles_unknown", None)] if report.checks["roles_unknown"]["rows"] else []),
        key=lambda pair: (pair[0], -1 if pair[1] is None else pair[1]),
    )


@pytest.mark.parametrize("case", LABEL_CASES, ids=[c["name"] for c in LABEL_CASES])
def test_scan_finds_exactly_what_check_finds_on_the_catalogue(case, fixture_model):
    """Roles included: where the batch holds no role mask, scan reads them from the tokens as check does."""
    report = _catalogue_scan(case)
    expected = sorted(
        ((e["check"], e["sample"]) for e in case["expect"]),
        key=lambda pair: (pair[0], -1 if pair[1] is None else pair[1]),
    )
    assert _as_check_names(report) == expected
    unknown = report.checks["roles_unknown"]["rows"]
    assert sum(e["rows"] for e in report.checks.values()) - unknown == len(
        [e for e in case["expect"] if e["sample"] is not None]
    )
    model, tokenizer = fixture_model(case["model"])
    batches = load_batches(
        FIXTURES / case["data"], pad_token_id=tokenizer.pad_token_id, batch_size=case.get("batch_size", 1)
    )
    checked = gradscope.check_batches(
        model, batches, tokenizer=tokenizer, response_template=case.get("response_template")
    )
    assert [(f.check, f.sample, f.positions) for f in report.findings] == [
        (f.check, f.sample, f.positions) for f in checked.findings
    ]
    for scanned, found in zip(
        report.findings, checked.findings, strict=False
    ):  # check may add that the loss is NaN, and why
        if found.check == "roles_unknown":  # the same reason; check names samples, scan rows
            assert (
                scanned.message.split(" are unknown ")[1].split(".")[0]
                == found.message.split(" are unknown ")[1].split(".")[0]
            )
        else:
            assert found.message.endswith(scanned.message)
    assert report.summary()["verified"] == checked.summary()["verified"]


def test_a_scan_without_roles_is_not_verified_and_names_the_rows():
    report = scan(
        FIXTURES / "batches" / "gpt2_prompt_leak_noroles.safetensors", tokenizer=FIXTURES / "models" / "tiny-gpt2"
    )
    assert report.ok and not report.verified and report.checks["roles_unknown"]["rows"] == 3
    (finding,) = report.findings
    assert finding.check == "roles_unknown" and finding.severity == "warning"
    assert "rows 0–2" in finding.message and "no chat template" in finding.message


def test_roles_read_from_a_chat_template_find_the_copied_prompt():
    """The copy-labels batch without a role mask: scan reads roles from the template's markers, as check does."""
    report = scan(
        FIXTURES / "batches" / "llama_prompt_leak_noroles.safetensors",
        tokenizer=FIXTURES / "models" / "tiny-llama-chat",
    )
    assert not report.ok and report.verified
    assert report.checks["prompt_leak"]["first_rows"] == [0, 1, 2]
    twin = scan(
        FIXTURES / "batches" / "gpt2_clean_noroles.safetensors",
        tokenizer=FIXTURES / "models" / "tiny-gpt2",
        options=DataOptions(response_template="Answer:"),
    )
    assert twin.ok and twin.verified and twin.failed_checks == [] and twin.findings == []


def test_distributions_match_numpy(random_rows):
    rows = random_rows(500, seed=3, roles=True)
    report = scan_rows(rows)
    tokens = np.array([int(r["attention_mask"].sum()) for r in rows])
    length = report.distributions["length"]
    for q in (0.5, 0.9, 0.99):
        assert length[f"p{round(q * 100)}"] == int(np.quantile(tokens, q, method="inverted_cdf"))
    assert (length["min"], length["max"]) == (tokens.min(), tokens.max())
    assert length["mean"] == pytest.approx(tokens.mean())
    trained = np.array(
        [
            int(((r["labels"] != -100) & (np.arange(len(r["labels"])) > 0) & (r["attention_mask"] == 1)).sum())
            for r in rows
        ]
    )
    bins = [min(9, math.floor(Fraction(int(n), max(int(d), 1)) * 10)) for n, d in zip(trained, tokens, strict=True)]
    assert report.distributions["trained_fraction"]["rows"] == [bins.count(k) for k in range(10)]
    assert (report.rows, report.tokens, report.trained_tokens) == (500, tokens.sum(), trained.sum())


def test_worst_rows_are_the_rows_with_most_flagged_positions(random_rows, reference_view):
    rows = random_rows(400, seed=4, roles=True)
    report = scan_rows(rows, worst=7)
    score = []
    for i, row in enumerate(rows):
        found = check_sample(reference_view(row, i))
        counts = {"no_loss": int(row["attention_mask"].sum()), "completion_truncated": int(row["completion_cut"][0])}
        n = sum(counts.get(f.check, len(f.positions)) for f in found)
        score.append((-n, i))
    expected = [i for n, i in sorted(score)[:7] if n < 0]
    assert [w["row"] for w in report.worst_rows] == expected
    assert {w["row"] for w in report.worst_rows} <= {f.sample for f in report.findings}


def scan_rows(rows: list[dict[str, np.ndarray]], **kwargs) -> gradscope.ScanReport:
    from gradscope.report.scan import ScanReport
    from gradscope.scan.dataset import scan_chunks

    chunk = as_chunk(rows)
    report = ScanReport(source={})
    return scan_chunks(
        iter([(chunk, verdicts(chunk, [EOS], pad_token_id=PAD_ID))]),
        report,
        end_token_ids=frozenset({EOS}),
        pad_token_id=PAD_ID,
        **kwargs,
    )


@pytest.mark.parametrize("density", [0.0, 0.001, 0.01, 0.2, 1.0])
def test_row_sums_count_each_rows_hits_sparse_or_dense(density):
    from gradscope.scan.verdicts import _row_sums

    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 300, 400)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    mask = rng.random(int(lengths.sum())) < density
    expected = [int(mask[a : a + n].sum()) for a, n in zip(starts, lengths, strict=True)]
    assert _row_sums(mask, starts).tolist() == expected


def test_checks_a_scan_could_not_run_are_shown_as_not_run_never_as_zero():
    """Without a tokenizer a tokenized batch without a role mask has no roles and no end token: prompt_leak,
    completion_untrained, prefill_trained, eos_untrained and turn_end_untrained did not run; no view counts them 0."""
    report = scan(FIXTURES / "batches" / "gpt2_prompt_leak_noroles.safetensors")
    assert set(report.not_run) == {
        "prompt_leak",
        "completion_untrained",
        "prefill_trained",
        "eos_untrained",
        "turn_end_untrained",
        "bos_duplicated",
        "bos_missing",
    }
    assert report.summary()["checks_not_run"] == report.not_run
    out = io.StringIO()
    Console(file=out, width=200, highlight=False).print(ScanView(report))
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in out.getvalue().splitlines()
        if line.count("│") >= 4
    }
    assert rows["prompt_leak"] == rows["eos_untrained"] == "not run" and rows["pad_leak"] == "0"
    assert 'data-check="prompt_leak" data-state="not run"' in report.to_html()
    junit = {c.get("classname"): c for c in ET.fromstring(to_junit(report)).iter("testcase")}
    assert junit["gradscope.prompt_leak"].find("skipped") is not None
    assert junit["gradscope.pad_leak"].find("skipped") is None
    known = scan(
        FIXTURES / "batches" / "gpt2_prompt_leak_noroles.safetensors",
        tokenizer=FIXTURES / "models" / "tiny-gpt2",
        options=DataOptions(response_template="Answer:"),
    )
    assert "prompt_leak" not in known.not_run and "eos_untrained" not in known.not_run


def test_failing_rows_are_counted_once_each(write_stream_rows, tmp_path):
    """summary.errors (the headline's N) is the number of distinct rows failing an error check, against the union of
    every error check's failing rows (all of them listed: examples covers every row); a row failing two counts once."""
    from gradscope.report.catalogue import NOT_VERIFIED, SCAN_WARNINGS

    report = scan(write_stream_rows(tmp_path, "jsonl"), end_token_ids=[2], examples=10_000)

    def union(warnings: bool) -> set[int]:
        return {
            row
            for name, entry in report.checks.items()
            if (name in SCAN_WARNINGS) == warnings and name not in NOT_VERIFIED
            for row in entry["first_rows"]
        }

    per_check = sum(e["rows"] for n, e in report.checks.items() if n not in SCAN_WARNINGS)
    assert report.summary()["errors"] == len(union(False)) < per_check  # some rows fail two checks
    assert report.summary()["warnings"] == len(union(True))
