"""gradscope.parallel: --num-proc gives the report of one process, and writes nothing beside the user's data."""

from __future__ import annotations

import os
from pathlib import Path

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


def test_num_proc_reads_json_lines_through_datasets(
    tmp_path, write_stream_rows, scan_summary, stream_reference, monkeypatch
):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # datasets converts JSON there
    assert scan_summary(scan(write_stream_rows(tmp_path, "jsonl"), end_token_ids=[2], num_proc=2)) == stream_reference
    assert any((tmp_path / "cache").iterdir())


def _chat_rows(path, rows: int = 600):
    """Rows as tiny-llama-chat's template renders one exchange, no role column; some train their prompt, some
    hold no assistant turn (roles unknown), some have the answer's <|im_end|> untrained."""
    import datasets
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for r in range(rows):
        prompt, answer = rng.integers(4, 200, int(rng.integers(3, 30))), rng.integers(4, 200, int(rng.integers(3, 30)))
        head = [1, 296, 202, *prompt, 2, 202]
        turn = [1, 290, 202, *answer, 2, 202] if r % 7 else [*answer, 2, 202]  # every 7th: no assistant marker
        ids = head + turn
        labels = [-100] * len(head) + [-100, -100, -100, *answer, 2, -100] if r % 7 else [-100] * len(ids)
        if r % 11 == 0:
            labels[3:5] = ids[3:5]  # a trained prompt
        if r % 13 == 0:
            labels[-2] = -100  # <|im_end|> untrained
        out.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)})
    datasets.Dataset.from_list(out).save_to_disk(str(path))
    return path


def test_num_proc_reads_roles_from_the_chat_template_in_its_workers(tmp_path, scan_summary):
    tokenizer = Path(__file__).resolve().parents[2] / "fixtures/models/tiny-llama-chat"
    path = _chat_rows(tmp_path / "chat")
    one, two = scan(path, tokenizer=tokenizer), scan(path, tokenizer=tokenizer, num_proc=2)
    assert not two.notes  # the workers read the roles: --num-proc was used
    assert one.checks["prompt_leak"]["rows"] > 0 and one.checks["roles_unknown"]["rows"] > 0
    assert scan_summary(two) == scan_summary(one)
    assert [f.message for f in two.findings] == [f.message for f in one.findings]
