"""Tokenizing texts once each, in batched calls, with character offsets where roles need them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gradscope.tokenizer import Tokenizer


class Encoder:
    """Token ids (and character offsets) of texts, each text tokenized once; ``prepare`` tokenizes many in one call.

    ``plain`` texts are tokenized as template pieces are (``add_special_tokens=False``), ``with_offsets`` texts as a
    whole row is (the tokenizer's own special tokens added), with character offsets.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tok = tokenizer
        self.plain: dict[str, list[int]] = {}
        self.offsets: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}

    def prepare(self, plain: Sequence[str], with_offsets: Sequence[str]) -> None:
        """Tokenize the texts not seen yet, in one batched call per kind."""
        new = list(dict.fromkeys(t for t in plain if t not in self.plain))
        if new:
            self.plain.update(zip(new, self._encode(new, special=False, offsets=False), strict=True))
        new = list(dict.fromkeys(t for t in with_offsets if t not in self.offsets))
        if new:
            self.offsets.update(zip(new, self._encode(new, special=True, offsets=True), strict=True))

    def _encode(self, texts: list[str], special: bool, offsets: bool) -> list:
        """ids (or (ids, offsets)) per text: what ``tokenizer(texts, ...)`` gives. A fast tokenizer's Rust backend is
        called directly when the call would leave it as it is (no truncation or padding set, special tokens split as
        the tokenizer says): the same encodings, without building a BatchEncoding of Python lists first."""
        backend = getattr(self.tok, "backend_tokenizer", None) if getattr(self.tok, "is_fast", False) else None
        if backend is not None and _as_its_call_leaves_it(backend, self.tok):
            encodings = backend.encode_batch(texts, add_special_tokens=special)
            return [(e.ids, e.offsets) for e in encodings] if offsets else [e.ids for e in encodings]
        enc = self.tok(texts, add_special_tokens=special, return_offsets_mapping=offsets)
        return list(zip(enc["input_ids"], enc["offset_mapping"], strict=True)) if offsets else list(enc["input_ids"])

    def ids(self, text: str) -> list[int]:
        """The text's token ids, without special tokens added."""
        if text not in self.plain:
            self.prepare([text], [])
        return list(self.plain[text])

    def ids_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """The text's token ids (special tokens added) and each token's (start, end) character offsets."""
        if text not in self.offsets:
            self.prepare([], [text])
        ids, offsets = self.offsets[text]
        return list(ids), [tuple(o) for o in offsets] if offsets and not isinstance(offsets[0], tuple) else list(
            offsets
        )


def _as_its_call_leaves_it(backend: Any, tokenizer: Tokenizer) -> bool:
    """Whether the backend is set as transformers' own call sets it before encoding (which it does every call)."""
    split = bool(getattr(tokenizer, "split_special_tokens", False))
    return backend.truncation is None and backend.padding is None and backend.encode_special_tokens == split
