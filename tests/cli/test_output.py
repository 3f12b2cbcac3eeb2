"""Output paths: checked before work, and the write's failures named."""

from __future__ import annotations

import pytest

from gradscope.cli.output import check_writable, write_text
from gradscope.errors import InputError


def test_a_missing_directory_is_named(tmp_path):
    target = tmp_path / "no" / "report.json"
    with pytest.raises(InputError, match="does not exist; create it first"):
        check_writable(target)


def test_a_directory_is_not_a_file(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        write_text(tmp_path, "{}")


def test_a_good_path_is_written(tmp_path):
    write_text(tmp_path / "r.json", '{"a": 1}\n')
    assert (tmp_path / "r.json").read_text() == '{"a": 1}\n'
