"""End tokens learnt from rendering the chat template, against the closers each fixture template writes."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from gradscope.data.closers import bos_closes_turns, learnt_end_token_ids
from gradscope.data.tokens import default_end_token_ids, resolve_bos_token_id

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"

# What each template closes an assistant turn with, read off the template's text (fixtures/make_*_fixtures.py).
CLOSERS = {
    "tokenizers/chatml-chat": {"<|im_end|>"},
    "tokenizers/llama3-chat": {"<|eot_id|>"},
    "tokenizers/gemma-chat": {"<end_of_turn>"},
    "tokenizers/mistral-chat": {"</s>"},
    "tokenizers/deepseek-chat": {"<｜end▁of▁sentence｜>"},
    "tokenizers/phi3-chat": {"<|end|>", "<|endoftext|>"},
    "models/tiny-harmony": {"<|end|>", "<|return|>", "<|call|>"},
    "models/tiny-glm": {"<|user|>", "<|observation|>"},
    "models/tiny-smollm3": {"<|im_end|>"},
    "models/tiny-mistral-small": {"</s>"},
    "models/tiny-granite": {"<|end_of_text|>"},
    "models/tiny-deepseek-v3": {"<｜end▁of▁sentence｜>"},
}


@cache
def tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(FIXTURES / path)


@pytest.mark.parametrize("path", sorted(CLOSERS))
def test_closers_are_learnt_from_what_the_template_renders(path):
    tok = tokenizer(path)
    assert {tok.convert_ids_to_tokens(i) for i in learnt_end_token_ids(tok)} == CLOSERS[path]


def test_harmony_tool_call_closer_is_an_end_token_though_no_config_or_name_list_has_it():
    tok = tokenizer("models/tiny-harmony")
    call, ret = tok.convert_tokens_to_ids("<|call|>"), tok.convert_tokens_to_ids("<|return|>")
    config = (FIXTURES / "models/tiny-harmony/config.json").read_text()
    assert f'"eos_token_id": {ret}' in config and str(call) not in config
    assert call in default_end_token_ids(None, tok)


def test_a_template_that_fails_to_render_gives_no_learnt_closer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(FIXTURES / "tokenizers/chatml-chat")
    tok.chat_template = "{{ raise_exception('no') }}"
    assert learnt_end_token_ids(tok) == frozenset()


def test_a_bos_that_closes_every_turn_is_no_document_start_but_a_bos_that_opens_renderings_is():
    """Granite: BOS == EOS == PAD, written by the template only to close messages; GPT-2's has no chat template and
    Llama 3's template opens with its BOS."""
    granite = tokenizer("models/tiny-granite")
    assert granite.bos_token_id == granite.eos_token_id == granite.pad_token_id
    assert bos_closes_turns(granite) and resolve_bos_token_id(granite) is None
    for path in ("models/tiny-gpt2", "tokenizers/llama3-chat"):
        tok = tokenizer(path)
        assert not bos_closes_turns(tok) and resolve_bos_token_id(tok) == tok.bos_token_id
