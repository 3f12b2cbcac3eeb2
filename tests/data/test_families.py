"""Today's chat-template families: roles read from tokens, token by token, against roles derived by rendering the
raw rows, and against the labels the fixture generator derived from each template's own strings."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
from safetensors.torch import load_file

from gradscope.constants import COMPLETION, PROMPT
from gradscope.data.roles import RoleSpec, derive
from gradscope.data.token_roles import chat_markers
from gradscope.data.tokens import default_end_token_ids

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
FAMILIES = ["harmony"]


@cache
def tokenizer(family: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(FIXTURES / "models" / f"tiny-{family}")


def derived(family: str):
    tok = tokenizer(family)
    ends = default_end_token_ids(None, tok)
    lines = (FIXTURES / "batches" / f"{family}_raw_rows.jsonl").read_text().splitlines()
    return [derive(json.loads(line), i, tok, RoleSpec(ends)) for i, line in enumerate(lines)], ends


@pytest.mark.parametrize("family", FAMILIES)
def test_markers_read_each_chat_as_rendering_its_prefixes_does(family):
    rows, ends = derived(family)
    markers, why = chat_markers(tokenizer(family), ends)
    assert markers is not None, why
    for row in rows:
        assert markers.roles(row.input_ids) == row.roles, row.index


@pytest.mark.parametrize("family", FAMILIES)
def test_completion_is_what_the_generator_labelled_from_the_template_strings(family):
    rows, _ = derived(family)
    clean = load_file(FIXTURES / "batches" / f"{family}_clean_noroles.safetensors")
    for b, row in enumerate(rows):
        n = len(row.input_ids)
        assert clean["input_ids"][b, :n].tolist() == row.input_ids
        labelled = (clean["labels"][b, :n] != -100).tolist()
        assert labelled == [r == COMPLETION for r in row.roles], b


def test_harmony_header_the_model_writes_inside_its_turn_is_completion():
    tok = tokenizer("harmony")
    rows, ends = derived("harmony")
    markers, _ = chat_markers(tok, ends)
    start, end = tok.convert_tokens_to_ids("<|start|>"), tok.convert_tokens_to_ids("<|end|>")
    row = rows[2]  # one turn: analysis, then the final message
    inner = [t for t in range(1, len(row.input_ids)) if row.input_ids[t] == start and row.input_ids[t - 1] == end]
    assert markers is not None and markers.continues
    assert [markers.roles(row.input_ids)[t] for t in inner] == [PROMPT, PROMPT, PROMPT, COMPLETION]  # system, developer, user; own
    assert markers.roles(row.input_ids, "last-assistant") == markers.roles(row.input_ids)
