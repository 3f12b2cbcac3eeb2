"""Layout checks: how a row's tokens are laid out (BOS, padding, packed documents), read from ids and masks.

Each is a small pure function from a ``SampleView`` to a finding, run with the masking checks on every sample. The
BOS and packing rules are written once, over flat arrays of rows laid end to end (``starts`` gives where each row
begins), so that ``scan`` applies them vectorized to a chunk of rows and ``check`` to one row: the same functions.
"""

from __future__ import annotations

import numpy as np

from gradscope.checks.sample import SampleView
from gradscope.constants import PAD
from gradscope.report.finding import Finding
from gradscope.report.text import format_positions, tokens_word

# --- the rules, over rows laid end to end (flat (N,) arrays, ``starts`` (R,)) -------------------------------------


def row_openings(skip: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(R,) the flat index of each row's first token not in ``skip`` (its padding); the row's end when none is."""
    n = len(skip)
    ends = np.append(starts[1:], n)
    if not n or not skip[starts].any():  # no row starts with padding: each opens at its first token
        return starts.copy() if n else ends
    first = np.minimum.reduceat(np.where(skip, n, np.arange(n)), starts)
    return np.minimum(first, ends)


def opening_skip(
    ids: np.ndarray, pad: np.ndarray, starts: np.ndarray, pad_id: int | None, bos: int | None
) -> np.ndarray:
    """(N,) what comes before a row's first token: padding (attention_mask 0) and leading pad ids (attended left
    padding), unless the pad id is the BOS (with pad == bos a leading pad cannot be told from a BOS)."""
    if pad_id is None or pad_id == bos or not len(ids) or not (ids[starts] == pad_id).any():
        return pad
    lead = ids == pad_id
    first_other = row_openings(lead, starts)
    before = np.arange(len(ids)) < np.repeat(first_other, np.diff(np.append(starts, len(ids))))
    return pad | (lead & before)


def bos_twice(ids: np.ndarray, starts: np.ndarray, opening: np.ndarray, bos: int) -> np.ndarray:
    """(R,) rows whose first two tokens are both the BOS."""
    ends = np.append(starts[1:], len(ids))
    second = opening + 1 < ends
    out = np.zeros(len(starts), dtype=bool)
    out[second] = (ids[opening[second]] == bos) & (ids[opening[second] + 1] == bos)
    return out


def bos_absent(ids: np.ndarray, starts: np.ndarray, opening: np.ndarray, documents: np.ndarray, bos: int) -> np.ndarray:
    """(N,) where a BOS is missing: each row's first token and each declared document start that is not the BOS."""
    ends = np.append(starts[1:], len(ids))
    out = documents & (ids != bos)
    has = opening < ends
    out[opening[has]] |= ids[opening[has]] != bos
    return out


def undeclared_documents(
    ids: np.ndarray,
    real: np.ndarray,
    starts: np.ndarray,
    opening: np.ndarray,
    documents: np.ndarray,
    bos: int,
    bos_is_end: bool,
) -> np.ndarray:
    """(N,) where a new document starts inside a row with nothing to declare it: a BOS after a real token (with BOS
    == EOS, GPT-2's ``<|endoftext|>``, the token after an inner one), both real, and no declared start there.

    Only the positions at or after a BOS are looked at (a handful per row), not every token.
    """
    out = np.zeros(len(ids), dtype=bool)
    at = np.flatnonzero(ids == bos)
    t = at + 1 if bos_is_end else at  # candidate document starts
    t = t[(t < len(ids)) & (t >= 1)]
    first = opening[np.searchsorted(starts, t, side="right") - 1]  # the opening of each candidate's row
    if bos_is_end:  # the separator closes one document and opens the next
        ok = (t - 2 >= first) & (ids[t] != bos)
        ok[ok] &= ids[t[ok] - 2] != bos
    else:
        ok = ids[t - 1] != bos
    ok &= (t > first) & real[t] & real[t - 1] & ~documents[t]
    out[t[ok]] = True
    return out


def _row(s: SampleView) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One sample as the rules read it: (ids, real, starts, opening)."""
    ids = s.input_ids.numpy()
    pad = (s.roles == PAD).numpy()
    starts = np.zeros(1, dtype=np.int64)
    return ids, ~pad, starts, row_openings(opening_skip(ids, pad, starts, s.pad_token_id, s.bos_token_id), starts)


def _declared(s: SampleView) -> np.ndarray:
    out = np.zeros(len(s.input_ids), dtype=bool)
    out[list(s.document_starts)] = True
    return out


# --- the checks --------------------------------------------------------------------------------------------------


def bos_duplicated(s: SampleView) -> Finding | None:
    """The row starts with two BOS tokens: the template emits one and the tokenizer adds another."""
    if s.bos_token_id is None:
        return None
    ids, _, starts, opening = _row(s)
    if not bos_twice(ids, starts, opening, s.bos_token_id)[0]:
        return None
    first = int(opening[0])
    return Finding(
        "bos_duplicated",
        "error",
        s.index,
        [first, first + 1],
        f"sample {s.index} starts with two BOS tokens ({s.texts[first]!r} at {first} and {first + 1}): the model "
        "trains on a start it never sees at inference. Usual cause: the chat template emits BOS and the tokenizer "
        "adds another when the rendered text is tokenized. Tokenize rendered chats with add_special_tokens=False, or "
        "use apply_chat_template(..., tokenize=True).",
    )


def bos_missing(s: SampleView) -> Finding | None:
    """The tokenizer puts a BOS first in every encoding, but the row (or a packed document in it) does not start
    with one. Read only when ``s.bos_added`` (found by encoding a probe text, not from a config flag)."""
    if s.bos_token_id is None or not s.bos_added:
        return None
    ids, _, starts, opening = _row(s)
    missing = np.flatnonzero(bos_absent(ids, starts, opening, _declared(s), s.bos_token_id)).tolist()
    if not missing:
        return None
    where = "starts" if missing == [int(opening[0])] else "and its packed documents start"
    return Finding(
        "bos_missing",
        "error",
        s.index,
        missing,
        f"sample {s.index} {where} without the BOS (id {s.bos_token_id}) at "
        f"{format_positions(missing)}, though the tokenizer puts "
        "it first in every encoding: the model trains on starts it never sees at inference, where the BOS is always "
        "there. Usual cause: text tokenized with add_special_tokens=False (or rendered by a template without "
        "{{ bos_token }}) and never given its BOS, or documents packed after their BOS was stripped. Tokenize with "
        "add_special_tokens=True (or put bos_token in the template), and keep the BOS of every packed document.",
    )


def pads_attended(s: SampleView) -> Finding | None:
    """Leading pad tokens that the attention mask marks as real: every later token attends to them.

    Only a pad id that is no end token is read this way (with pad == eos == bos, as GPT-2 users set it, a leading
    pad cannot be told from a BOS).
    """
    pad = s.pad_token_id
    if pad is None or pad in s.end_token_ids or pad == s.bos_token_id:
        return None
    ids = s.input_ids.tolist()
    lead = next((t for t, i in enumerate(ids) if i != pad), len(ids))
    attended = [t for t in range(lead) if s.roles[t] != PAD]
    if not attended or lead == len(ids):
        return None
    return Finding(
        "pads_attended",
        "error",
        s.index,
        attended,
        f"left padding {format_positions(attended)} of sample {s.index} (pad id {pad}) is attended: the attention "
        "mask marks it 1 (or there is none), so every real token attends to the pads and their positions shift; the "
        "model trains on context it never sees at inference. Give an attention_mask with 0 on padding (the "
        "tokenizer's own padding returns one), or pad on the right.",
    )


def packed_without_boundaries(s: SampleView) -> Finding | None:
    """A new document starts inside the row (a BOS after real tokens) with nothing to say so.

    No position_ids restart, no seq_idx or cu_seq_lens boundary and no attention-mask break: the documents attend
    to each other and the first token of each is trained as the continuation of the one before. With BOS == EOS
    (GPT-2's ``<|endoftext|>``) the token after an inner EOS starts the next document. Rows are read only when the
    declared boundaries are known (``s.boundaries_known``) and the tokenizer or model names a BOS.
    """
    bos = s.bos_token_id
    if bos is None or not s.boundaries_known:
        return None
    ids, real, starts, opening = _row(s)
    found = undeclared_documents(ids, real, starts, opening, _declared(s), bos, bos in s.end_token_ids)
    starts_at = np.flatnonzero(found).tolist()
    if not starts_at:
        return None
    return Finding(
        "packed_without_boundaries",
        "error",
        s.index,
        starts_at,
        f"sample {s.index} holds {len(starts_at) + 1} documents (new ones at "
        f"{format_positions(starts_at)}, after a BOS/EOS "
        f"{tokens_word(len(starts_at))}) with no boundary declared: position_ids do not restart, and no seq_idx, "
        "cu_seq_lens or attention mask separates them, so each document attends to the ones before and its first "
        "token is trained as their continuation. Pack with position_ids restarting at 0 for each document (TRL's "
        "padding_free=True, or a collator that returns them) and -100 at each document's first label.",
    )


def media_tokens_trained(s: SampleView) -> Finding | None:
    """Image, video or audio placeholder tokens are trained (whatever their role: they are never text to predict)."""
    if not s.media_token_ids:
        return None
    ids = s.input_ids.tolist()
    trained = [p for p in s.where(s.trained) if ids[p] in s.media_token_ids]
    if not trained:
        return None
    names = sorted({repr(s.texts[p]) if s.texts[p] is not None else f"id {ids[p]}" for p in trained})
    return Finding(
        "media_tokens_trained",
        "error",
        s.index,
        trained,
        f"{len(trained)} media placeholder {tokens_word(len(trained))} ({', '.join(names)}) at "
        f"{format_positions(trained)} {'is' if len(trained) == 1 else 'are'} trained: the model learns to predict "
        "where an image, video or audio goes, and these positions can outnumber the text. Usual cause: a VLM "
        "collator that masks only padding. Set labels to -100 at every media token id (and the prompt).",
    )


def prefill_trained(s: SampleView) -> Finding | None:
    """The chat template's generation-prompt prefill (Qwen3's empty ``<think></think>`` with enable_thinking=False)
    is trained at the start of an assistant turn (``SampleView.prefill``): at inference it is prompt."""
    trained = [p for p in s.where(s.trained) if p in s.prefill]
    if not trained:
        return None
    text = "".join(s.texts[p] or "" for p in trained)
    return Finding(
        "prefill_trained",
        "warning",
        s.index,
        trained,
        f"the chat template's generation-prompt prefill {text!r} at {format_positions(trained)} of sample {s.index} "
        f"{'is' if len(trained) == 1 else 'are'} trained as the answer's start: with add_generation_prompt=True "
        "the template writes these tokens itself (Qwen3 with enable_thinking=False: an empty think block), so the "
        "model never generates them at inference; training them teaches it to write them on its own (to skip "
        "reasoning) and spends loss on tokens that carry nothing. Usual cause: the prompt rendered without the "
        "prefill (or the completion split at the assistant header), so the prefill lands in the completion. Render "
        "the prompt as at inference (the same add_generation_prompt and enable_thinking) and set the prefill's "
        "labels to -100.",
    )


LAYOUT_CHECKS = (
    bos_duplicated,
    bos_missing,
    pads_attended,
    packed_without_boundaries,
    media_tokens_trained,
    prefill_trained,
)
