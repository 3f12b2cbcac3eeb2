"""Batches laid out as LLaMA-Factory, torchtune and axolotl lay them out: clean when configured right, and the
misconfigured twin reports its finding.

The frameworks are not dependencies: each layout is written here from their documented behaviour (and their
label-building code as published), on the tiny Llama fixture with its ChatML template, and roles are read from the
tokens as for any collated batch. Assumptions are in each builder's docstring. What every framework hands the model:
``input_ids`` and ``labels`` (aligned with input_ids: the model's loss shifts), plus a mask or ``position_ids``.
"""

from __future__ import annotations

import copy

import pytest
import torch

import gradscope

IGNORE = -100
LLAMA, GPT2 = "models/tiny-llama-chat", "models/tiny-gpt2"
CHATS = [
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What colour is the sky?"},
        {"role": "assistant", "content": "The sky is blue."},
        {"role": "user", "content": "What is the capital of Kenya?"},
        {"role": "assistant", "content": "The capital of Kenya is Nairobi."},
    ],
    [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "2 plus 3 is 5."}],
]


@pytest.fixture
def qwen_like(fixture_model):
    """The tiny Llama with a Qwen-style tokenizer copy: <|im_end|> ends turns, <|endoftext|> pads (an end token too)."""
    model, tok = fixture_model(LLAMA)
    tok = copy.deepcopy(tok)
    tok.pad_token = "<|endoftext|>"
    saved = model.config.use_cache
    model.config.use_cache = False  # as transformers' Trainer sets it (TrainingArguments.use_cache)
    yield model, tok
    model.config.use_cache = saved


def render(tok, messages, generation_prompt=False) -> list[int]:
    if not messages:
        return []
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt)
    return list(out["input_ids"])


def turns(tok, chat):
    """(source, target) token pairs per exchange, as LLaMA-Factory's ``encode_multiturn`` gives them for its qwen
    template: the source ends with ``<|im_start|>assistant\\n``, the target is the content, ``<|im_end|>`` and
    ``\\n``."""
    pairs, done = [], 0
    for k, message in enumerate(chat):
        if message["role"] != "assistant":
            continue
        head = render(tok, chat[:k], generation_prompt=True)
        whole = render(tok, chat[: k + 1])
        pairs.append((head[done:], whole[len(head) :]))
        done = len(whole)
    return pairs


def llama_factory(tok, chat, *, train_on_prompt=False, mask_history=False, efficient_eos=False, eos_labelled=True):
    """LLaMA-Factory's ``SupervisedDatasetProcessor._encode_data_example``: per turn, the source is IGNORE (its tokens
    with ``train_on_prompt``) and the target its tokens (IGNORE for every turn but the last under ``mask_history``).
    With ``efficient_eos`` the template leaves the end-of-turn token out of the target and writes it at the start of the
    next source, whose label is then that EOS (``[eos] + [IGNORE] * ...``), and appends a final EOS."""
    ids, labels = [], []
    pairs = turns(tok, chat)
    eos = tok.eos_token_id
    for i, (source, target) in enumerate(pairs):
        if efficient_eos:  # <|im_end|> (and the glue after it) moves from this target to the next source
            cut = target.index(eos)
            target, carried = target[:cut], target[cut:]
            if i + 1 < len(pairs):
                pairs[i + 1] = (carried + pairs[i + 1][0], pairs[i + 1][1])
        src_label = list(source) if train_on_prompt else [IGNORE] * len(source)
        if efficient_eos and i > 0 and not train_on_prompt and eos_labelled:
            src_label[0] = eos
        keep = not mask_history or i == len(pairs) - 1
        ids += source + target
        labels += src_label + (list(target) if keep else [IGNORE] * len(target))
    if efficient_eos:
        ids.append(eos)
        labels.append(eos)
    return ids, labels


def padded(rows, pad):
    width = max(len(i) for i, _ in rows)
    return {
        "input_ids": torch.tensor([i + [pad] * (width - len(i)) for i, _ in rows]),
        "labels": torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in rows]),
        "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in rows]),
    }


def findings(model, tok, batch, **options):
    report = gradscope.check_batches(model, [batch], tokenizer=tok, **options)
    return sorted((f.check, f.sample) for f in report.findings)


@pytest.mark.parametrize(
    ("config", "train_on", "expected"),
    [
        ({}, "all-assistant", []),
        ({"train_on_prompt": True}, "all-assistant", [("prompt_leak", 0), ("prompt_leak", 1)]),
        ({"mask_history": True}, "last-assistant", []),
        ({"mask_history": True}, "all-assistant", [("completion_untrained", 0), ("turn_end_untrained", 0)]),
        ({"efficient_eos": True}, "all-assistant", []),
        ({"efficient_eos": True, "eos_labelled": False}, "all-assistant", [("turn_end_untrained", 0)]),
    ],
)
def test_llama_factory_supervised_layouts(config, train_on, expected, qwen_like):
    model, tok = qwen_like
    batch = padded([llama_factory(tok, chat, **config) for chat in CHATS], tok.pad_token_id)
    assert findings(model, tok, batch, train_on=train_on) == expected


def block_causal_4d(lengths, width, dtype=torch.float32):
    """LLaMA-Factory's neat_packing mask (``prepare_4d_attention_mask``): causal inside each document, the dtype's
    minimum across documents and on padding rows and columns. (1, 1, T, T), additive."""
    allowed = torch.zeros(width, width, dtype=torch.bool)
    at = 0
    for n in lengths:
        allowed[at : at + n, at : at + n] = torch.ones(n, n, dtype=torch.bool).tril()
        at += n
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[None, None]


def packed(tok, rows, width, *, neat=True, pad_positions="zero"):
    """Documents packed into one row, padded with the pad id (<|endoftext|>, label IGNORE, position 0, as
    LLaMA-Factory's packed processor pads) to ``width``; position_ids restart per document. ``neat`` packing
    isolates documents with the block-causal 4D mask (no 2D mask with zeros anywhere, so the trailing pads look like
    tokens); without it the mask is all ones over the documents.
    ``pad_positions="continue"`` numbers the pads on from the last document, as torchtune's PackedDataset pads
    ``input_pos``."""
    ids = [t for i, _ in rows for t in i]
    labels = [t for _, lab in rows for t in lab]
    positions = [p for i, _ in rows for p in range(len(i))]
    pads = width - len(ids)
    batch = {
        "input_ids": torch.tensor([ids + [tok.pad_token_id] * pads]),
        "labels": torch.tensor([labels + [IGNORE] * pads]),
        "position_ids": torch.tensor(
            [
                positions
                + ([0] * pads if pad_positions == "zero" else list(range(positions[-1] + 1, positions[-1] + 1 + pads)))
            ]
        ),
    }
    lengths = [len(i) for i, _ in rows]
    batch["attention_mask"] = (
        block_causal_4d(lengths + [pads], width) if neat else torch.ones(1, width, dtype=torch.long)
    )
    return batch


@pytest.mark.parametrize(
    ("neat", "template", "expected"),
    [
        (True, True, []),
        (True, False, [("roles_unknown", -1)]),  # read from the gradient alone: not verified, but no false error
        (False, True, [("cross_document_leak", 0)]),
    ],
)
def test_llama_factory_neat_packing_with_endoftext_padding(neat, template, expected, qwen_like):
    """Qwen's <|endoftext|> pads the packed row after the last document and is an end token itself: the last
    document's trained <|im_end|> (and the trained "\\n" after it) closes it, and the pads after it close nothing (no
    eos_untrained claiming pad == eos)."""
    model, tok = qwen_like
    rows = [llama_factory(tok, chat) for chat in CHATS]
    batch = packed(tok, rows, sum(len(i) for i, _ in rows) + 5, neat=neat)
    if not template:
        tok.chat_template = None
    report = gradscope.check_batches(model, [batch], tokenizer=tok)
    assert sorted((f.check, -1 if f.sample is None else f.sample) for f in report.findings) == expected


def torchtune_instruct(tok, prompt, answer, *, train_on_input=False):
    """torchtune's instruct layout for a base tokenizer (``InputOutputToMessages`` + ``tokenize_messages``): the user
    message's tokens (masked unless ``train_on_input``), then the assistant's and its EOS (trained). No header: a base
    model's tokenizer has none. Labels are the tokens where the mask is False (torchtune's recipe shifts them itself;
    an HF model's loss shifts, so they stay aligned here)."""
    user = tok(prompt, add_special_tokens=False)["input_ids"]
    assistant = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    labels = (list(user) if train_on_input else [IGNORE] * len(user)) + assistant
    return user + assistant, labels


@pytest.mark.parametrize(
    ("train_on_input", "expected"),
    # Trained on its input, the second document's first token is trained from the first document's end, since
    # torchtune shifts labels across the whole pack: boundary_leak, beside the prompt_leak.
    [(False, []), (True, [("boundary_leak", 0), ("prompt_leak", 0)])],
)
def test_torchtune_packed_instruct_rows(train_on_input, expected, fixture_model):
    """torchtune's PackedDataset: documents concatenated, ``input_pos`` restarting per document (position_ids here),
    padded with the pad id (GPT-2: pad == eos) and label IGNORE; documents kept apart by position_ids alone (no
    attention_mask, no KV cache), as transformers isolates them."""
    model, tok = fixture_model(GPT2)
    pairs = [("Question: What colour is the sky?\nAnswer:", " blue"), ("Question: What is 2 plus 3?\nAnswer:", " 5")]
    rows = [torchtune_instruct(tok, p, a, train_on_input=train_on_input) for p, a in pairs]
    batch = packed(tok, rows, sum(len(i) for i, _ in rows) + 4, pad_positions="continue")
    del batch["attention_mask"]
    saved, model.config.use_cache = model.config.use_cache, False
    try:
        assert findings(model, tok, batch, response_template="\nAnswer:") == expected
    finally:
        model.config.use_cache = saved


def axolotl(tok, chat, *, roles_to_train=("assistant",), train_on_eos="turn"):
    """axolotl's ``chat_template`` strategy: each message of a role in ``roles_to_train`` has its content trained
    (``find_turn`` locates the content inside the rendering, headers excluded); ``train_on_eos`` trains the
    end-of-turn token after every trained turn (``turn``), only after the last one (``last``), or after every
    message (``all``)."""
    ids = render(tok, chat)
    labels = [IGNORE] * len(ids)
    trained = [k for k, m in enumerate(chat) if m["role"] in roles_to_train]
    for n, k in enumerate(trained):
        head = render(tok, chat[:k])
        body = render(tok, chat[: k + 1])
        start = len(head) + len(tok(f"<|im_start|>{chat[k]['role']}\n", add_special_tokens=False)["input_ids"])
        end = body.index(tok.eos_token_id, start)
        labels[start:end] = ids[start:end]
        if train_on_eos == "all" or (train_on_eos == "turn") or (train_on_eos == "last" and n == len(trained) - 1):
            labels[end] = ids[end]
    return ids, labels


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, []),
        ({"train_on_eos": "last"}, [("turn_end_untrained", 0)]),
        ({"roles_to_train": ("assistant", "user")}, [("prompt_leak", 0), ("prompt_leak", 1)]),
    ],
)
def test_axolotl_chat_template_layouts(config, expected, qwen_like):
    model, tok = qwen_like
    batch = padded([axolotl(tok, chat, **config) for chat in CHATS], tok.pad_token_id)
    assert findings(model, tok, batch) == expected
