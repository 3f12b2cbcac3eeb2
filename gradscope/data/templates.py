"""Chat-template markers: learn each role's opening and closing tokens by rendering probe conversations."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gradscope.constants import UNKNOWN
from gradscope.data.batch import COMPLETION, PROMPT
from gradscope.data.closers import PROBE_TOOL_TURN, PROBE_TURNS, probe_variants
from gradscope.data.roles import RoleSpec, derive
from gradscope.data.rows import RoleRow, find_subsequence
from gradscope.errors import DataError
from gradscope.modes import TrainOn
from gradscope.tokenizer import Tokenizer

# --- roles of already tokenized chats, read back from the template's markers --------------------------------------

_PROBES: tuple[list[dict[str, Any]], ...] = (
    [{"role": "system", "content": "Be brief."}, *PROBE_TURNS],
    PROBE_TOOL_TURN,
    [  # reasoning, under the names templates read it by (Qwen3 and GLM: reasoning_content; gpt-oss: thinking)
        {"role": "user", "content": "Say three."},
        {"role": "assistant", "reasoning_content": "Count.", "thinking": "Count.", "content": "Three."},
    ],
)


@dataclass
class TemplateMarkers:
    """What a chat template puts before and after assistant turns, learnt from probe chats, to find them in ids.

    Attributes:
        responses: Token runs that end right before an assistant completion (``<|im_start|>assistant\n``; for a
            Mistral-style template ``[/INST]`` and ``[/TOOL_RESULTS]``).
        glue: Template tokens after the closing token that are not judged (ChatML's ``\n``).
        end_token_ids: Tokens that close a turn.
        tail: Tokens the template ends every rendering with, not judged (Phi-3's EOS after the last turn).
        lead: Header tokens right before the completion that are not judged (the ``\\n`` TRL's Qwen2.5 training
            template puts inside ``{% generation %}``).
        continues: The model writes the marker itself right after closing a message of its turn (harmony's
            ``<|end|><|start|>assistant`` between the analysis and the final message): such a marker is completion
            and continues the turn; a marker after anything else (a user turn, a tool result) opens a turn.
    """

    responses: list[list[int]]
    glue: list[int]
    end_token_ids: frozenset[int]
    tail: list[int] = field(default_factory=list)
    lead: list[int] = field(default_factory=list)
    continues: bool = False

    def roles(self, ids: Sequence[int], train_on: TrainOn = "all-assistant") -> list[int]:
        """Roles of one token sequence: after each marker, through the first end token, is completion."""
        found = sorted({(m + len(r), m) for r in self.responses for m in find_subsequence(ids, r)})
        starts = [s for s, _ in found]
        limits = [next((x for x in starts if x > s), len(ids)) for s in starts]
        closes = [
            next((t for t in range(s, lim) if ids[t] in self.end_token_ids), None)
            for s, lim in zip(starts, limits, strict=True)
        ]
        written = [self.continues and i > 0 and closes[i - 1] == m - 1 for i, (_, m) in enumerate(found)]
        turns = [i for i in range(len(found)) if not written[i]]
        first = turns[-1] if train_on == "last-assistant" and turns else 0
        roles = [PROMPT] * len(ids)
        for i in range(first, len(found)):
            start, close = found[i][0], closes[i]
            stop = limits[i] if close is None else close + 1
            begin = found[i][1] if written[i] else start
            roles[begin:stop] = [COMPLETION] * (stop - begin)
            if self.lead and start >= len(self.lead) and list(ids[start - len(self.lead) : start]) == self.lead:
                roles[start - len(self.lead) : start] = [UNKNOWN] * len(self.lead)
            if close is not None and self.glue and list(ids[stop : stop + len(self.glue)]) == self.glue:
                roles[stop : stop + len(self.glue)] = [UNKNOWN] * len(self.glue)
        n = len(self.tail)
        if n and len(ids) > n and list(ids[-n:]) == self.tail and all(r == PROMPT for r in roles[-n:]):
            roles[-n:] = [UNKNOWN] * n
        return roles


def template_markers(
    tokenizer: Tokenizer, end_token_ids: frozenset[int], chat_template: str | None = None
) -> TemplateMarkers | None:
    """Learn a chat template's assistant markers from probe chats; None when they cannot be learnt reliably."""
    return learn_markers(tokenizer, end_token_ids, chat_template)[0]


def learn_markers(
    tokenizer: Tokenizer, end_token_ids: frozenset[int], chat_template: str | None = None
) -> tuple[TemplateMarkers | None, str]:
    """A chat template's assistant markers learnt from probe chats, or None and why they cannot be (for the
    "not verified" reason: never a guess).

    Each marker is the shortest run of tokens before an assistant completion that occurs nowhere else except before
    completions, preferring one that starts with a special token. The markers are kept only if reading every probe
    back with them gives the roles that rendering growing prefixes gave.
    """
    spec = RoleSpec(end_token_ids, chat_template=chat_template)
    rows, failed = [], []
    for i, probe in enumerate(_PROBES):
        for variant in probe_variants(probe):
            try:
                rows.append(derive({"messages": variant}, i, tokenizer, spec))
                break
            except DataError as err:  # a template that rejects a system turn or tool calls: learn from the others
                failed.append(err.detail)
    if not rows:
        return None, f"no probe chat could be split into roles ({failed[0] if failed else 'no probe'})"
    markers = _learn_markers(rows, tokenizer, end_token_ids)
    if markers is None:
        return None, "no run of tokens before the assistant's answers occurs only there (the markers are ambiguous)"
    wrong = next((r.index for r in rows if markers.roles(r.input_ids) != r.roles), None)
    if wrong is not None:
        return None, f"the markers do not read probe chat {wrong} back as rendering it does"
    return markers, ""


def _learn_markers(rows: list[RoleRow], tokenizer: Tokenizer, end_token_ids: frozenset[int]) -> TemplateMarkers | None:
    special = set(getattr(tokenizer, "all_special_ids", [])) | set(tokenizer.get_added_vocab().values())
    responses: list[list[int]] = []
    glue: list[int] | None = None
    for row in rows:
        ids, roles = row.input_ids, row.roles
        starts = [t for t in range(1, len(ids)) if roles[t] == COMPLETION and roles[t - 1] != COMPLETION]
        for start in starts:
            if any(ids[start - len(r) : start] == r for r in responses):
                continue
            valid = [
                c
                for c in (ids[start - n : start] for n in range(1, min(12, start) + 1))
                if all(m + len(c) in starts or _written(roles, m, len(c)) for m in find_subsequence(ids, c))
            ]
            if not valid:
                return None
            responses.append(next((c for c in valid if c[0] in special), valid[0]))
        glue = _glue(roles, ids) if glue is None else glue
    tail = _tail(rows[0].roles, rows[0].input_ids, glue or [])
    lead = _lead(rows[0].roles, rows[0].input_ids)
    continues = any(
        _written(r.roles, m, len(c)) for r in rows for c in responses for m in find_subsequence(r.input_ids, c)
    )
    return TemplateMarkers(responses, glue or [], end_token_ids, tail, lead, continues) if responses else None


def _written(roles: list[int], at: int, n: int) -> bool:
    """A marker the model writes inside its own turn: completion, right after completion."""
    return at > 0 and all(r == COMPLETION for r in roles[at - 1 : at + n])


def _glue(roles: list[int], ids: list[int]) -> list[int]:
    """The not-judged tokens right after the first completion run."""
    end = next((t for t in range(1, len(roles)) if roles[t - 1] == COMPLETION and roles[t] != COMPLETION), len(roles))
    stop = end
    while stop < len(roles) and roles[stop] == UNKNOWN:
        stop += 1
    return ids[end:stop]


def _lead(roles: list[int], ids: list[int]) -> list[int]:
    """The not-judged tokens right before the first completion run."""
    start = next((t for t in range(len(roles)) if roles[t] == COMPLETION), 0)
    first = start
    while first > 0 and roles[first - 1] == UNKNOWN:
        first -= 1
    return ids[first:start]


def _tail(roles: list[int], ids: list[int], glue: list[int]) -> list[int]:
    """The not-judged tokens that end a rendering whose last message is a trained turn, past that turn's glue."""
    start = len(roles)
    while start > 0 and roles[start - 1] == UNKNOWN:
        start -= 1
    if start == len(roles) or start == 0 or roles[start - 1] != COMPLETION:
        return []
    run = ids[start:]
    return run[len(glue) :] if run[: len(glue)] == glue else []


# --- chat-template markers -------------------------------------------------------------------------------------

_MARKERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def chat_markers(
    tokenizer: Tokenizer | None, ends: frozenset[int], chat_template: str | None = None
) -> tuple[TemplateMarkers | None, str]:
    """The chat-template markers (learnt once per tokenizer, template and end tokens), or None and why not.

    ``chat_template`` is the template the data is rendered with when it is not the tokenizer's own.
    """
    if tokenizer is None:
        return None, "no tokenizer was given"
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        return None, "the tokenizer has no chat template"
    try:
        cache = _MARKERS.setdefault(tokenizer, {})
    except TypeError:
        cache = {}
    key = (str(template), ends)
    if key not in cache:
        cache[key] = learn_markers(tokenizer, ends, chat_template)
    markers, why = cache[key]
    if markers is None:
        return None, f"the chat template's assistant markers could not be learnt from probe chats: {why}"
    return markers, ""
