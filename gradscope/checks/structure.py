"""Structural checks: small pure functions from what the probes measured to findings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradscope.constants import CU_SEQ_LENS_KEYS
from gradscope.engine.accumulate import Accumulation
from gradscope.engine.windows import Window
from gradscope.report.finding import Finding
from gradscope.report.text import format_positions, name_list

WEIGHT_SPREAD_TOLERANCE = 0.01
"""Per-sequence mean weights may differ by this fraction (bf16 rounding) before ``uneven_token_weights`` fires."""

ACCUMULATION_TOLERANCE = 0.01
"""Relative error of the accumulated gradient allowed before ``accumulation_mismatch`` fires (bf16 rounding)."""

PACKING_FIX = (
    "For transformers: pass no attention_mask and use_cache=False with packed position_ids, or use "
    "flash-attention varlen (attn_implementation='flash_attention_2' with cu_seq_lens)."
)


@dataclass(frozen=True)
class CallFacts:
    """How the model was called, as far as the probes' messages need it.

    Attributes:
        attention: ``config._attn_implementation`` (``sdpa``, ``eager``, ``flash_attention_2``, ...).
        mask_dims: Dimensions of the batch's attention_mask, 0 when there is none.
        mask_is_float: The attention_mask is a float tensor (an additive mask).
        use_cache: Whether the call creates a KV cache: the batch's ``use_cache`` if given, else the config's.
        use_cache_from: ``"batch"`` or ``"config"``.
        is_causal: ``config.is_causal`` when set.
        restarts: (B, T) bool, where position_ids restart (the only boundaries sdpa and eager attention honour).
        declared_by: Batch keys that declare documents (``position_ids``, ``seq_idx``, ``cu_seq_lens_q``, ...).
        bidirectional: (B, T) long, the span each position belongs to where the model attends bidirectionally
            (Gemma 3's image tokens, ``token_type_ids == 1``), -1 elsewhere; None when the model declares none.
    """

    attention: str | None
    mask_dims: int
    mask_is_float: bool
    use_cache: bool
    use_cache_from: str
    is_causal: bool | None
    restarts: torch.Tensor
    declared_by: tuple[str, ...]
    bidirectional: torch.Tensor | None = None


def call_facts(model: Any, batch: Mapping[str, Any], restarts: torch.Tensor) -> CallFacts:
    """Read the facts from the model's config and the batch as passed to ``model(**batch)``."""
    config = getattr(model, "config", None)
    mask = batch.get("attention_mask")
    in_batch = batch.get("use_cache")
    use_cache = bool(in_batch) if in_batch is not None else bool(getattr(config, "use_cache", False))
    if any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):
        use_cache = False  # transformers turns the cache off under gradient checkpointing in training
    declared = [k for k in ("position_ids", "seq_idx", *CU_SEQ_LENS_KEYS) if isinstance(batch.get(k), torch.Tensor)]
    return CallFacts(
        attention=getattr(config, "_attn_implementation", None),
        mask_dims=mask.dim() if isinstance(mask, torch.Tensor) else 0,
        mask_is_float=isinstance(mask, torch.Tensor) and mask.dtype.is_floating_point,
        use_cache=use_cache,
        use_cache_from="batch" if in_batch is not None else "config",
        is_causal=getattr(config, "is_causal", None),
        restarts=restarts,
        declared_by=tuple(declared),
        bidirectional=bidirectional_spans(config, batch),
    )


BIDIRECTIONAL_MEDIA_MODELS = ("gemma3",)
"""Model types whose attention is bidirectional inside each run of ``token_type_ids == 1`` (an image's tokens) and
causal elsewhere: transformers' Gemma 3 builds that mask from ``token_type_ids`` in training."""


def bidirectional_spans(config: Any, batch: Mapping[str, Any]) -> torch.Tensor | None:
    """(B, T) span ids of the runs of ``token_type_ids == 1``, -1 elsewhere, for a model that declares such spans."""
    types = batch.get("token_type_ids")
    if getattr(config, "model_type", None) not in BIDIRECTIONAL_MEDIA_MODELS or not isinstance(types, torch.Tensor):
        return None
    if types.dim() != 2:
        return None
    media = types.cpu() == 1
    begins = media.clone()
    begins[:, 1:] &= ~media[:, :-1]
    return torch.where(media, begins.long().cumsum(1) - 1, -1)


def _explained(w: Window, positions: list[int], spans: torch.Tensor | None) -> list[int]:
    """The positions at or after the window's cut that a bidirectional span holding its last output explains."""
    if spans is None or w.cut <= w.start or int(spans[w.cut - 1]) < 0:
        return []
    return [p for p in positions if int(spans[p]) == int(spans[w.cut - 1])]


def _seen(windows: Sequence[Window], seen: torch.Tensor, region) -> tuple[list[int], list[Window]]:
    """Positions inside each window's ``region(window) -> (lo, hi)`` whose embedding influenced its outputs."""
    positions: set[int] = set()
    hit = []
    for w in windows:
        lo, hi = region(w)
        found = (seen[w.slice, lo:hi].nonzero().flatten() + lo).tolist()
        if found:
            positions.update(found)
            hit.append(w)
    return sorted(positions), hit


def causal_leak(
    sample: int, windows: Sequence[Window], seen: torch.Tensor, facts: CallFacts, row: int = 0
) -> Finding | None:
    """The outputs before a cut depend on tokens at or after it, other than those of a span the model attends
    bidirectionally (Gemma 3's image tokens) that holds the window's last output.

    Args:
        sample: The row's index in the data.
        windows: This row's windows.
        seen: (n_slices, T) bool for this row, from ``Dependence.seen``.
        facts: How the model was called.
        row: The row in the batch (for ``facts.bidirectional``).
    """
    spans = facts.bidirectional[row] if facts.bidirectional is not None else None
    positions: set[int] = set()
    hit = []
    for w in windows:
        if not w.future:
            continue
        found, _ = _seen([w], seen, lambda w: (w.cut, seen.shape[1]))
        found = sorted(set(found) - set(_explained(w, found, spans)))
        if found:
            positions.update(found)
            hit.append(w)
    leaked = sorted(positions)
    if not leaked:
        return None
    cuts = sorted({w.cut for w in hit})
    where = f"position {cuts[0]}" if len(cuts) == 1 else f"each of the cuts at {', '.join(map(str, cuts))}"
    return Finding(
        "causal_leak",
        "error",
        sample,
        leaked,
        f"the logits before {where} depend on later tokens ({format_positions(leaked)}): the model sees "
        f"the future, so training rewards copying the next token instead of predicting it. {_causal_cause(facts)}",
    )


def _causal_cause(facts: CallFacts) -> str:
    if facts.mask_dims == 4 and facts.attention == "eager" and not facts.mask_is_float:
        return (
            "With eager attention transformers adds a 4D attention_mask to the attention scores, so a 0/1 or "
            "boolean mask masks nothing: pass an additive float mask (0 where allowed, the dtype's minimum where "
            "masked) or use sdpa."
        )
    if facts.mask_dims == 4:
        return (
            "The batch's custom 4D attention_mask lets positions attend to later ones: it lacks the causal part. "
            "Combine it with a lower-triangular mask (mask & torch.ones(T, T).tril())."
        )
    if facts.is_causal is False:
        return "The config sets is_causal=False (bidirectional attention); causal LM training needs True."
    return (
        f"The attention ({facts.attention}) is not causal: check custom attention code and any mask the model builds."
    )


def cross_document_leak(
    sample: int, windows: Sequence[Window], seen: torch.Tensor, facts: CallFacts, row: int
) -> Finding | None:
    """A packed document's outputs depend on tokens of earlier documents.

    Args:
        sample: The row's index in the data.
        windows: This row's windows.
        seen: (n_slices, T) bool for this row.
        facts: How the model was called.
        row: The row's index in its batch (to read ``facts.restarts``).
    """
    leaked, hit = _seen([w for w in windows if w.boundary], seen, lambda w: (0, w.start))
    if not leaked:
        return None
    starts = sorted({w.start for w in hit})
    causes = _packing_causes(facts, starts, row)
    which = (
        f"the document starting at position {starts[0]} depends"
        if len(starts) == 1
        else f"the documents starting at positions {', '.join(map(str, starts))} depend"
    )
    return Finding(
        "cross_document_leak",
        "error",
        sample,
        leaked,
        f"{which} on tokens of earlier documents "
        f"({format_positions(leaked)}): packed documents attend to each other, so each trains on unrelated "
        f"context. {' '.join(causes)} {PACKING_FIX}",
    )


def _packing_causes(facts: CallFacts, starts: Sequence[int], row: int) -> list[str]:
    """Every known cause that applies to this call."""
    causes = []
    if facts.mask_dims == 2:
        causes.append(
            "An attention_mask is passed: transformers (sdpa, eager) isolates packed documents from position_ids "
            "only when attention_mask is None (TRL's padding-free collator returns none)."
        )
    if facts.use_cache and facts.mask_dims != 4:
        where = (
            "The batch passes use_cache=True"
            if facts.use_cache_from == "batch"
            else "The model's config has use_cache=True"
        )
        causes.append(
            f"{where}: transformers then builds a KV cache and skips packed-sequence masking. Pass "
            "use_cache=False (TRL's SFTTrainer does) or set model.config.use_cache = False (transformers' "
            "Trainer does, from TrainingArguments.use_cache)."
        )
    unrestarted = [s for s in starts if not bool(facts.restarts[row, s])]
    if unrestarted and facts.attention != "flash_attention_2" and facts.mask_dims != 4:
        causes.append(
            f"position_ids do not restart at {format_positions(unrestarted)}, a boundary declared only by "
            f"{', '.join(k for k in facts.declared_by if k != 'position_ids')}, which only flash-attention varlen "
            f"kernels read; with {facts.attention} attention, restart position_ids at every document."
        )
    if facts.mask_dims == 4:
        causes.append("The batch's custom 4D attention_mask is not block-diagonal: mask out the other documents.")
    return causes or [f"The attention implementation ({facts.attention}) does not isolate the documents."]


def uneven_token_weights(
    weight: torch.Tensor, trained: torch.Tensor, documents: torch.Tensor, samples: Sequence[int]
) -> Finding | None:
    """Trained tokens weigh differently across the batch: the mean weight per sequence is not the same.

    Args:
        weight: (B, T) each token's weight in the loss (``Capture.weight``).
        trained: (B, T) bool.
        documents: (B, T) document index within each row (packed rows: one sequence per document).
        samples: Each row's sample index in the data.
    """
    groups = mean_weights(weight, trained, documents)
    if len(groups) < 2 or min(g[0] for g in groups) <= 0:
        return None
    low, high = min(groups), max(groups)
    if high[0] <= low[0] * (1 + WEIGHT_SPREAD_TOLERANCE):
        return None
    return Finding(
        "uneven_token_weights",
        "warning",
        None,
        [],
        f"trained tokens weigh differently across the batch: the mean weight per sequence ranges ×"
        f"{high[0] / low[0]:.2f}, from {low[0]:.3g} ({_sequence(low, samples)}) to {high[0]:.3g} "
        f"({_sequence(high, samples)}). A loss averaged per sequence (or per micro-batch) gives each token "
        "1/(its sequence's token count): short samples' tokens weigh more. Usual causes: a per-sequence mean loss, "
        "or averaging per-micro-batch means under gradient accumulation. Use one token mean over the batch "
        "(sum of token losses / number of trained tokens; with accumulation, pass num_items_in_batch).",
    )


def mean_weights(
    weight: torch.Tensor, trained: torch.Tensor, documents: torch.Tensor
) -> list[tuple[float, int, int, int]]:
    """(mean weight, row, document, trained tokens) of every sequence with a trained token."""
    groups = []
    for row in range(len(weight)):
        for doc in documents[row][trained[row]].unique().tolist():
            members = trained[row] & (documents[row] == doc)
            groups.append((float(weight[row][members].mean()), row, doc, int(members.sum())))
    return groups


def _sequence(group: tuple[float, int, int, int], samples: Sequence[int]) -> str:
    _, row, doc, count = group
    where = f"sample {samples[row]}" + (f", document {doc}" if doc else "")
    return f"{where}, {count} trained {'token' if count == 1 else 'tokens'}"


def accumulation_mismatch(acc: Accumulation, trained_per_micro: Sequence[int], batch: int) -> Finding | None:
    """The gradient summed over K micro-batches differs from the full batch's.

    Args:
        acc: What the accumulation probe measured.
        trained_per_micro: Trained tokens in each micro-batch.
        batch: Index of the batch in the run (for the message).
    """
    if acc.relative_error <= ACCUMULATION_TOLERANCE:  # False for NaN: a NaN gradient is a mismatch
        return None
    counts = ", ".join(str(n) for n in trained_per_micro)
    return Finding(
        "accumulation_mismatch",
        "error",
        None,
        [],
        f"batch {batch} as {acc.micro_batches} accumulated micro-batches (trained tokens: {counts}) does not give "
        f"the full-batch gradient: cosine {acc.cosine:.4f}, relative error {acc.relative_error:.3g}. "
        f"{_accumulation_cause(acc, trained_per_micro)}",
    )


def _accumulation_cause(acc: Accumulation, trained_per_micro: Sequence[int]) -> str:
    if 0 in trained_per_micro:
        return (
            "A micro-batch with no trained token has a mean loss of 0/0 = NaN, which poisons the accumulated "
            "gradient; normalize by the trained tokens of the whole accumulated batch (num_items_in_batch)."
        )
    if acc.cosine > 1 - 1e-4:
        return (
            f"Same direction, scaled ×{acc.scale:.3g}: the loss is not a mean (a sum is divided by K again), which "
            "changes the effective learning rate with K."
        )
    return (
        "Each micro-batch's mean loss is divided by K, so tokens of micro-batches with fewer trained tokens weigh "
        "more (the gradient-accumulation bug transformers fixed in 4.46). Normalize by the trained tokens of the "
        "whole accumulated batch: let the Trainer pass num_items_in_batch to the model's loss, or compute "
        "sum of token losses / num_items_in_batch in a custom loss."
    )


def aux_loss_reaches_padding(
    index: int, positions: Sequence[int], norm: float, sample_norm: float, modules: Sequence[str]
) -> Finding | None:
    """The loss's gradient reaches padding (attention_mask 0) by a path outside the logits, through ``modules``.

    Args:
        index: The sample.
        positions: The padding reached (``engine.aux_path.padding_path``).
        norm: The gradient's norm over those pads' embeddings.
        sample_norm: The gradient's norm over the whole sample's embeddings.
        modules: The modules whose outputs carry it, the last in forward order first.
    """
    if not positions:
        return None
    through = f"through {modules[0]}" if modules else "through no module gradscope could name"
    if len(modules) > 1:
        through += f" (and {name_list(list(modules[1:]), 4)}, of the same class)"
    share = f", {100 * norm / sample_norm:.3g}% of the sample's" if sample_norm > 0 else ""
    return Finding(
        "aux_loss_reaches_padding",
        "error",
        index,
        list(positions),
        f"the loss reaches padding {format_positions(positions)} of sample {index} (attention_mask 0) {through}, a "
        f"path outside the logits: the gradient at those pads' embeddings has norm {norm:.3g}{share}, where no "
        "trained logit reads them. Usual cause: an auxiliary loss averaged over every position, padding included: "
        "an MoE router's load-balancing loss computed without the attention mask, or a z-loss over all positions; "
        "the padding then shifts what the router learns about the real tokens' load. Pass the attention_mask to the "
        "auxiliary loss (transformers' load_balancing_loss_func takes it) or exclude padding from it.",
    )
