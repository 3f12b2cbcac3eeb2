"""The numbers behind the HTML view: per-token columns as base64 (float32, int32) and the heat map as one character
per cell. Pure Python (array, bisect): views import neither torch nor numpy, and no per-number formatting runs."""

from __future__ import annotations

import base64
import math
import sys
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

from gradscope.report import SampleReport

HEAT_LEVELS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_"
"""One character per heat-map cell: 0 is a zero norm, the last is NaN/Inf, the rest a log scale lo..hi."""

FLOAT_COLUMNS = ("weight", "loss", "glog", "gemb")
INT_COLUMNS = ("label", "target")
INT_NONE = -(2**31)
"""The int32 written where an int column is None (``none`` lists those positions too)."""

_TO_CHARS = bytes.maketrans(bytes(range(len(HEAT_LEVELS))), HEAT_LEVELS.encode("ascii"))


def columns(s: SampleReport) -> dict[str, Any]:
    """A sample's per-token values as columns, read in one pass over its tokens: ``text`` a list, the numbers
    float arrays (None as NaN, ints too: exact below 2**53), ``none`` the positions of each column that hold None."""
    rows = [(t.text, t.weight, t.loss, t.logit_grad_norm, t.embedding_grad_norm, t.label, t.target_id) for t in s.tokens]
    texts, *numbers = map(list, zip(*rows)) if rows else [[]] * 7
    out: dict[str, Any] = {"text": texts, "none": {}}
    for key, values in zip((*FLOAT_COLUMNS, *INT_COLUMNS), numbers):
        try:
            out[key], out["none"][key] = array("d", values), []
        except TypeError:  # a None among them (the loss and weight of position 0)
            out["none"][key] = [i for i, v in enumerate(values) if v is None]
            out[key] = array("d", [math.nan if v is None else v for v in values])
    return out


def encoded(col: dict[str, Any]) -> dict[str, Any]:
    """The columns as the page's script reads them: ``f32`` and ``i32`` base64 of little-endian bytes, ``none``."""
    ints = {key: array("i", [INT_NONE if v != v else int(v) for v in col[key]]) for key in INT_COLUMNS}
    return {
        "text": col["text"],
        "f32": {key: _b64(array("f", col[key])) for key in FLOAT_COLUMNS},
        "i32": {key: _b64(values) for key, values in ints.items()},
        "none": col["none"],
    }


def _b64(values: array) -> str:
    if sys.byteorder == "big":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def ranges(cols: Iterable[dict[str, Any]]) -> dict[str, list[float | None]]:
    """Report-wide ranges of the shading quantities, so that colours compare across samples (norms: positive ones)."""
    cols = list(cols)
    out: dict[str, list[float | None]] = {}
    for key, floor in (("loss", -math.inf), ("glog", 0.0), ("gemb", 0.0)):
        kept = [v for c in cols for v in _finite_above(c[key], floor)]
        out[key] = [min(kept), max(kept)] if kept else [None, None]
    return out


def _finite_above(values: Iterable[float], floor: float) -> Iterable[float]:
    """The finite values above ``floor`` (NaN compares False both ways, so it is dropped too)."""
    return filter(math.inf.__gt__, filter(floor.__lt__, values))


def heat_cells(rows: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Rows of norms as one character per cell on a log scale between the smallest and largest positive norms.

    Args:
        rows: (rows, T) norms: the embedding row, then one per decoder layer.

    Returns:
        ``lo`` and ``hi`` (the scale's ends) and ``cells``, one string of T characters from :data:`HEAT_LEVELS` per
        row: level 0 is a zero norm, the last level NaN/Inf, level k in between ``lo * (hi/lo) ** ((k-1)/(n-3))``
        (each norm to its nearest level).
    """
    lo = min((min(_finite_above(row, 0.0), default=math.inf) for row in rows), default=math.inf)
    hi = max((max(_finite_above(row, 0.0), default=0.0) for row in rows), default=0.0)
    lo, hi = (lo, hi) if lo <= hi else (1.0, 1.0)  # no positive finite norm at all
    top = len(HEAT_LEVELS) - 2
    # Level boundaries half a step apart on the log scale; bisect (in C) puts each norm between two of them. NaN
    # and +Inf compare past the last boundary (+Inf), zero and negatives before the first.
    ratio = hi / lo
    bounds = [lo / 2] + [lo * ratio ** ((k - 0.5) / (top - 1)) for k in range(1, top)] + [math.inf]
    level = partial(bisect_right, bounds)
    return {"lo": lo, "hi": hi, "cells": [bytes(map(level, row)).translate(_TO_CHARS).decode("ascii") for row in rows]}


def fmt(x: float | None, digits: int = 4) -> str:
    """A number for a reader: ``digits`` significant digits, ``nan`` when not finite, ``–`` when None."""
    if x is None:
        return "–"
    return "nan" if not math.isfinite(x) else f"{x:.{digits}g}"
