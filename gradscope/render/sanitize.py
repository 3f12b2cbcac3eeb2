"""The output rule: foreign text (token texts, role names, paths, tensor names, error details) never steers the
terminal or a CI runner.

Every view passes what it writes through one function of this module, at its output boundary:

- **Control characters are shown escaped**, never written raw: C0 (``\\x1b``, NUL, CR, a newline inside foreign text),
  DEL, C1, the Unicode line and paragraph separators, bidirectional overrides and lone surrogates become their
  Python escape (``\\x1b``, ``\\n``, ``\\u2028``, ``\\udc80``). Only the newlines a view lays out itself remain.
- **A runner's command prefixes are neutralised** on every line: ``::`` at the start of a line (after any
  whitespace) has its first colon written as ``\\x3a``, and ``##[`` anywhere has its second ``#`` written as ``\\x23``,
  so neither a ``::stop-commands::`` nor a legacy ``##[add-mask]`` is read as a workflow command.
- **JSON and JUnit stay faithful**: they use their own escapes, which a parser turns back into the original text
  while a log line shows the escape (JSON ``#\\u0023[`` and ``\\u007f``; XML ``#&#35;[``, ``&#58;:`` at a line start,
  ``&#13;``, ``&#9;`` and ``&#127;``). XML 1.0 cannot hold C0 controls or lone surrogates at all, even as
  references: those are shown as their Python escape there too.

The module imports no torch, and rich only where it prints a terminal view: the JSON and JUnit views use the
standard library alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.segment import Segment

_OTHER_CONTROLS = r"\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
CONTROL = re.compile(rf"[\x00-\x1f{_OTHER_CONTROLS}]")
"""Characters never written raw to a terminal or log."""
_CONTROL_NOT_NEWLINE = re.compile(rf"[\x00-\x09\x0b-\x1f{_OTHER_CONTROLS}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_LINE_START = re.compile(r"^([^\S\n]*)(?=::)", re.MULTILINE)
_XML_LINE_START = re.compile(r"^([^\S\n]*):(?=:)", re.MULTILINE)
_LEGACY = "##["


def _escape(char: str) -> str:
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """Every control character as its Python escape (``\\x1b``, ``\\n``, ``\\u2028``); newlines kept if asked."""
    pattern = _CONTROL_NOT_NEWLINE if keep_newlines else CONTROL
    return pattern.sub(lambda m: _escape(m.group()), text)


def neutralise(text: str) -> str:
    """``::`` at a line start and ``##[`` anywhere written so that a runner reads neither as a workflow command."""
    marks = _command_marks(text)
    return "".join(marks.get(i, c) for i, c in enumerate(text)) if marks else text


def _command_marks(text: str) -> dict[int, str]:
    """Position → escape of each character that would make a runner read a command: the first colon of a leading
    ``::``, the second ``#`` of ``##[``."""
    marks = {m.end(1): "\\x3a" for m in _LINE_START.finditer(text)}
    at = text.find(_LEGACY)
    while at >= 0:
        marks[at + 1] = "\\x23"
        at = text.find(_LEGACY, at + 1)
    return marks


def one_line(text: str) -> str:
    """Foreign text for a one-line message (an ``Error:`` line, a log message's detail): no control character, no
    newline, no command prefix."""
    return neutralise(escape_controls(text))


def text_block(text: str) -> str:
    """Text whose newlines are gradscope's own (a multi-line log message): each line made safe."""
    return neutralise(escape_controls(text, keep_newlines=True))


def json_text(text: str) -> str:
    """A JSON document made safe for a log, with JSON's own escapes: it parses to the same data."""
    text = re.sub(f"[{_OTHER_CONTROLS}]", lambda m: f"\\u{ord(m.group()):04x}", text)  # JSON escapes C0 itself
    return text.replace(_LEGACY, "#\\u0023[")


_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")


def xml_text(text: str) -> str:
    """An XML document made safe for a log, with XML's own character references where XML allows them."""
    text = _XML_ILLEGAL.sub(lambda m: _escape(m.group()), text)
    text = re.sub(r"[\t\r\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]", lambda m: f"&#{ord(m.group())};", text)
    return _XML_LINE_START.sub(r"\1&#58;", text).replace(_LEGACY, "#&#35;[")


def safe_segments(segments: Iterable[Segment]) -> list[Segment]:
    """Rendered terminal lines made safe: each segment's text escaped, then each line neutralised across its
    segments (a ``##`` and a ``[`` may be styled apart); rich's own styles are kept, as they are not in the text."""
    from rich.segment import Segment

    segments = list(segments)
    out: list[Segment] = []
    for line in Segment.split_lines(segments):
        out += [*_safe_line(line), Segment.line()]
    if out and not (segments and segments[-1].text.endswith("\n")):
        out.pop()  # the last line had no newline of its own
    return out


def _safe_line(line: list[Segment]) -> list[Segment]:
    from rich.segment import Segment

    texts = [s.text if s.control else escape_controls(s.text) for s in line]
    marks = _command_marks("".join(texts))
    out: list[Segment] = []
    start = 0
    for text, segment in zip(texts, line, strict=True):
        shown = "".join(marks.get(start + k, c) for k, c in enumerate(text)) if marks else text
        out.append(Segment(shown, segment.style, segment.control))
        start += len(text)
    return out


def print_safe(console: Console, renderable: RenderableType) -> None:
    """Print a view through :func:`safe_segments`: the terminal report's output boundary."""
    from rich.segment import Segments

    segments = safe_segments(console.render(renderable, console.options))
    console.print(Segments(segments), crop=False)
