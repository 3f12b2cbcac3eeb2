"""What a scan accumulates: counts per check, distributions, the worst rows."""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch

from gradscope.checks.masking import check_sample
from gradscope.checks.roles import roles_unknown
from gradscope.checks.sample import SampleView
from gradscope.constants import IGNORE_INDEX, UNKNOWN
from gradscope.data.batch import COMPLETION, PAD, PROMPT
from gradscope.data.chunks import Chunk
from gradscope.report.catalogue import ROLE_CHECKS, SCAN_WARNINGS
from gradscope.report.finding import Finding
from gradscope.report.scan import ScanReport
from gradscope.scan.verdicts import CHECKS, UNKNOWN_ROLES, Verdicts
from gradscope.verbs.samples import document_starts_of

LENGTH_QUANTILES = (0.5, 0.9, 0.99)
FRACTION_BINS = 10


# ------------------------------------------------------------------------------------------------ accumulating


@dataclass
class _Worst:
    """A bounded min-heap of the rows with the most flagged positions (ties: the earlier row wins). Each row kept
    carries how to write its findings, called only for the rows kept at the end."""

    size: int
    heap: list[tuple[int, int, Callable[[], list[Finding]]]] = field(default_factory=list)

    def admits(self, score: int, row: int) -> bool:
        """Whether the row would be kept now."""
        return len(self.heap) < self.size or (score, -row) > self.heap[0][:2]

    def offer(self, score: int, row: int, findings: Callable[[], list[Finding]]) -> None:
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, (score, -row, findings))
        elif (score, -row) > self.heap[0][:2]:  # rows are distinct: the callables are never compared
            heapq.heapreplace(self.heap, (score, -row, findings))

    def rows(self) -> list[tuple[int, int, list[Finding]]]:
        """(row, score, findings), worst first."""
        kept = sorted(self.heap, key=lambda item: item[:2], reverse=True)
        return [(-neg_row, score, findings()) for score, neg_row, findings in kept]


class ScanAccumulator:
    """Folds the verdicts of chunk after chunk into one ScanReport, in memory that does not grow with the rows."""

    def __init__(
        self,
        report: ScanReport,
        *,
        end_token_ids: frozenset[int],
        pad_token_id: int | None,
        decode: Callable[[int], str | None],
        examples: int,
        worst: int,
        bos_token_id: int | None = None,
        bos_added: bool = False,
        no_roles: str = "the rows hold no completion_mask or assistant_masks",
        prefills: tuple[tuple[int, ...], ...] = (),
    ) -> None:
        self.report, self.ends, self.pad_id, self.decode = report, end_token_ids, pad_token_id, decode
        self.bos = (bos_token_id, bos_added)
        self.prefills = prefills
        self.examples = examples
        self.worst = _Worst(worst)
        self.lengths = np.zeros(0, dtype=np.int64)  # rows per exact length: exact quantiles, size = longest row
        self.fractions = np.zeros(FRACTION_BINS, dtype=np.int64)
        self.shown: dict[int, list[Finding]] = {}
        self.no_roles = no_roles  # why rows without a role mask have no roles
        self.role_reasons: dict[str, None] = {}

    def add(self, chunk: Chunk, v: Verdicts) -> None:
        """Count one chunk's verdicts; keep in full the first rows of each check and the worst rows so far."""
        r = self.report
        r.rows += chunk.rows
        r.tokens += int(v.tokens.sum())
        r.trained_tokens += int(v.trained.sum())
        self._roles(chunk)
        self._distributions(v)
        for name in CHECKS:
            self._count(name, chunk, v)
        r.error_rows = (r.error_rows or 0) + _rows_failing(v, [c for c in CHECKS if c not in SCAN_WARNINGS])
        r.warning_rows = (r.warning_rows or 0) + _rows_failing(v, [c for c in CHECKS if c in SCAN_WARNINGS])
        self._offer_worst(chunk, v)

    def _count(self, name: str, chunk: Chunk, v: Verdicts) -> None:
        failing = np.flatnonzero(v.fails[name])
        entry = self.report.checks[name]
        entry["rows"] += len(failing)
        entry["positions"] += int(v.positions[name][failing].sum())
        for r in failing[: max(0, self.examples - len(entry["first_rows"]))]:
            entry["first_rows"].append(chunk.first_row + int(r))
            self.shown[chunk.first_row + int(r)] = self._findings(chunk, int(r))

    def _offer_worst(self, chunk: Chunk, v: Verdicts) -> None:
        score = row_scores(v)
        for r in worst_candidates(score, self.worst.size).tolist():
            row = chunk.first_row + r
            if self.worst.admits(int(score[r]), row):  # the row's own arrays: the chunk is not kept alive
                copied = {name: values.copy() for name, values in chunk.row(r).items()}
                self.worst.offer(int(score[r]), row, functools.partial(self._row_findings, copied, row))

    def _roles(self, chunk: Chunk) -> None:
        """Count the rows whose roles are unknown (``roles_unknown``, a warning) and keep why."""
        unknown = np.flatnonzero(~chunk.known_rows())
        if not len(unknown):
            return
        entry = self.report.checks[UNKNOWN_ROLES]
        entry["rows"] += len(unknown)
        for r in unknown[: max(0, self.examples - len(entry["first_rows"]))]:
            entry["first_rows"].append(chunk.first_row + int(r))
        for reason in getattr(chunk, "role_reasons", ()) or (self.no_roles,):
            self.role_reasons[reason] = None

    def _distributions(self, v: Verdicts) -> None:
        longest = int(v.tokens.max()) if len(v.tokens) else 0
        if longest >= len(self.lengths):
            self.lengths = np.pad(self.lengths, (0, longest + 1 - len(self.lengths)))
        self.lengths += np.bincount(v.tokens, minlength=len(self.lengths))
        bins = np.minimum(FRACTION_BINS * v.trained // np.maximum(v.tokens, 1), FRACTION_BINS - 1)  # exact integers
        self.fractions += np.bincount(bins, minlength=FRACTION_BINS)

    def _findings(self, chunk: Chunk, r: int) -> list[Finding]:
        """The row's findings in full, exactly as ``check`` writes them (``analyze.check_sample``)."""
        return self._row_findings(chunk.row(r), chunk.first_row + r)

    def _row_findings(self, row: dict[str, np.ndarray], index: int) -> list[Finding]:
        view = sample_view(row, index, self.ends, self.pad_id, self.decode, *self.bos, prefills=self.prefills)
        return check_sample(view)

    def finish(self) -> ScanReport:
        """The report: counts, distributions, the worst rows and the findings of every row shown."""
        r = self.report
        worst = self.worst.rows()
        r.worst_rows = [
            {"row": row, "positions": score, "checks": sorted({f.check for f in found})} for row, score, found in worst
        ]
        shown = dict(self.shown)
        shown.update({row: found for row, _, found in worst})
        r.findings = [f for row in sorted(shown) for f in shown[row]]
        unknown = r.checks[UNKNOWN_ROLES]
        finding = roles_unknown(unknown["first_rows"], list(self.role_reasons), noun="row", total=unknown["rows"])
        r.findings += [finding] if finding is not None else []
        r.distributions = {"length": _length_summary(self.lengths), "trained_fraction": self._fraction_summary()}
        if not self.ends:
            r.notes.append("no end token ids (give `tokenizer` DIR or `end_token_ids`): eos_untrained was not checked")
        r.not_run = self._not_run()
        return r

    def _not_run(self) -> dict[str, str]:
        """The checks that could not run on any row, and why: shown as not run, never as a count of 0."""
        r, (bos, bos_added) = self.report, self.bos
        out = {}
        if r.rows and r.checks[UNKNOWN_ROLES]["rows"] == r.rows:
            out.update(dict.fromkeys(ROLE_CHECKS, "no row's roles are known (roles_unknown)"))
        if not self.ends:
            out.update(
                dict.fromkeys(
                    ("eos_untrained", "turn_end_untrained"), "no end token ids: give `tokenizer` DIR or `end_token_ids`"
                )
            )
        if bos is None:
            out.update(dict.fromkeys(("bos_duplicated", "bos_missing"), "no tokenizer names a BOS token"))
        elif not bos_added:
            out["bos_missing"] = "the tokenizer puts no BOS first in its encodings"
        return {name: why for name, why in out.items() if name in r.checks}

    def _fraction_summary(self) -> dict[str, Any]:
        edges = [round(i / FRACTION_BINS, 2) for i in range(FRACTION_BINS + 1)]
        mean = self.report.trained_tokens / self.report.tokens if self.report.tokens else None
        return {"bins": edges, "rows": self.fractions.tolist(), "token_weighted_mean": mean}


def row_scores(v: Verdicts) -> np.ndarray:
    """(R,) each row's flagged positions, the worst rows' score (no_loss counts all the row's tokens)."""
    return cast(np.ndarray, sum(v.positions.values()))


def worst_candidates(score: np.ndarray, worst: int) -> np.ndarray:
    """The rows of a chunk, in order, that a heap of the ``worst`` highest (score, -row) may admit: only the
    chunk's own best can. Those are the rows above the k-th highest score and the first ``worst`` rows tied with it:
    offered in order, a later tied row finds ``worst`` rows that beat it (the heap breaks ties by row, which
    argpartition would not)."""
    candidates = np.flatnonzero(score > 0)
    if not worst:
        return candidates[:0]
    if len(candidates) > worst:
        kth = np.partition(score[candidates], len(candidates) - worst)[len(candidates) - worst]
        tied = candidates[score[candidates] == kth][:worst]
        candidates = np.sort(np.concatenate([candidates[score[candidates] > kth], tied]))
    return candidates


def _rows_failing(v: Verdicts, names: list[str]) -> int:
    """Rows of a chunk that fail at least one of the named checks (a row failing two counts once)."""
    fails = [v.fails[name] for name in names if name in v.fails]
    return int(np.logical_or.reduce(fails).sum()) if fails else 0


def _length_summary(lengths: np.ndarray) -> dict[str, Any]:
    """Exact quantiles of non-padding tokens per row, from rows counted per length."""
    total = int(lengths.sum())
    if total == 0:
        return {"rows": 0}
    cumulative = np.cumsum(lengths)
    values = np.arange(len(lengths))
    out: dict[str, Any] = {"rows": total, "min": int(np.argmax(lengths > 0)), "max": int(len(lengths) - 1)}
    out["mean"] = float((lengths * values).sum() / total)
    for q in LENGTH_QUANTILES:
        out[f"p{round(q * 100)}"] = int(np.searchsorted(cumulative, q * total))
    return out


def sample_view(
    row: dict[str, np.ndarray],
    index: int,
    ends: frozenset[int],
    pad_id: int | None,
    decode: Callable[[int], str | None],
    bos_token_id: int | None = None,
    bos_added: bool = False,
    prefills: tuple[tuple[int, ...], ...] = (),
) -> SampleView:
    """One row as ``analyze`` sees it, with the trained map and targets read from the labels; its declared
    documents (``document_starts``) are read as check reads a batch's (``verbs.samples``)."""
    ids = torch.tensor(np.asarray(row["input_ids"], dtype=np.int64))
    labels = torch.tensor(np.asarray(row["labels"], dtype=np.int64))
    trained = labels != IGNORE_INDEX
    trained[0] = False
    roles = torch.full(ids.shape, UNKNOWN, dtype=torch.long)
    if "completion_mask" in row:  # -1: a token of no role, read from a chat template
        mask = torch.tensor(np.asarray(row["completion_mask"], dtype=np.int64))
        roles = torch.where(mask > 0, COMPLETION, torch.where(mask == 0, PROMPT, UNKNOWN))
    if "attention_mask" in row:
        roles[torch.tensor(np.asarray(row["attention_mask"]) == 0)] = PAD
    cut = int(row["completion_cut"][0]) if "completion_cut" in row else 0
    declared = torch.tensor(np.asarray(row.get("document_starts", np.zeros(len(ids), dtype=bool)), dtype=bool))
    return SampleView(
        index=index,
        input_ids=ids,
        roles=roles,
        trained=trained,
        target_id=torch.where(trained, labels, -1),
        texts=[decode(i) for i in ids.tolist()],
        end_token_ids=ends,
        pad_token_id=pad_id,
        completion_cut=cut,
        document_starts=document_starts_of(declared, roles),
        bos_token_id=bos_token_id,
        bos_added=bos_added,
        boundaries_known=True,
        prefills=prefills,
    )
