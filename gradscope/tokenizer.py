"""What gradscope uses of a tokenizer, as a type: a transformers ``PreTrainedTokenizerBase`` is one, and so is any
object with these methods. Attributes that tokenizers may lack (``chat_template``, ``eos_token``, ``bos_token_id``,
``is_fast``, ``all_special_ids``, ...) are read with ``getattr`` and a default, so they are not part of it."""

from __future__ import annotations

from typing import Any, Protocol


class Tokenizer(Protocol):
    """Encoding, decoding, chat templates and the vocabulary lookups gradscope calls."""

    def __call__(self, text: Any, **kwargs: Any) -> Any:
        """Encode ``text`` (a string or a list of them); gradscope reads ``["input_ids"]`` and offsets."""
        ...

    def decode(self, token_ids: Any, **kwargs: Any) -> Any:
        """The text of ``token_ids`` (a string for a list of ids)."""
        ...

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any:
        """Render (and, asked to, tokenize) a chat with the tokenizer's template."""
        ...

    def convert_tokens_to_ids(self, tokens: Any) -> Any:
        """The id of a token string (or ids of a list of them)."""
        ...

    def convert_ids_to_tokens(self, ids: Any) -> Any:
        """The token string of an id (or of a list of them)."""
        ...

    def __len__(self) -> int:
        """The vocabulary's size, added tokens included."""
        ...

    def get_added_vocab(self) -> dict[str, int]:
        """Tokens added on top of the base vocabulary, with their ids."""
        ...
