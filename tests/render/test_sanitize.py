"""The output rule (gradscope.render.sanitize): control characters escaped, a runner's command prefixes neutralised,
JSON and JUnit still parsing back to the same text."""

from __future__ import annotations

import copy
import io
import json
import re
import xml.etree.ElementTree as ET

import pytest
from rich.console import Console
from rich.text import Text

from gradscope.render.junit import github_annotations, to_junit
from gradscope.render.sanitize import escape_controls, json_text, one_line, print_safe, text_block, xml_text

HOSTILE = [
    " ::stop-commands::x",
    "a\n::error::injected",
    "##[add-mask]secret",
    "x ##[error]y",
    "\x1b[2K\x1b[1A",
    "nul\x00del\x7fcsi\x9b",
    "cr\rline\u2028para\u2029",
    "\t::warning::tabbed",
    "\u00a0::notice::nbsp",
]
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def runner_commands(text: str) -> list[str]:
    return [line for line in re.split("\r\n|\r|\n", text) if line.lstrip().startswith("::") or "##[" in line]


def test_escape_controls_spells_each_character():
    shown = "a\\x1b[2K\\x00\\x7f\\x9b\\n\\t\\r\\u2028\\udc80"
    assert escape_controls("a\x1b[2K\x00\x7f\x9b\n\t\r\u2028\udc80") == shown
    assert escape_controls("a\nb\x1b", keep_newlines=True) == "a\nb\\x1b"
    assert escape_controls("plain ünïcode ✓") == "plain ünïcode ✓"


def test_one_line_neutralises_the_runners_prefixes():
    assert one_line(" ::stop-commands::x") == " \\x3a:stop-commands::x"
    assert one_line("a ##[add-mask]b ##[error]") == "a #\\x23[add-mask]b #\\x23[error]"
    assert one_line("a::b") == "a::b"  # not at a line start: a runner ignores it
    assert one_line("a\n::error::x") == "a\\n::error::x"  # on the same line once the newline is escaped
    assert text_block("ok\n  ::error::x\n###[y") == "ok\n  \\x3a:error::x\n##\\x23[y"


@pytest.mark.parametrize("text", HOSTILE)
def test_one_line_is_one_safe_line(text):
    line = one_line(text)
    assert "\n" not in line and not RAW_CONTROL.search(line) and runner_commands(line) == []


@pytest.mark.parametrize("indent", [None, 2])
def test_json_text_parses_back_to_the_same_data(indent):
    data = {"texts": HOSTILE, "lone": "a\udc80b", HOSTILE[2]: 1}
    text = json_text(json.dumps(data, indent=indent, ensure_ascii=False))
    assert json.loads(text) == data
    assert not RAW_CONTROL.search(text) and runner_commands(text) == []


def test_xml_text_parses_back_to_the_same_text_where_xml_can_hold_it():
    root = ET.Element("r", a="\n".join(HOSTILE))
    root.text = "\n".join(t for t in HOSTILE if "\x1b" not in t and "\x00" not in t)
    text = xml_text(ET.tostring(root, encoding="unicode"))
    back = ET.fromstring(text)
    shown = "\n".join(HOSTILE).replace("\x1b", "\\x1b").replace("\x00", "\\x00")  # XML cannot hold these
    assert back.text == root.text and back.get("a") == shown
    assert not RAW_CONTROL.search(text.replace("\n", "")) and runner_commands(text) == []


def test_junit_and_annotations_of_a_hostile_finding(catalogue_reports, junit_schema):
    report = copy.deepcopy(catalogue_reports["llama_prompt_leak"])
    message = "prompt tokens ' ::stop-commands::x', '\n::error::y', '##[add-mask]z', '\r\x7f\x85' are trained"
    report.findings[0].message = message
    xml = to_junit(report)
    junit_schema.validate(xml)
    assert message in [c.text for c in ET.fromstring(xml).iter("failure")]  # escaped for the log, not dropped
    assert not RAW_CONTROL.search(xml.replace("\n", "")) and runner_commands(xml) == []
    for line in github_annotations(report):
        assert "\n" not in line and not RAW_CONTROL.search(line) and "##[" not in line
        assert line.startswith(("::error ", "::warning ")) and line.count("::") >= 2


def _printed(renderable: object, width: int = 30) -> str:
    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system="standard")
    print_safe(console, renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_print_safe_neutralises_a_command_that_wrapping_or_styling_makes():
    text = Text("abc")
    text.append("##", "red")
    text.append("[add-mask] long tail", "bold")
    text.append(" ::stop-commands::x \x1b[2K")
    out = _printed(text, width=20)
    plain = re.sub("\x1b\\[[0-9;]*m", "", out)  # rich's own styles, which are not in the text
    assert runner_commands(plain) == [] and "\x1b[2K" not in out
    assert "\\x3a:stop-commands::x" in plain and "#\\x23" in plain and "\\x1b[2K" in plain


def test_print_safe_leaves_ordinary_output_as_rich_prints_it():
    text = Text("a styled line that wraps over the width", "green")
    plain = Console(file=io.StringIO(), width=12, force_terminal=True, color_system="standard")
    plain.print(text)
    assert _printed(text, width=12) == plain.file.getvalue()  # type: ignore[attr-defined]


def test_the_callbacks_log_messages_follow_the_rule(catalogue_reports, caplog):
    from gradscope.errors import MaskingError
    from gradscope.integrations.callback import GradscopeCallback

    report = copy.deepcopy(catalogue_reports["llama_prompt_leak"])
    report.findings[0].message = "token ' ::stop-commands::x\n::error::y ##[add-mask]z \x1b[2K' is trained"
    with caplog.at_level("WARNING", logger="gradscope"), pytest.raises(MaskingError) as stopped:
        GradscopeCallback(fail_on="error").watcher._act(report)
    for text in (caplog.text, str(stopped.value)):
        assert "::stop-commands::x" in text and not RAW_CONTROL.search(text.replace("\n", ""))
        assert runner_commands(text) == []
