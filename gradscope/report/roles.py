"""What ``gradscope roles`` reports: rows with the role of every token, as the views read them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class RolesRow(Protocol):
    """What a view reads of a row with roles (``gradscope.data.rows.RoleRow`` is one)."""

    @property
    def index(self) -> int: ...
    @property
    def input_ids(self) -> list[int]: ...
    @property
    def roles(self) -> list[int]: ...
    @property
    def messages(self) -> list[int | None]: ...
    @property
    def kind(self) -> str: ...
    @property
    def cut(self) -> int: ...
    @property
    def labels(self) -> list[int]: ...


@dataclass
class RolesReport:
    """What ``gradscope roles`` reports: the rows with their roles, each token's text decoded.

    Attributes:
        rows: The rows, in order.
        texts: Per row, the text of each token (decoded one token at a time).
        data: Where the rows came from and how they were cut (``source``, ``rows``, ``train_on``, ``max_length``).
    """

    rows: Sequence[RolesRow]
    texts: list[list[str]]
    data: dict[str, Any] = field(default_factory=dict)
