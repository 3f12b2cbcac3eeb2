"""How ``check`` runs, declared once: ``check``, ``check_batches``, ``check_files`` and ``gradscope check`` take a
``CheckOptions`` (``options=``), or the keywords of the same names, which override the object's fields."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypedDict

from gradscope.constants import PROBES, WINDOWS_PER_ROW
from gradscope.model.usercode import LossFn
from gradscope.modes import Depth, TrainOn


@dataclass(frozen=True)
class CheckOptions:
    """The options of a check (``check``'s docstring describes each).

    Attributes:
        loss_fn: ``fn(logits, labels) -> scalar`` replacing the model's own loss.
        keep_dropout: Leave dropout on.
        end_token_ids: Token ids that close a completion (default: the config's and tokenizer's).
        probes: Structural probes to run (``causal``, ``packing``, ``weights``).
        accumulate: Also run each batch as this many accumulated micro-batches and compare gradients.
        windows: Random-projection windows per row for the causal and packing probes.
        response_template / instruction_template: Without a role tensor: the texts that start completions and
            later prompt turns.
        roles_from: Without a role tensor: the raw rows the batch was made from.
        train_on: ``all-assistant`` or ``last-assistant``.
        depth: ``full`` or ``logits`` (masking only).
    """

    loss_fn: LossFn | None = None
    keep_dropout: bool = False
    end_token_ids: frozenset[int] | None = None
    probes: tuple[str, ...] = PROBES
    accumulate: int | None = None
    windows: int = WINDOWS_PER_ROW
    response_template: str | None = None
    instruction_template: str | None = None
    roles_from: str | Path | None = None
    train_on: TrainOn = "all-assistant"
    depth: Depth = "full"

    def __post_init__(self) -> None:
        # Iterables given by a caller become the frozen types the fields declare.
        if self.end_token_ids is not None and not isinstance(self.end_token_ids, frozenset):
            object.__setattr__(self, "end_token_ids", frozenset(self.end_token_ids))
        if not isinstance(self.probes, tuple):
            object.__setattr__(self, "probes", tuple(self.probes))


class CheckKeywords(TypedDict, total=False):
    """``CheckOptions``' fields as keywords (tests/verbs/test_options.py holds the two to the same names)."""

    loss_fn: LossFn | None
    keep_dropout: bool
    end_token_ids: Iterable[int] | None
    probes: Iterable[str]
    accumulate: int | None
    windows: int
    response_template: str | None
    instruction_template: str | None
    roles_from: str | Path | None
    train_on: TrainOn
    depth: Depth


FIELDS = frozenset(f.name for f in fields(CheckOptions))


def check_options(options: CheckOptions | None = None, keywords: Mapping[str, Any] | None = None) -> CheckOptions:
    """``options`` (default: every default) with ``keywords`` replacing the fields of the same names.

    Raises:
        TypeError: a keyword that is no field, as for a function without it.
    """
    unknown = sorted(set(keywords or {}) - FIELDS)
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r} (check options: {', '.join(sorted(FIELDS))})")
    return replace(options or CheckOptions(), **(keywords or {}))
