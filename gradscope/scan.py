"""Scan: a model-free audit of every row of a tokenized dataset, read from its labels alone.

Transformers' causal-LM loss trains token t (t >= 1) exactly when ``labels[t] != -100``, toward ``labels[t]``: that
is what ``gradscope check`` reads off the gradient, and what a scan can read off the data without a model, for
millions of rows. The checks are those of ``check``, under the same names and rules (``gradscope.analyze``), written
as a handful of NumPy passes over each chunk's tokens laid end to end; only the rows shown in full go through
``analyze.check_sample``, which writes the same messages as ``check``.

Data streams in chunks of rows, so memory stays flat as the dataset grows: per row only counters, histograms and a
bounded list of the worst rows are kept.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from gradscope.analyze import SampleView, check_sample
from gradscope.batch import COMPLETION, IGNORE_INDEX, PAD, PROMPT, UNKNOWN
from gradscope.check import ROLES_UNKNOWN_NOTE, default_end_token_ids, resolve_pad_token_id
from gradscope.errors import ModelLoadError
from gradscope.load import load_tokenizer, role_spec
from gradscope.report import Finding, ScanReport
from gradscope.pipelines import DataOptions
from gradscope.rawscan import RawSettings, raw_chunks
from gradscope.stream import Chunk, Source, chunks, open_source, raw_columns, raw_text_error

CHECKS = ("no_loss", "label_misaligned", "prompt_leak", "pad_leak", "completion_untrained", "eos_untrained",
          "completion_truncated")
"""What a scan checks, in the order of ``analyze``: a root cause first, then the role checks. completion_truncated
(a warning) fires only on raw rows, where the scan truncates (``--max-length``) and so knows what was cut."""

ROLE_CHECKS = CHECKS[2:]
LENGTH_QUANTILES = (0.5, 0.9, 0.99)
FRACTION_BINS = 10


@dataclass
class Verdicts:
    """What the checks say about each row of a chunk; every array is (R,)."""

    tokens: np.ndarray  # non-padding tokens
    trained: np.ndarray  # trained tokens, padding excepted (as in check's summary)
    positions: dict[str, np.ndarray]  # check -> flagged positions in the row (0 where the check does not fire)
    fails: dict[str, np.ndarray]  # check -> bool, root causes first as in analyze.check_sample


def verdicts(chunk: Chunk, end_token_ids: Iterable[int]) -> Verdicts:
    """Every check on every row of a chunk, vectorized; the rules are those of ``gradscope.analyze``.

    Args:
        chunk: The rows.
        end_token_ids: Ids of the tokens that close a completion (EOS, end of turn).

    Returns:
        Per-row counts and verdicts.
    """
    n, starts = len(chunk.input_ids), chunk.starts
    first = np.zeros(n, dtype=bool)
    first[starts] = True  # position 0 of each row: never a prediction target
    pad = chunk.attention == 0 if chunk.attention is not None else np.zeros(n, dtype=bool)
    trained = (chunk.labels != IGNORE_INDEX) & ~first
    ends = _isin(chunk.input_ids, end_token_ids)
    masks: dict[str, np.ndarray] = {
        "label_misaligned": trained & (chunk.labels != chunk.input_ids),
        "pad_leak": trained & pad,
    }
    if chunk.completion is not None:
        completion = (chunk.completion != 0) & ~pad
        prompt = ~completion & ~pad
        closing = _closing_with_roles(completion, ends, pad, first)
        masks["prompt_leak"] = prompt & trained & ~closing
        masks["completion_untrained"] = completion & ~trained & ~closing & ~first
    else:  # roles unknown: an end token right after a trained token closes what was trained
        closing = ends & ~pad & _after(trained, first)
    masks["eos_untrained"] = closing & ~trained
    counts = {name: _row_sums(mask, starts) for name, mask in masks.items()}
    if chunk.cut is not None:
        counts["completion_truncated"] = chunk.cut  # its "positions": the completion tokens cut
    tokens = np.diff(starts, append=n) - _row_sums(pad, starts)
    trained_real = _row_sums(trained & ~pad, starts)
    any_trained = (trained_real + counts["pad_leak"]) > 0  # padding included: a trained pad is still a loss term
    return Verdicts(tokens, trained_real, *_with_precedence(counts, any_trained, tokens))


def _with_precedence(
    counts: dict[str, np.ndarray], any_trained: np.ndarray, tokens: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A row with no trained token is no_loss alone; a misaligned row is label_misaligned alone."""
    no_loss = ~any_trained
    misaligned = ~no_loss & (counts["label_misaligned"] > 0)
    roles_apply = ~no_loss & ~misaligned
    fails = {"no_loss": no_loss, "label_misaligned": misaligned}
    positions = {"no_loss": np.where(no_loss, tokens, 0), "label_misaligned": np.where(misaligned, counts["label_misaligned"], 0)}
    for name in ROLE_CHECKS:
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


def _closing_with_roles(completion: np.ndarray, ends: np.ndarray, pad: np.ndarray, first: np.ndarray) -> np.ndarray:
    """``analyze.closing_positions`` with roles: each completion span's last token if it is an end token, else the
    end token right after the span (not padding)."""
    continues = np.zeros_like(completion)
    continues[:-1] = completion[1:] & ~first[1:]
    last = completion & ~continues
    closing = (last & ends) | (_after(last & ~ends, first) & ends & ~pad)
    return closing & ~first


SPARSE = 64
"""A mask with fewer than one hit in SPARSE tokens is counted hit by hit (most checks, on most data)."""


def _row_sums(mask: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per-row counts of a boolean mask over a chunk's flat tokens (int64, one per row)."""
    hits = np.count_nonzero(mask)
    if hits * SPARSE < len(mask):  # each hit's row by binary search: a few hits cost far less than a full pass
        return np.bincount(np.searchsorted(starts, np.flatnonzero(mask), side="right") - 1, minlength=len(starts))
    return np.add.reduceat(mask.view(np.uint8), starts, dtype=np.int64)


# ------------------------------------------------------------------------------------------------ accumulating


@dataclass
class _Worst:
    """A bounded min-heap of the rows with the most flagged positions (ties: the earlier row wins)."""

    size: int
    heap: list[tuple[int, int, list[Finding]]] = field(default_factory=list)

    def offer(self, score: int, row: int, findings: Callable[[], list[Finding]]) -> None:
        item = (score, -row)
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, (*item, findings()))
        elif item > self.heap[0][:2]:
            heapq.heapreplace(self.heap, (*item, findings()))

    def rows(self) -> list[tuple[int, int, list[Finding]]]:
        """(row, score, findings), worst first."""
        return [(-neg_row, score, found) for score, neg_row, found in sorted(self.heap, reverse=True)]


class ScanAccumulator:
    """Folds the verdicts of chunk after chunk into one ScanReport, in memory that does not grow with the rows."""

    def __init__(self, report: ScanReport, *, end_token_ids: frozenset[int], pad_token_id: int | None,
                 decode: Callable[[int], str | None], examples: int, worst: int) -> None:
        self.report, self.ends, self.pad_id, self.decode = report, end_token_ids, pad_token_id, decode
        self.examples = examples
        self.worst = _Worst(worst)
        self.lengths = np.zeros(0, dtype=np.int64)  # rows per exact length: exact quantiles, size = longest row
        self.fractions = np.zeros(FRACTION_BINS, dtype=np.int64)
        self.shown: dict[int, list[Finding]] = {}
        self.roles_missing = False

    def add(self, chunk: Chunk, v: Verdicts) -> None:
        """Count one chunk's verdicts; keep in full the first rows of each check and the worst rows so far."""
        r = self.report
        r.rows += chunk.rows
        r.tokens += int(v.tokens.sum())
        r.trained_tokens += int(v.trained.sum())
        self.roles_missing |= not chunk.has_roles
        self._distributions(v)
        for name in CHECKS:
            self._count(name, chunk, v)
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
        score = sum(v.positions.values())  # (R,) flagged positions; a no_loss row counts all its tokens
        candidates = np.flatnonzero(score > 0)
        if self.worst.size == 0 or not len(candidates):
            return
        if len(candidates) > self.worst.size:  # only the chunk's own best can enter the heap
            top = np.argpartition(-score[candidates], self.worst.size - 1)[: self.worst.size]
            candidates = np.sort(candidates[top])
        for r in candidates.tolist():
            self.worst.offer(int(score[r]), chunk.first_row + r, lambda r=r: self._findings(chunk, r))

    def _distributions(self, v: Verdicts) -> None:
        longest = int(v.tokens.max()) if len(v.tokens) else 0
        if longest >= len(self.lengths):
            self.lengths = np.pad(self.lengths, (0, longest + 1 - len(self.lengths)))
        self.lengths += np.bincount(v.tokens, minlength=len(self.lengths))
        bins = np.minimum(FRACTION_BINS * v.trained // np.maximum(v.tokens, 1), FRACTION_BINS - 1)  # exact integers
        self.fractions += np.bincount(bins, minlength=FRACTION_BINS)

    def _findings(self, chunk: Chunk, r: int) -> list[Finding]:
        """The row's findings in full, exactly as ``check`` writes them (``analyze.check_sample``)."""
        return check_sample(sample_view(chunk.row(r), chunk.first_row + r, self.ends, self.pad_id, self.decode))

    def finish(self) -> ScanReport:
        """The report: counts, distributions, the worst rows and the findings of every row shown."""
        r = self.report
        worst = self.worst.rows()
        r.worst_rows = [{"row": row, "positions": score, "checks": sorted({f.check for f in found})} for row, score, found in worst]
        shown = dict(self.shown)
        shown.update({row: found for row, _, found in worst})
        r.findings = [f for row in sorted(shown) for f in shown[row]]
        r.distributions = {"length": _length_summary(self.lengths), "trained_fraction": self._fraction_summary()}
        if self.roles_missing:
            r.notes.append(ROLES_UNKNOWN_NOTE)
        if not self.ends:
            r.notes.append("no end token ids (give --tokenizer DIR or --end-token-id): eos_untrained was not checked")
        return r

    def _fraction_summary(self) -> dict[str, Any]:
        edges = [round(i / FRACTION_BINS, 2) for i in range(FRACTION_BINS + 1)]
        mean = self.report.trained_tokens / self.report.tokens if self.report.tokens else None
        return {"bins": edges, "rows": self.fractions.tolist(), "token_weighted_mean": mean}


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


def sample_view(row: dict[str, np.ndarray], index: int, ends: frozenset[int], pad_id: int | None,
                decode: Callable[[int], str | None]) -> SampleView:
    """One row as ``analyze`` sees it, with the trained map and targets read from the labels."""
    ids = torch.tensor(np.asarray(row["input_ids"], dtype=np.int64))
    labels = torch.tensor(np.asarray(row["labels"], dtype=np.int64))
    trained = labels != IGNORE_INDEX
    trained[0] = False
    roles = torch.full(ids.shape, UNKNOWN, dtype=torch.long)
    if "completion_mask" in row:
        roles = torch.where(torch.tensor(np.asarray(row["completion_mask"]) != 0), COMPLETION, PROMPT)
    if "attention_mask" in row:
        roles[torch.tensor(np.asarray(row["attention_mask"]) == 0)] = PAD
    cut = int(row["completion_cut"][0]) if "completion_cut" in row else 0
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
    )


def scan_chunks(
    checked: Iterator[tuple[Chunk, Verdicts]],
    report: ScanReport,
    *,
    end_token_ids: frozenset[int],
    pad_token_id: int | None = None,
    decode: Callable[[int], str | None] = lambda _: None,
    examples: int = 3,
    worst: int = 10,
    progress: Callable[[int], None] | None = None,
) -> ScanReport:
    """Fold a stream of checked chunks into ``report``."""
    for name in CHECKS:
        report.checks.setdefault(name, {"rows": 0, "positions": 0, "first_rows": []})
    acc = ScanAccumulator(report, end_token_ids=end_token_ids, pad_token_id=pad_token_id, decode=decode,
                          examples=examples, worst=worst)
    for chunk, v in checked:
        acc.add(chunk, v)
        if progress is not None:
            progress(chunk.rows)
    return acc.finish()


def checked_chunks(source: Source, end_token_ids: frozenset[int]) -> Iterator[tuple[Chunk, Verdicts]]:
    """Read and check chunk after chunk in this process."""
    for chunk in chunks(source):
        yield chunk, verdicts(chunk, end_token_ids)


# ------------------------------------------------------------------------------------------------ entry point


def scan(
    data: str | Path,
    *,
    tokenizer: str | Path | None = None,
    end_token_ids: Iterable[int] | None = None,
    options: DataOptions | None = None,
    examples: int = 3,
    worst: int = 10,
    num_proc: int | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> ScanReport:
    """Audit every row of a dataset from its labels, without a model.

    Args:
        data: A ``.jsonl``/``.json`` of rows, a ``.parquet``, an ``.arrow`` file, a directory saved with
            ``datasets``' ``save_to_disk``, or a ``.safetensors`` batch. Pre-tokenized rows hold ``input_ids`` and
            optionally ``labels``, ``attention_mask`` and ``completion_mask``/``assistant_masks``. Raw rows
            (``prompt``/``completion``, ``messages``, ``text``) need ``tokenizer``: they are tokenized and split into
            roles as ``check`` does, and labelled by its reference masking.
        tokenizer: A tokenizer (or model) directory: names the end and pad tokens (with the directory's
            config.json and generation_config.json, as ``check`` does), decodes token texts in messages, and
            tokenizes raw rows (with its chat template).
        end_token_ids: Token ids that close a completion, instead of the tokenizer's.
        options: For raw rows: ``train_on``, ``response_template``, ``instruction_template``, ``max_length`` and
            ``truncation_mode``, as ``check`` reads them (the other fields do not apply to a scan).
        examples: Rows of each check given in full (positions and message) in ``findings``.
        worst: How many of the rows with the most flagged positions to list.
        num_proc: Processes for ``datasets.Dataset.map`` (None or 1: one process, streaming); pre-tokenized data
            only.
        progress: Called as ``progress(rows_done, total_rows_or_None)`` after each chunk.

    Returns:
        The ScanReport; ``report.ok`` is False when a row fails an error check.

    Raises:
        InputError: unreadable or malformed data, raw rows without a tokenizer or that ``check`` would reject, or
            a tokenizer directory that cannot be loaded.
    """
    source = open_source(data)
    settings = TokenSettings.load(tokenizer, end_token_ids)
    report = ScanReport(source=settings.describe(source))
    done = 0

    def advance(rows: int) -> None:
        nonlocal done
        done += rows
        if progress is not None:
            progress(done, source.rows)

    ends = settings.end_token_ids
    raw = _raw_settings(source, settings, options or DataOptions())
    if raw is not None:
        checked = ((chunk, verdicts(chunk, ends)) for chunk in raw_chunks(source, raw))
        if num_proc and num_proc > 1:
            report.notes.append("--num-proc was not used: raw rows are tokenized in this process, by the tokenizer's "
                                "batched call")
    elif num_proc and num_proc > 1 and source.format != "safetensors":
        from gradscope.parallel import parallel_checked_chunks

        checked = parallel_checked_chunks(source, ends, num_proc)
    else:
        checked = checked_chunks(source, ends)
    scanned = scan_chunks(checked, report, end_token_ids=settings.end_token_ids, pad_token_id=settings.pad_token_id,
                          decode=settings.decode, examples=examples, worst=worst, progress=advance)
    if raw is not None:
        scanned.source["raw"] = raw.describe()
    return scanned


def _raw_settings(source: Source, settings: TokenSettings, options: DataOptions) -> RawSettings | None:
    """How to read raw rows, or None when the data is tokenized; raw rows without a tokenizer are bad input."""
    names = raw_columns(source)
    if not names:
        return None
    if settings.tokenizer is None:
        raise raw_text_error(names, source.path)
    spec = role_spec(settings.tokenizer, options, settings.end_token_ids, source=str(source.path))
    return RawSettings(settings.tokenizer, spec, options)


@dataclass
class TokenSettings:
    """What a scan knows of the tokens without a model: end ids, the pad id, and texts."""

    end_token_ids: frozenset[int]
    pad_token_id: int | None
    tokenizer: Any = None
    directory: Path | None = None

    @classmethod
    def load(cls, directory: str | Path | None, end_token_ids: Iterable[int] | None) -> TokenSettings:
        """From a tokenizer or model directory (tokenizer files, config.json, generation_config.json)."""
        if directory is None:
            return cls(frozenset(end_token_ids or ()), None)
        directory = Path(directory)
        tokenizer = load_tokenizer(directory) if directory.is_dir() else None
        if tokenizer is None:
            raise ModelLoadError("no tokenizer files in this directory", path=directory,
                                 hint="give the model's directory (tokenizer.json, tokenizer_config.json)")
        configs = SimpleNamespace(config=_json_config(directory / "config.json"),
                                  generation_config=_json_config(directory / "generation_config.json"))
        ends = frozenset(end_token_ids) if end_token_ids else default_end_token_ids(configs, tokenizer)
        return cls(ends, resolve_pad_token_id(configs, tokenizer), tokenizer, directory)

    def decode(self, token_id: int) -> str | None:
        return self.tokenizer.decode([token_id]) if self.tokenizer is not None else None

    def describe(self, source: Source) -> dict[str, Any]:
        return {
            "path": str(source.path),
            "format": source.format,
            "tokenizer": str(self.directory) if self.directory else None,
            "end_token_ids": sorted(self.end_token_ids),
            "pad_token_id": self.pad_token_id,
            "raw": None,
        }


def _json_config(path: Path) -> SimpleNamespace | None:
    """A config file's eos/pad ids, read as plain JSON (nothing from the directory runs)."""
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"cannot read {path.name}: {err}", path=path) from err
    return SimpleNamespace(eos_token_id=values.get("eos_token_id"), pad_token_id=values.get("pad_token_id"))
