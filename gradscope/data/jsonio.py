"""JSON from data files, one place for what gradscope accepts: UTF-8 (a BOM allowed), nesting that Python's parser
can hold, strings that are valid Unicode (no lone surrogates); a ``.json`` array read row by row, only as far as
asked. Everything else is a DataError naming the file and row."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gradscope.errors import DataError

_READ_BYTES = 1 << 20
_BOM = "\ufeff"


def decode_line(data: bytes, path: Path, row: str | int | None) -> str:
    """Bytes of a data file as text: UTF-8, a leading BOM dropped."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"invalid UTF-8 at byte {err.start} ({data[err.start : err.start + 1]!r})",
            path=path,
            row=row,
            hint="save the file as UTF-8",
        ) from err
    return text.removeprefix(_BOM)


def loads(text: str, path: Path, row: str | int | None) -> Any:
    """One JSON value; invalid JSON, nesting too deep to parse, and lone surrogates are DataErrors."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"invalid JSON ({err.msg} at line {err.lineno} column {err.colno})", path=path, row=row
        ) from err
    except RecursionError:
        raise DataError("JSON nested too deeply to read", path=path, row=row, hint="flatten the row") from None
    check_text(value, path, row)
    return value


def check_text(value: Any, path: Path, row: str | int | None) -> None:
    """Every string in a parsed value encodes as UTF-8 (``"\\ud800"`` alone parses, and fails the tokenizer later)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _check_string(item, path, row)
        elif isinstance(item, dict):
            for key, inner in item.items():
                _check_string(key, path, row)
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)


def _check_string(text: str, path: Path, row: str | int | None) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(
            f"a string holds a lone surrogate ({text[err.start]!r} at character {err.start})",
            path=path,
            row=row,
            hint="fix the text: a \\ud800-\\udfff escape must be half of a pair",
        ) from None


def read_json_file(path: Path, what: str = "JSON file") -> Any:
    """A small JSON file (a dataset's state.json, a weight index) parsed whole."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read the {what}: {err.strerror or err}", path=path) from err
    return loads(decode_line(data, path, None), path, None)


def iter_json_array(path: Path, limit: int | None = None) -> Iterator[Any]:
    """The elements of a file holding one JSON array, parsed one at a time and read only as far as ``limit``
    elements (the memory of ``check --samples 1`` on a large array is that of one row).

    Raises:
        DataError: not UTF-8, not an array, invalid JSON (naming the row), or text after the array.
    """
    reader = _ArrayReader(path)
    reader.expect("[", "a .json data file must hold an array of row objects")
    if reader.peek() == "]":
        reader.take()
        reader.expect_end()
        return
    index = 0
    while limit is None or index < limit:
        yield reader.value(index)
        index += 1
        if reader.peek() == "]":
            reader.take()
            if limit is None or index < limit:
                reader.expect_end()
            return
        reader.expect(",", f"expected ',' or ']' after row {index - 1}")


class _ArrayReader:
    """A .json file decoded and buffered incrementally, read from the front."""

    def __init__(self, path: Path) -> None:
        self.path, self.file = path, path.open("rb")
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buffer, self.pos, self.read_bytes, self.eof = "", 0, 0, False
        # Where the buffer starts in the text, and the lines before it, to name a position as line and column.
        self.dropped, self.lines, self.line_start = 0, 0, 0
        self._more()
        self.buffer = self.buffer.removeprefix(_BOM)

    def _more(self, size: int = _READ_BYTES) -> bool:
        if self.eof:
            return False
        data = self.file.read(size)
        self.eof = not data
        try:
            text = self.decoder.decode(data, final=self.eof)
        except UnicodeDecodeError as err:
            raise DataError(
                f"invalid UTF-8 at byte {self.read_bytes + err.start}", path=self.path, hint="save the file as UTF-8"
            ) from err
        self._drop()
        self.buffer += text
        self.read_bytes += len(data)
        if self.eof:
            self.file.close()
        return True

    def _drop(self) -> None:
        """Forget the text before ``pos`` (already parsed), counting its lines to name later positions."""
        last = self.buffer.rfind("\n", 0, self.pos)
        if last >= 0:
            self.lines += self.buffer.count("\n", 0, self.pos)
            self.line_start = self.dropped + last + 1
        self.dropped += self.pos
        self.buffer, self.pos = self.buffer[self.pos :], 0

    def where(self, pos: int) -> str:
        """Line and column (1-based) in the file of the buffer's character ``pos``."""
        last = self.buffer.rfind("\n", 0, pos)
        start = self.dropped + last + 1 if last >= 0 else self.line_start
        line = self.lines + self.buffer.count("\n", 0, pos) + 1
        return f"line {line} column {self.dropped + pos - start + 1}"

    def peek(self) -> str:
        """The next character that is not whitespace ('' at the end)."""
        while True:
            while self.pos < len(self.buffer) and self.buffer[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buffer) or not self._more():
                return self.buffer[self.pos : self.pos + 1]

    def take(self) -> None:
        self.pos += 1

    def expect(self, char: str, message: str) -> None:
        if self.peek() != char:
            raise DataError(
                f"invalid JSON: {message} (at {self.where(self.pos)})",
                path=self.path,
                hint="or write one row per line as .jsonl",
            )
        self.take()

    def expect_end(self) -> None:
        if self.peek():
            raise DataError(f"invalid JSON: extra data after the array (at {self.where(self.pos)})", path=self.path)

    def value(self, index: int) -> Any:
        self.peek()
        while True:
            try:
                value, end = json.JSONDecoder().raw_decode(self.buffer, self.pos)
            except json.JSONDecodeError as err:
                if self._more(max(_READ_BYTES, len(self.buffer))):
                    continue  # the row may run past what is read so far
                raise DataError(
                    f"invalid JSON ({err.msg} at {self.where(err.pos)})", path=self.path, row=index
                ) from err
            except RecursionError:
                raise DataError(
                    "JSON nested too deeply to read", path=self.path, row=index, hint="flatten the row"
                ) from None
            if end >= len(self.buffer) and self._more():  # a number may go on past the buffer
                continue
            check_text(value, self.path, index)
            self.pos = end
            return value
