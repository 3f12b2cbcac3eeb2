"""The scan's BOS and packing verdicts against check's per-row rules, on random packed rows with BOS tokens."""

from __future__ import annotations

import numpy as np
import pytest

from gradscope.checks.masking import check_sample
from gradscope.data.chunks import Chunk
from gradscope.scan.verdicts import CHECKS, verdicts

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


@pytest.mark.parametrize("roles", [True, False], ids=["roles", "no roles"])
@pytest.mark.parametrize("bos", [BOS, EOS], ids=["bos", "bos is eos"])
@pytest.mark.parametrize("adds_bos", [True, False], ids=["adds bos", "adds none"])
def test_layout_verdicts_equal_check_row_by_row(bos, adds_bos, roles, reference_view):
    rng = np.random.default_rng(11 + bos + 2 * adds_bos + 4 * roles)
    rows = [packed_row(rng, bos) for _ in range(1500)]
    if not roles:
        rows = [{k: v for k, v in r.items() if k != "completion_mask"} for r in rows]
    v = verdicts(as_chunk(rows), [EOS], pad_token_id=PAD_ID, bos_token_id=bos, bos_added=adds_bos)
    seen = set()
    for i, row in enumerate(rows):
        view = reference_view(row, i, bos=bos, adds_bos=adds_bos, documents=True)
        expected = {f.check: len(f.positions) for f in check_sample(view)}
        got = {name: int(v.positions[name][i]) for name in CHECKS if v.fails[name][i]}
        if "no_loss" in got:
            got["no_loss"] = 0
        assert got == expected, f"row {i}: {row}"
        seen.update(got)
    wanted = LAYOUT - (set() if adds_bos else {"bos_missing"})
    assert wanted <= seen  # the random rows reached every layout check


def test_no_bos_known_no_bos_verdicts():
    rows = [packed_row(np.random.default_rng(3), BOS) for _ in range(50)]
    v = verdicts(as_chunk(rows), [EOS], pad_token_id=PAD_ID)
    for name in ("bos_duplicated", "bos_missing", "packed_without_boundaries"):
        assert not v.fails[name].any()
