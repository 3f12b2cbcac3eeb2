"""What a batch is: the tensors a trainer passes to ``model(**batch)``, plus the role tensors."""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from gradscope.constants import (  # noqa: F401  (the role codes are re-exported: batches carry them)
    COMPLETION,
    CU_SEQ_LENS_KEYS,
    IGNORE_INDEX,
    META_KEYS,
    PAD,
    PROMPT,
    ROLE_CODES_KEY,
    ROLE_KEYS,
    UNKNOWN,
)
from gradscope.errors import DataError
from gradscope.model.layers import vocab_size
from gradscope.model.prepare import learned_positions, model_arguments

_PER_TOKEN_KEYS = ("labels", "position_ids", "seq_idx", *ROLE_KEYS, ROLE_CODES_KEY)


def validate(
    batch: Mapping[str, Any],
    vocab_size: int | None,
    source: str | None = None,
    first_row: int = 0,
    *,
    accepted: Collection[str] | None = None,
    max_positions: int | None = None,
) -> None:
    """Check that a batch is something a causal LM can be called on, and that each tensor holds what its key means.

    Args:
        batch: The batch dict.
        vocab_size: Rows of the model's input embedding (None: token ids are only checked to be non-negative).
        source: The file the batch came from, for error messages.
        first_row: The data row of the batch's first sample, so errors name rows of the data.
        accepted: Every key the model's forward takes, besides gradscope's own; another key is an error (a
            misspelled ``attention_masks`` would otherwise be dropped or passed on silently).
        max_positions: The most positions the model has (learned position embeddings); longer rows are errors.

    Raises:
        DataError: naming the key, row and position of the first problem.
    """
    if "input_ids" not in batch:
        raise DataError("no 'input_ids' in the batch", path=source, hint="store the token ids under 'input_ids'")
    ids = batch["input_ids"]
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise DataError("'input_ids' must be a 2D tensor (batch, sequence)", path=source)
    if ids.numel() == 0:
        raise DataError(
            f"the batch is empty: 'input_ids' has shape {tuple(ids.shape)}",
            path=source,
            hint="give at least one row with one token",
        )
    _require_integers(ids, "input_ids", source)
    _check_range(ids, "input_ids", 0, vocab_size, source, first_row)
    if accepted is not None:
        _check_keys(batch, accepted, source)
    for key in _PER_TOKEN_KEYS + ("attention_mask",):
        if key in batch:
            _check_shape(batch, key, source)
    _check_values(batch, vocab_size, source, first_row)
    if max_positions is not None:
        _check_positions(batch, max_positions, source, first_row)
    for key in CU_SEQ_LENS_KEYS:
        if key in batch:
            _check_cu_seq_lens(batch[key], ids.numel(), key, source)


def _require_integers(values: torch.Tensor, key: str, source: str | None, exact: bool = False) -> None:
    """Token ids and labels are integers (labels int64: the loss indexes with them)."""
    if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
        raise DataError(
            f"'{key}' has dtype {values.dtype}; it must hold integers (torch.int64)",
            path=source,
            hint=f"store '{key}' as int64, e.g. tensor.long()",
        )
    if exact and values.dtype != torch.int64:
        raise DataError(
            f"'{key}' has dtype {values.dtype}; the loss needs torch.int64 (long)",
            path=source,
            hint=f"store '{key}' as int64, e.g. tensor.long()",
        )


def _check_keys(batch: Mapping[str, Any], accepted: Collection[str], source: str | None) -> None:
    known = set(accepted) | set(META_KEYS) | set(CU_SEQ_LENS_KEYS) | {"input_ids", "labels"}
    for key in batch:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "remove it, or name one of the model's inputs"
            raise DataError(f"unknown key '{key}' in the batch: the model takes no such input", path=source, hint=hint)


def _check_values(batch: Mapping[str, Any], vocab_size: int | None, source: str | None, first_row: int) -> None:
    """labels: int64, -100 or a token id; masks: 0 or 1; position_ids: non-negative integers."""
    if "labels" in batch:
        labels = batch["labels"]
        _require_integers(labels, "labels", source, exact=True)
        _check_range(
            torch.where(labels == IGNORE_INDEX, 0, labels),
            "labels",
            0,
            vocab_size,
            source,
            first_row,
            what="label",
            allowed=f"{IGNORE_INDEX} or ",
        )
    for key in ("attention_mask", *ROLE_KEYS):
        mask = batch.get(key)
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            _check_binary(mask, key, source, first_row)
    if isinstance(batch.get("position_ids"), torch.Tensor):
        _require_integers(batch["position_ids"], "position_ids", source)
        _check_range(batch["position_ids"], "position_ids", 0, None, source, first_row, what="position")


def _check_binary(mask: torch.Tensor, key: str, source: str | None, first_row: int) -> None:
    if mask.dtype.is_complex:
        raise DataError(f"'{key}' has dtype {mask.dtype}; it must hold 0 and 1", path=source)
    bad = ~((mask == 0) | (mask == 1))  # NaN compares unequal to both
    if bad.any():
        row, pos = (int(i) for i in bad.nonzero()[0])
        raise DataError(
            f"'{key}' holds {mask[row, pos].item()!r}; it must hold only 0 and 1",
            path=source,
            row=first_row + row,
            position=pos,
            hint=f"give '{key}' 1 for each real token and 0 for padding"
            if key == "attention_mask"
            else f"give '{key}' 1 for tokens meant to be trained, else 0",
        )


def _check_positions(batch: Mapping[str, Any], max_positions: int, source: str | None, first_row: int) -> None:
    """Rows no longer than the model's position table (an index past it fails deep in the model)."""
    ids = batch["input_ids"]
    positions = batch.get("position_ids")
    if isinstance(positions, torch.Tensor) and positions.shape == ids.shape:
        _check_range(positions, "position_ids", 0, max_positions, source, first_row, what="position")
    elif ids.shape[1] > max_positions:
        raise DataError(
            f"rows have {ids.shape[1]} tokens but the model has {max_positions} positions",
            path=source,
            hint=f"truncate rows to at most {max_positions} tokens (`max_length`)",
        )


def _check_cu_seq_lens(cu: object, total: int, key: str, source: str | None) -> None:
    """Cumulative lengths: a 1D integer tensor rising from 0 and ending within the B * T flattened tokens."""
    ok = isinstance(cu, torch.Tensor) and cu.dim() == 1 and cu.numel() >= 2 and not cu.dtype.is_floating_point
    if ok and isinstance(cu, torch.Tensor):
        steps = cu[1:] - cu[:-1]
        ok = int(cu[0]) == 0 and bool((steps >= 0).all()) and int(cu[-1]) <= total
    if not ok:
        raise DataError(
            f"'{key}' must be a 1D integer tensor rising from 0 to at most {total} (the batch's tokens, flattened)",
            path=source,
            hint="give the cumulative document lengths as TRL's padding-free collator does, e.g. [0, 4, 7, 12]",
        )


def _check_shape(batch: Mapping[str, torch.Tensor], key: str, source: str | None) -> None:
    """A per-token tensor must have input_ids' shape (a 4D attention mask is allowed as (B, 1|H, T, T))."""
    shape = tuple(batch["input_ids"].shape)
    if not isinstance(batch[key], torch.Tensor):
        raise DataError(f"'{key}' must be a tensor of shape {shape}, like 'input_ids'", path=source)
    got = tuple(batch[key].shape)
    if key == "attention_mask" and len(got) == 4:
        b, t = shape
        if got[0] == b and got[2:] == (t, t):
            return
        raise DataError(f"4D 'attention_mask' has shape {got}; expected ({b}, 1, {t}, {t})", path=source)
    if got != shape:
        raise DataError(
            f"'{key}' has shape {got} but 'input_ids' has shape {shape}",
            path=source,
            hint=f"give '{key}' one entry per token",
        )


def _check_range(
    values: torch.Tensor,
    key: str,
    low: int,
    high: int | None,
    source: str | None,
    first_row: int,
    what: str = "token id",
    allowed: str = "",
) -> None:
    bad = values < low if high is None else (values < low) | (values >= high)
    if bad.any():
        row, pos = (int(i) for i in bad.nonzero()[0])
        span = f"[{low}, {high})" if high is not None else f"{low} or more"
        where = "the model's vocabulary " if what != "position" and high is not None else ""
        raise DataError(
            f"'{key}' holds {what} {int(values[row, pos])}, outside {where}{allowed}{span}",
            path=source,
            row=first_row + row,
            position=pos,
            hint="tokenize with the model's own tokenizer" if what != "position" else f"give '{key}' values in {span}",
        )


def with_default_labels(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return the batch with ``labels`` added if absent: input_ids, -100 where attention_mask is 0.

    This is what transformers' language-modeling collator does (with a pad token distinct from EOS).
    """
    out = dict(batch)
    if "labels" not in out:
        labels = out["input_ids"].clone()
        mask = out.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            labels[mask == 0] = IGNORE_INDEX
        out["labels"] = labels
    return out


def document_starts(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Where packed documents start: (B, T) bool on the CPU, True at t >= 1 where a new document begins.

    A document starts where ``position_ids`` do not continue (``position_ids[t] != position_ids[t - 1] + 1``,
    transformers' own rule), where ``seq_idx`` changes, and at every inner boundary of ``cu_seq_lens_q/k``. The
    union is taken: a boundary declared by any of them is one the user meant. Position 0 is never marked.
    """
    ids = batch["input_ids"]
    rows, width = ids.shape
    starts = torch.zeros(rows, width, dtype=torch.bool)
    for key, restarts in (
        ("position_ids", lambda v: v[:, 1:] != v[:, :-1] + 1),
        ("seq_idx", lambda v: v[:, 1:] != v[:, :-1]),
    ):
        values = batch.get(key)
        if isinstance(values, torch.Tensor) and values.shape == ids.shape:
            starts[:, 1:] |= restarts(values.cpu())
    flat = starts.view(-1)  # row-major, the flattened order varlen kernels index
    for key in CU_SEQ_LENS_KEYS:
        cu = batch.get(key)
        if isinstance(cu, torch.Tensor) and cu.dim() == 1:
            cu = cu.cpu().long()
            flat[cu[(cu > 0) & (cu < flat.numel())]] = True
    starts[:, 0] = False
    return starts


def select_rows(batch: Mapping[str, Any], rows: slice | Sequence[int]) -> dict[str, Any]:
    """The batch restricted to some rows.

    Tensors with one entry per row are indexed ((B, T) tensors, 4D masks, ``gradscope_cut``); the others are kept
    whole: scalars and the flattened ``cu_seq_lens_q/k``, whatever their length.
    """
    n = len(batch["input_ids"])
    index = rows if isinstance(rows, slice) else torch.as_tensor(list(rows), dtype=torch.long)

    def per_row(key: str, value: object) -> bool:
        return isinstance(value, torch.Tensor) and value.dim() > 0 and len(value) == n and key not in CU_SEQ_LENS_KEYS

    return {k: v[index] if per_row(k, v) else v for k, v in batch.items()}


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Everything a trainer would pass to ``model(**batch)``: the batch less its role and gradscope tensors."""
    return {k: v for k, v in batch.items() if k not in META_KEYS}


def roles(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per-position role codes (B, T): gradscope's own codes, else PROMPT/COMPLETION from the user's role tensor;
    PAD where attention_mask is 0."""
    ids = batch["input_ids"]
    out = torch.full(ids.shape, UNKNOWN, dtype=torch.long)
    role_key = next((k for k in ROLE_KEYS if k in batch), None)
    if ROLE_CODES_KEY in batch:
        out = batch[ROLE_CODES_KEY].cpu().long().clone()
    elif role_key is not None:
        out = torch.where(batch[role_key].cpu().bool(), COMPLETION, PROMPT)
    out[~real_tokens(batch)] = PAD
    return out


def real_tokens(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(B, T) bool on the CPU: tokens that are not padding (a 2D attention_mask's ones; every token otherwise)."""
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return mask.cpu() != 0
    return torch.ones(batch["input_ids"].shape, dtype=torch.bool)


def held_tokens(batch: Mapping[str, torch.Tensor], end_token_ids: Collection[int]) -> torch.Tensor:
    """(B, T) bool on the CPU: the tokens each row holds: its real tokens and, between its first and last real
    token, the end tokens a 2D attention mask hides. With pad == eos and ``attention_mask = ids != pad`` every turn's
    end token is hidden, yet it is the model's EOS, not padding: padding never sits between real tokens."""
    real = real_tokens(batch)
    if not end_token_ids or bool(real.all()):
        return real
    ids = batch["input_ids"].cpu()
    ends = torch.isin(ids, torch.tensor(sorted(end_token_ids), dtype=ids.dtype))
    before = real.long().cumsum(1) > 0
    after = real.flip(1).long().cumsum(1).flip(1) > 0
    return real | (ends & before & after)


def collate(rows: Sequence[Mapping[str, Sequence[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad pre-tokenized rows into a batch, as the standard collators do.

    input_ids are padded with the pad id, labels with -100, attention_mask and role masks with 0; position_ids
    continue counting so that padding never looks like the start of a packed document.
    """
    width = max(len(r["input_ids"]) for r in rows)
    keys = [k for k in rows[0] if k != "input_ids"]
    out = {"input_ids": _pad([r["input_ids"] for r in rows], width, pad_token_id)}
    out["attention_mask"] = _pad([r.get("attention_mask", [1] * len(r["input_ids"])) for r in rows], width, 0)
    for key in keys:
        if key == "attention_mask":
            continue
        fill = IGNORE_INDEX if key == "labels" else 0
        if key == "position_ids":
            out[key] = torch.tensor([_continue(r[key], width) for r in rows])
        else:
            out[key] = _pad([r[key] for r in rows], width, fill)
    return out


def _pad(seqs: Sequence[Sequence[int]], width: int, fill: int) -> torch.Tensor:
    return torch.tensor([list(s) + [fill] * (width - len(s)) for s in seqs], dtype=torch.long)


def _continue(positions: Sequence[int], width: int) -> list[int]:
    start = (positions[-1] + 1) if positions else 0
    return list(positions) + list(range(start, start + width - len(positions)))


def prepare_batch(
    model: nn.Module, batch: Mapping[str, torch.Tensor], source: str | None = None, first_row: int = 0
) -> dict[str, torch.Tensor]:
    """Validate a batch against the model and add the default ``labels`` when absent (tensors stay where they are).

    Args:
        model: The causal LM the batch is for.
        batch: The batch dict.
        source: The file the batch came from, for error messages.
        first_row: The data row of the batch's first sample, so errors name rows of the data.

    Raises:
        DataError: naming the key, row and position of the first problem.
    """
    vocab = vocab_size(model)
    validate(
        batch,
        vocab,
        source,
        first_row=first_row,
        accepted=model_arguments(model),
        max_positions=learned_positions(model),
    )
    return with_default_labels(batch)
