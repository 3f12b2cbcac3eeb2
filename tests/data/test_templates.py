"""Today's chat-template families: roles read from tokens, token by token, against roles derived by rendering the
raw rows, and against the labels the fixture generator derived from each template's own strings."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from gradscope.checks.sample import prefill_positions
from gradscope.constants import COMPLETION, PROMPT, UNKNOWN
from gradscope.data.prefill import generation_prefills
from gradscope.data.roles import RoleSpec, derive
from gradscope.data.templates import chat_markers
from gradscope.data.tokens import default_end_token_ids

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
FAMILIES = ["harmony", "glm", "smollm3", "mistral-small", "granite", "deepseek-v3"]


@cache
def tokenizer(family: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(FIXTURES / "models" / f"tiny-{family}")


def derived(family: str):
    tok = tokenizer(family)
    ends = default_end_token_ids(None, tok)
    lines = (FIXTURES / "batches" / f"{family}_raw_rows.jsonl").read_text().splitlines()
    return [derive(json.loads(line), i, tok, RoleSpec(ends)) for i, line in enumerate(lines)], ends


def prefill_at(tok, ids: list[int], roles: list[int]) -> set[int]:
    """Positions of the template's generation-prompt prefill at an assistant turn's start, as the checks see them."""
    completion = np.array([r == COMPLETION for r in roles])
    found = prefill_positions(np.array(ids), completion, np.zeros(1, dtype=np.int64), generation_prefills(tok))
    return set(np.flatnonzero(found).tolist())


@pytest.mark.parametrize("family", FAMILIES)
def test_markers_read_each_chat_as_rendering_its_prefixes_does(family):
    """Token by token, but for a prefill the raw row's system prompt asks for (SmolLM3's /no_think): rendering puts
    it in the header, the markers at the start of the answer; either way it is the same prefill, not judged. The
    header's whitespace before it is prompt by rendering and not judged by the markers (the header glue of a
    {% generation %} block)."""
    rows, ends = derived(family)
    tok = tokenizer(family)
    markers, why = chat_markers(tok, ends)
    assert markers is not None, why
    for row in rows:
        read = markers.roles(row.input_ids)
        prefill = prefill_at(tok, row.input_ids, row.roles)
        assert prefill == prefill_at(tok, row.input_ids, read), row.index
        differ = {t for t, (a, b) in enumerate(zip(read, row.roles, strict=True)) if a != b}
        glue = {
            t
            for t in differ
            if read[t] == UNKNOWN
            and row.roles[t] == PROMPT
            and not tok.decode([row.input_ids[t]]).strip()
            and t + 1 in prefill
        }
        assert differ <= prefill | glue, (row.index, sorted(differ - prefill - glue))


@pytest.mark.parametrize("family", FAMILIES)
def test_completion_is_what_the_generator_labelled_from_the_template_strings(family):
    rows, _ = derived(family)
    clean = load_file(FIXTURES / "batches" / f"{family}_clean_noroles.safetensors")
    tok = tokenizer(family)
    for b, row in enumerate(rows):
        n = len(row.input_ids)
        assert clean["input_ids"][b, :n].tolist() == row.input_ids
        labelled = (clean["labels"][b, :n] != -100).tolist()
        prefill = prefill_at(tok, row.input_ids, row.roles)
        assert labelled == [r == COMPLETION and t not in prefill for t, r in enumerate(row.roles)], b
        extra = clean["input_ids"][b, n:][clean["attention_mask"][b, n:] == 1].tolist()
        assert extra == (
            [tok.eos_token_id] if family == "glm" else []
        )  # the EOS a trainer appends after GLM's last turn


def test_harmony_header_the_model_writes_inside_its_turn_is_completion():
    tok = tokenizer("harmony")
    rows, ends = derived("harmony")
    markers, _ = chat_markers(tok, ends)
    start, end = tok.convert_tokens_to_ids("<|start|>"), tok.convert_tokens_to_ids("<|end|>")
    row = rows[2]  # one turn: analysis, then the final message
    inner = [t for t in range(1, len(row.input_ids)) if row.input_ids[t] == start and row.input_ids[t - 1] == end]
    assert markers is not None and markers.continues
    assert [markers.roles(row.input_ids)[t] for t in inner] == [
        PROMPT,
        PROMPT,
        PROMPT,
        COMPLETION,
    ]  # system, developer, user; own
    assert markers.roles(row.input_ids, "last-assistant") == markers.roles(row.input_ids)


@pytest.mark.parametrize("family", ["glm", "smollm3"])
def test_the_thinking_off_prefill_is_learnt_though_the_option_also_changes_other_turns(family):
    """GLM's enable_thinking=False appends /nothink to user turns and SmolLM3's writes /no_think into its system
    message: the prefill is what the option adds to the generation prompt past the assistant header."""
    tok = tokenizer(family)
    text = {"glm": "\n<think></think>", "smollm3": "<think>\n\n</think>\n"}[family]
    chat = [{"role": "user", "content": "Hi."}]
    plain = tok.apply_chat_template(chat, tokenize=False)
    off = tok.apply_chat_template(chat, tokenize=False, enable_thinking=False)
    assert plain != off and tok.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True, enable_thinking=False
    ).endswith(text)
    assert tuple(tok(text, add_special_tokens=False)["input_ids"]) in generation_prefills(tok)


def test_glm_turns_are_closed_by_the_next_role_tag_which_is_completion():
    tok = tokenizer("glm")
    rows, ends = derived("glm")
    user, observation = tok.convert_tokens_to_ids("<|user|>"), tok.convert_tokens_to_ids("<|observation|>")
    assert {user, observation} <= ends
    for row in rows:
        assistant = tok.convert_tokens_to_ids("<|assistant|>")
        after = [
            t
            for t in range(1, len(row.input_ids))
            if row.input_ids[t] in (user, observation) and assistant in row.input_ids[:t]
        ]
        assert after and all(row.roles[t] == COMPLETION for t in after)


def test_a_template_whose_probes_all_fail_is_not_verified_with_the_reason():
    """A template that refuses every probe chat (here: any assistant message) gives no markers: the rows are
    unknown, and the reason says what failed, never a guess."""
    import copy

    from gradscope.data.batch import collate
    from gradscope.data.token_roles import batch_roles

    tok = copy.deepcopy(tokenizer("granite"))
    tok.chat_template = tok.chat_template.replace(
        "{%- for message in loop_messages -%}",
        "{%- for message in loop_messages -%}{%- if message['role'] == 'assistant' -%}"
        "{{- raise_exception('assistant turns are not supported') -}}{%- endif -%}",
    )
    ends = default_end_token_ids(None, tok)
    markers, why = chat_markers(tok, ends)
    assert markers is None and "assistant turns are not supported" in why
    rows, _ = derived("granite")
    read = batch_roles(collate([{"input_ids": r.input_ids} for r in rows], tok.pad_token_id), tok, ends)
    assert read.sources == ["unknown"] * len(rows)
    assert all(r is not None and "could not be learnt" in r and "not supported" in r for r in read.reasons)


def test_a_last_message_closer_that_is_not_the_eos_is_read_as_the_message_end():
    """Harmony closes the conversation's last message with <|return|> and earlier ones with <|end|>: with an EOS
    that is neither, the raw rows still split, each closer completion."""
    import copy

    tok = copy.deepcopy(tokenizer("harmony"))
    tok.eos_token = "<|endoftext|>"
    ends = default_end_token_ids(None, tok)
    closers = {tok.convert_tokens_to_ids(t) for t in ("<|end|>", "<|return|>")}
    assert closers <= ends and tok.eos_token_id not in closers
    lines = (FIXTURES / "batches" / "harmony_raw_rows.jsonl").read_text().splitlines()
    row = derive(json.loads(lines[0]), 0, tok, RoleSpec(ends))
    assert row.roles == derived("harmony")[0][0].roles


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_roles_from_the_template_and_from_raw_rows_agree(family):
    """The padded batch read both ways (the template's markers; --roles-from the raw rows), as the routes read it."""
    from gradscope.data.batch import collate
    from gradscope.data.token_roles import RoleSources, batch_roles

    rows, ends = derived(family)
    tok = tokenizer(family)
    batch = collate([{"input_ids": r.input_ids} for r in rows], tok.pad_token_id)
    read = batch_roles(batch, tok, ends)
    raw = batch_roles(batch, tok, ends, RoleSources(roles_from=rows))
    assert read.sources == ["chat_template"] * len(rows) and raw.sources == ["roles_from"] * len(rows)
    for b, row in enumerate(rows):
        n = len(row.input_ids)
        assert raw.codes[b, :n].tolist() == row.roles
        assert read.codes[b, :n].tolist() == markers_of(family).roles(row.input_ids)


def markers_of(family: str):
    tok = tokenizer(family)
    markers, _ = chat_markers(tok, default_end_token_ids(None, tok))
    assert markers is not None
    return markers
