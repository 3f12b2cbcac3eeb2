"""Plain-text helpers shared by the checks' messages and the views: counts, positions, name lists."""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradscope.report.finding import Finding


def position_runs(positions: Sequence[int]) -> list[tuple[int, int]]:
    """[0, 1, 2, 7, 9, 10] -> [(0, 2), (7, 7), (9, 10)]: ascending positions as runs of consecutive ones."""
    runs: list[list[int]] = []
    for p in positions:
        if runs and p == runs[-1][1] + 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return [(a, b) for a, b in runs]


def format_positions(positions: Sequence[int], dash: str = "–") -> str:
    """[0, 1, 2, 3, 7, 9, 10] -> '0–3, 7, 9–10' (``dash="-"`` for ASCII: CI logs, XML attributes)."""
    return ", ".join(f"{a}" if a == b else f"{a}{dash}{b}" for a, b in position_runs(positions))


def format_count(n: int, noun: str) -> str:
    """(1, 'parameter') -> '1 parameter'; (3, 'parameter') -> '3 parameters'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def name_list(names: Sequence[str], limit: int = 6) -> str:
    """Names joined with commas, the first ``limit`` of them and how many more."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def format_number(x: float | None, digits: int = 4) -> str:
    """A number for a reader: ``digits`` significant digits, ``nan`` when not finite, ``–`` when None."""
    if x is None:
        return "–"
    return "nan" if not math.isfinite(x) else f"{x:.{digits}g}"


def tokens_word(n: int) -> str:
    """'token' for 1, else 'tokens'."""
    return "token" if n == 1 else "tokens"


def format_findings(findings: list[Finding]) -> str:
    """Findings as plain text lines, one per finding: check (sample, positions): message."""
    return "\n".join(f"- {f.check} (sample {f.sample}, positions {f.positions}): {f.message}" for f in findings)
