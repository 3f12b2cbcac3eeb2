"""What every per-sample check reads: one sample's tokens, labels, roles and what the gradient trained."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from gradscope.constants import COMPLETION, PAD, PROMPT


@dataclass(frozen=True)
class SampleView:
    """One sample as the checks see it. Tensors are 1D (T,) on the CPU."""

    index: int
    input_ids: torch.Tensor
    roles: torch.Tensor  # role codes from gradscope.batch
    trained: torch.Tensor  # bool
    target_id: torch.Tensor  # -1 where untrained
    texts: Sequence[str | None]
    end_token_ids: frozenset[int]
    pad_token_id: int | None
    document_starts: frozenset[int] = frozenset()  # first positions of packed documents after the first
    completion_cut: int = 0  # completion tokens that truncation removed from this row (known when gradscope tokenized)
    bos_token_id: int | None = None
    bos_added: bool = False  # the tokenizer puts bos_token_id first in every encoding (bos_missing)
    media_token_ids: frozenset[int] = frozenset()  # image/video/audio placeholders (media_tokens_trained)
    boundaries_known: bool = False  # document_starts were read from the batch (the packing probe ran)
    prefills: tuple[tuple[int, ...], ...] = ()  # the chat template's generation-prompt prefills (prefill_trained)
    labelled: torch.Tensor | None = None  # bool: labels[t] != -100, the pipeline's declared intent; None: no labels

    @property
    def roles_known(self) -> bool:
        return bool(((self.roles == PROMPT) | (self.roles == COMPLETION)).any())

    @cached_property
    def closing(self) -> tuple[int, ...]:
        """``closing_positions`` of this sample, computed once: three checks read it."""
        return tuple(closing_positions(self))

    @cached_property
    def prefill(self) -> frozenset[int]:
        """Positions of a generation-prompt prefill at the start of an assistant turn: right at the start of a
        completion span, or right before it (roles that count the prefill as prompt). Not judged as prompt or
        completion: ``prefill_trained`` reads them."""
        if not self.prefills or not self.roles_known:
            return frozenset()
        completion = (self.roles == COMPLETION).numpy()
        found = prefill_positions(self.input_ids.numpy(), completion, np.zeros(1, dtype=np.int64), self.prefills)
        return frozenset(np.flatnonzero(found).tolist())

    def where(self, mask: torch.Tensor) -> list[int]:
        """Positions >= 1 where mask holds, documents' first tokens left out (they are never prediction targets)."""
        mask = mask.clone()
        mask[0] = False
        mask[list(self.document_starts)] = False
        return mask.nonzero().flatten().tolist()


def closing_positions(s: SampleView) -> list[int]:
    """Positions of the end tokens that close a completion, which must be trained for the model to stop.

    With roles: for each completion span, the end token the span itself holds (its last one); a span holding none is
    closed by the end token right after it (a template that hands the end-of-turn token to the next turn). Without
    roles the gradient is the evidence: an end token right after a trained token that is not itself an end token
    closes what was being trained.

    Padding (``padding``: a 2D mask's zeros, or the trailing run of untrained pad ids) never closes anything, whatever
    its id, with one exception that is a bug in itself: when the pad id is an end token and a span (without roles:
    a trained run) holding no end token runs straight into padding, the first pad is where the span's EOS was, masked
    as padding (``attention_mask = ids != pad``, or ``labels[ids == pad] = -100``).
    """
    ends = torch.isin(s.input_ids, torch.tensor(sorted(s.end_token_ids), dtype=s.input_ids.dtype))
    pad = padding(s)
    first_pad = torch.zeros_like(pad)
    first_pad[1:] = pad[1:] & ~pad[:-1] & (s.input_ids[1:] == pad_token_of(s))
    if not s.roles_known:
        runs = true_runs(s.trained)
        bare = [last for first, last in runs if last + 1 < len(ends) and not ends[first : last + 1].any()]
        after_trained = torch.zeros_like(s.trained)
        after_trained[1:] = s.trained[:-1] & ~ends[:-1]
        eos_as_pad = torch.zeros_like(pad)
        eos_as_pad[[last + 1 for last in bare]] = True
        return s.where(ends & (~pad | (first_pad & eos_as_pad)) & after_trained)
    out = []
    for first, last in true_runs(s.roles == COMPLETION):
        held = [t for t in range(first, last + 1) if ends[t]]
        if held:
            out.append(held[-1])
        elif last + 1 < len(ends) and ends[last + 1] and (not pad[last + 1] or first_pad[last + 1]):
            out.append(last + 1)
    return [p for p in out if p > 0]


def padding(s: SampleView) -> torch.Tensor:
    """(T,) bool: padding, the 2D attention mask's zeros and the trailing run of untrained pad ids after the last
    document (packed rows carry no 2D mask with zeros: a 4D mask, or padding marked 1 in attention_mask)."""
    pad = s.roles == PAD
    if s.pad_token_id is None:
        return pad
    like = ((s.input_ids == s.pad_token_id) & ~s.trained).numpy()
    return torch.from_numpy(trailing_padding(pad.numpy(), like, np.zeros(1, dtype=np.int64)))


# --- rules over rows laid end to end (flat (N,) arrays, ``starts`` (R,)): check reads one row, scan a chunk -----


TRAILING_SPARSE = 2
"""Fewer padding or pad-like tokens than one in TRAILING_SPARSE (half): ``trailing_padding`` reads them one by one
(measured faster than the cumulative sum over every token below about half)."""


def trailing_padding(pad: np.ndarray, pad_like: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(N,) the mask's padding and each row's trailing run of padding or ``pad_like`` tokens (untrained pad ids)."""
    n = len(pad)
    candidates = np.flatnonzero(pad | pad_like)
    if len(candidates) * TRAILING_SPARSE < n:  # few: each is trailing when the candidates fill the rest of its row
        out = pad.copy()
        ends = np.append(starts[1:], n)
        row = np.searchsorted(starts, candidates, side="right") - 1
        row_end = ends[row]
        rest = np.searchsorted(candidates, ends)[row] - np.arange(len(candidates))  # candidates in [t, row end)
        out[candidates[rest == row_end - candidates]] = True
        return out
    other = np.cumsum((~(pad | pad_like))[::-1])[::-1]  # tokens from t to the end that are not pad-like
    row_end = np.repeat(np.append(starts[1:], n), np.diff(starts, append=n))
    later = np.append(other, 0)[row_end]  # those of the rows after t's row
    return pad | (other - later == 0)


def prefill_positions(
    ids: np.ndarray, completion: np.ndarray, starts: np.ndarray, prefills: Sequence[Sequence[int]]
) -> np.ndarray:
    """(N,) where a generation-prompt prefill stands at the start of an assistant turn: a prefill run right at the
    start of a completion span, else right before it, within the span's row."""
    n = len(ids)
    first = np.zeros(n, dtype=bool)
    first[starts] = True
    begins = completion & (first | ~np.concatenate([[False], completion[:-1]]))  # each span's first token
    row = np.repeat(np.arange(len(starts)), np.diff(starts, append=n))
    out = np.zeros(n, dtype=bool)
    for run in prefills:
        k = len(run)
        if not k or k > n:
            continue
        match = np.zeros(n, dtype=bool)  # the run starts here, inside one row
        match[: n - k + 1] = row[: n - k + 1] == row[k - 1 :]
        for j, token in enumerate(run):
            match[: n - k + 1] &= ids[j : n - k + 1 + j] == token
        at = match & begins
        before = np.zeros(n, dtype=bool)
        before[: n - k] = match[: n - k] & begins[k:] & ~match[k:] & (row[: n - k] == row[k:])
        for where in (np.flatnonzero(at), np.flatnonzero(before)):
            out[(where[:, None] + np.arange(k)).ravel()] = True
    return out


def pad_token_of(s: SampleView) -> int:
    """The pad id when it is also an end token (pad == eos), else -1 (matches no token)."""
    return s.pad_token_id if s.pad_token_id is not None and s.pad_token_id in s.end_token_ids else -1


def true_runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs of True as (first, last) pairs."""
    runs, start = [], None
    for i, flag in enumerate(mask.tolist() + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i - 1))
            start = None
    return runs
