"""A raw row with the role of every token (the data stage's type): what check's batches are built from."""

from __future__ import annotations

from dataclasses import dataclass

from gradscope.constants import COMPLETION, IGNORE_INDEX


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
