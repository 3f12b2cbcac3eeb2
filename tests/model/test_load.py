"""gradscope.load: PEFT adapter directories (the base they name, --base, clear errors) and batch files (scalars stored
as 0-d tensors come back as the Python values collators give)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gradscope.data.load import load_batches
from gradscope.errors import ModelLoadError
from gradscope.model.load import is_adapter_dir, load_model_and_tokenizer, resolve_base

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
ADAPTER = FIXTURES / "adapters/tiny-llama-lora"
BASE = FIXTURES / "models/tiny-llama-chat"


def test_adapter_config_names_its_base_relative_to_the_adapter():
    assert is_adapter_dir(ADAPTER) and not is_adapter_dir(BASE)
    assert resolve_base(ADAPTER).resolve() == BASE.resolve()


def test_adapter_loads_on_its_base_with_only_the_adapter_trainable():
    model, tokenizer = load_model_and_tokenizer(ADAPTER)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in trainable} == {"q_proj", "v_proj"}
    assert tokenizer is not None and tokenizer.pad_token_id == 3  # the base's tokenizer


def _moved_adapter(tmp_path):
    """The adapter copied elsewhere: its relative base_model_name_or_path no longer points anywhere."""
    moved = tmp_path / "adapter"
    shutil.copytree(ADAPTER, moved)
    return moved


def test_a_base_that_is_not_local_asks_for_base(tmp_path):
    with pytest.raises(ModelLoadError, match="not a local model directory.*`base`"):
        load_model_and_tokenizer(_moved_adapter(tmp_path))


def test_base_option_wins_over_adapter_config(tmp_path):
    model, _ = load_model_and_tokenizer(_moved_adapter(tmp_path), base=BASE)
    assert any(p.requires_grad for p in model.parameters())


def test_adapter_weights_must_be_safetensors(tmp_path):
    moved = _moved_adapter(tmp_path)
    (moved / "adapter_model.safetensors").rename(moved / "adapter_model.bin")
    with pytest.raises(ModelLoadError, match="no adapter_model.safetensors.*safetensors only"):
        load_model_and_tokenizer(moved, base=BASE)


def test_unreadable_adapter_config(tmp_path):
    moved = _moved_adapter(tmp_path)
    (moved / "adapter_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read adapter_config.json"):
        load_model_and_tokenizer(moved)
    (moved / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ModelLoadError, match="names no base_model_name_or_path"):
        load_model_and_tokenizer(moved)


def test_without_peft_installed_the_error_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    with pytest.raises(
        ModelLoadError, match=r"needs peft.*the peft extra: pip install -e .\.\[peft\]. in a clone of gradscope"
    ):
        load_model_and_tokenizer(ADAPTER)


def test_scalars_become_python_values_and_samples_keep_them(tmp_path):
    path = tmp_path / "packed.safetensors"
    save_file(
        {
            "input_ids": torch.tensor([[5, 6, 7], [8, 9, 10]]),
            "use_cache": torch.tensor(False),
            "max_length_q": torch.tensor(3),
            "cu_seq_lens_q": torch.tensor([0, 3], dtype=torch.int32),
        },
        str(path),
    )
    [batch] = load_batches(path, pad_token_id=0, samples=1)
    assert batch["use_cache"] is False and batch["max_length_q"] == 3 and isinstance(batch["max_length_q"], int)
    assert batch["input_ids"].tolist() == [[5, 6, 7]] and batch["cu_seq_lens_q"].tolist() == [0, 3]


def test_first_rows_slices_only_per_row_tensors():
    import torch

    from gradscope.data.load import first_rows

    batch = {"input_ids": torch.ones(3, 4, dtype=torch.long), "cu_seq_lens_q": torch.tensor([0, 2, 4, 5, 9])}
    out = first_rows(batch, 2)
    assert out["input_ids"].shape == (2, 4)
    assert out["cu_seq_lens_q"].tolist() == [0, 2, 4, 5, 9]
