"""Roles read from tokens, tested against the raw-row derivation: the same conversations both ways, token by token."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch

from gradscope.constants import COMPLETION, PROMPT, UNKNOWN
from gradscope.data.batch import collate, roles
from gradscope.data.roles import RoleSpec, derive
from gradscope.data.templates import chat_markers
from gradscope.data.token_roles import RoleSources, batch_roles
from gradscope.data.tokens import default_end_token_ids
from gradscope.errors import DataError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
FAMILIES = [
    "chatml-chat",
    "qwen3-chat",
    "qwen3-original-chat",
    "qwen2.5-trl-chat",
    "llama3-chat",
    "gemma-chat",
    "mistral-chat",
    "phi3-chat",
    "deepseek-chat",
]
RAW_FILES = ("chat.jsonl", "tool_chat.jsonl", "think_chat.jsonl")


@cache
def tokenizer(family: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(FIXTURES / "tokenizers" / family)


def conversations() -> list[list[dict]]:
    return [json.loads(line)["messages"] for name in RAW_FILES for line in (FIXTURES / "raw" / name).open()]


def raw_rows(family: str):
    tok = tokenizer(family)
    ends = default_end_token_ids(None, tok)
    return [derive({"messages": c}, i, tok, RoleSpec(ends)) for i, c in enumerate(conversations())], ends


@pytest.mark.parametrize("family", FAMILIES)
def test_markers_read_every_conversation_as_rendering_prefixes_does(family):
    rows, ends = raw_rows(family)
    markers, why = chat_markers(tokenizer(family), ends)
    assert markers is not None, why
    assert len(rows) == 6
    for row in rows:
        assert COMPLETION in row.roles
        assert markers.roles(row.input_ids) == row.roles, row.index


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_roles_from_the_template_and_from_raw_rows_agree_token_by_token(family):
    rows, ends = raw_rows(family)
    tok = tokenizer(family)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batch = collate([{"input_ids": r.input_ids} for r in rows], pad)
    read = batch_roles(batch, tok, ends)
    assert read.sources == ["chat_template"] * len(rows) and read.reasons == [None] * len(rows)
    raw = batch_roles(batch, tok, ends, RoleSources(roles_from=rows))
    assert raw.sources == ["roles_from"] * len(rows)
    for b, row in enumerate(rows):
        n = len(row.input_ids)
        assert read.codes[b, :n].tolist() == row.roles
        assert raw.codes[b, :n].tolist() == row.roles
        assert roles({**batch, "gradscope_roles": read.codes})[b, n:].eq(2).all()  # padding stays padding


def test_qwen3_think_blocks_and_tool_calls_are_completion():
    rows, _ = raw_rows("qwen3-chat")
    tok = tokenizer("qwen3-chat")
    think, call = tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("<tool_call>")
    response = tok.convert_tokens_to_ids("<tool_response>")
    think_rows = [r for r in rows if think in r.input_ids]
    assert len(think_rows) == 2
    for row in think_rows:
        assert all(row.roles[t] == COMPLETION for t, i in enumerate(row.input_ids) if i in (think, call))
        assert all(row.roles[t] == PROMPT for t, i in enumerate(row.input_ids) if i == response)


def test_phi3_trailing_eos_is_accepted_and_not_judged():
    rows, _ = raw_rows("phi3-chat")
    tok = tokenizer("phi3-chat")
    for row in rows:
        assert row.input_ids[-1] == tok.eos_token_id and row.roles[-1] == UNKNOWN
        end = tok.convert_tokens_to_ids("<|end|>")
        assert row.roles[max(t for t, i in enumerate(row.input_ids) if i == end)] == COMPLETION


def test_a_prefix_break_other_than_a_trailing_eos_is_still_refused():
    tok = tokenizer("phi3-chat")
    # Earlier turns rendered differently once a later one follows: the last turn upper-cased.
    template = (
        "{% for message in messages %}{% if loop.last %}{{ '<|' + message['role'] + '|>\\n' + "
        "message['content'] | upper }}"
        "{% else %}{{ '<|' + message['role'] + '|>\\n' + message['content'] }}{% endif %}{{ '<|end|>\\n' }}{% endfor %}"
        "{{ eos_token }}"
    )
    spec = RoleSpec(default_end_token_ids(None, tok), chat_template=template)
    with pytest.raises(DataError, match="prefix property"):
        derive({"messages": conversations()[1]}, 0, tok, spec)


def test_response_template_as_tokens_stops_at_the_end_token_and_says_when_absent():
    tok = tokenizer("chatml-chat")
    ends = default_end_token_ids(None, tok)
    text = "Question: What is 2 plus 3?\nAnswer: 5<|im_end|>Question: Hot?\nAnswer: cold<|im_end|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    batch = {"input_ids": torch.tensor([ids, ids])}
    batch["input_ids"][1] = torch.tensor(
        tok("no template here " * 6, add_special_tokens=False)["input_ids"][: len(ids)]
    )
    read = batch_roles(batch, tok, ends, RoleSources(response_template="Answer:"))
    answer = tok("Answer:", add_special_tokens=False)["input_ids"]
    expected, t = [PROMPT] * len(ids), 0
    while t < len(ids):  # by hand: after each "Answer:" through the next <|im_end|>
        if ids[t : t + len(answer)] == answer:
            t += len(answer)
            while True:
                expected[t] = COMPLETION
                t += 1
                if ids[t - 1] == tok.eos_token_id:
                    break
        else:
            t += 1
    assert expected.count(COMPLETION) == 6
    assert read.codes[0].tolist() == expected and read.sources[0] == "response_template"
    # The second row has neither the response template nor any assistant marker of the chat template.
    assert read.sources[1] == "unknown"
    assert "'Answer:'" in read.reasons[1] and "no assistant turn" in read.reasons[1]


def test_no_role_source_says_why():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(FIXTURES / "models" / "tiny-gpt2")
    read = batch_roles({"input_ids": torch.tensor([[5, 6, 7]])}, tok, frozenset({0}))
    assert read.sources == ["unknown"]
    assert read.reasons == ["the batch has no role tensor and the tokenizer has no chat template"]
    assert read.codes.eq(UNKNOWN).all()


def test_a_role_tensor_in_the_batch_wins():
    batch = {"input_ids": torch.tensor([[5, 6, 7]]), "completion_mask": torch.tensor([[0, 1, 1]])}
    read = batch_roles(batch, tokenizer("chatml-chat"), frozenset({2}), RoleSources(response_template="x"))
    assert read.codes is None and read.sources == ["completion_mask"]


def test_roles_from_rows_that_differ_from_the_batch_name_row_and_position():
    rows, ends = raw_rows("chatml-chat")
    ids = list(rows[1].input_ids)
    ids[7] = ids[7] + 1
    with pytest.raises(DataError) as err:
        batch_roles(
            {"input_ids": torch.tensor([ids])},
            tokenizer("chatml-chat"),
            ends,
            RoleSources(roles_from=rows, roles_from_path="raw.jsonl"),
            first_row=1,
        )
    assert "raw.jsonl: row 1: position 7:" in str(err.value) and "differ" in str(err.value)
    # A batch truncated at the end is the raw row's start: accepted, with the roles of that start.
    short = rows[1].input_ids[:9]
    read = batch_roles(
        {"input_ids": torch.tensor([short])}, tokenizer("chatml-chat"), ends, RoleSources(roles_from=rows), first_row=1
    )
    assert read.codes[0].tolist() == rows[1].roles[:9]


def test_trl_qwen25_training_template_header_newline_in_the_generation_block_is_not_judged():
    """TRL's Qwen2.5 training template opens {% generation %} before the '\\n' ending '<|im_start|>assistant': that
    '\\n' is in transformers' assistant mask but also in the generation prompt, so it is glue, not prompt."""
    tok = tokenizer("qwen2.5-trl-chat")
    rows, ends = raw_rows("qwen2.5-trl-chat")
    header = tok("<|im_start|>assistant", add_special_tokens=False)["input_ids"]
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    for row, chat in zip(rows, conversations(), strict=True):
        mask = tok.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert mask["input_ids"] == row.input_ids
        glue = [p + len(header) for p in range(len(row.input_ids)) if row.input_ids[p : p + len(header)] == header]
        assert glue and all(row.input_ids[g : g + len(newline)] == newline for g in glue)
        for t, (role, masked) in enumerate(zip(row.roles, mask["assistant_masks"], strict=True)):
            if t in glue:
                assert (role, masked) == (UNKNOWN, 1)
            elif role == COMPLETION:
                assert masked == 1  # every completion token is in the block
            elif role == PROMPT:
                assert masked == 0  # and no prompt token


def _completion_texts(tok, row) -> list[str]:
    spans, current = [], None
    for token, role in zip(row.input_ids, row.roles, strict=True):
        if role == COMPLETION:
            current = (current or []) + [token]
        elif current is not None:
            spans.append(tok.decode(current))
            current = None
    return spans + ([tok.decode(current)] if current else [])


def test_qwen3_original_template_that_drops_earlier_reasoning_is_read_on_the_whole_rendering():
    """Qwen3 as shipped renders an assistant turn's <think> block only after the last user query: the earlier turns
    are trained without their reasoning. Expected spans written from the messages, as the template renders them."""
    from gradscope.data.load import load_data
    from gradscope.data.pipelines import DataOptions

    tok = tokenizer("qwen3-original-chat")
    ends = default_end_token_ids(None, tok)
    chats = conversations()
    rows = [derive({"messages": c}, i, tok, RoleSpec(ends)) for i, c in enumerate(chats)]
    think = chats[4]  # system, user, assistant (reasoned), user, assistant (reasoned)
    first, last = think[2], think[4]
    assert _completion_texts(tok, rows[4]) == [
        first["content"] + "<|im_end|>",  # its reasoning is dropped by the template
        f"<think>\n{last['reasoning_content']}\n</think>\n\n{last['content']}<|im_end|>",
    ]
    assert first["reasoning_content"] not in tok.decode(rows[4].input_ids)
    assert rows[4].note is not None and "not in the training targets" in rows[4].note
    single = chats[1]  # one exchange: no later turn drops anything, the last turn gets an empty think block
    assert rows[1].note is None
    assert _completion_texts(tok, rows[1]) == [f"<think>\n\n</think>\n\n{single[1]['content']}<|im_end|>"]
    prepared = load_data(
        FIXTURES / "raw" / "think_chat.jsonl",
        tokenizer=tok,
        batch_size=2,
        options=DataOptions(),
        pad_token_id=tok.pad_token_id,
    )
    assert prepared.notes == [f"row(s) 0: {rows[4].note}"]


def test_a_prefix_break_beyond_dropped_reasoning_is_still_refused():
    tok = tokenizer("qwen3-original-chat")
    template = tok.chat_template.replace(
        "{% else %}{{ '<|im_start|>assistant\\n' + content }}",
        "{% else %}{{ '<|im_start|>assistant\\n' + content | upper }}",
    )
    assert template != tok.chat_template
    spec = RoleSpec(default_end_token_ids(None, tok), chat_template=template)
    with pytest.raises(DataError, match="prefix property"):
        derive({"messages": conversations()[0]}, 0, tok, spec)
