"""One batch row as the checks see it (a SampleView) and as the report keeps it (a SampleReport)."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch

from gradscope.checks.sample import SampleView
from gradscope.constants import CUT_KEY, IGNORE_INDEX, ROLE_NAMES, ROW_KEY
from gradscope.data.batch import PAD, roles
from gradscope.data.prefill import generation_prefills
from gradscope.data.tokens import bos_added, resolve_bos_token_id
from gradscope.engine.run import Capture
from gradscope.report.check import SampleReport, TokenReport
from gradscope.tokenizer import Tokenizer


def sample_views(
    batch: Mapping[str, torch.Tensor],
    capture: Capture,
    tokenizer: Tokenizer | None,
    ends: frozenset[int],
    pad_id: int | None,
    first: int,
    starts: torch.Tensor | None = None,
    media: frozenset[int] = frozenset(),
) -> list[SampleView]:
    role_codes = roles(batch)
    trained = capture.logit_grad_norm > 0
    texts = _decoder(tokenizer)
    bos_id = resolve_bos_token_id(tokenizer)
    adds_bos = bos_added(tokenizer)
    prefills = generation_prefills(tokenizer)
    n = len(batch["input_ids"])
    cut = batch[CUT_KEY].tolist() if CUT_KEY in batch else [0] * n
    index = batch[ROW_KEY].tolist() if ROW_KEY in batch else list(range(first, first + n))
    labels = batch.get("labels")
    labelled: torch.Tensor | None = None  # the labels' declared intent (masked_label_trained)
    if isinstance(labels, torch.Tensor) and labels.shape == trained.shape:
        labelled = labels.cpu() != IGNORE_INDEX
    return [
        SampleView(
            index=int(index[b]),
            input_ids=batch["input_ids"][b].cpu(),
            roles=role_codes[b],
            trained=trained[b],
            target_id=capture.target_id[b],
            texts=[texts(i) for i in batch["input_ids"][b].tolist()],
            end_token_ids=ends,
            pad_token_id=pad_id,
            completion_cut=int(cut[b]),
            document_starts=document_starts_of(starts[b], role_codes[b]) if starts is not None else frozenset(),
            bos_token_id=bos_id,
            bos_added=adds_bos,
            prefills=prefills,
            boundaries_known=starts is not None,
            media_token_ids=media,
            labelled=labelled[b] if labelled is not None else None,
        )
        for b in range(len(batch["input_ids"]))
    ]


def document_starts_of(starts: torch.Tensor, role_codes: torch.Tensor) -> frozenset[int]:
    """Starts of documents that follow a real document: padding is neither a document nor what one follows."""
    real = role_codes != PAD
    follows_real = torch.zeros_like(real)
    follows_real[1:] = real[:-1]
    return frozenset((starts & real & follows_real).nonzero().flatten().tolist())


_TEXTS: weakref.WeakKeyDictionary[Any, dict[int, str | None]] = weakref.WeakKeyDictionary()


def _decoder(tokenizer: Tokenizer | None) -> Callable[[int], str | None]:
    """A cached id -> text function (None without a tokenizer); the cache lives as long as the tokenizer, so each
    token id is decoded once across batches and calls."""
    if tokenizer is None:
        return lambda token_id: None
    cache: dict[int, str | None]
    try:
        cache = _TEXTS.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that takes no weak reference: a cache for this call only
        cache = {}

    def text(token_id: int) -> str | None:
        if token_id not in cache:
            cache[token_id] = tokenizer.decode([token_id])
        return cache[token_id]

    return text


def sample_report(
    view: SampleView, batch: Mapping[str, torch.Tensor], capture: Capture, b: int, roles_source: str
) -> SampleReport:
    # One .tolist() per quantity: indexing tensors element by element costs microseconds per token.
    ids, roles, trained = view.input_ids.tolist(), view.roles.tolist(), view.trained.tolist()
    labels, targets = batch["labels"][b].tolist(), view.target_id.tolist()
    loss, weight = capture.token_loss[b].tolist(), capture.weight[b].tolist()
    logit_norm, embedding_norm = capture.logit_grad_norm[b].tolist(), capture.embedding_grad_norm[b].tolist()
    if not capture.network_backward:  # the masking-only depth computed no gradient at the embeddings
        embedding_norm = [None] * len(embedding_norm)
    tokens = [
        TokenReport(
            position=t,
            token_id=ids[t],
            text=view.texts[t],
            role=ROLE_NAMES[roles[t]],
            label=labels[t],
            trained=trained[t],
            target_id=None if targets[t] < 0 else targets[t],
            loss=None if t == 0 else loss[t],
            weight=None if t == 0 else weight[t],
            logit_grad_norm=logit_norm[t],
            embedding_grad_norm=embedding_norm[t],
        )
        for t in range(len(ids))
    ]
    return SampleReport(
        index=view.index,
        tokens=tokens,
        layer_grad_norms=capture.layer_grad_norms[b].tolist(),
        roles_source=roles_source,
    )
