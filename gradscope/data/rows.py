"""A raw row with the role of every token (the data stage's type): what check's batches are built from; its
truncation, and finding a token sequence in a row."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from gradscope.constants import COMPLETION, IGNORE_INDEX
from gradscope.modes import TruncationMode


@dataclass
class RoleRow:
    """One raw row, tokenized, with the role of every token.

    Attributes:
        index: The row's index in the data.
        input_ids: Token ids of the whole row.
        roles: PROMPT, COMPLETION or UNKNOWN (not judged) per token.
        messages: The message each token belongs to (chat rows), else None per token.
        kind: ``prompt-completion``, ``chat`` or ``text``.
        cut: Completion tokens that truncation removed.
        note: What the report should say about how this row's roles were read (a template that drops earlier
            turns' reasoning), else None.
    """

    index: int
    input_ids: list[int]
    roles: list[int]
    messages: list[int | None]
    kind: str
    cut: int = 0
    note: str | None = None

    @property
    def labels(self) -> list[int]:
        """gradscope's reference labels: the token where the role is completion, else -100."""
        return [i if r == COMPLETION else IGNORE_INDEX for i, r in zip(self.input_ids, self.roles, strict=True)]

    @property
    def completion_mask(self) -> list[int]:
        return [int(r == COMPLETION) for r in self.roles]


def find_subsequence(ids: Sequence[int], pattern: Sequence[int]) -> list[int]:
    """Start positions of every occurrence of pattern in ids."""
    n = len(pattern)
    if n == 0:
        return []
    return [p for p in range(len(ids) - n + 1) if list(ids[p : p + n]) == list(pattern)]


def truncate(row: RoleRow, max_length: int | None, mode: TruncationMode = "keep_start") -> RoleRow:
    """Cut the row to max_length tokens (keep_start keeps the first ones, keep_end the last), counting the completion
    tokens removed."""
    if max_length is None or len(row.input_ids) <= max_length:
        return row
    keep = slice(None, max_length) if mode == "keep_start" else slice(len(row.input_ids) - max_length, None)
    roles = row.roles[keep]
    cut = row.completion_mask.count(1) - roles.count(COMPLETION)
    return replace(row, input_ids=row.input_ids[keep], roles=roles, messages=row.messages[keep], cut=row.cut + cut)
