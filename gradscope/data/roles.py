"""Roles: which tokens of a raw row are prompt and which completion, derived from the text and the chat template."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, cast

from gradscope.constants import COMPLETION, PROMPT, UNKNOWN
from gradscope.data.chat_template import Renderer, row_tools
from gradscope.data.encoding import Encoder
from gradscope.data.reasoning import DROPPED_REASONING, bounds_without_reasoning
from gradscope.data.rows import RoleRow
from gradscope.data.text_templates import TemplateFinder, show_tokens
from gradscope.errors import DataError
from gradscope.modes import TrainOn
from gradscope.tokenizer import Tokenizer


@dataclass
class RoleSpec:
    """How to split rows into roles.

    Attributes:
        end_token_ids: Ids that close a turn (EOS and end-of-turn tokens).
        train_on: ``all-assistant`` or ``last-assistant`` (chat rows).
        response_template: Text that starts each completion in ``text`` rows.
        instruction_template: Text that starts each prompt turn in multi-turn ``text`` rows.
        chat_template: A chat template to use instead of the tokenizer's own.
        source: The data file, for error messages.
    """

    end_token_ids: frozenset[int]
    train_on: TrainOn = "all-assistant"
    response_template: str | None = None
    instruction_template: str | None = None
    chat_template: str | None = None
    source: str | None = field(default=None, repr=False)


def row_kind(row: Mapping[str, Any]) -> str:
    """``prompt-completion``, ``chat`` (messages, or prompt/completion message lists) or ``text``; '' if none."""
    if "prompt" in row and "completion" in row:
        return "chat" if isinstance(row["prompt"], list) else "prompt-completion"
    if "messages" in row:
        return "chat"
    return "text" if "text" in row else ""


def derive(row: Mapping[str, Any], index: int, tokenizer: Tokenizer, spec: RoleSpec) -> RoleRow:
    """Tokenize one raw row and give every token its role.

    Raises:
        DataError: the row has no known fields, its fields have the wrong types, the template breaks the prefix
            property, or a template string is not found as tokens in context.
    """
    return _plan(row, index, tokenizer, spec).finish(Encoder(tokenizer))


def derive_rows(
    rows: Sequence[Mapping[str, Any]], tokenizer: Tokenizer, spec: RoleSpec, first: int = 0
) -> list[RoleRow]:
    """``derive`` on consecutive rows, with every text of every row tokenized in one batched tokenizer call.

    The rows are those ``derive`` gives one by one (the same code turns token ids into roles); a bad row raises the
    error ``derive`` raises for it, and the first bad row in order is the one reported, as row by row.

    Args:
        rows: Raw rows.
        tokenizer: The tokenizer (a fast one tokenizes a batch of texts on every core).
        spec: How to split rows into roles.
        first: The index in the data of the first row (for RoleRow.index and error messages).
    """
    plans: list[_Plan | DataError] = []
    for i, row in enumerate(rows):
        try:
            plans.append(_plan(row, first + i, tokenizer, spec))
        except DataError as err:  # raised when its turn comes, so that earlier bad rows are reported first
            plans.append(err)
            break
    encoder = Encoder(tokenizer)
    ready = [p for p in plans if isinstance(p, _Plan)]
    encoder.prepare([t for p in ready for t in p.plain], [t for p in ready for t in p.with_offsets])
    out = []
    for plan in plans:
        if isinstance(plan, DataError):
            raise plan
        out.append(plan.finish(encoder))
    return out


@dataclass
class _Plan:
    """A row read and rendered, waiting for its texts' tokens: ``finish`` turns them into the RoleRow."""

    plain: list[str]
    with_offsets: list[str]
    finish: Callable[[Encoder], RoleRow]


def _plan(row: Mapping[str, Any], index: int, tokenizer: Tokenizer, spec: RoleSpec) -> _Plan:
    kind = row_kind(row)
    where: dict[str, Any] = {"path": spec.source, "row": index}
    if kind == "prompt-completion":
        return _prompt_completion(row, index, tokenizer, where)
    if kind == "chat":
        return _chat(row, index, tokenizer, spec, where)
    if kind == "text":
        return _text(row, index, tokenizer, spec, where)
    raise DataError(
        f"the row has none of the fields gradscope reads (keys: {sorted(row)})",
        **where,
        hint="give 'prompt' + 'completion', 'messages', 'text' (with `response_template`), or tokenized 'input_ids'",
    )


# --- prompt + completion strings -------------------------------------------------------------------------------


def _with_eos(text: str, tokenizer: Tokenizer) -> str:
    """Append the EOS token's text when missing, as TRL does for non-conversational rows."""
    eos = getattr(tokenizer, "eos_token", None)
    return text if not eos or text.endswith(eos) else text + eos


def _require_fast(tokenizer: Tokenizer, where: dict) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("roles from text need a fast tokenizer (tokenizer.json) for character offsets", **where)


def first_past(ends: list[int], boundary: int) -> int:
    """The first index t with ends[t] > boundary, or len(ends) if none.

    Token end offsets almost always grow along the text: a binary search finds the candidate, and a C-speed max over
    the tokens before it proves that none of them ends past the boundary; otherwise a plain scan decides.
    """
    t = bisect.bisect_right(ends, boundary)  # ends[t] > boundary when t < len: bisect only moves hi onto such t
    if t == 0 or max(ends[:t]) <= boundary:
        return t
    return next((i for i, end in enumerate(ends) if end > boundary), len(ends))


def _prompt_completion(row: Mapping[str, Any], index: int, tokenizer: Tokenizer, where: dict) -> _Plan:
    prompt, completion = row["prompt"], row["completion"]
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise DataError("'prompt' and 'completion' must both be strings or both be message lists", **where)
    _require_fast(tokenizer, where)
    text = _with_eos(prompt + completion, tokenizer)
    boundary = len(prompt)  # the completion starts at the first token that ends past it

    def finish(encoder: Encoder) -> RoleRow:
        ids, offsets = encoder.ids_offsets(text)
        start = first_past(list(map(itemgetter(1), offsets)), boundary)
        roles = [PROMPT] * start + [COMPLETION] * (len(ids) - start)
        return RoleRow(index, ids, roles, [None] * len(ids), "prompt-completion")

    return _Plan([], [text], finish)


# --- chat rows: growing prefixes of the conversation -----------------------------------------------------------


def _conversation(row: Mapping[str, Any], spec: RoleSpec, where: dict) -> tuple[list[dict], set[int]]:
    """The messages and the indices of the assistant messages to train."""
    if "messages" in row:
        messages = row["messages"]
        first_trained = 0
    else:
        if not isinstance(row["completion"], list):
            raise DataError("'prompt' and 'completion' must both be strings or both be message lists", **where)
        messages = list(row["prompt"]) + list(row["completion"])
        first_trained = len(row["prompt"])
    if not isinstance(messages, list) or not all(isinstance(m, Mapping) and "role" in m for m in messages):
        raise DataError("messages must be a list of objects with a 'role'", **where)
    assistant = [k for k, m in enumerate(messages) if m["role"] == "assistant" and k >= first_trained]
    if spec.train_on == "last-assistant" and "messages" in row:
        assistant = assistant[-1:]
    return [dict(m) for m in messages], set(assistant)


def _chat(row: Mapping[str, Any], index: int, tokenizer: Tokenizer, spec: RoleSpec, where: dict) -> _Plan:
    if not getattr(tokenizer, "chat_template", None) and spec.chat_template is None:
        raise DataError(
            "chat rows need a tokenizer with a chat template, and this one has none",
            **where,
            hint="add a chat_template to tokenizer_config.json, or give prompt/completion strings",
        )
    messages, trained = _conversation(row, spec, where)
    render = Renderer(tokenizer, messages, row_tools(row, where), spec.chat_template, where)
    texts = [""] + [render.text(k) for k in range(1, len(messages) + 1)]
    headers = {k: render.text(k, generation_prompt=True) for k in sorted(trained)}

    def finish(encoder: Encoder) -> RoleRow:
        render.encoder = encoder
        full = render.ids(texts[-1])
        bounds, starts, note = _message_bounds(render, texts, headers, full, tokenizer, spec.end_token_ids)
        roles, owner = [PROMPT] * len(full), [cast("int | None", None)] * len(full)
        for k in range(len(messages)):
            owner[bounds[k] : bounds[k + 1]] = [k] * (bounds[k + 1] - bounds[k])
        generation = render.generation_mask(full)
        for k in sorted(trained):
            _mark_assistant(roles, full, starts[k], bounds[k + 1], spec, full[bounds[k] : starts[k]])
            if generation is not None:
                _header_glue(roles, full, generation, bounds[k], starts[k], tokenizer)
        return RoleRow(index, full, roles, owner, "chat", note=note)

    return _Plan([*texts, *headers.values()], [], finish)


def _message_bounds(
    render: Renderer,
    texts: list[str],
    headers: dict[int, str],
    full: list[int],
    tokenizer: Tokenizer,
    ends: frozenset[int] = frozenset(),
) -> tuple[list[int], dict[int, int], str | None]:
    """Where each message starts in the whole conversation's tokens, where each trained assistant's content starts,
    and a note when the template drops earlier turns' reasoning (the one prefix break read anyway)."""
    try:
        bounds = _prefix_bounds(render, texts, full, tokenizer, ends)
        return bounds, {k: _header_end(render, k, h, full, bounds, tokenizer) for k, h in headers.items()}, None
    except DataError:
        found = bounds_without_reasoning(tokenizer, texts, headers, full)
        if found is None:
            raise
        return found[0], found[1], DROPPED_REASONING


def _prefix_bounds(
    render: Renderer, texts: list[str], full: list[int], tokenizer: Tokenizer, ends: frozenset[int] = frozenset()
) -> list[int]:
    """Where each message starts in the whole conversation's tokens: the token count of each rendered prefix.

    What the template puts before the first message (a BOS, a default system turn) belongs to the first message.
    A template that ends every rendering with EOS (Phi-3's) breaks the prefix property only there: a prefix whose
    one extra token is that closing EOS, also the conversation's last token, ends before it. A template that closes
    the conversation's last message with another end token than earlier ones (harmony) differs in that one token.
    """
    bounds = [0]
    eos = getattr(tokenizer, "eos_token_id", None)
    for k in range(1, len(texts)):
        ids = render.ids(texts[k])
        if full[: len(ids)] != ids and k < len(texts) - 1 and _trailing_eos(ids, full, eos):
            ids = ids[:-1]
        elif full[: len(ids)] != ids and ids[:-1] == full[: len(ids) - 1] and {ids[-1], full[len(ids) - 1]} <= ends:
            ids = full[: len(ids)]  # the closer of the conversation's last message (harmony's <|return|> for <|end|>)
        if full[: len(ids)] != ids or len(ids) < bounds[-1]:
            raise _prefix_error(render, k, texts[k], ids, full, tokenizer)
        bounds.append(len(ids))
    return bounds


def _trailing_eos(ids: list[int], full: list[int], eos: int | None) -> bool:
    """The rendering is a prefix of the whole conversation but for a last token that is EOS, as the whole ends."""
    return eos is not None and len(ids) > 1 and ids[-1] == eos == full[-1] and full[: len(ids) - 1] == ids[:-1]


def _prefix_error(
    render: Renderer, k: int, text: str, ids: list[int], full: list[int], tokenizer: Tokenizer, header: bool = False
) -> DataError:
    """The precise error for a rendered prefix whose tokens are not a prefix of the whole conversation's tokens."""
    at = next((p for p, (a, b) in enumerate(zip(ids, full, strict=False)) if a != b), min(len(ids), len(full)))
    alone, context = ids[at : at + 4], full[at : at + 4]
    if header:
        what = f"at the header of message {k} (assistant): the first {k} message(s) with the generation prompt"
    else:
        what = f"at message {k - 1} ({render.messages[k - 1].get('role')}): the first {k} message(s)"
    return DataError(
        f"the chat template breaks the prefix property {what} render as text ending {text[-60:]!r}, whose tokens "
        f"alone at position {at} are {show_tokens(alone, tokenizer)} but in the whole conversation "
        f"{show_tokens(context, tokenizer)}; gradscope cannot tell which tokens belong to which message",
        **render.where,
        hint="use a template that renders earlier turns the same whatever follows "
        "(TRL's get_training_chat_template patches the common ones)",
    )


def _header_end(render: Renderer, k: int, text: str, full: list[int], bounds: list[int], tokenizer: Tokenizer) -> int:
    """Where assistant message k's content starts: after what add_generation_prompt adds to the first k messages
    (``text``, their rendering with the generation prompt)."""
    ids = render.ids(text)
    if full[: len(ids)] != ids or not bounds[k] <= len(ids) <= bounds[k + 1]:
        raise _prefix_error(render, k, text, ids, full, tokenizer, header=True)
    return len(ids)


def _mark_assistant(
    roles: list[int], ids: list[int], header_end: int, end: int, spec: RoleSpec, header: list[int] | None = None
) -> None:
    """Mark one trained assistant turn, whose content starts at header_end and whose tokens end before end.

    Content and the closing end token are completion; the template's glue after that token is not judged.

    A template that gives the closing token to the next turn still has it trained: it is the turn's end.

    A turn of several messages the model writes itself (harmony: ``<|end|><|start|>assistant`` between its analysis
    and its final message, or before a tool call) runs through the last of them: after a closing token, the
    assistant ``header`` again inside the same message continues the turn, and the model writes that header too.
    """
    close = next((t for t in range(header_end, end) if ids[t] in spec.end_token_ids), None)
    n = len(header or [])
    while close is not None and n and close + 1 + n < end and ids[close + 1 : close + 1 + n] == header:
        close = next((t for t in range(close + 1 + n, end) if ids[t] in spec.end_token_ids), None)
    if close is None:
        roles[header_end:end] = [COMPLETION] * (end - header_end)
        if end < len(ids) and ids[end] in spec.end_token_ids:
            roles[end] = COMPLETION
        return
    roles[header_end : close + 1] = [COMPLETION] * (close + 1 - header_end)
    roles[close + 1 : end] = [UNKNOWN] * (end - close - 1)


def _header_glue(
    roles: list[int], ids: list[int], generation: list[int], first: int, start: int, tokenizer: Tokenizer
) -> None:
    """Not judged: the whitespace that ends an assistant header inside the template's ``{% generation %}`` block.

    TRL's Qwen2.5 training template opens the block before the ``\\n`` that ends ``<|im_start|>assistant``. The
    generation prompt holds that ``\\n``, so the model never generates it: training it or not changes nothing, like
    the ``\\n`` after ``<|im_end|>``. Header tokens that are not whitespace stay prompt (a block opened before
    ``<|im_start|>`` trains the header: a ``prompt_leak``).
    """
    t = start - 1
    while t >= first and generation[t] and roles[t] == PROMPT and not tokenizer.decode([ids[t]]).strip():
        roles[t] = UNKNOWN
        t -= 1


# --- text rows with response / instruction templates ----------------------------------------------------------


def _text(row: Mapping[str, Any], index: int, tokenizer: Tokenizer, spec: RoleSpec, where: dict) -> _Plan:
    text = row["text"]
    if not isinstance(text, str):
        raise DataError("'text' must be a string", **where)
    if (response := spec.response_template) is None:
        raise DataError(
            "the row is plain text: gradscope cannot tell its prompt from its completion",
            **where,
            hint="pass `response_template` STR (and `instruction_template` STR for several turns)",
        )
    _require_fast(tokenizer, where)
    full_text = _with_eos(text, tokenizer)
    templates = [t for t in (spec.response_template, spec.instruction_template) if t is not None]

    def finish(encoder: Encoder) -> RoleRow:
        ids, offsets = encoder.ids_offsets(full_text)
        find = TemplateFinder(tokenizer, encoder, ids, offsets, full_text, where)
        starts = find(response, "response")
        stops = find(spec.instruction_template, "instruction") if spec.instruction_template is not None else []
        width = len(encoder.ids(response))
        roles = [PROMPT] * len(ids)
        for begin in (start + width for start in starts):
            stop = min([s for s in stops if s >= begin], default=len(ids))
            roles[begin:stop] = [COMPLETION] * (stop - begin)
        return RoleRow(index, ids, roles, [None] * len(ids), "text")

    return _Plan(templates, [full_text], finish)
