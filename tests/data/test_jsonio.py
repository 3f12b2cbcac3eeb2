"""The incremental .json array reader: the rows it gives are json.loads' rows, and an error in a row names the line
and column that Python's own parser of the whole text names, however the file is cut into reads."""

from __future__ import annotations

import json
import random

import pytest

from gradscope.data import jsonio
from gradscope.errors import DataError

ROWS = [{"input_ids": list(range(i, i + 40)), "labels": [-100] * 20 + list(range(20))} for i in range(400)]


def _text(seed: int) -> str:
    indent = random.Random(seed).choice([None, 1, 2])
    return "[\n" + ",\n".join(json.dumps(r, indent=indent) for r in ROWS) + "\n]\n"


@pytest.mark.parametrize("read_bytes", [7, 1000, 1 << 20])
def test_rows_are_the_whole_parse_in_any_read_size(tmp_path, monkeypatch, read_bytes):
    monkeypatch.setattr(jsonio, "_READ_BYTES", read_bytes)
    path = tmp_path / "rows.json"
    path.write_text(_text(0))
    assert list(jsonio.iter_json_array(path)) == json.loads(path.read_text())
    assert list(jsonio.iter_json_array(path, limit=3)) == ROWS[:3]


@pytest.mark.parametrize("seed", range(12))
def test_a_syntax_error_names_the_line_and_column_pythons_parser_names(tmp_path, monkeypatch, seed):
    rnd = random.Random(seed)
    monkeypatch.setattr(jsonio, "_READ_BYTES", rnd.choice([7, 100, 4096, 1 << 20]))
    text = _text(seed)
    while True:  # a stray character where it breaks the JSON (not inside a string)
        cut = rnd.randrange(len(text) // 4, len(text) - 3)
        bad = text[:cut] + "@" + text[cut:]
        try:
            json.loads(bad)
        except json.JSONDecodeError as err:
            expected = f"line {err.lineno} column {err.colno}"
            break
    path = tmp_path / "rows.json"
    path.write_text(bad)
    with pytest.raises(DataError) as raised:
        list(jsonio.iter_json_array(path))
    assert expected in str(raised.value) and "rows.json" in str(raised.value)


def test_a_missing_comma_names_the_row_before_it_and_where(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[{"input_ids": [1]},\n {"input_ids": [2]}\n {"input_ids": [3]}]')
    with pytest.raises(DataError, match=r"expected ',' or '\]' after row 1 \(at line 3 column 2\)"):
        list(jsonio.iter_json_array(path))
