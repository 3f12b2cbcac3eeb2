"""End tokens learnt from the chat template: what each assistant turn closes with when rendered.

A name list (``tokens.END_OF_TURN_TOKENS``) knows the common end-of-turn tokens; a new family's are learnt here, by
rendering probe conversations and reading the special token that ends each assistant message:

- a template that closes its turns (ChatML's ``<|im_end|>``, harmony's ``<|end|>``, ``<|return|>`` for the
  conversation's last message and ``<|call|>`` for a tool call): the last special token of each assistant message
  (rendered last, and followed by more messages), whitespace after it aside;
- a template whose turns have no closing token (GLM: ``<|assistant|>\\nOne.`` and then ``<|user|>``): the special
  token that opens whatever follows the assistant's message, which the model writes to end its turn.

A template that cannot be rendered gives no learnt end token (the name list and the config's EOS stay).
"""

from __future__ import annotations

import json
import weakref
from typing import Any

from gradscope.data.chat_template import render_probe

PROBE_CALL: dict[str, Any] = {
    "type": "function",
    "id": "call0add1",
    "function": {"name": "add", "arguments": {"a": 2, "b": 3}},
}
"""The tool call of the probe chats, with an id of nine letters and digits (Mistral's templates refuse others)."""
PROBE_RESULT: dict[str, Any] = {"role": "tool", "tool_call_id": "call0add1", "name": "add", "content": "5"}
PROBE_TURNS: list[dict[str, Any]] = [
    {"role": "user", "content": "Say one."},
    {"role": "assistant", "content": "One."},
    {"role": "user", "content": "Say two."},
    {"role": "assistant", "content": "Two."},
]
"""Two plain turns: the probe chat every template renders."""
PROBE_TOOL_TURN: list[dict[str, Any]] = [
    {"role": "user", "content": "Add 2 and 3."},
    {"role": "assistant", "content": "", "tool_calls": [PROBE_CALL]},
    PROBE_RESULT,
    {"role": "assistant", "content": "It is 5."},
]
"""A tool call, its result and the answer after it."""
_PROBES: tuple[list[dict[str, Any]], ...] = (PROBE_TURNS, PROBE_TOOL_TURN)

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def probe_variants(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A probe chat as given (tool-call arguments as an object, as transformers documents them), then, when it has
    tool calls, with the arguments as a JSON string (the OpenAI form, which DeepSeek-V3's template concatenates)."""
    if not any(m.get("tool_calls") for m in messages):
        return [messages]
    as_text = [
        {
            **m,
            "tool_calls": [
                {**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}}
                for c in m["tool_calls"]
            ],
        }
        if m.get("tool_calls")
        else m
        for m in messages
    ]
    return [messages, as_text]


def learnt_end_token_ids(tokenizer: Any) -> frozenset[int]:
    """The special tokens that close assistant turns in the tokenizer's chat template, learnt once per template."""
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if not isinstance(template, str) or not template or not hasattr(tokenizer, "apply_chat_template"):
        return frozenset()
    try:
        cache = _CACHE.setdefault(tokenizer, {})
    except TypeError:
        cache = {}
    if template not in cache:
        cache[template] = _learn(tokenizer)
    return cache[template]


def bos_closes_turns(tokenizer: Any) -> bool:
    """The tokenizer's BOS is a token its chat template closes turns with and never opens a rendering with (Granite
    3.x: BOS == EOS == PAD == ``<|end_of_text|>``): inside a chat it is a turn closer, not a document start."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if not isinstance(bos, int) or bos not in learnt_end_token_ids(tokenizer):
        return False
    first = _ids(tokenizer, _PROBES[0][:2])
    return first is not None and len(first) > 0 and first[0] != bos


def _learn(tokenizer: Any) -> frozenset[int]:
    special = _special_ids(tokenizer)
    closing: set[int] = set()
    opening: set[int] = set()
    has_closers = False
    for variants in map(probe_variants, _PROBES):
        probe, parts = next(
            ((v, p) for v in variants if (p := _message_parts(tokenizer, v)) is not None), (variants[0], None)
        )
        if parts is None:
            continue
        for k, message in enumerate(probe):
            if message["role"] != "assistant":
                continue
            for ids in (parts[k], _as_last(tokenizer, probe, k)):
                last = _last_solid(tokenizer, ids)
                if last is not None and last in special:
                    closing.add(last)
                    has_closers = has_closers or not message.get("tool_calls")
            if k + 1 < len(parts) and parts[k + 1] and parts[k + 1][0] in special:
                opening.add(parts[k + 1][0])
    return frozenset(closing if has_closers else opening)


def _special_ids(tokenizer: Any) -> set[int]:
    try:
        added = set(tokenizer.get_added_vocab().values())
    except (AttributeError, TypeError):
        added = set()
    return set(getattr(tokenizer, "all_special_ids", []) or []) | added


def _message_parts(tokenizer: Any, messages: list[dict]) -> list[list[int]] | None:
    """Each message's tokens in the whole conversation's rendering (by growing prefixes); None when the prefixes are
    not prefixes of the whole (the parts then cannot be told apart this way)."""
    whole = _ids(tokenizer, messages)
    if whole is None:
        return None
    first = _ids(tokenizer, messages[:1]) or []
    tail = first[-1] if first else None  # what ends every rendering, if a template appends one (Phi-3)
    bounds = [0]
    for k in range(1, len(messages)):
        ids = _ids(tokenizer, messages[:k])
        if ids is None:
            return None
        n = _shared(ids, whole)
        if n < len(ids) - 1 or n < bounds[-1]:
            return None
        # One last token may differ: a closer rendered for the conversation's last message (harmony's <|return|> for
        # <|end|>), which belongs to the message, or a token the template ends every rendering with, which does not.
        bounds.append(n if n == len(ids) or ids[-1] == tail else len(ids))
    bounds.append(len(whole))
    return [whole[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def _as_last(tokenizer: Any, messages: list[dict], k: int) -> list[int]:
    """Message k's tokens when it ends the conversation (harmony closes it with ``<|return|>`` then)."""
    before, through = _ids(tokenizer, messages[:k]), _ids(tokenizer, messages[: k + 1])
    if before is None or through is None:
        return []
    return through[_shared(before, through) :]


def _shared(a: list[int], b: list[int]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def _last_solid(tokenizer: Any, ids: list[int]) -> int | None:
    """The last token that is not whitespace (ChatML's ``\\n`` after ``<|im_end|>``)."""
    for token in reversed(ids):
        if tokenizer.decode([token]).strip():
            return token
    return None


def _ids(tokenizer: Any, messages: list[dict]) -> list[int] | None:
    text = render_probe(tokenizer, messages)
    return None if text is None else list(tokenizer(text, add_special_tokens=False)["input_ids"])
