"""The scan's BOS and packing verdicts against check's per-row rules, on random packed rows with BOS tokens."""

from __future__ import annotations

import numpy as np
import pytest

from gradscope.checks.masking import check_sample
from gradscope.data.chunks import Chunk
from gradscope.scan.verdicts import (
    CHECKS,
    Verdicts,
    _closing_with_roles,
    _leading_pads_attended,
    _row_sums,
    verdicts,
)

EOS, PAD_ID, BOS = 2, 0, 1
LAYOUT = {"boundary_leak", "bos_duplicated", "bos_missing", "packed_without_boundaries"}


def packed_row(rng: np.random.Generator, bos: int) -> dict[str, np.ndarray]:
    """1-3 documents, each opened by a BOS (or not, or twice), restarting position_ids (or not), padded either side;
    labels copy completion spans, with the corruptions a packer makes (first tokens labelled, prompt trained, holes)."""
    ids, positions, completion = [], [], []
    for _ in range(int(rng.integers(1, 4))):
        n = int(rng.integers(2, 9))
        doc = list(rng.integers(3, 9, n))
        head = int(rng.choice([0, 1, 1, 1, 2]))
        doc = [bos] * head + doc
        if rng.random() < 0.6:
            doc.append(EOS)
        role = [0] * len(doc)
        start = int(rng.integers(0, len(doc)))
        role[start:] = [1] * (len(doc) - start)
        restart = not ids or rng.random() < 0.7
        first = 0 if restart else positions[-1] + 1
        ids += doc
        positions += list(range(first, first + len(doc)))
        completion += role
    ids, positions, completion = np.array(ids), np.array(positions), np.array(completion)
    attention = np.ones(len(ids), dtype=np.int64)
    if rng.random() < 0.3:  # padding on the right, masked
        k = int(rng.integers(1, 4))
        ids, attention = np.append(ids, [PAD_ID] * k), np.append(attention, [0] * k)
        positions, completion = np.append(positions, positions[-1] + 1 + np.arange(k)), np.append(completion, [0] * k)
    elif rng.random() < 0.2:  # on the left, masked or attended
        k = int(rng.integers(1, 4))
        ids, attention = np.append([PAD_ID] * k, ids), np.append([int(rng.random() < 0.3)] * k, attention)
        positions, completion = np.append(np.zeros(k, dtype=np.int64), positions), np.append([0] * k, completion)
    labels = np.where(completion == 1, ids, -100)
    kind = rng.integers(0, 5)
    if kind == 2:
        labels[
            rng.random(len(labels)) < 0.3
        ] = -100  # holes: completion tokens (documents' first ones among them) missed
    elif kind == 0:
        labels = np.where(attention == 1, ids, -100)  # every real token trained, documents' first ones too
    elif kind == 1:
        restarts = np.flatnonzero(positions[1:] != positions[:-1] + 1) + 1
        labels[restarts] = ids[restarts]  # a packer labelling each document's first token
    row = {"input_ids": ids, "labels": labels, "attention_mask": attention, "completion_mask": completion}
    if rng.random() < 0.8:
        row["position_ids"] = positions
    return row


def as_chunk(rows: list[dict[str, np.ndarray]]) -> Chunk:
    lengths = [len(r["input_ids"]) for r in rows]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    flat = {
        k: np.concatenate([r[k] for r in rows])
        for k in ("input_ids", "labels", "attention_mask", "completion_mask")
        if k in rows[0]
    }
    documents = np.zeros(len(flat["input_ids"]), dtype=bool)
    for start, row in zip(starts, rows, strict=True):
        if "position_ids" in row:
            p = row["position_ids"]
            documents[start + 1 : start + len(p)] = p[1:] != p[:-1] + 1
    return Chunk(
        0,
        starts,
        flat["input_ids"],
        flat["labels"],
        flat["attention_mask"],
        flat.get("completion_mask"),
        documents=documents,
    )


def equal_to_check_row_by_row(v: Verdicts, views: list) -> set[str]:
    """Assert that each row's scan verdicts are check's on the row's view (``check_sample``: the same checks, the same
    number of positions); the checks that fired."""
    seen = set()
    for i, view in enumerate(views):
        expected = {f.check: len(f.positions) for f in check_sample(view)}
        got = {name: int(v.positions[name][i]) for name in CHECKS if v.fails[name][i]}
        if "no_loss" in got:
            got["no_loss"] = 0
        assert got == expected, f"row {i}: {view.input_ids.tolist()}"
        seen.update(got)
    return seen


@pytest.mark.parametrize("roles", [True, False], ids=["roles", "no roles"])
@pytest.mark.parametrize("bos", [BOS, EOS], ids=["bos", "bos is eos"])
@pytest.mark.parametrize("adds_bos", [True, False], ids=["adds bos", "adds none"])
def test_layout_verdicts_equal_check_row_by_row(bos, adds_bos, roles, reference_view):
    rng = np.random.default_rng(11 + bos + 2 * adds_bos + 4 * roles)
    rows = [packed_row(rng, bos) for _ in range(1500)]
    if not roles:
        rows = [{k: v for k, v in r.items() if k != "completion_mask"} for r in rows]
    v = verdicts(as_chunk(rows), [EOS], pad_token_id=PAD_ID, bos_token_id=bos, bos_added=adds_bos)
    views = [reference_view(row, i, bos=bos, adds_bos=adds_bos, documents=True) for i, row in enumerate(rows)]
    seen = equal_to_check_row_by_row(v, views)
    wanted = LAYOUT - (set() if adds_bos else {"bos_missing"})
    assert wanted <= seen  # the random rows reached every layout check


def test_no_bos_known_no_bos_verdicts():
    rows = [packed_row(np.random.default_rng(3), BOS) for _ in range(50)]
    v = verdicts(as_chunk(rows), [EOS], pad_token_id=PAD_ID)
    for name in ("bos_duplicated", "bos_missing", "packed_without_boundaries"):
        assert not v.fails[name].any()


# --- the span and pad-id rules read from a few positions, against the whole-chunk rules they replace -------------


def after_reference(mask: np.ndarray, first: np.ndarray) -> np.ndarray:
    out = np.zeros_like(mask)
    out[1:] = mask[:-1]
    return out & ~first


def closing_with_roles_reference(
    completion: np.ndarray, ends: np.ndarray, pad: np.ndarray, first: np.ndarray, eos_as_pad: np.ndarray
) -> np.ndarray:
    """The span numbers of every token (a cumulative sum) and np.isin over them."""
    begins = completion & ~after_reference(completion, first)
    span = np.cumsum(begins)
    held = np.flatnonzero(completion & ends)
    closing = np.zeros_like(completion)
    if len(held):
        closing[held[np.append(span[held][1:] != span[held][:-1], True)]] = True
    continues = np.zeros_like(completion)
    continues[:-1] = completion[1:] & ~first[1:]
    last = completion & ~continues & ~np.isin(span, span[held])
    closing |= after_reference(last, first) & ends & (~pad | eos_as_pad)
    return closing & ~first


def leading_pads_attended_reference(is_pad_id: np.ndarray, pad: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Each row's first token that is not a pad id (a minimum over every token), then the run before it."""
    n = len(is_pad_id)
    lengths = np.diff(starts, append=n)
    where = np.arange(n)
    first_other = np.minimum.reduceat(np.where(is_pad_id, n, where), starts)
    lead = where < np.repeat(first_other, lengths)
    counts = np.add.reduceat(lead & ~pad, starts, dtype=np.int64)
    return np.where(first_other < starts + lengths, counts, 0)


def flat_rows(rng: np.random.Generator, nonempty: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows of 1-14 tokens (0-14 unless ``nonempty``; never the last one empty) laid end to end: starts, first, N."""
    lengths = rng.integers(1 if nonempty else 0, 15, int(rng.integers(1, 30)))
    lengths[-1] = max(int(lengths[-1]), 1)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    n = int(lengths.sum())
    first = np.zeros(n, dtype=bool)
    first[starts] = True
    return starts, first, n


def test_closing_with_roles_equals_the_span_number_rule():
    rng = np.random.default_rng(23)
    closed = 0
    for _ in range(3000):
        starts, first, n = flat_rows(rng)
        completion = rng.random(n) < rng.choice([0.2, 0.5, 0.9])
        ends = rng.random(n) < rng.choice([0.05, 0.2, 0.5])
        pad = rng.random(n) < rng.choice([0.0, 0.2, 0.6])
        eos_as_pad = pad & (rng.random(n) < 0.5)
        got = _closing_with_roles(completion, ends, pad, first, eos_as_pad, starts)
        expected = closing_with_roles_reference(completion, ends, pad, first, eos_as_pad)
        assert got.tolist() == np.flatnonzero(expected).tolist()
        closed += len(got)
    assert closed > 1000


def test_leading_pads_attended_equals_the_minimum_rule():
    rng = np.random.default_rng(29)
    seen = set()
    for _ in range(3000):
        starts, _, n = flat_rows(rng, nonempty=True)  # the reference's reduceat reads an empty row's next token
        is_pad_id = rng.random(n) < rng.choice([0.0, 0.3, 0.8, 1.0])
        for start, length in zip(starts.tolist(), np.diff(starts, append=n).tolist(), strict=True):
            if rng.random() < 0.4:  # a leading run of pad ids
                is_pad_id[start : start + int(rng.integers(1, length + 1))] = True
        pad = rng.random(n) < rng.choice([0.0, 0.5, 1.0])
        got = _leading_pads_attended(is_pad_id, pad, starts)
        assert got.tolist() == leading_pads_attended_reference(is_pad_id, pad, starts).tolist()
        seen.update(np.sign(got).tolist())
    assert seen == {0, 1}


def test_leading_pads_attended_on_empty_rows():
    is_pad_id = np.array([True, True, False, True, True])  # rows: [P, P, x], [], [P, P]
    pad = np.array([False, True, False, False, False])
    assert _leading_pads_attended(is_pad_id, pad, np.array([0, 3, 3])).tolist() == [1, 0, 0]


@pytest.mark.parametrize("prefills", [(), ((5, 6),)], ids=["no prefill", "prefill"])
def test_verdicts_with_some_rows_of_unknown_roles_equal_check_row_by_row(prefills, reference_view):
    """Rows whose roles are known beside rows whose roles no source gave (``known``), and a template's prefill."""
    from dataclasses import replace

    from gradscope.scan.roles import prefill_mask

    rng = np.random.default_rng(31 + len(prefills))
    rows = [packed_row(rng, BOS) for _ in range(1500)]
    for row in rows:  # a prefill run where a completion span starts, in some rows
        begins = np.flatnonzero(np.diff(row["completion_mask"], prepend=0) == 1)
        if len(begins) and begins[0] + 2 <= len(row["input_ids"]) and rng.random() < 0.5:
            row["input_ids"][begins[0] : begins[0] + 2] = (5, 6)
            row["labels"] = np.where(row["labels"] != -100, row["input_ids"], -100)
    known = rng.random(len(rows)) < 0.6
    chunk = replace(as_chunk(rows), known=known)
    if prefills:
        chunk = replace(chunk, prefill=prefill_mask(chunk, prefills))
    v = verdicts(chunk, [EOS], pad_token_id=PAD_ID, bos_token_id=BOS, bos_added=True)
    shown = [
        row if known[i] else {k: x for k, x in row.items() if k != "completion_mask"} for i, row in enumerate(rows)
    ]
    views = [
        reference_view(row, i, bos=BOS, adds_bos=True, documents=True, prefills=prefills) for i, row in enumerate(shown)
    ]
    seen = equal_to_check_row_by_row(v, views)
    wanted = {"prompt_leak", "completion_untrained", "eos_untrained"} | ({"prefill_trained"} if prefills else set())
    assert wanted <= seen  # the random rows reached the role checks


def test_row_sums_count_each_rows_hits_sparse_or_dense():
    rng = np.random.default_rng(37)
    for density in (0.0, 0.001, 0.3, 1.0):  # by hit (below one in SPARSE) and by a sum over every token
        lengths = rng.integers(1, 300, 500)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        mask = rng.random(int(lengths.sum())) < density
        expected = [int(mask[a : a + k].sum()) for a, k in zip(starts, lengths, strict=True)]
        got = _row_sums(mask, starts)
        assert got.dtype == np.int64 and got.tolist() == expected
