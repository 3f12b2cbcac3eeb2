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
    padded = bool(pad.any())  # else every "& ~pad" below is skipped
    documents = _documents(chunk.documents, pad, first)
    declared = chunk.documents is not None and bool(documents.any())
    labelled = chunk.labels != IGNORE_INDEX
    labelled[starts] = False  # a row's first token is no target
    trained = labelled & ~documents if declared else labelled  # a document's first token neither: boundary_leak
    end_token_ids = set(end_token_ids)
    ends = _isin(chunk.input_ids, end_token_ids)
    pad_is_end = pad_token_id is not None and pad_token_id in end_token_ids
    is_pad_id = chunk.input_ids == pad_token_id if pad_token_id is not None else None
    padding = trailing_padding(pad, is_pad_id & ~labelled, starts) if is_pad_id is not None else pad
    eos_as_pad = padding & ~_after(padding, first) & is_pad_id if pad_is_end else np.zeros_like(pad)
    misaligned = trained & (chunk.labels != chunk.input_ids)
    counts = {
        "label_misaligned": _row_sums(misaligned & ~pad if padded else misaligned, starts),  # padding: pad_leak
        "pad_leak": _row_sums(trained & pad, starts) if padded else _none(starts),
    }
    every_row = bool(chunk.known_rows().all())  # roles known for every row (a role mask, or roles read)
    known = None if every_row else chunk.known_tokens()
    closing = np.zeros(0, dtype=np.int64)  # closing positions, sorted
    if chunk.completion is not None:
        completion, prompt = chunk.completion > 0, chunk.completion == 0  # -1: a token of no role (a template's glue)
        judged = known  # the tokens whose roles are judged: real ones, of rows whose roles are known
        if padded:
            judged = ~pad if judged is None else judged & ~pad
        if judged is not None:
            completion &= judged
            prompt &= judged
        closing = _closing_with_roles(completion, ends, padding, first, eos_as_pad, starts)
        leak, untrained = prompt & trained, completion & ~labelled
        untrained[starts] = False
        if declared:
            untrained &= ~documents
        if chunk.prefill is not None:  # judged on its own
            leak &= ~chunk.prefill
            untrained &= ~chunk.prefill
        leak[closing] = untrained[closing] = False
        counts["prompt_leak"] = _row_sums(leak, starts)
        counts["completion_untrained"] = _row_sums(untrained, starts)
        prefill_trained = chunk.prefill & trained if chunk.prefill is not None else None
        counts["prefill_trained"] = _row_sums(prefill_trained, starts) if prefill_trained is not None else _none(starts)
    if known is not None:  # roles unknown: an end token right after a trained token (not itself one) closes it
        bare = _after(labelled & ~_run_holds(labelled, ends, first), first)  # after a trained run holding no end token
        unknown = ~known & ends & (~padding | (eos_as_pad & bare)) & _after(labelled & ~ends, first)
        if declared:
            unknown &= ~documents
        unknown[closing] = True
        closing = np.flatnonzero(unknown)
    counts["eos_untrained"] = _row_counts(closing[~labelled[closing]], starts)
    counts["boundary_leak"] = _row_sums(documents & labelled, starts) if declared else _none(starts)
    counts.update(_layout_counts(chunk, pad, documents, end_token_ids, pad_token_id, bos_token_id, bos_added))
    if chunk.completion is not None:  # every closing token missed but the last: turn_end_untrained instead
        turn = _turn_ends_only(closing, labelled, starts) & chunk.known_rows()
        counts["turn_end_untrained"] = np.where(turn, counts["eos_untrained"], 0)
        counts["eos_untrained"] = np.where(turn, 0, counts["eos_untrained"])
    if is_pad_id is not None and not pad_is_end:
        counts["pads_attended"] = _leading_pads_attended(is_pad_id, pad, starts)
    if chunk.cut is not None:
        counts["completion_truncated"] = chunk.cut  # its "positions": the completion tokens cut
    lengths = np.diff(starts, append=n)
    tokens = lengths - _row_sums(pad, starts) if padded else lengths
    trained_real = _row_sums(labelled & ~pad if padded else labelled, starts)
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
    completion: np.ndarray,
    ends: np.ndarray,
    pad: np.ndarray,
    first: np.ndarray,
    eos_as_pad: np.ndarray,
    starts: np.ndarray,
) -> np.ndarray:
    """``analyze.closing_positions`` with roles, as sorted positions: the last end token each completion span holds;
    for a span holding none, the end token right after it (not padding, unless an EOS masked as padding). Spans are
    read from their first and last tokens, a few per row."""
    n = len(completion)
    begins, lasts = _spans(completion, starts)
    held = np.flatnonzero(ends)
    held = held[completion[held]]  # the end tokens inside a span
    span = np.searchsorted(begins, held, side="right") - 1  # the span holding each held end token
    closing = held[np.append(span[1:] != span[:-1], True)] if len(held) else held  # the last held end of each span
    holds = np.zeros(len(begins), dtype=bool)
    holds[span] = True
    after = lasts[~holds] + 1  # the token right after a span holding no end token
    after = after[after < n]
    after = after[ends[after] & (~pad[after] | eos_as_pad[after])]  # a row's first token: dropped below
    if len(after):
        closing = np.union1d(closing, after)
    return closing[~first[closing]]


def _spans(mask: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first and the last position of each run of ``mask`` within a row, in order: where the mask (read as
    int8) steps up and down, and where a row's start cuts a run in two."""
    n = len(mask)
    if not n:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    step = np.diff(mask.view(np.int8))  # 1 before a run's first token, -1 at its last
    edge = np.flatnonzero(step != 0)  # (nonzero on booleans: several times faster than on int8)
    up = step[edge] == 1
    begins, lasts = edge[up] + 1, edge[~up]
    if mask[0]:
        begins = np.concatenate([[0], begins])
    if mask[-1]:
        lasts = np.append(lasts, n - 1)
    cut = starts[(starts > 0) & (starts < n)]
    cut = cut[mask[cut] & mask[cut - 1]]  # a run going on across a row's start
    if len(cut):
        begins, lasts = np.union1d(begins, cut), np.union1d(lasts, cut - 1)
    return begins, lasts


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
    """(R,) rows with more than one closing token (``closing``: their positions, sorted) whose last is trained and
    every other one is not."""
    idx = closing
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
        return _row_counts(np.flatnonzero(mask), starts)
    # Summed in uint32 (no row holds 2^32 tokens): twice as fast as in int64 on uint8.
    return np.add.reduceat(mask.view(np.uint8), starts, dtype=np.uint32).astype(np.int64)


def _row_counts(positions: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per-row counts of positions in a chunk's flat tokens (int64, one per row)."""
    return np.bincount(np.searchsorted(starts, positions, side="right") - 1, minlength=len(starts))


def _none(starts: np.ndarray) -> np.ndarray:
    """A count of 0 for every row."""
    return np.zeros(len(starts), dtype=np.int64)
