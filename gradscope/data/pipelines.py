"""Pipelines: from raw rows to the batches a trainer would see, with gradscope's roles attached."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradscope.constants import CUT_KEY, ROLE_CODES_KEY, ROW_KEY, UNKNOWN
from gradscope.data.batch import COMPLETION, collate, held_tokens
from gradscope.data.roles import RoleRow, RoleSpec, derive_rows
from gradscope.errors import DataError
from gradscope.modes import Pipeline, TrainOn, TruncationMode
from gradscope.tokenizer import Tokenizer


@dataclass
class DataOptions:
    """How raw rows become batches (the command line's data options).

    Attributes:
        response_template / instruction_template: Split ``text`` rows into turns.
        train_on: ``all-assistant`` or ``last-assistant`` for ``messages`` rows.
        max_length / truncation_mode: Truncate each row as the trainer would (``keep_start`` or ``keep_end``).
        collate: ``FILE.py:FN`` or ``module:FN``, the user's collator.
        collate_input: What the collator receives: ``raw`` rows or ``tokens`` (gradscope's tokenization).
        pipeline: ``reference`` or ``trl``.
        trl_config: A JSON file of SFTConfig options.
        trl_options: SFTConfig options given as flags; they override the file.
    """

    response_template: str | None = None
    instruction_template: str | None = None
    train_on: TrainOn = "all-assistant"
    max_length: int | None = None
    truncation_mode: TruncationMode | None = None
    collate: str | None = None
    collate_input: str = "raw"
    pipeline: Pipeline = "reference"
    trl_config: Path | None = None
    trl_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """Batches ready for ``check_batches``, what the report should say about the data, and notes."""

    batches: list[dict[str, Any]]  # tensors, and the keywords a pipeline passes with them (use_cache)
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def role_rows(rows: Sequence[Mapping[str, Any]], tokenizer: Tokenizer, spec: RoleSpec) -> list[RoleRow]:
    """Every raw row tokenized with its roles (``roles.derive`` on each, the tokenizer called once per batch)."""
    return derive_rows(rows, tokenizer, spec)


def row_notes(rows: Sequence[RoleRow]) -> list[str]:
    """The rows' notes on how their roles were read, each note once with the rows it concerns."""
    by_note: dict[str, list[int]] = {}
    for row in rows:
        if row.note:
            by_note.setdefault(row.note, []).append(row.index)
    return [f"row(s) {', '.join(map(str, indices))}: {note}" for note, indices in by_note.items()]


# --- reference -------------------------------------------------------------------------------------------------


def reference_batches(rows: Sequence[RoleRow], batch_size: int, pad_token_id: int) -> list[dict[str, torch.Tensor]]:
    """gradscope's reference masking: labels on the completion tokens (the closing token included), -100 elsewhere."""
    return [_reference_batch(rows[s : s + batch_size], pad_token_id) for s in range(0, len(rows), batch_size)]


def _reference_batch(rows: Sequence[RoleRow], pad_token_id: int) -> dict[str, torch.Tensor]:
    items = [{"input_ids": r.input_ids, "labels": r.labels, ROLE_CODES_KEY: r.roles} for r in rows]
    batch = collate(items, pad_token_id)
    batch[CUT_KEY] = torch.tensor([r.cut for r in rows])
    return batch


# --- the user's collator ---------------------------------------------------------------------------------------


def collate_batches(
    fn: Callable[[list[Any]], Mapping[str, Any]],
    raw: Sequence[Mapping[str, Any]],
    rows: Sequence[RoleRow],
    truncated: Sequence[RoleRow],
    options: DataOptions,
    batch_size: int,
    pad_token_id: int,
) -> list[dict[str, torch.Tensor]]:
    """Run the user's collator on each group of rows and attach the derived roles to what it returns.

    With ``collate_input == "tokens"`` the collator gets gradscope's tokenization (``input_ids`` and
    ``completion_mask``, truncated to max_length), else the raw rows.
    """
    batches = []
    for start in range(0, len(rows), batch_size):
        group = rows[start : start + batch_size]
        if options.collate_input == "tokens":
            short = truncated[start : start + batch_size]
            inputs: list[Any] = [{"input_ids": r.input_ids, "completion_mask": r.completion_mask} for r in short]
        else:
            inputs = [dict(r) for r in raw[start : start + batch_size]]
        batch = _call_collator(fn, inputs, options.collate, start)
        batches.append(attach_roles(batch, group, pad_token_id, strict=True)[0])
    return batches


def _call_collator(fn: Callable, inputs: list[Any], spec: str | None, start: int) -> dict[str, torch.Tensor]:
    where = f"rows {start}–{start + len(inputs) - 1}"
    try:
        out = fn(inputs)
    except (Exception, SystemExit) as err:  # the user's code: any failure is bad input, not a gradscope bug
        raise DataError(f"the collator failed: {type(err).__name__}: {err}", path=spec, row=where) from err
    if not isinstance(out, Mapping) or "input_ids" not in out:
        raise DataError("the collator must return a dict with 'input_ids' (and 'labels')", path=spec, row=where)
    try:
        return {k: v if isinstance(v, torch.Tensor) else torch.tensor(v) for k, v in out.items()}
    except (TypeError, ValueError) as err:
        raise DataError(f"the collator returned a value that is not a tensor: {err}", path=spec, row=where) from err


# --- matching derived roles onto someone else's batch ----------------------------------------------------------


def attach_roles(
    batch: Mapping[str, torch.Tensor],
    rows: Sequence[RoleRow],
    pad_token_id: int | None,
    *,
    strict: bool,
    count_cut: bool = True,
) -> tuple[dict[str, torch.Tensor], set[int]]:
    """Give every token of a batch built by another pipeline the role gradscope derived for it.

    Each sequence (a row, or each document of a packed row, split where position_ids restart) is matched to the
    derived rows: whole, or truncated (a prefix or suffix of the row). Tokens that match nothing keep no role.

    Args:
        batch: The batch, with ``input_ids`` (B, T).
        rows: The derived rows the batch was built from.
        pad_token_id: Padding-free batches are padded with it; such tails are not reported as unmatched.
        strict: Raise when a sequence matches no row (else leave it without a role).
        count_cut: Count completion tokens missing from a truncated match as cut by truncation.

    Returns:
        The batch with ``gradscope_roles``, ``gradscope_cut`` and, when each batch row holds exactly one data row,
        ``gradscope_rows``; and the indices of the data rows that were matched.

    Raises:
        DataError: with strict, the first sequence that matches no row, with its first differing token.
    """
    ids = batch["input_ids"].cpu()
    codes = torch.full(ids.shape, UNKNOWN, dtype=torch.long)
    cut = torch.zeros(len(ids), dtype=torch.long)
    held: list[set[int]] = [set() for _ in range(len(ids))]
    matcher = _Matcher(rows)
    holds = held_tokens(batch, () if pad_token_id is None else (pad_token_id,))
    for b in range(len(ids)):
        for start, stop in _sequences(batch, b, holds[b]):
            seq = ids[b, start:stop].tolist()
            for offset, row, first, length in matcher.match(seq, strict, pad_token_id, b):
                codes[b, start + offset : start + offset + length] = torch.tensor(row.roles[first : first + length])
                held[b].add(row.index)
                if (
                    count_cut
                    and length < len(row.input_ids)
                    and not _rest_masked(ids[b], start + offset, row, first, length)
                ):
                    cut[b] += row.roles.count(COMPLETION) - row.roles[first : first + length].count(COMPLETION)
    out = dict(batch)
    out[ROLE_CODES_KEY], out[CUT_KEY] = codes, cut
    if all(len(h) == 1 for h in held):
        out[ROW_KEY] = torch.tensor([min(h) for h in held])
    return out, matcher.used


def _rest_masked(ids: torch.Tensor, at: int, row: RoleRow, first: int, length: int) -> bool:
    """Whether the row's tokens after the matched piece follow it in the batch row, masked as padding: not cut by
    truncation but hidden by the mask (pad == eos and ``attention_mask = ids != pad`` hide the real EOS)."""
    rest = row.input_ids[first + length :]
    return first == 0 and ids[at + length : at + length + len(rest)].tolist() == rest


def _sequences(batch: Mapping[str, torch.Tensor], b: int, real: torch.Tensor) -> list[tuple[int, int]]:
    """(start, stop) of each sequence in row b: runs of the tokens it holds (``held_tokens``: attention_mask 1, and
    hidden pad ids between real tokens), split where position_ids restart at 0."""
    length = batch["input_ids"].shape[1]
    starts = torch.zeros(length, dtype=torch.bool)
    positions = batch.get("position_ids")
    if isinstance(positions, torch.Tensor) and positions.dim() == 2:
        starts = positions[b].cpu() == 0
    out, begin = [], None
    for t in range(length):
        if begin is not None and (not real[t] or starts[t]):
            out.append((begin, t))
            begin = None
        if real[t] and begin is None:
            begin = t
    return out + ([(begin, length)] if begin is not None else [])


class _Matcher:
    """Finds which derived row (and which part of it) a token sequence is, trying the next row in order first."""

    def __init__(self, rows: Sequence[RoleRow]) -> None:
        self.rows, self.next, self.used = list(rows), 0, set[int]()

    def match(
        self, seq: list[int], strict: bool, pad_token_id: int | None, b: int
    ) -> Iterator[tuple[int, RoleRow, int, int]]:
        """Yield (offset in seq, row, first token of the row, length) for each piece of seq, left to right."""
        at = 0
        while at < len(seq):
            found = self._find(seq[at:], at == 0)
            if found is None:
                if strict and any(t != pad_token_id for t in seq[at:]):
                    raise self._mismatch(seq[at:], b, at)
                return
            row, first, length = found
            self.used.add(row.index)
            self.next = self.rows.index(row) + 1
            yield at, row, first, length
            at += length

    def _order(self) -> list[RoleRow]:
        return self.rows[self.next :] + self.rows[: self.next]

    def _find(self, rest: list[int], at_start: bool) -> tuple[RoleRow, int, int] | None:
        for row in self._order():  # whole rows first
            if rest[: len(row.input_ids)] == row.input_ids:
                return row, 0, len(row.input_ids)
        for row in self._order():  # then truncated ones: the start kept, or (a whole sequence) the end kept
            n = len(row.input_ids)
            if len(rest) < n and row.input_ids[: len(rest)] == rest:
                return row, 0, len(rest)
            if at_start and len(rest) < n and row.input_ids[n - len(rest) :] == rest:
                return row, n - len(rest), len(rest)
        return None

    def _mismatch(self, rest: list[int], b: int, at: int) -> DataError:
        expected = self.rows[min(self.next, len(self.rows) - 1)]
        p = next(
            (i for i, (x, y) in enumerate(zip(rest, expected.input_ids, strict=False)) if x != y),
            min(len(rest), len(expected.input_ids)),
        )
        got = rest[p] if p < len(rest) else "end"
        want = expected.input_ids[p] if p < len(expected.input_ids) else "end"
        return DataError(
            f"batch row {b} from position {at} does not hold the tokens gradscope derived for data row "
            f"{expected.index}: they first differ at token {p} ({got} in the batch, {want} from gradscope's "
            "tokenization), so its roles are unknown",
            hint="tokenize with the model's tokenizer and chat template, or pass `collate_input` tokens",
        )
