"""Chat templates that drop the reasoning of earlier assistant turns (Qwen3 as it ships), read as they render.

Such a template renders an assistant turn with its ``<think>…</think>`` block while it is the last one, and without it
once a later user turn follows, so the rendering of the first k messages is not a prefix of the whole conversation's.
Everything else renders the same: with every think block removed, the growing prefixes are prefixes again. The roles
are then read on the whole conversation's rendering, which is what a trainer tokenizes: each earlier turn's content
and closing token, without its reasoning (the training targets differ from what inference renders, a failure mode of
its own, named in the report's notes).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping

from gradscope.tokenizer import Tokenizer

THINK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)

DROPPED_REASONING = (
    "the chat template drops the reasoning (<think>…</think>) of earlier assistant turns: the roles are read on the "
    "whole conversation as it renders, so those turns train their answer without their reasoning, which is not in "
    "the training targets (inference renders the last turn with it). Keep every turn's reasoning in training with a "
    "template that renders it for every turn, or split conversations into one row per assistant turn"
)


def bounds_without_reasoning(
    tokenizer: Tokenizer, texts: list[str], headers: Mapping[int, str], full: list[int]
) -> tuple[list[int], dict[int, int]] | None:
    """Message bounds and assistant content starts, in tokens of the whole rendering, for a template whose only prefix
    break is dropping earlier turns' reasoning; None when the break is another one.

    Args:
        tokenizer: A fast tokenizer (character offsets of the whole rendering).
        texts: The renderings of the first k messages, k = 0 … n (``texts[-1]`` the whole conversation).
        headers: Per trained assistant message k, the first k messages rendered with the generation prompt.
        full: The whole rendering's tokens.

    Returns:
        ``bounds`` (where each message starts, as ``roles._prefix_bounds`` gives them) and each trained message's
        content start, or None.
    """
    whole = texts[-1]
    if not getattr(tokenizer, "is_fast", False) or not _drops_reasoning(texts):
        return None
    kept, removed = _strip(whole)
    encoding = tokenizer(whole, add_special_tokens=False, return_offsets_mapping=True)
    if list(encoding["input_ids"]) != full:
        return None
    token_starts = [start for start, _ in encoding["offset_mapping"]]
    to_token = _token_at(token_starts, len(whole))
    bounds = [0] + [to_token(_unstrip(len(_strip(t)[0]), removed)) for t in texts[1:]]
    starts = {k: to_token(_unstrip(len(_strip(h)[0]), removed)) for k, h in headers.items()}
    if None in bounds or None in starts.values() or bounds != sorted(bounds):
        return None
    if any(not bounds[k] <= starts[k] <= bounds[k + 1] for k in starts):
        return None
    return bounds, starts


def _drops_reasoning(texts: list[str]) -> bool:
    """Every prefix, think blocks removed, is a prefix of the whole (the caller knows that as rendered, one is not)."""
    whole = _strip(texts[-1])[0]
    return any(THINK.search(t) for t in texts) and all(whole.startswith(_strip(t)[0]) for t in texts)


def _strip(text: str) -> tuple[str, list[tuple[int, int]]]:
    """The text without think blocks, and each removed block as (its position in the stripped text, its length)."""
    removed, pieces, at, kept = [], [], 0, 0
    for match in THINK.finditer(text):
        pieces.append(text[at : match.start()])
        kept += match.start() - at
        removed.append((kept, match.end() - match.start()))
        at = match.end()
    pieces.append(text[at:])
    return "".join(pieces), removed


def _unstrip(position: int, removed: list[tuple[int, int]]) -> int:
    """A position in the stripped text as a position in the text: blocks removed strictly before it added back (a
    boundary right before a block, a header's end, stays before it)."""
    return position + sum(length for at, length in removed if at < position)


def _token_at(token_starts: list[int], length: int):
    """position -> the index of the token starting there (len(tokens) at the text's end), None if inside a token."""

    def at(position: int) -> int | None:
        if position >= length:
            return len(token_starts)
        t = bisect.bisect_left(token_starts, position)
        return t if t < len(token_starts) and token_starts[t] == position else None

    return at
