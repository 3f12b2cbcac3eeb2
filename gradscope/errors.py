"""The one error hierarchy of gradscope.

The library raises these and nothing else on purpose; the CLI catches them and turns each into one
``Error: ...`` line with exit status 2. Any other exception is a bug in gradscope.
"""

from __future__ import annotations

from pathlib import Path


class GradscopeError(Exception):
    """Base class of every error gradscope raises on purpose."""


class InputError(GradscopeError):
    """Bad input: a model, data file, tensor or option gradscope cannot use (CLI exit status 2).

    The message names where the problem is (file, row, position) and what to do about it.

    Args:
        message: What is wrong, in the user's terms.
        path: The file or directory the problem is in.
        row: The row (sample) index, 0-based, or the line number for JSON lines (1-based, said so).
        position: The token position inside the row.
        hint: What to do next.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        row: str | int | None = None,
        position: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.row = row
        self.position = position
        self.hint = hint
        self.detail = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.row is not None:
            where.append(self.row if isinstance(self.row, str) else f"row {self.row}")
        if self.position is not None:
            where.append(f"position {self.position}")
        text = f"{': '.join(where)}: {self.detail}" if where else self.detail
        return f"{text}; {self.hint}" if self.hint else text


class ModelLoadError(InputError):
    """A model directory that is missing, unreadable or not a causal language model."""


class DataError(InputError):
    """A data file or batch that is missing, corrupt or inconsistent."""


class LossSpecError(InputError):
    """A user loss (``loss``: ``FILE.py:FN`` or ``module:FN``) that cannot be imported or called."""


class ModelCallError(InputError):
    """``model(**batch)`` or the loss failed on the user's batch, or the loss did not use the logits."""


class OutputError(InputError):
    """A report that cannot be written where the user asked (a missing directory, a directory, no permission)."""


class MaskingError(GradscopeError):
    """A training run stopped by ``GradscopeCallback(fail_on=...)`` because its first batch has masking findings.

    Attributes:
        report: The full Report of the checked batch.
    """

    def __init__(self, message: str, report: object) -> None:
        self.report = report
        super().__init__(message)


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what an ``Error:`` line quotes."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
