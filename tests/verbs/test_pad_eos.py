"""pad == eos, Llama-3 style: <|eot_id|> as pad, ``attention_mask = ids != pad`` and ``labels[ids == pad] = -100``
hide every turn's end token. An end token that the mask hides but the row holds between real tokens is the model's
EOS, not padding: ``eos_untrained`` alone on plain check, --collate and --roles-from (the callback:
tests/integrations/test_watch_roles.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import gradscope
from gradscope.cli import app
from gradscope.constants import COMPLETION
from gradscope.data.roles import RoleSpec, derive
from gradscope.model.load import load_model, load_tokenizer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CHATS = [json.loads(line) for line in (FIXTURES / "raw/chat.jsonl").read_text().splitlines()][:2]
runner = CliRunner()


def pad_eos_tokenizer_and_model(tmp_path: Path):
    """The Llama-3-style fixture tokenizer with <|eot_id|> as pad, and the tiny Llama resized to it, saved together
    under tmp_path/model (config: eos == pad == <|eot_id|>)."""
    tokenizer = load_tokenizer(FIXTURES / "tokenizers/llama3-chat")
    tokenizer.pad_token = "<|eot_id|>"
    model = load_model(FIXTURES / "models/tiny-llama-chat")
    model.resize_token_embeddings(len(tokenizer))
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    model.config.eos_token_id = model.config.pad_token_id = eot
    model.config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = eot
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return tokenizer, model


def rows(tokenizer):
    """(input_ids, roles) of the chats, as gradscope derives them from the template."""
    ends = frozenset({tokenizer.convert_tokens_to_ids("<|eot_id|>")})
    return [derive(chat, i, tokenizer, RoleSpec(ends)) for i, chat in enumerate(CHATS)]


def mask_by_id(tokenizer, derived_rows) -> dict[str, torch.Tensor]:
    """The classic bug: right-padded with pad == eos, attention_mask and labels built from ids != pad."""
    pad = tokenizer.pad_token_id
    width = max(len(r.input_ids) for r in derived_rows) + 2
    ids = torch.tensor([r.input_ids + [pad] * (width - len(r.input_ids)) for r in derived_rows])
    roles = torch.tensor([r.roles + [0] * (width - len(r.roles)) for r in derived_rows])
    labels = torch.where(roles == COMPLETION, ids, -100)
    labels[ids == pad] = -100
    return {"input_ids": ids, "attention_mask": (ids != pad).long(), "labels": labels}


def pad_eos_batch(tokenizer) -> dict[str, torch.Tensor]:
    return mask_by_id(tokenizer, rows(tokenizer))


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


def findings(data: dict) -> set[str]:
    return {f["check"] for f in data["findings"]}


def test_check_reads_the_hidden_interior_end_token_as_eos(tmp_path):
    tokenizer, model = pad_eos_tokenizer_and_model(tmp_path)
    batch = pad_eos_batch(tokenizer)
    report = gradscope.check(model, batch, tokenizer=tokenizer, probes=())
    assert {f.check for f in report.findings} == {"eos_untrained"}, [f.message for f in report.findings]
    eot = tokenizer.pad_token_id
    for f in report.findings:
        assert all(int(batch["input_ids"][f.sample, p]) == eot for p in f.positions)
        assert "pad_token == eos_token" in f.message
    # every turn's <|eot_id|>: the first chat has two assistant turns, the second one
    assert sorted((f.sample, len(f.positions)) for f in report.findings) == [(0, 2), (1, 1)]


def test_cli_check_roles_from_and_collate_agree(tmp_path):
    tokenizer, _ = pad_eos_tokenizer_and_model(tmp_path)
    batch = pad_eos_batch(tokenizer)
    save_file(batch, tmp_path / "batch.safetensors")
    raw = tmp_path / "chats.jsonl"
    raw.write_text("".join(json.dumps(c) + "\n" for c in CHATS))
    (tmp_path / "pad_eos_collator.py").write_text(COLLATOR.format(pad=tokenizer.pad_token_id))
    model = tmp_path / "model"
    routes = {
        "check": [model, tmp_path / "batch.safetensors"],
        "roles-from": [model, tmp_path / "batch.safetensors", "--roles-from", raw],
        "collate": [model, raw, "--collate", f"{tmp_path / 'pad_eos_collator.py'}:mask_by_id",
                    "--collate-input", "tokens", "--batch-size", "2"],
    }
    seen = {}
    for name, args in routes.items():
        result = runner.invoke(app, ["check", *map(str, args), "--probes", "none", "--format", "json"])
        assert result.exit_code == 1, (name, result.output)
        data = json.loads(result.stdout)
        seen[name] = sorted((f["check"], f["sample"], tuple(f["positions"])) for f in data["findings"])
        assert findings(data) == {"eos_untrained"}, (name, data["findings"])
    assert seen["check"] == seen["roles-from"] == seen["collate"]


def test_scan_reads_the_same_roles_and_agrees_with_check(tmp_path):
    tokenizer, model = pad_eos_tokenizer_and_model(tmp_path)
    batch = pad_eos_batch(tokenizer)
    save_file(batch, tmp_path / "batch.safetensors")
    scanned = gradscope.scan(tmp_path / "batch.safetensors", tokenizer=tmp_path / "model")
    checked = gradscope.check(model, batch, tokenizer=tokenizer, probes=())
    assert [(f.check, f.sample, f.positions) for f in scanned.findings] == \
        [(f.check, f.sample, f.positions) for f in checked.findings]
    assert {f.check for f in scanned.findings} == {"eos_untrained"}
