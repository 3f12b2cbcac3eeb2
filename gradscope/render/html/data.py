"""The numbers behind the HTML view: per-token columns as base64 (float32, int32) and the heat map's norms as base64
bfloat16. Pure Python (array, base64, byte slicing, all of it C loops): views import neither torch nor numpy, no
per-number formatting runs, and the colour scale is the page script's."""

from __future__ import annotations

import base64
import math
import struct
import sys
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

from gradscope.report import SampleReport

FLOAT_COLUMNS = ("weight", "loss", "glog", "gemb")
INT_COLUMNS = ("label", "target")
INT_NONE = -(2**31)
"""The int32 written where an int column is None (``none`` lists those positions too)."""


def columns(s: SampleReport) -> dict[str, Any]:
    """A sample's per-token values as columns, read in one pass over its tokens: ``text`` a list, each number
    column a list with None replaced (NaN in a float column, :data:`INT_NONE` in an int one), ``none`` the positions
    of each column that hold None (the loss and weight of position 0)."""
    rows = [
        (t.text, t.weight, t.loss, t.logit_grad_norm, t.embedding_grad_norm, t.label, t.target_id) for t in s.tokens
    ]
    texts, *numbers = map(list, zip(*rows, strict=True)) if rows else [[]] * 7
    out: dict[str, Any] = {"text": texts, "none": {}}
    for key, values in zip((*FLOAT_COLUMNS, *INT_COLUMNS), numbers, strict=True):
        missing = _none_positions(values)
        fill = math.nan if key in FLOAT_COLUMNS else INT_NONE
        for i in missing:
            values[i] = fill
        out[key], out["none"][key] = values, missing
    return out


def _none_positions(values: list[Any]) -> list[int]:
    """Where ``values`` holds None, found by ``list.index`` (a C scan; None is rare)."""
    found: list[int] = []
    i = -1
    while True:
        try:
            i = values.index(None, i + 1)
        except ValueError:
            return found
        found.append(i)


def encoded(col: dict[str, Any]) -> dict[str, Any]:
    """The columns as the page's script reads them: ``f32`` and ``i32`` base64 of little-endian bytes, ``none``."""
    return {
        "text": col["text"],
        "f32": {key: _b64(little_endian("f", col[key])) for key in FLOAT_COLUMNS},
        "i32": {key: _b64(little_endian("i", col[key])) for key in INT_COLUMNS},
        "none": col["none"],
    }


def little_endian(code: str, values: Sequence[float]) -> bytes:
    """``values`` as little-endian float32 (``code`` "f") or int32 ("i") bytes, packed by ``struct`` (several times
    faster than ``array``'s conversion of each item). A finite float beyond float32's range becomes Inf, as a float32
    cast makes it (``struct`` refuses it; ``array`` writes Inf)."""
    try:
        return struct.pack(f"<{len(values)}{code}", *values)
    except OverflowError:
        out = array(code, values)
        if sys.byteorder == "big":
            out.byteswap()
        return out.tobytes()


def _b64(raw: bytes | bytearray) -> str:
    return base64.b64encode(raw).decode("ascii")


def ranges(cols: Iterable[dict[str, Any]]) -> dict[str, list[float | None]]:
    """Report-wide ranges of the shading quantities, so that colours compare across samples (norms: positive ones)."""
    cols = list(cols)
    out: dict[str, list[float | None]] = {}
    for key, positive in (("loss", False), ("glog", True), ("gemb", True)):
        ends = [e for c in cols if (e := _extent(c[key], positive))]
        out[key] = [min(lo for lo, _ in ends), max(hi for _, hi in ends)] if ends else [None, None]
    return out


def _extent(values: list[float], positive: bool) -> tuple[float, float] | None:
    """The smallest and largest finite values (positive ones if ``positive``), None if there is none. C loops only:
    a finite sum means no NaN or Inf among them; ``filter(None, ...)`` drops the zeros."""
    kept = values if math.isfinite(sum(values)) else list(filter(math.isfinite, values))
    if positive:
        kept = list(filter(None, kept))
        if kept and min(kept) < 0:  # a norm is never negative; a value that is does not count either
            kept = list(filter((0.0).__lt__, kept))
    return (min(kept), max(kept)) if kept else None


def heat_norms(rows: Sequence[Sequence[float]]) -> str:
    """Rows of norms as base64 of little-endian bfloat16, row after row: each norm's float32 with the low 16 bits of
    its mantissa dropped (truncated: within 0.8% below the float32, 2-3 significant digits, float32's whole range;
    zero, NaN and Inf stay what they are). The page's script puts them on its log colour scale.

    Args:
        rows: (rows, T) norms, one row per decoder layer.

    Returns:
        The base64 text of rows x T little-endian 16-bit values.
    """
    raw = b"".join(little_endian("f", row) for row in rows)
    halves = bytearray(len(raw) // 2)  # the high half of each little-endian float32: its bytes 2 and 3
    halves[0::2], halves[1::2] = raw[2::4], raw[3::4]
    return _b64(halves)
