"""gradscope.parallel: --num-proc gives the report of one process, and writes nothing beside the user's data."""

from __future__ import annotations

import os

from gradscope.scan.dataset import scan


def test_num_proc_gives_the_same_report(tmp_path, write_stream_rows, scan_summary, stream_reference):
    path = write_stream_rows(tmp_path, "datasets")
    before = sorted(p.name for p in path.iterdir())
    assert scan_summary(scan(path, end_token_ids=[2], num_proc=2)) == stream_reference
    assert sorted(p.name for p in path.iterdir()) == before  # nothing written beside the user's data


def test_num_proc_leaves_the_process_environment_as_it_was(tmp_path, write_stream_rows):
    """datasets' map with num_proc swaps os.environ for a copy; the scan gives the caller's back."""
    environ = os.environ
    scan(write_stream_rows(tmp_path, "datasets"), end_token_ids=[2], num_proc=2)
    assert os.environ is environ


def test_num_proc_reads_json_lines_through_datasets(tmp_path, write_stream_rows, scan_summary, stream_reference, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # datasets converts JSON there
    assert scan_summary(scan(write_stream_rows(tmp_path, "jsonl"), end_token_ids=[2], num_proc=2)) == stream_reference
    assert any((tmp_path / "cache").iterdir())
