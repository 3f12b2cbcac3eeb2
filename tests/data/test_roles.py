"""Roles from raw rows, token by token against hand-written expectations, and the precise errors.

Each expectation is written as the rendered text cut into pieces with the role of each piece. The test tokenizes the
pieces one by one (and checks that this gives exactly the tokens of the whole text, so the cut falls on token
boundaries) and compares the role of every token with the role gradscope derived.
"""

from __future__ import annotations

import pytest

from gradscope.constants import UNKNOWN
from gradscope.data.batch import COMPLETION, PROMPT
from gradscope.data.roles import RoleSpec, derive
from gradscope.data.rows import find_subsequence, truncate
from gradscope.data.templates import template_markers
from gradscope.data.tokens import default_end_token_ids
from gradscope.errors import DataError

P, C, U = PROMPT, COMPLETION, UNKNOWN


@pytest.fixture
def tok(fixture_tokenizer):
    """``tok(name)``: the fixture tokenizer "chatml", "llama3", "mistral" or "gpt2" (conftest's
    ``fixture_tokenizer``)."""
    return fixture_tokenizer


@pytest.fixture
def spec(tok):
    """``spec(name, **kwargs)``: the RoleSpec of that tokenizer's end tokens."""

    def make(name: str, **kwargs) -> RoleSpec:
        return RoleSpec(default_end_token_ids(None, tok(name)), **kwargs)

    return make


CALL = {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}
TOOL_CHAT = [
    {"role": "system", "content": "Use the tools."},
    {"role": "user", "content": "What is 2 plus 3?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": "5"},
    {"role": "assistant", "content": "It is 5."},
    {"role": "user", "content": "Thanks."},
    {"role": "assistant", "content": "You are welcome."},
]

# The rendered chat cut into (text, role) pieces: header prompt; content and closing token completion; ChatML's "\n"
# after an assistant's <|im_end|> not judged. The ChatML fixture template renders tool turns but not tool calls.
EXPECTED = {
    "chatml": [
        ("<|im_start|>system\nUse the tools.<|im_end|>\n<|im_start|>user\nWhat is 2 plus 3?<|im_end|>\n", P),
        ("<|im_start|>assistant\n", P),
        ("<|im_end|>", C),
        ("\n", U),
        ("<|im_start|>tool\n5<|im_end|>\n", P),
        ("<|im_start|>assistant\n", P),
        ("It is 5.<|im_end|>", C),
        ("\n", U),
        ("<|im_start|>user\nThanks.<|im_end|>\n", P),
        ("<|im_start|>assistant\n", P),
        ("You are welcome.<|im_end|>", C),
        ("\n", U),
    ],
    "llama3": [
        ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nUse the tools.<|eot_id|>", P),
        ("<|start_header_id|>user<|end_header_id|>\n\nWhat is 2 plus 3?<|eot_id|>", P),
        ("<|start_header_id|>assistant<|end_header_id|>\n\n", P),
        ('{"name": "add", "parameters": {"a": 2, "b": 3}}<|eot_id|>', C),
        ("<|start_header_id|>ipython<|end_header_id|>\n\n5<|eot_id|>", P),
        ("<|start_header_id|>assistant<|end_header_id|>\n\n", P),
        ("It is 5.<|eot_id|>", C),
        ("<|start_header_id|>user<|end_header_id|>\n\nThanks.<|eot_id|>", P),
        ("<|start_header_id|>assistant<|end_header_id|>\n\n", P),
        ("You are welcome.<|eot_id|>", C),
    ],
    # No assistant header: [/INST] ends the user turn; the tool call marker is generated, so it is completion.
    "mistral": [
        ("<s>[INST] Use the tools.\n\nWhat is 2 plus 3? [/INST]", P),
        ('[TOOL_CALLS] [{"name": "add", "arguments": {"a": 2, "b": 3}}]</s>', C),
        ("[TOOL_RESULTS] 5 [/TOOL_RESULTS]", P),
        ("It is 5.</s>", C),
        ("[INST] Thanks. [/INST]", P),
        ("You are welcome.</s>", C),
    ],
}


@pytest.fixture
def expected_roles(tok):
    """``expected_roles(name, pieces, ids)``: the role of each token, tokenizing the (text, role) pieces one by one."""

    def roles(name: str, pieces: list[tuple[str, int]], ids: list[int]) -> list[int]:
        t = tok(name)
        piece_ids = [t(text, add_special_tokens=False)["input_ids"] for text, _ in pieces]
        assert [i for p in piece_ids for i in p] == ids, "the pieces must cut the text on token boundaries"
        return [role for p, (_, role) in zip(piece_ids, pieces, strict=True) for _ in p]

    return roles


@pytest.mark.parametrize("name", ["chatml", "llama3", "mistral"])
def test_multi_turn_chat_roles_token_by_token(name, tok, spec, expected_roles):
    row = derive({"messages": TOOL_CHAT}, 0, tok(name), spec(name))
    rendered = tok(name).apply_chat_template(TOOL_CHAT, tokenize=True, return_dict=True)["input_ids"]
    assert row.input_ids == rendered  # the same ids apply_chat_template (and TRL) produce
    assert "".join(text for text, _ in EXPECTED[name]) == tok(name).apply_chat_template(TOOL_CHAT, tokenize=False)
    assert row.roles == expected_roles(name, EXPECTED[name], row.input_ids)
    assert row.labels == [i if r == C else -100 for i, r in zip(row.input_ids, row.roles, strict=True)]


def test_messages_are_attributed_to_their_turns(tok, spec):
    row = derive({"messages": TOOL_CHAT}, 0, tok("chatml"), spec("chatml"))
    t = tok("chatml")
    per_message = [
        t.apply_chat_template(TOOL_CHAT[: k + 1], tokenize=True, return_dict=True)["input_ids"]
        for k in range(len(TOOL_CHAT))
    ]
    bounds = [0] + [len(ids) for ids in per_message]
    assert row.messages == [k for k in range(len(TOOL_CHAT)) for _ in range(bounds[k + 1] - bounds[k])]


def test_last_assistant_policy_makes_earlier_turns_prompt(tok, spec, expected_roles):
    row = derive({"messages": TOOL_CHAT}, 0, tok("llama3"), spec("llama3", train_on="last-assistant"))
    pieces = [(text, P) for text, _ in EXPECTED["llama3"][:-1]] + [EXPECTED["llama3"][-1]]
    assert row.roles == expected_roles("llama3", pieces, row.input_ids)


def test_conversational_prompt_completion_trains_only_the_completion_messages(tok, spec, expected_roles):
    prompt, completion = TOOL_CHAT[:5], TOOL_CHAT[5:]
    row = derive({"prompt": prompt, "completion": completion}, 0, tok("chatml"), spec("chatml"))
    pieces = [(text, P) for text, _ in EXPECTED["chatml"][:9]] + EXPECTED["chatml"][9:]
    pieces[8:9] = [("<|im_start|>user\nThanks.<|im_end|>\n", P)]
    assert row.roles == expected_roles("chatml", pieces, row.input_ids)


@pytest.mark.parametrize("name", ["chatml", "gpt2"])
def test_prompt_completion_strings_split_by_character_offsets(name, tok, spec, expected_roles):
    t = tok(name)
    row = derive({"prompt": "Question: What is 2 plus 3?\nAnswer:", "completion": " 5"}, 0, t, spec(name))
    pieces = [("Question: What is 2 plus 3?\nAnswer:", P), (" 5" + t.eos_token, C)]  # EOS appended, as TRL does
    assert row.roles == expected_roles(name, pieces, row.input_ids)


def test_completion_starts_at_the_token_holding_its_first_character(tok, spec):
    t = tok("chatml")
    prompt, completion = "Reverse the word ca", "t: tac"  # "cat" is one token across the boundary
    row = derive({"prompt": prompt, "completion": completion}, 0, t, spec("chatml"))
    ids = t(prompt + completion + t.eos_token, return_offsets_mapping=True)
    first = next(i for i, (_, end) in enumerate(ids["offset_mapping"]) if end > len(prompt))
    assert ids["offset_mapping"][first][0] < len(prompt)  # this case really straddles
    assert row.roles == [P] * first + [C] * (len(row.input_ids) - first)


def test_text_rows_with_response_and_instruction_templates(tok, spec, expected_roles):
    t = tok("gpt2")
    text = "### Human: Add 2 and 3.\n### Assistant: 5\n### Human: Thanks.\n### Assistant: Welcome."
    row = derive(
        {"text": text}, 0, t, spec("gpt2", response_template="### Assistant:", instruction_template="### Human:")
    )
    pieces = [
        ("### Human: Add 2 and 3.\n### Assistant:", P),
        (" 5\n", C),
        ("### Human: Thanks.\n### Assistant:", P),
        (" Welcome." + t.eos_token, C),
    ]
    assert row.roles == expected_roles("gpt2", pieces, row.input_ids)


def test_response_template_not_found_as_tokens_says_alone_vs_in_context(tok, spec):
    with pytest.raises(DataError) as err:
        derive({"text": "Question: hi\nAnswer: yes"}, 3, tok("gpt2"), spec("gpt2", response_template="swer:"))
    message = str(err.value)
    assert "row 3" in message and "'swer:' is in the text but not in its tokens" in message
    assert "alone it tokenizes as [" in message and "'sw'" in message
    assert "in context as [" in message and "'Answer'" in message


def test_response_template_absent_from_the_text(tok, spec):
    with pytest.raises(DataError, match="row 1: the response template '### A:' does not occur in the text"):
        derive({"text": "Question: hi"}, 1, tok("gpt2"), spec("gpt2", response_template="### A:"))


def test_plain_text_without_template_and_unknown_rows_are_errors(tok, spec):
    with pytest.raises(DataError, match="`response_template`"):
        derive({"text": "hello"}, 0, tok("gpt2"), spec("gpt2"))
    with pytest.raises(DataError, match=r"row 0: the row has none of the fields .*\['question'\]"):
        derive({"question": "hello"}, 0, tok("gpt2"), spec("gpt2"))
    with pytest.raises(DataError, match="chat template"):
        derive({"messages": TOOL_CHAT[:2]}, 0, tok("gpt2"), spec("gpt2"))


def test_template_that_breaks_the_prefix_property_is_named_precisely(tok, spec):
    # Mistral v0.3-style: the system prompt joins the LAST user turn, so earlier turns render differently later.
    template = (
        "{% set ns = namespace(last=-1) %}{% for m in messages %}{% if m['role'] == 'user' %}"
        "{% set ns.last = loop.index0 %}{% endif %}{% endfor %}{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'user' %}{{ '[INST] ' }}{% if loop.index0 == ns.last and messages[0]['role'] == 'system' %}"
        "{{ messages[0]['content'] + '\\n\\n' }}{% endif %}{{ m['content'] + ' [/INST]' }}"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
    )
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye."},
    ]
    with pytest.raises(DataError) as err:
        derive({"messages": messages}, 7, tok("mistral"), spec("mistral", chat_template=template))
    assert str(err.value).startswith(
        "row 7: the chat template breaks the prefix property at message 1 (user): the first 2 message(s) render as "
        "text ending '<s>[INST] Be brief.\\n\\nHi [/INST]', whose tokens alone at position 3 are [37 'B', 72 'e', "
        "341 ' bri', 339 'ef'] but in the whole conversation [43 'H', 76 'i', 224 ' ', 483 '[/INST]']"
    )


def test_closing_token_the_template_gives_to_the_next_turn_is_still_completion(tok, spec, expected_roles):
    # Failure mode 5: <|im_end|> is written at the start of the next turn, outside the assistant's own rendering.
    template = (
        "{% for m in messages %}{% if not loop.first %}{{ '<|im_end|>\\n' }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}{% if messages %}{{ '<|im_end|>\\n' }}{% endif %}{{ "
        "'<|im_start|>assistant\\n' }}{% endif %}"
    )
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    row = derive({"messages": messages}, 0, tok("chatml"), spec("chatml", chat_template=template))
    assert (
        tok("chatml")
        .apply_chat_template(messages, tokenize=False, chat_template=template)
        .startswith("<|im_start|>user\nHi<|im_end|>")
    )
    pieces = [
        ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", P),
        ("Hello.<|im_end|>", C),
        ("\n<|im_start|>user\nBye", P),
    ]
    assert row.roles == expected_roles("chatml", pieces, row.input_ids)


def test_truncation_counts_the_completion_tokens_it_cuts(tok, spec):
    row = derive({"messages": TOOL_CHAT}, 0, tok("chatml"), spec("chatml"))
    n, completion = len(row.input_ids), row.roles.count(C)
    start = truncate(row, n - 3, "keep_start")  # cuts ".", "<|im_end|>" (completion) and "\n" (not judged)
    assert start.input_ids == row.input_ids[: n - 3] and start.roles == row.roles[: n - 3]
    assert start.cut == completion - row.roles[: n - 3].count(C) == 2
    end = truncate(row, 10, "keep_end")
    assert end.input_ids == row.input_ids[-10:] and end.cut == completion - row.roles[-10:].count(C)
    assert truncate(row, n, "keep_start") is row


def test_find_subsequence():
    assert find_subsequence([1, 2, 3, 1, 2], [1, 2]) == [0, 3]
    assert find_subsequence([1, 2], []) == []


@pytest.mark.parametrize("name", ["chatml", "llama3", "mistral"])
def test_template_markers_read_roles_back_from_token_ids(name, tok, spec):
    ends = default_end_token_ids(None, tok(name))
    markers = template_markers(tok(name), ends)
    assert markers is not None
    for messages, policy in (
        (TOOL_CHAT, "all-assistant"),
        (TOOL_CHAT, "last-assistant"),
        (TOOL_CHAT[1:5], "all-assistant"),
    ):
        row = derive({"messages": messages}, 0, tok(name), spec(name, train_on=policy))
        assert markers.roles(row.input_ids, policy) == row.roles


def test_template_markers_need_a_template(tok):
    assert template_markers(tok("gpt2"), default_end_token_ids(None, tok("gpt2"))) is None
