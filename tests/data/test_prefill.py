"""Generation-prompt prefills learnt from the chat template itself."""

from __future__ import annotations

import copy

import pytest
from transformers import AutoTokenizer

from gradscope.data.prefill import generation_prefills


@pytest.fixture(scope="module")
def qwen3(fixtures_dir):
    return AutoTokenizer.from_pretrained(fixtures_dir / "tokenizers/qwen3-chat")


def test_qwen3_non_thinking_prompt_prefills_an_empty_think_block(qwen3):
    # The tokens the template adds after the assistant header with enable_thinking=False, tokenized here alone.
    prompted = qwen3.apply_chat_template(
        [{"role": "user", "content": "Hi."}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert prompted.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    expected = tuple(qwen3("<think>\n\n</think>\n\n", add_special_tokens=False)["input_ids"])
    assert generation_prefills(qwen3) == (expected,)


@pytest.mark.parametrize("name", ["chatml", "llama3", "mistral", "gpt2"])
def test_templates_whose_generation_prompt_is_the_header_prefill_nothing(name, fixture_tokenizer):
    assert generation_prefills(fixture_tokenizer(name)) == ()


def test_a_prefill_written_whatever_the_options_is_found(qwen3):
    """DeepSeek-R1's generation prompt ends with "<think>\\n" by default; earlier answers have no think block."""
    tok = copy.deepcopy(qwen3)
    tok.chat_template = qwen3.chat_template.replace(
        "{{ '<|im_start|>assistant\\n' }}{% if enable_thinking",
        "{{ '<|im_start|>assistant\\n<think>\\n' }}{% if enable_thinking",
    )
    assert tok.chat_template != qwen3.chat_template
    found = generation_prefills(tok)
    assert tuple(tok("<think>\n", add_special_tokens=False)["input_ids"]) in found


def test_a_template_that_fails_on_the_probe_prefills_nothing(qwen3):
    tok = copy.deepcopy(qwen3)
    tok.chat_template = "{{ raise_exception('no probes') }}"
    assert generation_prefills(tok) == ()
    tok.chat_template = None
    assert generation_prefills(tok) == () and generation_prefills(None) == ()
