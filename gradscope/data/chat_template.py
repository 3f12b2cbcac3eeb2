"""Rendering a conversation's prefixes with the chat template, bounded in time, and what its generation blocks mark."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from gradscope.data import deadline
from gradscope.data.encoding import Encoder
from gradscope.errors import DataError
from gradscope.tokenizer import Tokenizer

_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


def row_tools(row: Mapping[str, Any], where: dict) -> Any:
    """The row's tool definitions: a list, or a JSON string of one (as datasets store them)."""
    tools = row.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except (json.JSONDecodeError, RecursionError) as err:
            raise DataError(
                f"'tools' is a string but not JSON ({getattr(err, 'msg', 'nested too deeply')})",
                **where,
                hint="give 'tools' as a list of tool definitions, or a JSON string of one",
            ) from None
    if tools is not None and not isinstance(tools, list):
        raise DataError(f"'tools' is a {type(tools).__name__}; it must be a list of tool definitions", **where)
    return tools


def render_probe(
    tokenizer: Tokenizer, messages: list[dict[str, Any]], generation_prompt: bool = False, **options: Any
) -> str | None:
    """A probe conversation rendered with the tokenizer's chat template, within the template bounds (time and
    ``deadline.TEMPLATE_CHARS``); None when the template refuses it, overruns a bound or renders no text: nothing
    is learnt from such a rendering."""
    try:
        with deadline.bounded(deadline.TEMPLATE_SECONDS):
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt, **options
            )
    except deadline.RenderTimeout:
        return None
    except Exception:  # jinja raises its own errors from the user's template: nothing is learnt from it
        return None
    return text if isinstance(text, str) and len(text) <= deadline.TEMPLATE_CHARS else None


class Renderer:
    """Renders and tokenizes prefixes of one conversation with the chat template, as apply_chat_template does."""

    def __init__(self, tokenizer: Tokenizer, messages: list[dict], tools: Any, chat_template: str | None, where: dict):
        self.tok, self.messages, self.tools, self.template, self.where = (
            tokenizer,
            messages,
            tools,
            chat_template,
            where,
        )
        self.encoder = Encoder(tokenizer)  # replaced by the batch's own when the row is finished

    def text(self, k: int, generation_prompt: bool = False) -> str:
        try:
            with deadline.bounded(deadline.TEMPLATE_SECONDS):
                text = self.tok.apply_chat_template(
                    self.messages[:k],
                    tools=self.tools,
                    chat_template=self.template,
                    tokenize=False,
                    add_generation_prompt=generation_prompt,
                )
        except deadline.RenderTimeout:
            raise self._timeout(k) from None
        except Exception as err:  # jinja raises its own errors from the user's template: bad input, not a bug
            raise DataError(
                f"the chat template fails on the first {k} message(s): {type(err).__name__}: {err}",
                **self.where,
                hint="roles come from rendering growing prefixes of the conversation; the template must accept them",
            ) from err
        if isinstance(text, str) and len(text) > deadline.TEMPLATE_CHARS:  # before it is tokenized, prefix by prefix
            raise DataError(
                f"the chat template rendered {len(text)} characters for {k} message(s), more than the "
                f"{deadline.TEMPLATE_CHARS} gradscope tokenizes",
                **self.where,
                hint="a template that repeats its input? fix the chat_template in tokenizer_config.json",
            )
        return text

    def _timeout(self, k: int) -> DataError:
        return DataError(
            f"the chat template did not finish rendering {k} message(s) within {deadline.TEMPLATE_SECONDS:g} s",
            **self.where,
            hint="a loop that never ends? fix the chat_template in tokenizer_config.json",
        )

    def ids(self, text: str) -> list[int]:
        return self.encoder.ids(text)

    def generation_mask(self, full: list[int]) -> list[int] | None:
        """transformers' assistant mask of the whole conversation (1 inside the template's ``{% generation %}``
        blocks), when the template has such blocks and renders the conversation as ``full``; else None."""
        template = self.template if self.template is not None else getattr(self.tok, "chat_template", None)
        if not isinstance(template, str) or not _GENERATION.search(template) or not getattr(self.tok, "is_fast", False):
            return None
        try:
            with deadline.bounded(deadline.TEMPLATE_SECONDS):
                out = self.tok.apply_chat_template(
                    self.messages,
                    tools=self.tools,
                    chat_template=self.template,
                    tokenize=True,
                    return_dict=True,
                    return_assistant_tokens_mask=True,
                )
        except deadline.RenderTimeout:  # a BaseException: it stops the template's own except clauses too
            raise self._timeout(len(self.messages)) from None
        except Exception:  # the template rendered this conversation already: without a mask, nothing is glue
            return None
        return list(out["assistant_masks"]) if list(out["input_ids"]) == full else None
