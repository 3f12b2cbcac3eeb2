"""One frozen CheckOptions for check, check_batches, check_files and the CLI; keywords override its fields."""

from __future__ import annotations

import dataclasses
import typing

import pytest

import gradscope
from gradscope.verbs.options import FIELDS, CheckKeywords, CheckOptions, check_options

LLAMA = "models/tiny-llama-chat"


def test_the_keywords_are_the_option_fields():
    assert set(typing.get_type_hints(CheckKeywords, include_extras=False)) == FIELDS
    assert FIELDS == {
        "loss_fn",
        "keep_dropout",
        "end_token_ids",
        "probes",
        "accumulate",
        "windows",
        "response_template",
        "instruction_template",
        "roles_from",
        "train_on",
        "depth",
    }


def test_options_are_frozen_and_keywords_override_them():
    options = CheckOptions(probes=["causal"], end_token_ids=[2, 2, 7], depth="logits")
    assert options.probes == ("causal",) and options.end_token_ids == frozenset({2, 7})
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.depth = "full"  # type: ignore[misc]  # the point: a frozen field cannot be set
    merged = check_options(options, {"depth": "full", "windows": 3})
    assert (merged.depth, merged.windows, merged.probes) == ("full", 3, ("causal",))
    assert options.depth == "logits"  # the object given is left as it was
    with pytest.raises(TypeError, match="unexpected keyword argument 'prob'"):
        check_options(options, {"prob": ("causal",)})


def test_check_with_options_is_check_with_keywords(fixture_model, fixture_batch):
    model, tokenizer = fixture_model(LLAMA)
    batch = fixture_batch("llama_prompt_leak")
    by_keywords = gradscope.check(model, batch, tokenizer=tokenizer, probes=(), depth="logits")
    by_options = gradscope.check(model, batch, tokenizer=tokenizer, options=CheckOptions(probes=(), depth="logits"))
    overridden = gradscope.check(
        model, batch, tokenizer=tokenizer, options=CheckOptions(probes=(), depth="full"), depth="logits"
    )
    assert by_keywords.depth == by_options.depth == overridden.depth == "logits"
    assert by_keywords.to_dict() == by_options.to_dict() == overridden.to_dict()
    assert [f.check for f in by_options.findings] == ["prompt_leak"] * 3
