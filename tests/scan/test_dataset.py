"""gradscope.scan: the vectorized checks against analyze's per-row checks, and scan against check on the catalogue."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import gradscope
from gradscope.checks.masking import check_sample
from gradscope.checks.sample import SampleView
from gradscope.constants import UNKNOWN
from gradscope.data.batch import COMPLETION, PAD, PROMPT
from gradscope.data.chunks import Chunk
from gradscope.data.load import load_batches
from gradscope.scan.dataset import scan
from gradscope.scan.verdicts import CHECKS, verdicts

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CATALOGUE = json.loads((FIXTURES / "catalogue.json").read_text())
EOS, PAD_ID = 2, 0


def reference_view(row: dict[str, np.ndarray], index: int, pad_id: int = PAD_ID) -> SampleView:
    """The row as check sees it, built independently of gradscope.scan."""
    ids = torch.tensor(row["input_ids"])
    labels = torch.tensor(row["labels"])
    trained = (labels != -100) & (torch.arange(len(ids)) > 0)
    role = torch.full(ids.shape, UNKNOWN)
    if "completion_mask" in row:
        role = torch.where(torch.tensor(row["completion_mask"]) == 1, COMPLETION, PROMPT)
    role[torch.tensor(row["attention_mask"]) == 0] = PAD
    cut = int(row["completion_cut"][0]) if "completion_cut" in row else 0
    return SampleView(index, ids, role, trained, torch.where(trained, labels, -1), [None] * len(ids), frozenset({EOS}), pad_id,
                      completion_cut=cut)


def as_chunk(rows: list[dict[str, np.ndarray]]) -> Chunk:
    lengths = [len(r["input_ids"]) for r in rows]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    flat = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    return Chunk(0, starts, flat["input_ids"], flat["labels"], flat["attention_mask"], flat.get("completion_mask"),
                 flat.get("completion_cut"))


@pytest.mark.parametrize("pad_id", [PAD_ID, EOS], ids=["pad", "pad is eos"])
@pytest.mark.parametrize("roles", [True, False], ids=["roles", "no roles"])
def test_vectorized_checks_equal_analyze_row_by_row(roles, pad_id, random_rows):
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
    layout = {"boundary_leak", "bos_duplicated", "bos_missing", "packed_without_boundaries"}  # tests/scan/test_verdicts
    expected_checks = (set(CHECKS) if roles else set(CHECKS) - no_roles) - layout
    if pad_id == EOS:  # a pad that is an end token is never read as left padding
        expected_checks -= {"pads_attended"}
    assert seen == expected_checks  # the random rows reached every check


def _catalogue_scan(case: dict) -> gradscope.ScanReport:
    return scan(FIXTURES / case["data"], tokenizer=FIXTURES / case["model"], examples=10)


def _roles_from_tokens(case: dict) -> bool:
    """check reads this case's roles from its tokens (a response template, raw rows, or a chat template's markers
    where the batch has no role tensor and something to find): scan reads roles from the batch only."""
    if case.get("response_template") or case.get("roles_from"):
        return True
    path = FIXTURES / case["data"]
    if path.suffix == ".jsonl":
        keys = set(json.loads(path.read_text().splitlines()[0]))
    else:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            keys = set(f.keys())
    return not keys & {"completion_mask", "assistant_masks"} and bool(case["expect"])


# The structural cases (causal, packed, loss and accumulation probes) need the model: scan reads labels only.
LABEL_CASES = [
    c for c in CATALOGUE
    if {e["check"] for e in c["expect"]} <= set(CHECKS) and not c.get("loss") and not c.get("accumulate")
    and not _roles_from_tokens(c)
]


@pytest.mark.parametrize("case", LABEL_CASES, ids=[c["name"] for c in LABEL_CASES])
def test_scan_finds_exactly_what_check_finds_on_the_catalogue(case, fixture_model):
    report = _catalogue_scan(case)
    failing = sorted((name, row) for name, entry in report.checks.items() for row in entry["first_rows"])
    assert failing == sorted((e["check"], e["sample"]) for e in case["expect"])
    assert sum(entry["rows"] for entry in report.checks.values()) == len(case["expect"])
    model, tokenizer = fixture_model(case["model"])
    batches = load_batches(FIXTURES / case["data"], pad_token_id=tokenizer.pad_token_id, batch_size=case.get("batch_size", 1))
    checked = gradscope.check_batches(model, batches, tokenizer=tokenizer)
    assert [(f.check, f.sample, f.positions) for f in report.findings] == [(f.check, f.sample, f.positions) for f in checked.findings]
    for scanned, found in zip(report.findings, checked.findings):  # check may add that the loss is NaN, and why
        assert found.message.endswith(scanned.message)


def test_distributions_match_numpy(random_rows):
    rows = random_rows(500, seed=3, roles=True)
    report = scan_rows(rows)
    tokens = np.array([int(r["attention_mask"].sum()) for r in rows])
    length = report.distributions["length"]
    for q in (0.5, 0.9, 0.99):
        assert length[f"p{round(q * 100)}"] == int(np.quantile(tokens, q, method="inverted_cdf"))
    assert (length["min"], length["max"]) == (tokens.min(), tokens.max())
    assert length["mean"] == pytest.approx(tokens.mean())
    trained = np.array([int(((r["labels"] != -100) & (np.arange(len(r["labels"])) > 0) & (r["attention_mask"] == 1)).sum()) for r in rows])
    bins = [min(9, math.floor(Fraction(int(n), max(int(d), 1)) * 10)) for n, d in zip(trained, tokens)]
    assert report.distributions["trained_fraction"]["rows"] == [bins.count(k) for k in range(10)]
    assert (report.rows, report.tokens, report.trained_tokens) == (500, tokens.sum(), trained.sum())


def test_worst_rows_are_the_rows_with_most_flagged_positions(random_rows):
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
    return scan_chunks(iter([(chunk, verdicts(chunk, [EOS], pad_token_id=PAD_ID))]), report, end_token_ids=frozenset({EOS}), pad_token_id=PAD_ID, **kwargs)


@pytest.mark.parametrize("density", [0.0, 0.001, 0.01, 0.2, 1.0])
def test_row_sums_count_each_rows_hits_sparse_or_dense(density):
    from gradscope.scan.verdicts import _row_sums

    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 300, 400)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    mask = rng.random(int(lengths.sum())) < density
    expected = [int(mask[a : a + n].sum()) for a, n in zip(starts, lengths)]
    assert _row_sums(mask, starts).tolist() == expected
