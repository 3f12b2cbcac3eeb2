"""Roles of an already tokenized batch, read from its tokens: the role tensor, raw rows, templates, or nothing.

Real pipelines hand the trainer ``input_ids`` + ``labels`` only (TRL's collator drops ``completion_mask``;
transformers', axolotl's, LLaMA-Factory's and torchtune's collators never emit one), so the roles that decide
``prompt_leak`` and ``completion_untrained`` must come from the tokens themselves. The sources, in order:

1. a role tensor in the batch (``gradscope_roles``, ``completion_mask``, ``assistant_masks``);
2. the raw rows the batch was made from (``roles_from``), tokenized again and matched token by token;
3. ``response_template`` (and ``instruction_template``) as token sequences found in each row;
4. the chat template the data is rendered with (``RoleSources.chat_template``, else the tokenizer's): each assistant
   turn's opening and closing markers, learnt from probe chats;
5. none: the row's roles are unknown, and the reason says why.

A trainer's rows (the callback's ``dataset`` and ``preference`` lookups, matched by token ids per packed document)
come before 2-4; preference rows before the role tensor too. Every route reads the tokens a row holds
(``held_tokens``: an end token a 2D mask hides between real tokens is the EOS, not padding).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

import torch

from gradscope.constants import COMPLETION, PROMPT, ROLE_CODES_KEY, ROLE_KEYS, ROW_KEY, UNKNOWN
from gradscope.data.batch import document_starts, held_tokens
from gradscope.data.load import load_role_rows
from gradscope.data.pipelines import DataOptions
from gradscope.data.rows import RoleRow, find_subsequence
from gradscope.data.templates import TemplateMarkers, chat_markers
from gradscope.errors import DataError
from gradscope.modes import TRAIN_ON, TrainOn
from gradscope.tokenizer import Tokenizer

UNKNOWN_SOURCE = "unknown"
LOOKUP_SOURCE = "train_dataset"


@dataclass
class RoleSources:
    """What the user gave gradscope to read roles from tokens.

    Attributes:
        response_template: Text that starts each completion (tokenized without special tokens).
        instruction_template: Text that starts each prompt turn after a completion.
        roles_from: The raw rows the batch was made from, tokenized and split into roles, in data order.
        roles_from_path: Where those rows came from, for error messages.
        train_on: ``all-assistant`` or ``last-assistant`` for chat-template markers.
        chat_template: The template the data is really rendered with, when it is not the tokenizer's (TRL's
            training template swapped in for ``assistant_only_loss``, a ``chat_template`` given to a collator).
        dataset: The trainer's dataset rows, looked up by token ids per packed document (``train_dataset``).
        preference: Preference rows (prompt + chosen / rejected ids), looked up the same way; they win over a role
            tensor in the batch when they give every row's roles, since the collator's mask is what is under test.
    """

    response_template: str | None = None
    instruction_template: str | None = None
    roles_from: Sequence[RoleRow] | None = None
    roles_from_path: str | None = None
    train_on: TrainOn = "all-assistant"
    chat_template: str | None = None
    dataset: RowLookup | None = None
    preference: RowLookup | None = None


class RowLookup(Protocol):
    """Roles of a document found by its token ids in rows the trainer was given (its train_dataset)."""

    usable: bool

    def roles(self, ids: list[int]) -> list[int] | None:
        """Role codes of the row whose tokens are ``ids``, or None when there is none."""


@dataclass
class BatchRoles:
    """Role codes for a batch and where each row's came from.

    Attributes:
        codes: (B, T) role codes (PAD left to ``batch.roles``, which reads the attention mask).
        sources: Per row: a batch key, ``roles_from``, ``response_template``, ``chat_template`` or ``unknown``.
        reasons: Per row: why the roles are unknown, else None.
    """

    codes: torch.Tensor | None
    sources: list[str]
    reasons: list[str | None]


def batch_roles(
    batch: Mapping[str, Any],
    tokenizer: Tokenizer | None,
    end_token_ids: frozenset[int],
    sources: RoleSources | None = None,
    first_row: int = 0,
) -> BatchRoles:
    """The roles of every row of a tokenized batch, from the first source that gives them.

    Args:
        batch: The batch (``input_ids`` (B, T), optional ``attention_mask``, role tensors, ``gradscope_rows``).
        tokenizer: Tokenizes the templates and carries the chat template; may be None.
        end_token_ids: Tokens that close a turn.
        sources: What the user gave to read roles from.
        first_row: The data row of the batch's first row.

    Returns:
        The codes (None when the batch's own role tensor is used as is) and each row's source.

    Raises:
        DataError: ``roles_from`` rows that do not match the batch's tokens (naming the row and position).
    """
    sources = sources or RoleSources()
    rows = len(batch["input_ids"])
    held, starts = held_tokens(batch, end_token_ids), document_starts(batch)
    key = next((k for k in (ROLE_CODES_KEY, *ROLE_KEYS) if k in batch), None)
    if key is not None:
        glue = _glue_of(tokenizer, end_token_ids, sources)
        preferred = _looked_up(batch, held, starts, sources.preference, glue, end_token_ids)
        if preferred is None:
            return BatchRoles(None, [key] * rows, [None] * rows)
        return BatchRoles(preferred, [LOOKUP_SOURCE] * rows, [None] * rows)
    index = batch[ROW_KEY].tolist() if ROW_KEY in batch else list(range(first_row, first_row + rows))
    codes = torch.full(batch["input_ids"].shape, UNKNOWN, dtype=torch.long)
    names, reasons = [], []
    read = RowRoles(tokenizer, end_token_ids, sources)
    glue = _glue_of(tokenizer, end_token_ids, sources) if sources.preference is not None else None
    for b in range(rows):
        positions = held[b].nonzero().flatten()
        ids = batch["input_ids"][b][positions].tolist()
        edges = [int(e) for e in (starts[b][positions].nonzero().flatten())]
        looked = _documents(ids, edges, (sources.preference, sources.dataset), glue, end_token_ids)
        name, roles, reason = (LOOKUP_SOURCE, looked, None) if looked is not None else read(ids, int(index[b]))
        if roles is not None:
            codes[b, positions] = torch.tensor(roles, dtype=torch.long)
        names.append(name)
        reasons.append(reason)
    return BatchRoles(codes, names, reasons)


# --- rows the trainer was given, looked up by token ids ---------------------------------------------------------


def _looked_up(
    batch: Mapping[str, Any],
    held: torch.Tensor,
    starts: torch.Tensor,
    lookup: RowLookup | None,
    glue: list[int] | None,
    ends: frozenset[int],
) -> torch.Tensor | None:
    """Role codes of every row from ``lookup``, or None unless it gives every row's."""
    if lookup is None or not lookup.usable:
        return None
    codes = torch.full(batch["input_ids"].shape, UNKNOWN, dtype=torch.long)
    for b in range(len(codes)):
        positions = held[b].nonzero().flatten()
        ids = batch["input_ids"][b][positions].tolist()
        roles = _documents(ids, [int(e) for e in starts[b][positions].nonzero().flatten()], (lookup,), glue, ends)
        if roles is None:
            return None
        codes[b, positions] = torch.tensor(roles, dtype=torch.long)
    return codes


def _documents(
    ids: list[int], edges: list[int], lookups: Sequence[RowLookup | None], glue: list[int] | None, ends: frozenset[int]
) -> list[int] | None:
    """Roles of a row's documents (split at ``edges``) from the first lookup that finds any of them; documents it
    does not find stay UNKNOWN. The template's glue after a closing token is not judged (``unjudged_glue``)."""
    bounds = [0, *[e for e in edges if e > 0], len(ids)]
    for lookup in lookups:
        if lookup is None or not lookup.usable:
            continue
        roles, found = [UNKNOWN] * len(ids), False
        for a, b in pairwise(bounds):
            part = lookup.roles(ids[a:b]) if b > a else None
            if part is not None:
                roles[a:b], found = part, True
        if found:
            return unjudged_glue(roles, ids, glue, ends) if glue else roles
    return None


def unjudged_glue(roles: list[int], ids: list[int], glue: list[int], ends: frozenset[int]) -> list[int]:
    """``roles`` with the template's glue (ChatML's ``\n`` after ``<|im_end|>``) unjudged where a completion's
    closing token is followed by it inside the completion: the model stops at the closing token and never
    generates the glue (preference rows put it in the chosen and rejected ids)."""
    out, n = list(roles), len(glue)
    for t in range(len(ids) - n):
        if ids[t] in ends and out[t] == out[t + 1] == COMPLETION and ids[t + 1 : t + 1 + n] == glue:
            if t + 1 + n == len(ids) or out[t + 1 + n] != COMPLETION:
                out[t + 1 : t + 1 + n] = [UNKNOWN] * n
    return out


def _glue_of(tokenizer: Any, ends: frozenset[int], sources: RoleSources) -> list[int] | None:
    """The chat template's glue tokens after a closing token, when the rows are chats under a readable template."""
    if sources.preference is None or not sources.preference.usable:
        return None
    markers, _ = chat_markers(tokenizer, ends, sources.chat_template)
    return markers.glue if markers is not None and markers.glue else None


class RowRoles:
    """Reads the roles of one tokenized row (its real tokens) from the first source that gives them.

    ``available`` is False when no source can give any row its roles (``reason`` says why), so that a caller with
    many rows can skip reading them one by one.
    """

    def __init__(
        self, tokenizer: Tokenizer | None, end_token_ids: frozenset[int], sources: RoleSources | None = None
    ) -> None:
        self.readers = _readers(tokenizer, end_token_ids, sources or RoleSources())
        self.end_token_ids = end_token_ids
        nothing = self.readers[0][1] if isinstance(self.readers[0][1], _NoSource) else None
        self.available = nothing is None
        self.reason = None if nothing is None else nothing.reason

    def __call__(self, ids: list[int], row: int) -> tuple[str, list[int] | None, str | None]:
        """(source, roles, None), or ('unknown', None, why) when no source reads the row."""
        return _first_reading(self.readers, ids, row)


def role_sources(
    tokenizer: Tokenizer | None,
    ends: frozenset[int],
    response_template: str | None,
    instruction_template: str | None,
    roles_from: str | Path | None,
    train_on: TrainOn,
) -> RoleSources:
    """The role sources of a check; ``roles_from`` rows are read, tokenized and split into roles here.

    Raises:
        DataError: an unknown ``train_on``, or ``roles_from`` rows gradscope cannot read or split into roles.
    """
    if train_on not in TRAIN_ON:
        raise DataError(f"train_on {train_on!r} is not one of {', '.join(TRAIN_ON)}")
    rows = None
    if roles_from is not None:
        options = DataOptions(
            response_template=response_template, instruction_template=instruction_template, train_on=train_on
        )
        rows = load_role_rows(roles_from, tokenizer, options=options, end_token_ids=ends)
    return RoleSources(
        response_template, instruction_template, rows, None if roles_from is None else str(roles_from), train_on
    )


def _first_reading(readers: list, ids: list[int], row: int) -> tuple[str, list[int] | None, str | None]:
    """(source, roles, None) from the first reader that reads the row, else ('unknown', None, every reason)."""
    why = []
    for name, read in readers:
        roles, reason = read(ids, row)
        if roles is not None:
            return name, roles, None
        why.append(reason)
    return UNKNOWN_SOURCE, None, "; ".join(why) or "no role source"


def _readers(tokenizer: Tokenizer | None, ends: frozenset[int], sources: RoleSources) -> list:
    """(name, read(ids, row) -> (roles | None, reason)) for each source the user gave, in order."""
    readers: list[tuple[str, Callable[..., tuple[list[int] | None, str | None]]]] = []
    if sources.roles_from is not None:
        readers.append(("roles_from", _RawRows(sources.roles_from, sources.roles_from_path)))
    if sources.response_template is not None:
        if tokenizer is None:
            raise DataError("response_template needs a tokenizer to turn it into tokens")
        readers.append(("response_template", _ResponseTemplate(tokenizer, sources, ends)))
    markers, why = chat_markers(tokenizer, ends, sources.chat_template)
    if markers is not None:
        readers.append(("chat_template", lambda ids, row: _marker_roles(markers, ids, sources.train_on)))
    elif not readers:
        readers.append(("chat_template", _NoSource(f"the batch has no role tensor and {why}")))
    return readers


class _NoSource:
    """The reader of a row when nothing can give roles: every row is unknown, for the same reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __call__(self, ids: list[int], row: int) -> tuple[None, str]:
        return None, self.reason


# --- raw rows -------------------------------------------------------------------------------------------------


class _RawRows:
    """Roles from the raw rows the batch was made from: the batch row's real tokens must be the raw row's tokens."""

    def __init__(self, rows: Sequence[RoleRow], path: str | None) -> None:
        self.rows, self.path = {r.index: r for r in rows}, path

    def __call__(self, ids: list[int], row: int) -> tuple[list[int] | None, str | None]:
        raw = self.rows.get(row)
        if raw is None:
            raise DataError(
                f"roles_from has no row {row}, which the batch holds",
                path=self.path,
                hint="give the raw rows the batch was made from, all of them, in the same order",
            )
        at = next((t for t, (a, b) in enumerate(zip(ids, raw.input_ids, strict=False)) if a != b), None)
        if at is None and len(ids) > len(raw.input_ids):
            at = len(raw.input_ids)
        if at is not None:
            have = ids[at] if at < len(ids) else "nothing"
            want = raw.input_ids[at] if at < len(raw.input_ids) else "nothing (the raw row ends)"
            raise DataError(
                f"the batch's tokens differ from the raw row's at real token {at}: the batch holds {have}, the raw "
                f"row tokenizes to {want}",
                path=self.path,
                row=row,
                position=at,
                hint="give the raw rows the batch was made from, in the same order, with the same tokenizer and "
                "chat template (a batch truncated at the end is accepted)",
            )
        return list(raw.roles[: len(ids)]), None


# --- response / instruction templates as tokens ----------------------------------------------------------------


class _ResponseTemplate:
    """After each response template is completion, through the first end token; it stops earlier at the next
    instruction or response template, and runs to the row's end when neither nor an end token follows."""

    def __init__(self, tokenizer: Tokenizer, sources: RoleSources, ends: frozenset[int]) -> None:
        assert sources.response_template is not None, "read only where a response template is given"
        self.response = _template_ids(tokenizer, sources.response_template)
        self.instruction = (
            _template_ids(tokenizer, sources.instruction_template) if sources.instruction_template else []
        )
        self.text, self.ends = sources.response_template, ends

    def __call__(self, ids: list[int], row: int) -> tuple[list[int] | None, str | None]:
        starts = [p + len(self.response) for p in find_subsequence(ids, self.response)]
        if not starts:
            return None, f"the response template {self.text!r} (tokens {self.response}) is not in the row's tokens"
        stops = find_subsequence(ids, self.instruction) if self.instruction else []
        roles = [PROMPT] * len(ids)
        for begin in starts:
            stop = min(
                [s for s in stops if s >= begin] + [s - len(self.response) for s in starts if s > begin],
                default=len(ids),
            )
            close = next((t for t in range(begin, stop) if ids[t] in self.ends), None)
            stop = stop if close is None else close + 1
            roles[begin:stop] = [COMPLETION] * (stop - begin)
        return roles, None


def _template_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise DataError(f"the template {text!r} has no tokens", hint="give the text that starts each completion")
    return ids


def _marker_roles(markers: TemplateMarkers, ids: list[int], train_on: TrainOn) -> tuple[list[int] | None, str | None]:
    roles = markers.roles(ids, train_on)
    if COMPLETION not in roles:
        return None, "no assistant turn of the chat template is in the row's tokens"
    return roles, None
