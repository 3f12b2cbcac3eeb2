"""checks.sample's rules over rows laid end to end, against the cumulative-sum rule they replace."""

from __future__ import annotations

import numpy as np

from gradscope.checks import sample
from gradscope.checks.sample import TRAILING_SPARSE, trailing_padding


def cumulative_trailing_padding(pad: np.ndarray, pad_like: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The reference: a reversed cumulative sum of the tokens that are neither, compared at each row's end."""
    n = len(pad)
    other = np.cumsum((~(pad | pad_like))[::-1])[::-1]
    row_end = np.repeat(np.append(starts[1:], n), np.diff(starts, append=n))
    later = np.append(other, 0)[row_end]
    return pad | (other - later == 0)


def random_rows(rng: np.random.Generator, density: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of 0-12 tokens (empty ones among them, none last), padding and pad-like tokens at ``density``, often
    in a trailing run."""
    lengths = rng.integers(0, 13, int(rng.integers(1, 40)))
    lengths[-1] = max(int(lengths[-1]), 1)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    n = int(lengths.sum())
    pad, pad_like = rng.random(n) < density / 2, rng.random(n) < density / 2
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        if length and rng.random() < 0.5:  # a trailing run, part padding and part pad-like
            k = int(rng.integers(1, length + 1))
            tail = rng.random(k) < 0.5
            pad[start + length - k : start + length] |= tail
            pad_like[start + length - k : start + length] |= ~tail
    return pad, pad_like, starts


def test_trailing_padding_equals_the_cumulative_sum_rule():
    rng = np.random.default_rng(7)
    paths = set()
    for density in (0.0, 0.05, 0.3, 0.7, 1.0):
        for _ in range(300):
            pad, pad_like, starts = random_rows(rng, density)
            paths.add(int(np.count_nonzero(pad | pad_like)) * TRAILING_SPARSE < len(pad))
            got = trailing_padding(pad, pad_like, starts)
            assert got.dtype == bool
            assert got.tolist() == cumulative_trailing_padding(pad, pad_like, starts).tolist()
    assert paths == {True, False}  # both ways reached: token by token, and the cumulative sum


def test_trailing_padding_read_one_by_one_on_any_density(monkeypatch):
    """The token-by-token way alone (the threshold out of the way), on dense rows too."""
    monkeypatch.setattr(sample, "TRAILING_SPARSE", 0)
    rng = np.random.default_rng(5)
    for density in (0.1, 0.6, 1.0):
        for _ in range(200):
            pad, pad_like, starts = random_rows(rng, density)
            assert trailing_padding(pad, pad_like, starts).tolist() == (
                cumulative_trailing_padding(pad, pad_like, starts).tolist()
            )


def test_trailing_padding_stops_at_a_row_end():
    pad = np.array([False, False, True, False, False, True])
    like = np.array([False, True, False, True, True, False])
    # row 0: [_, like, pad] trails from 1; row 1: [like, like, pad] is all padding
    assert trailing_padding(pad, like, np.array([0, 3])).tolist() == [False, True, True, True, True, True]
    # one row: 1-5 are all pad-like or padding
    assert trailing_padding(pad, like, np.array([0])).tolist() == [False, True, True, True, True, True]
    like[3] = False
    assert trailing_padding(pad, like, np.array([0])).tolist() == [False, False, True, False, True, True]
