"""gradscope.parallel: --num-proc gives the report of one process, and writes nothing beside the user's data."""

from __future__ import annotations

from gradscope.scan.dataset import scan
from tests.data.test_stream import reference, summary, write  # noqa: F401  (reference is a fixture)


def test_num_proc_gives_the_same_report(tmp_path, reference):  # noqa: F811
    path = write(tmp_path, "datasets")
    before = sorted(p.name for p in path.iterdir())
    assert summary(scan(path, end_token_ids=[2], num_proc=2)) == reference
    assert sorted(p.name for p in path.iterdir()) == before  # nothing written beside the user's data


def test_num_proc_reads_json_lines_through_datasets(tmp_path, reference, monkeypatch):  # noqa: F811
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # datasets converts JSON there
    assert summary(scan(write(tmp_path, "jsonl"), end_token_ids=[2], num_proc=2)) == reference
    assert any((tmp_path / "cache").iterdir())
