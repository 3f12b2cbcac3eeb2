"""Layout checks: how a row's tokens are laid out (BOS, padding, packed documents), read from ids and masks.

Each is a small pure function from a ``SampleView`` to a finding, run with the masking checks on every sample.
"""

from __future__ import annotations

from gradscope.checks.sample import SampleView
from gradscope.constants import PAD
from gradscope.report.finding import Finding
from gradscope.report.text import _tokens, format_positions


def _real_start(s: SampleView) -> int:
    """The first position that is not padding (left padding with a mask skipped)."""
    real = (s.roles != PAD).nonzero().flatten()
    return int(real[0]) if len(real) else len(s.roles)


def bos_duplicated(s: SampleView) -> Finding | None:
    """The row starts with two BOS tokens: the template emits one and the tokenizer adds another."""
    if s.bos_token_id is None:
        return None
    first = _real_start(s)
    ids = s.input_ids.tolist()
    if first + 1 >= len(ids) or ids[first] != s.bos_token_id or ids[first + 1] != s.bos_token_id:
        return None
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
    ids, real = s.input_ids.tolist(), (s.roles != PAD).tolist()
    first = _real_start(s)
    starts = []
    for t in range(first + 1, len(ids)):
        if not (real[t] and real[t - 1]) or t in s.document_starts:
            continue
        if bos in s.end_token_ids:  # the separator closes one document and opens the next
            opens = ids[t - 1] == bos and t - 2 >= first and ids[t - 2] != bos and ids[t] != bos
        else:
            opens = ids[t] == bos and ids[t - 1] != bos
        if opens:
            starts.append(t)
    if not starts:
        return None
    return Finding(
        "packed_without_boundaries",
        "error",
        s.index,
        starts,
        f"sample {s.index} holds {len(starts) + 1} documents (new ones at {format_positions(starts)}, after a BOS/EOS "
        f"{_tokens(len(starts))}) with no boundary declared: position_ids do not restart, and no seq_idx, "
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
        f"{len(trained)} media placeholder {_tokens(len(trained))} ({', '.join(names)}) at "
        f"{format_positions(trained)} {'is' if len(trained) == 1 else 'are'} trained: the model learns to predict "
        "where an image, video or audio goes, and these positions can outnumber the text. Usual cause: a VLM "
        "collator that masks only padding. Set labels to -100 at every media token id (and the prompt).",
    )


LAYOUT_CHECKS = (bos_duplicated, pads_attended, packed_without_boundaries, media_tokens_trained)
