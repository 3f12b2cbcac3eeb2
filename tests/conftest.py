"""Shared fixtures: the committed tiny models and small random models built in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# The test models are tiny: splitting a (57, 64) matmul across threads only adds waiting, and on a shared 2-core
# machine a second thread that is not scheduled makes every op wait for it (measured: 15-30 ms for a tiny linear
# with 2 threads under load, 0.03 ms with 1).
torch.set_num_threads(1)


def tiny_llama(dropout: float = 0.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, eos_token_id=5, pad_token_id=0, attention_dropout=dropout,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(dropout: float = 0.0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=97, n_embd=32, n_layer=3, n_head=4, n_positions=64, bos_token_id=5, eos_token_id=5,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def random_model(request):
    """A small random model of each architecture (GPT-2: tied embeddings, other module names)."""
    return tiny_llama() if request.param == "llama" else tiny_gpt2()


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Three rows: prompt 0-3, completion 4-6 closed by EOS (id 5) at 6, rows 1 and 2 right-padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, 97, (3, 12), generator=g)
    ids[:, 6] = 5
    attention = torch.ones_like(ids)
    attention[1, 9:] = 0
    attention[2, 7:] = 0
    ids[attention == 0] = 0
    completion = torch.zeros_like(ids)
    completion[:, 4:7] = 1
    labels = torch.where(completion.bool(), ids, -100)
    return {"input_ids": ids, "attention_mask": attention, "labels": labels, "completion_mask": completion}


@pytest.fixture(scope="session")
def catalogue() -> list[dict]:
    return json.loads((FIXTURES / "catalogue.json").read_text())


_MODELS: dict[str, object] = {}


def fixture_model(name: str):
    """A committed fixture model (or adapter on its base) and its tokenizer, loaded once per session.

    Shared: a test must leave it as it found it (which is what every gradscope pass promises).
    """
    from gradscope.model.load import load_model_and_tokenizer

    if name not in _MODELS:
        _MODELS[name] = load_model_and_tokenizer(FIXTURES / name)
    return _MODELS[name]


@pytest.fixture(scope="session")
def load_fixture_model():
    """``fixture_model`` as a fixture, for tests that take their helpers from here: name -> (model, tokenizer)."""
    return fixture_model


def fixture_batch(name: str) -> dict[str, torch.Tensor]:
    """A committed fixture batch, e.g. 'llama_clean'."""
    from gradscope.data.load import read_safetensors

    return read_safetensors(FIXTURES / "batches" / f"{name}.safetensors")
