"""Reading raw rows from every supported source, and the errors for unreadable ones."""

from __future__ import annotations

import json

import pytest

from gradscope.data.files import is_raw_file, read_rows
from gradscope.errors import DataError

ROWS = [
    {"prompt": "Question: 2 plus 3?\nAnswer:", "completion": " 5"},
    {"prompt": "Question: 1 plus 1?\nAnswer:", "completion": " 2"},
    {"prompt": "Question: 2 plus 2?\nAnswer:", "completion": " 4"},
]


def write(tmp_path, kind: str):
    if kind == "jsonl":
        path = tmp_path / "rows.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "\n")
    elif kind == "json":
        path = tmp_path / "rows.json"
        path.write_text(json.dumps(ROWS))
    elif kind == "parquet":
        pa = pytest.importorskip("pyarrow")  # installed with datasets, in the [trl] extra
        import pyarrow.parquet as pq

        path = tmp_path / "rows.parquet"
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    else:
        pytest.importorskip("datasets")  # the [trl] extra
        from datasets import Dataset, DatasetDict

        path = tmp_path / "saved"
        data = Dataset.from_list(ROWS)
        (DatasetDict({"train": data, "test": data.select([0])}) if kind == "splits" else data).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "dataset", "splits"])
def test_every_source_reads_the_same_rows_in_order(kind, tmp_path):
    path = write(tmp_path, kind)
    assert is_raw_file(path)
    assert read_rows(path) == ROWS
    assert read_rows(path, limit=2) == ROWS[:2]


def test_pre_tokenized_jsonl_and_batches_are_not_raw(tmp_path):
    path = tmp_path / "tokens.jsonl"
    path.write_text('{"input_ids": [1, 2]}\n')
    assert not is_raw_file(path)
    assert not is_raw_file(tmp_path / "batch.safetensors")


def test_unreadable_data_names_the_file_and_row(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: the row is a list, not a JSON object"):
        read_rows(bad)
    not_array = tmp_path / "rows.json"
    not_array.write_text('{"text": "a"}')
    with pytest.raises(DataError, match="array of row objects"):
        read_rows(not_array)
    with pytest.raises(DataError, match="no such data file"):
        read_rows(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="not a saved dataset"):
        read_rows(tmp_path)


def test_dataset_with_several_splits_and_no_train_is_refused(tmp_path):
    pytest.importorskip("datasets")
    from datasets import Dataset, DatasetDict

    data = Dataset.from_list(ROWS)
    DatasetDict({"a": data, "b": data}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DataError, match=r"splits \['a', 'b'\] and none is 'train'"):
        read_rows(tmp_path / "d")
