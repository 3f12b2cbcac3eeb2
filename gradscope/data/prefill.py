"""Generation-prompt prefills: what a chat template writes after the assistant header when it prompts for an answer.

Qwen3's template with ``enable_thinking=False`` ends the generation prompt (``add_generation_prompt=True``) with an
empty think block, ``<think>\\n\\n</think>\\n\\n``; DeepSeek-R1's ends it with ``<think>\\n``. At inference these tokens
are part of the prompt: the model never generates them. gradscope learns them from the template itself, by rendering
a probe conversation with and without the generation prompt and taking away the assistant header that the template
writes before an earlier answer.
"""

from __future__ import annotations

import weakref
from typing import Any

from gradscope.data.chat_template import render_probe
from gradscope.tokenizer import Tokenizer

_PROBE = [
    {"role": "user", "content": "Say one."},
    {"role": "assistant", "content": "One."},
    {"role": "user", "content": "Say two."},
]
"""The assistant turn comes before the last user turn: templates that write a think block only in answers after the
last user turn (Qwen3's) write none there, so its header is the bare role marker."""

PREFILL_OPTIONS: tuple[dict[str, Any], ...] = ({}, {"enable_thinking": False})
"""Template variables the generation prompt is rendered with: the default, and Qwen3's switch to non-thinking
answers (``apply_chat_template(..., enable_thinking=False)``)."""

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def generation_prefills(tokenizer: Tokenizer | None) -> tuple[tuple[int, ...], ...]:
    """The token runs the template's generation prompt writes after the assistant header, one per template option
    that writes one (none for most templates); learnt once per tokenizer and template.

    A template that fails on the probe, or whose generation prompt does not continue the conversation as its
    assistant turns do, gives none: gradscope then says nothing about prefills.
    """
    if tokenizer is None:
        return ()
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        return ()
    try:
        cache = _CACHE.setdefault(tokenizer, {})
    except TypeError:
        cache = {}
    if template not in cache:
        cache[template] = _learn(tokenizer)
    return cache[template]


def _learn(tokenizer: Tokenizer) -> tuple[tuple[int, ...], ...]:
    base, history = _render(tokenizer, _PROBE[:1]), _render(tokenizer, _PROBE)
    if base is None or history is None or not history.startswith(base) or "One." not in history[len(base) :]:
        return ()
    header = history[len(base) : history.index("One.", len(base))]
    found: list[tuple[int, ...]] = []
    for options in PREFILL_OPTIONS:
        prompted = _render(tokenizer, _PROBE[:1], generation_prompt=True, **options)
        if prompted is None or not prompted.startswith(base + header):
            continue
        prefill = prompted[len(base + header) :]
        ids = _ids_in_context(tokenizer, base + header, prefill) if prefill.strip() else ()
        if ids and ids not in found:
            found.append(ids)
    for ids in _option_prefills(tokenizer, header):
        if ids not in found:
            found.append(ids)
    return tuple(found)


def _option_prefills(tokenizer: Tokenizer, header: str) -> list[tuple[int, ...]]:
    """What an option adds to the default generation prompt, each rendered with that option's own conversation.

    ``enable_thinking=False`` may change more than the prompt: GLM appends ``/nothink`` to user turns, SmolLM3
    writes ``/no_think`` into its system message; the prefill (``\\n<think></think>``, ``<think>\\n\\n</think>\\n``) is
    then the
    option's generation prompt past the default one (the assistant header).
    """
    base, prompted = _render(tokenizer, _PROBE[:1]), _render(tokenizer, _PROBE[:1], generation_prompt=True)
    if base is None or prompted is None or not prompted.startswith(base):
        return []
    plain = prompted[len(base) :]
    if not plain or not (header.startswith(plain) or plain.startswith(header)):  # no prompt an answer continues
        return []
    found = []
    for options in PREFILL_OPTIONS[1:]:
        base_o = _render(tokenizer, _PROBE[:1], **options)
        prompted_o = _render(tokenizer, _PROBE[:1], generation_prompt=True, **options)
        if base_o is None or prompted_o is None or not prompted_o.startswith(base_o + plain):
            continue
        prefill = prompted_o[len(base_o + plain) :]
        if prefill.strip():
            found.append(_ids_in_context(tokenizer, base_o + plain, prefill))
    return found


def _render(tokenizer: Tokenizer, messages: list[dict], generation_prompt: bool = False, **options: Any) -> str | None:
    return render_probe(tokenizer, messages, generation_prompt, **options)


def _ids_in_context(tokenizer: Tokenizer, before: str, prefill: str) -> tuple[int, ...]:
    """The prefill's tokens as they follow the header (tokenized alone when the context merges them)."""
    head = list(tokenizer(before, add_special_tokens=False)["input_ids"])
    whole = list(tokenizer(before + prefill, add_special_tokens=False)["input_ids"])
    if whole[: len(head)] == head and len(whole) > len(head):
        return tuple(whole[len(head) :])
    return tuple(tokenizer(prefill, add_special_tokens=False)["input_ids"])
