"""End and pad tokens: which ids close a completion, which id pads. One place for the rule."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from gradscope.data.closers import bos_closes_turns, learnt_end_token_ids
from gradscope.tokenizer import Tokenizer

END_OF_TURN_TOKENS = frozenset(
    {"<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>", "<|end_of_text|>"}
)
"""Special tokens that close a turn or a document in common chat templates."""


def default_end_token_ids(model: object, tokenizer: Tokenizer | None = None) -> frozenset[int]:
    """EOS ids of the config, generation config and tokenizer, the tokenizer's end-of-turn tokens, and the tokens
    that close assistant turns in its chat template (learnt by rendering, ``closers.learnt_end_token_ids``)."""
    ids: set[int] = set()
    for cfg in (getattr(model, "config", None), getattr(model, "generation_config", None), tokenizer):
        value = getattr(cfg, "eos_token_id", None)
        ids.update([value] if isinstance(value, int) else (value or []))
    if tokenizer is not None:
        # One lookup per token (get_vocab() copies the vocabulary). A token the vocabulary lacks maps to None or to
        # the unknown token's id, which does not map back to it.
        for token in END_OF_TURN_TOKENS:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and tokenizer.convert_ids_to_tokens(token_id) == token:
                ids.add(token_id)
        ids.update(learnt_end_token_ids(tokenizer))
    return frozenset(ids)


def resolve_pad_token_id(model: object, tokenizer: Tokenizer | None = None) -> int | None:
    """The pad id: the tokenizer's, else the model config's, else None."""
    for source in (tokenizer, getattr(model, "config", None)):
        value = getattr(source, "pad_token_id", None)
        if isinstance(value, int):
            return value
    return None


MEDIA_TOKENS = frozenset(
    {
        "<image>",
        "<video>",
        "<audio>",
        "<|image_pad|>",
        "<|video_pad|>",
        "<|audio_pad|>",
        "<|AUDIO|>",
        "<|IMAGE|>",
        "<image_soft_token>",
        "<audio_soft_token>",
        "<|image|>",
        "<|video|>",
        "<|audio|>",
        "<IMG_CONTEXT>",
        "[IMG]",
    }
)
"""Placeholder tokens that multimodal processors expand into image, video or audio features."""

_MEDIA_CONFIG_KEYS = (
    "image_token_id",
    "image_token_index",
    "video_token_id",
    "video_token_index",
    "audio_token_id",
    "audio_token_index",
)


def media_token_ids(model: nn.Module, tokenizer: Tokenizer | None = None) -> frozenset[int]:
    """Ids of media placeholder tokens: those the model config names (``image_token_id`` and kin) and the
    tokenizer's tokens from ``MEDIA_TOKENS``."""
    config = getattr(model, "config", None)
    ids = {v for k in _MEDIA_CONFIG_KEYS if isinstance(v := getattr(config, k, None), int)}
    if tokenizer is not None:
        for token in MEDIA_TOKENS:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and tokenizer.convert_ids_to_tokens(token_id) == token:
                ids.add(token_id)
    return frozenset(ids)


def resolve_bos_token_id(tokenizer: Tokenizer | None = None) -> int | None:
    """The tokenizer's BOS id, or None: the model config's bos_token_id is not used, since many configs name one
    that neither the tokenizer nor the template ever emits.

    None too when the chat template closes its turns with the BOS and never opens a rendering with it (Granite 3.x,
    BOS == EOS == PAD): that token is then a turn closer, and a document start only where position_ids or another
    declared boundary say so, which the packing checks read without a BOS.
    """
    value = getattr(tokenizer, "bos_token_id", None)
    if (
        tokenizer is None
        or not isinstance(value, int)
        or (not _encodes_first(tokenizer, value) and bos_closes_turns(tokenizer))
    ):
        return None
    return value


_BOS_PROBE = "Hello world."


def bos_added(tokenizer: Tokenizer | None = None) -> bool:
    """Whether the tokenizer puts its BOS first in every encoding (``tokenizer(text)`` with special tokens, as
    pipelines tokenize). Found by encoding a probe text with and without special tokens, not from a config flag
    (``add_bos_token`` is absent from most fast tokenizers' files, and a post-processor can add it anyway)."""
    bos = resolve_bos_token_id(tokenizer)
    return bos is not None and tokenizer is not None and _encodes_first(tokenizer, bos)


def _encodes_first(tokenizer: Tokenizer, bos: int) -> bool:
    try:
        with_special = list(tokenizer(_BOS_PROBE)["input_ids"])
        plain = list(tokenizer(_BOS_PROBE, add_special_tokens=False)["input_ids"])
    except (TypeError, ValueError, KeyError, AttributeError):  # no plain-text encoding (a stub): nothing to say
        return False
    return with_special[:1] == [bos] and plain[:1] != [bos]


def config_end_token_ids(path: str | Path) -> set[int]:
    """EOS ids named in a directory's config.json and generation_config.json (read as JSON: no model is built)."""
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        file = Path(path) / name
        if file.is_file():
            try:
                value = json.loads(file.read_text(encoding="utf-8")).get("eos_token_id")
            except (OSError, json.JSONDecodeError, AttributeError):
                continue
            ids.update([value] if isinstance(value, int) else [v for v in value or [] if isinstance(v, int)])
    return ids
