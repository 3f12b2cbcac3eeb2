"""The scan's checks, vectorized over a chunk of rows: the same verdicts analyze gives row by row."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from gradscope.checks.layout import (
    bos_absent,
    bos_twice,
    opening_skip,
    row_openings,
    undeclared_documents,
)
from gradscope.checks.sample import trailing_padding
from gradscope.constants import IGNORE_INDEX
from gradscope.data.chunks import Chunk
from gradscope.report.catalogue import ROOT_CHECKS, SCAN_CHECKS

CHECKS = SCAN_CHECKS
"""What a scan checks (the catalogue's scan twins), in the order of ``analyze``: a root cause first, then the role
and layout checks. completion_truncated (a warning) fires only on raw rows, where the scan truncates
(``--max-length``) and so knows what was cut. The BOS checks need the tokenizer's BOS (``bos_missing``: a tokenizer
that adds it); the packing checks read the documents the data declares (``Chunk.documents``)."""

JUDGED = tuple(name for name in CHECKS if name not in ROOT_CHECKS)
"""Checks that judge a row only when no root cause (no_loss, label_misaligned) fired."""

UNKNOWN_ROLES = "roles_unknown"
"""Rows whose roles no source gave (a warning: their prompt was not checked); counted by the accumulator."""


@dataclass
class Verdicts:
    """What the checks say about each row of a chunk; every array is (R,)."""

    tokens: np.ndarray  # non-padding tokens
    trained: np.ndarray  # trained tokens, padding excepted (as in check's summary)
    positions: dict[str, np.ndarray]  # check -> flagged positions in the row (0 where the check does not fire)
    fails: dict[str, np.ndarray]  # check -> bool, root causes first as in analyze.check_sample


def verdicts(
    chunk: Chunk,
    end_token_ids: Iterable[int],
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
    bos_added: bool = False,
) -> Verdicts:
    """Every check on every row of a chunk, vectorized; the rules are those of ``gradscope.analyze``.

    Args:
        chunk: The rows.
        end_token_ids: Ids of the tokens that close a completion (EOS, end of turn).
        pad_token_id: The pad id; when it is also an end token, an EOS masked as padding right after a completion
            still closes it (``closing_positions``).
        bos_token_id: The tokenizer's BOS, for the BOS and packing checks.
        bos_added: The tokenizer puts that BOS first in every encoding (``bos_missing``).

    Returns:
        Per-row counts and verdicts.
    """
    n, starts = len(chunk.input_ids), chunk.starts
    first = np.zeros(n, dtype=bool)
    first[starts] = True  # position 0 of each row: never a prediction target
    pad = chunk.attention == 0 if chunk.attention is not None else np.zeros(n, dtype=bool)
    documents = _documents(chunk.documents, pad, first)
    labelled = (chunk.labels != IGNORE_INDEX) & ~first
    trained = labelled & ~documents  # a document's first token is no prediction target either: boundary_leak
    end_token_ids = set(end_token_ids)
    ends = _isin(chunk.input_ids, end_token_ids)
    pad_is_end = pad_token_id is not None and pad_token_id in end_token_ids
    padding = (
        trailing_padding(pad, (chunk.input_ids == pad_token_id) & ~labelled, starts)
        if pad_token_id is not None
        else pad
    )
    eos_as_pad = (
        padding & ~_after(padding, first) & (chunk.input_ids == pad_token_id) if pad_is_end else np.zeros_like(pad)
    )
    masks: dict[str, np.ndarray] = {
        "label_misaligned": trained & (chunk.labels != chunk.input_ids) & ~pad,  # padding: pad_leak
        "pad_leak": trained & pad,
    }
    known = chunk.known_tokens()  # rows whose roles are known (all, or none without a role mask)
    closing = np.zeros(n, dtype=bool)
    if chunk.completion is not None:
        completion = (chunk.completion > 0) & ~pad & known
        prompt = (chunk.completion == 0) & ~pad & known  # -1: a token of no role (a template's glue)
        closing = _closing_with_roles(completion, ends, padding, first, eos_as_pad)
        prefill = chunk.prefill if chunk.prefill is not None else np.zeros(n, dtype=bool)  # judged on its own
        masks["prompt_leak"] = prompt & trained & ~closing & ~prefill
        masks["completion_untrained"] = completion & ~labelled & ~closing & ~first & ~documents & ~prefill
        masks["prefill_trained"] = prefill & trained
    if not known.all():  # roles unknown: an end token right after a trained token (not itself one) closes it
        bare = _after(labelled & ~_run_holds(labelled, ends, first), first)  # after a trained run holding no end token
        closing |= ~known & ends & (~padding | (eos_as_pad & bare)) & _after(labelled & ~ends, first) & ~documents
    masks["eos_untrained"] = closing & ~labelled
    masks["boundary_leak"] = documents & labelled
    counts = {name: _row_sums(mask, starts) for name, mask in masks.items()}
    counts.update(_layout_counts(chunk, pad, documents, end_token_ids, pad_token_id, bos_token_id, bos_added))
    if chunk.completion is not None:  # every closing token missed but the last: turn_end_untrained instead
        turn = _turn_ends_only(closing, labelled, starts) & chunk.known_rows()
        counts["turn_end_untrained"] = np.where(turn, counts["eos_untrained"], 0)
        counts["eos_untrained"] = np.where(turn, 0, counts["eos_untrained"])
    if pad_token_id is not None and not pad_is_end:
        counts["pads_attended"] = _leading_pads_attended(chunk.input_ids == pad_token_id, pad, starts)
    if chunk.cut is not None:
        counts["completion_truncated"] = chunk.cut  # its "positions": the completion tokens cut
    tokens = np.diff(starts, append=n) - _row_sums(pad, starts)
    trained_real = _row_sums(labelled & ~pad, starts)
    any_trained = (trained_real + counts["pad_leak"]) > 0  # padding included: a trained pad is still a loss term
    return Verdicts(tokens, trained_real, *_with_precedence(counts, any_trained, tokens))


def _documents(declared: np.ndarray | None, pad: np.ndarray, first: np.ndarray) -> np.ndarray:
    """(N,) declared document starts that follow a real token and are real (padding is no document), as
    ``verbs.samples`` gives them to check."""
    if declared is None:
        return np.zeros_like(pad)
    return declared & ~pad & _after(~pad, first)


def _layout_counts(
    chunk: Chunk,
    pad: np.ndarray,
    documents: np.ndarray,
    ends: set[int],
    pad_token_id: int | None,
    bos: int | None,
    bos_added: bool,
) -> dict[str, np.ndarray]:
    """bos_duplicated, bos_missing and packed_without_boundaries per row, by ``checks.layout``'s own rules."""
    if bos is None:
        return {}
    ids, starts = chunk.input_ids, chunk.starts
    opening = row_openings(opening_skip(ids, pad, starts, pad_token_id, bos), starts)
    out = {
        "bos_duplicated": 2 * bos_twice(ids, starts, opening, bos).astype(np.int64),
        "packed_without_boundaries": _row_sums(
            undeclared_documents(ids, ~pad, starts, opening, documents, bos, bos in ends), starts
        ),
    }
    if bos_added:
        out["bos_missing"] = _row_sums(bos_absent(ids, starts, opening, documents, bos), starts)
    return out


def _with_precedence(
    counts: dict[str, np.ndarray], any_trained: np.ndarray, tokens: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A row with no trained token is no_loss alone; a misaligned row is label_misaligned alone."""
    no_loss = ~any_trained
    misaligned = ~no_loss & (counts["label_misaligned"] > 0)
    roles_apply = ~no_loss & ~misaligned
    fails = {"no_loss": no_loss, "label_misaligned": misaligned}
    positions = {
        "no_loss": np.where(no_loss, tokens, 0),
        "label_misaligned": np.where(misaligned, counts["label_misaligned"], 0),
    }
    for name in JUDGED:
        count = counts.get(name, np.zeros_like(tokens))
        fails[name] = roles_apply & (count > 0)
        positions[name] = np.where(fails[name], count, 0)
    return positions, fails


def _isin(ids: np.ndarray, wanted: Iterable[int]) -> np.ndarray:
    out = np.zeros(len(ids), dtype=bool)
    for token_id in sorted(set(wanted)):  # a handful of ids: one comparison pass each
        out |= ids == token_id
    return out


def _after(mask: np.ndarray, first: np.ndarray) -> np.ndarray:
    """mask[t - 1] at every t, within each row (False at a row's first position)."""
    out = np.empty_like(mask)
    out[0] = False
    out[1:] = mask[:-1]
    out &= ~first
    return out


def _run_holds(mask: np.ndarray, ends: np.ndarray, first: np.ndarray) -> np.ndarray:
    """True at every position of a run of mask (within a row) that holds an end token."""
    begins = mask & ~_after(mask, first)
    run = np.cumsum(begins)
    holds = np.zeros(int(run[-1]) + 1 if len(run) else 1, dtype=bool)
    holds[run[mask & ends]] = True
    return mask & holds[run]


def _closing_with_roles(
    completion: np.ndarray, ends: np.ndarray, pad: np.ndarray, first: np.ndarray, eos_as_pad: np.ndarray
) -> np.ndarray:
    """``analyze.closing_positions`` with roles: the last end token each completion span holds; for a span holding
    none, the end token right after it (not padding, unless an EOS masked as padding). Spans are read from their
    first and last tokens, a few per row."""
    n = len(completion)
    begins = np.flatnonzero(completion & ~_after(completion, first))  # each span's first token
    continues = np.zeros_like(completion)
    continues[:-1] = completion[1:] & ~first[1:]
    lasts = np.flatnonzero(completion & ~continues)  # each span's last token, in the same order
    held = np.flatnonzero(completion & ends)
    span = np.searchsorted(begins, held, side="right") - 1  # the span holding each held end token
    closing = np.zeros_like(completion)
    if len(held):
        closing[held[np.append(span[1:] != span[:-1], True)]] = True  # the last held end of each span
    holds = np.zeros(len(begins), dtype=bool)
    holds[span] = True
    after = lasts[~holds] + 1  # the token right after a span holding no end token
    after = after[after < n]
    after = after[ends[after] & (~pad[after] | eos_as_pad[after])]  # a row's first token: dropped below
    closing[after] = True
    return closing & ~first


def _leading_pads_attended(is_pad_id: np.ndarray, pad: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(R,) ``layout.pads_attended``: per row, the attended tokens of its leading run of pad ids, 0 when the run is
    the whole row. Each pad id is read on its own: it leads its row when pad ids fill the row up to it."""
    n = len(is_pad_id)
    lengths = np.diff(starts, append=n)
    ids = np.flatnonzero(is_pad_id)
    row = np.searchsorted(starts, ids, side="right") - 1
    row_first = np.searchsorted(ids, starts)  # (R,) the index in ids of each row's first pad id
    lead = ids - starts[row] == np.arange(len(ids)) - row_first[row]  # every position before it a pad id too
    run = np.bincount(row[lead], minlength=len(starts))
    attended = np.bincount(row[lead & ~pad[ids]], minlength=len(starts))
    return np.where(run < lengths, attended, 0)


def _turn_ends_only(closing: np.ndarray, trained: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(R,) rows with more than one closing token whose last is trained and every other one is not."""
    idx = np.flatnonzero(closing)
    out = np.zeros(len(starts), dtype=bool)
    if not len(idx):
        return out
    row = np.searchsorted(starts, idx, side="right") - 1
    count = np.bincount(row, minlength=len(starts))
    missed = np.bincount(row, weights=~trained[idx], minlength=len(starts))
    last = np.append(row[1:] != row[:-1], True)
    last_trained = np.zeros(len(starts), dtype=bool)
    last_trained[row[last]] = trained[idx[last]]
    return (count > 1) & last_trained & (missed == count - 1)


SPARSE = 64
"""A mask with fewer than one hit in SPARSE tokens is counted hit by hit (most checks, on most data)."""


def _row_sums(mask: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per-row counts of a boolean mask over a chunk's flat tokens (int64, one per row)."""
    hits = np.count_nonzero(mask)
    if hits * SPARSE < len(mask):  # each hit's row by binary search: a few hits cost far less than a full pass
        return np.bincount(np.searchsorted(starts, np.flatnonzero(mask), side="right") - 1, minlength=len(starts))
    return np.add.reduceat(mask.view(np.uint8), starts, dtype=np.int64)
