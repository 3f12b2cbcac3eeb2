"""gradscope.stream: every format gives the same rows, chunk boundaries change nothing, bad data names its row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from gradscope.data.stream import chunks, open_source
from gradscope.errors import DataError
from gradscope.scan.dataset import scan

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
COLUMNS = ("input_ids", "labels", "attention_mask", "completion_mask")


@pytest.mark.parametrize("fmt", ["parquet", "arrow", "datasets", "json array"])
def test_every_format_gives_the_same_report(fmt, tmp_path, write_stream_rows, scan_summary, stream_reference):
    assert scan_summary(scan(write_stream_rows(tmp_path, fmt), end_token_ids=[2])) == stream_reference


def test_chunk_boundaries_change_nothing(tmp_path, write_stream_rows, scan_summary, stream_reference, monkeypatch):
    from gradscope.data import chunks as chunk_module

    monkeypatch.setattr(chunk_module, "CHUNK_TOKENS", 50)  # many chunks, a row's findings kept across them
    path = write_stream_rows(tmp_path, "datasets")
    assert len(list(chunks(open_source(path)))) > 20
    assert scan_summary(scan(path, end_token_ids=[2])) == stream_reference


def test_rows_are_numbered_across_files_and_chunks(tmp_path, write_stream_rows, stream_rows):
    path = write_stream_rows(tmp_path, "datasets")
    firsts = [(c.first_row, c.rows) for c in chunks(open_source(path))]
    assert firsts[0][0] == 0 and sum(n for _, n in firsts) == len(stream_rows)
    assert all(a + n == b for (a, n), (b, _) in zip(firsts, firsts[1:], strict=False))


def test_safetensors_batch_is_read_as_rows():
    [chunk] = chunks(open_source(FIXTURES / "batches/llama_pad_leak.safetensors"))
    assert chunk.rows == 3 and len(chunk.input_ids) == 3 * 57
    assert chunk.attention is not None and chunk.completion is not None


def _jsonl(tmp: Path, *lines: str) -> Path:
    path = tmp / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


BAD = {
    "raw text": (['{"prompt": "hi", "completion": "there"}'], "raw text (prompt, completion)"),
    "no input_ids": (['{"ids": [1, 2]}'], "no 'input_ids' column"),
    "length differs": (
        ['{"input_ids": [1, 2], "labels": [1, 2]}', '{"input_ids": [1, 2, 3], "labels": [1, 2]}'],
        "row 1: 'labels' has 2 entries but 'input_ids' has 3",
    ),
    "empty row": (['{"input_ids": [1, 2]}', '{"input_ids": []}'], "row 1: 'input_ids' is empty"),
    "negative id": (
        ['{"input_ids": [1, 2]}', '{"input_ids": [4, -3]}'],
        "row 1: position 1: 'input_ids' holds a negative",
    ),
    "null": (
        ['{"input_ids": [1, 2], "labels": [1, 2]}', '{"input_ids": [1, 2], "labels": null}'],
        "row 1: 'labels' is null",
    ),
    "not json": (['{"input_ids": [1, 2]}', '{"input_ids": [1, 2]', "oops"], "row 1: cannot read JSON lines"),
    "strings": (['{"input_ids": ["a", "b"]}'], "lists of integers"),
    "strings later": (['{"input_ids": [1, 2]}', '{"input_ids": [3, 4]}', '{"input_ids": [5, "b"]}'], "row 2: "),
    "null entry": (
        ['{"input_ids": [1, 2]}', '{"input_ids": [3, 4]}', '{"input_ids": [1, null]}'],
        "row 2: 'input_ids' holds a null",
    ),
    "floats": (['{"input_ids": [1, 2.5]}'], "row 0: 'input_ids' must hold lists of integers"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_rows_name_the_row(case, tmp_path):
    lines, expected = BAD[case]
    with pytest.raises(DataError) as err:
        scan(_jsonl(tmp_path, *lines))
    assert expected in str(err.value)


@pytest.mark.parametrize("case", sorted(set(BAD) - {"not json"}))
def test_bad_rows_of_a_json_array_name_the_row_as_json_lines_do(case, tmp_path):
    lines, expected = BAD[case]
    path = tmp_path / "bad.json"
    path.write_text("[" + ",\n".join(lines) + "]")
    with pytest.raises(DataError) as err:
        scan(path)
    assert expected in str(err.value)


def test_bad_paths(tmp_path):
    with pytest.raises(DataError, match="no such data"):
        open_source(tmp_path / "nope.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown data format"):
        open_source(tmp_path / "data.csv")
    (tmp_path / "dd").mkdir()
    (tmp_path / "dd" / "dataset_dict.json").write_text('{"splits": ["valid", "test"]}')
    with pytest.raises(DataError, match=r"splits \['test', 'valid'\] and none is 'train'"):
        open_source(tmp_path / "dd")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="cannot read Parquet"):
        open_source(tmp_path / "corrupt.parquet")


@pytest.mark.parametrize("splits", [("train", "test"), ("only",)])
def test_a_dataset_dict_is_scanned_on_the_split_check_reads(tmp_path, splits, stream_rows):
    import datasets

    test = datasets.Dataset.from_list([{k: stream_rows[0][k].tolist() for k in COLUMNS}])
    chosen = datasets.Dataset.from_list([{k: r[k].tolist() for k in COLUMNS} for r in stream_rows])
    parts = {name: (chosen if name in ("train", "only") else test) for name in splits}
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "dd"))
    source = open_source(tmp_path / "dd")
    assert source.path == tmp_path / "dd" / splits[0]
    assert scan(tmp_path / "dd").to_dict() == scan(tmp_path / "dd" / splits[0]).to_dict()


def test_a_parse_error_names_the_row_of_the_file_not_of_its_block(tmp_path, monkeypatch):
    from gradscope.data import stream

    monkeypatch.setattr(stream, "_JSON_BLOCK_BYTES", 64)  # about two rows a block
    lines = ['{"input_ids": [1, 2, 3]}'] * 9 + ['{"input_ids": [5, "b"]}']
    with pytest.raises(DataError, match="row 9: "):
        scan(_jsonl(tmp_path, *lines))


@pytest.mark.parametrize("kind", [pa.int8(), pa.int32(), pa.int64(), pa.uint16()])
def test_integer_columns_read_from_their_buffers_equal_pyarrows_own_reading(kind):
    from gradscope.data.chunks import _integers, _offsets

    values = pa.array([[1, 2, 3], [4], [5, 6], [7, 8, 9, 10]], pa.large_list(kind)).slice(1, 3)
    assert _offsets(values).tolist() == values.offsets.to_pylist() and _offsets(values).dtype == np.int64
    inner = values.values.slice(2, 5)
    assert _integers(inner).tolist() == inner.to_pylist() == [3, 4, 5, 6, 7]
    assert _integers(pa.array([1.5, 2.0])).dtype.kind == "f"  # not integers: pyarrow's own reading, refused later
