"""pad == eos, Llama-3 style: <|eot_id|> as pad, ``attention_mask = ids != pad`` and ``labels[ids == pad] = -100``
hide every turn's end token. An end token that the mask hides but the row holds between real tokens is the model's
EOS, not padding: ``eos_untrained`` alone on plain check, --roles-from, --collate and scan (the callback:
tests/integrations/test_watch_roles.py). Fixtures: ``models/tiny-llama3-chat``,
``batches/llama3_eos_untrained_mask_by_id.safetensors`` and the raw chats it was made from."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file
from typer.testing import CliRunner

import gradscope
from gradscope.cli import app
from gradscope.model.load import load_model, load_tokenizer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
MODEL = FIXTURES / "models/tiny-llama3-chat"
BATCH = FIXTURES / "batches/llama3_eos_untrained_mask_by_id.safetensors"
RAW = FIXTURES / "batches/llama3_raw_chats.jsonl"
runner = CliRunner()

COLLATOR = '''
import torch

PAD = {pad}


def mask_by_id(rows):
    """pad == eos: attention_mask = ids != pad, labels[ids == pad] = -100 (labels given by completion_mask)."""
    width = max(len(r["input_ids"]) for r in rows) + 2
    ids = torch.tensor([list(r["input_ids"]) + [PAD] * (width - len(r["input_ids"])) for r in rows])
    keep = torch.tensor([list(r["completion_mask"]) + [0] * (width - len(r["input_ids"])) for r in rows])
    labels = torch.where(keep.bool() & (ids != PAD), ids, -100)
    return {{"input_ids": ids, "attention_mask": (ids != PAD).long(), "labels": labels}}
'''


def test_check_reads_the_hidden_interior_end_token_as_eos():
    tokenizer, batch = load_tokenizer(MODEL), load_file(BATCH)
    report = gradscope.check(load_model(MODEL), batch, tokenizer=tokenizer, probes=())
    assert {f.check for f in report.findings} == {"eos_untrained"}, [f.message for f in report.findings]
    eot = tokenizer.pad_token_id
    for f in report.findings:
        assert all(int(batch["input_ids"][f.sample, p]) == eot for p in f.positions)
        assert "pad_token == eos_token" in f.message
    # every assistant turn's <|eot_id|>: the first and last chats have two answers, the second one
    assert sorted((f.sample, len(f.positions)) for f in report.findings) == [(0, 2), (1, 1), (2, 2)]


def test_cli_check_roles_from_and_collate_agree(tmp_path):
    (tmp_path / "pad_eos_collator.py").write_text(COLLATOR.format(pad=load_tokenizer(MODEL).pad_token_id))
    routes = {
        "check": [MODEL, BATCH],
        "roles-from": [MODEL, BATCH, "--roles-from", RAW],
        "collate": [
            MODEL,
            RAW,
            "--collate",
            f"{tmp_path / 'pad_eos_collator.py'}:mask_by_id",
            "--collate-input",
            "tokens",
            "--batch-size",
            "3",
        ],
    }
    seen = {}
    for name, args in routes.items():
        result = runner.invoke(app, ["check", *map(str, args), "--probes", "none", "--format", "json"])
        assert result.exit_code == 1, (name, result.output)
        data = json.loads(result.stdout)
        seen[name] = sorted((f["check"], f["sample"], tuple(f["positions"])) for f in data["findings"])
        assert {f["check"] for f in data["findings"]} == {"eos_untrained"}, (name, data["findings"])
    assert seen["check"] == seen["roles-from"] == seen["collate"]


def test_scan_reads_the_same_roles_and_agrees_with_check():
    scanned = gradscope.scan(BATCH, tokenizer=MODEL)
    checked = gradscope.check(load_model(MODEL), load_file(BATCH), tokenizer=load_tokenizer(MODEL), probes=())
    assert [(f.check, f.sample, f.positions) for f in scanned.findings] == [
        (f.check, f.sample, f.positions) for f in checked.findings
    ]
    assert {f.check for f in scanned.findings} == {"eos_untrained"}
