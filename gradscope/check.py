"""The library entry point: run a batch through the model with hooks, analyze, and build the Report."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from gradscope.analyze import SampleView, analyze
from gradscope.batch import ROLE_NAMES, roles, validate, with_default_labels
from gradscope.report import Report, SampleReport, TokenReport
from gradscope.run import Capture, LossFn, find_decoder_layers, forward_backward

END_OF_TURN_TOKENS = frozenset(
    {"<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>", "<|end_of_text|>"}
)
"""Special tokens that close a turn or a document in common chat templates."""

ROLES_UNKNOWN_NOTE = (
    "roles unknown (no completion_mask or assistant_masks): prompt_leak and completion_untrained were not checked; "
    "eos_untrained looked at end tokens right after trained tokens"
)


def check(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    tokenizer: Any = None,
    loss_fn: LossFn | None = None,
    keep_dropout: bool = False,
    end_token_ids: Iterable[int] | None = None,
) -> Report:
    """Check which tokens one batch trains and flag every masking leak.

    Args:
        model: A loaded causal LM (any ``*ForCausalLM``). It is called as ``model(**batch)`` and left as it was.
        batch: ``input_ids`` (B, T) and optionally ``labels``, ``attention_mask``, ``position_ids``, other model
            inputs, and a role tensor ``completion_mask`` or ``assistant_masks`` (1 = a token meant to be trained).
            Absent ``labels`` means input_ids with -100 where attention_mask is 0.
        tokenizer: Decodes token texts and names the end and pad tokens; optional.
        loss_fn: ``fn(logits, labels) -> scalar`` replacing the model's own loss.
        keep_dropout: Leave dropout on (the report is then not deterministic).
        end_token_ids: Token ids that close a completion; by default EOS from the config and tokenizer plus the
            tokenizer's end-of-turn tokens.

    Returns:
        The Report; ``report.ok`` is False when there is an error finding.

    Raises:
        InputError: the batch does not fit the model, or the model/loss fails on it.
    """
    return check_batches(
        model, [batch], tokenizer=tokenizer, loss_fn=loss_fn, keep_dropout=keep_dropout, end_token_ids=end_token_ids
    )


def check_batches(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    tokenizer: Any = None,
    loss_fn: LossFn | None = None,
    keep_dropout: bool = False,
    end_token_ids: Iterable[int] | None = None,
    source: str | None = None,
) -> Report:
    """``check`` over several batches, one forward and backward each, merged into one Report.

    Samples are numbered across batches in order, so a finding's ``sample`` is the row of the data.
    """
    ends = frozenset(end_token_ids) if end_token_ids is not None else default_end_token_ids(model, tokenizer)
    report = Report(model=describe_model(model, loss_fn))
    vocab = model.get_input_embeddings().num_embeddings
    device = model.get_input_embeddings().weight.device  # the first device when layers are spread (device_map)
    pad_id = _pad_token_id(model, tokenizer)
    for batch in batches:
        validate(batch, vocab, source, first_row=len(report.samples))
        full = with_default_labels(batch)
        capture = forward_backward(model, _to(full, device), loss_fn=loss_fn, keep_dropout=keep_dropout)
        views = _views(full, capture, tokenizer, ends, pad_id, len(report.samples))
        report.findings += analyze(capture, views, full["labels"])
        report.samples += [_sample_report(v, full, capture, i) for i, v in enumerate(views)]
        report.losses.append(capture.loss)
        if not views[0].roles_known and ROLES_UNKNOWN_NOTE not in report.notes:
            report.notes.append(ROLES_UNKNOWN_NOTE)
    return report


def default_end_token_ids(model: nn.Module, tokenizer: Any = None) -> frozenset[int]:
    """EOS ids of the config, generation config and tokenizer, and the tokenizer's end-of-turn tokens."""
    ids: set[int] = set()
    for cfg in (getattr(model, "config", None), getattr(model, "generation_config", None), tokenizer):
        value = getattr(cfg, "eos_token_id", None)
        ids.update([value] if isinstance(value, int) else (value or []))
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return frozenset(ids)


def _pad_token_id(model: nn.Module, tokenizer: Any) -> int | None:
    for source in (tokenizer, getattr(model, "config", None)):
        value = getattr(source, "pad_token_id", None)
        if isinstance(value, int):
            return value
    return None


def describe_model(model: nn.Module, loss_fn: LossFn | None = None) -> dict[str, Any]:
    """The ``model`` section of the report."""
    config = getattr(model, "config", None)
    layers = find_decoder_layers(model)
    param = next(model.parameters())
    return {
        "name_or_path": getattr(config, "_name_or_path", None) or None,
        "architecture": type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "num_layers": len(layers) if layers is not None else 0,
        "vocab_size": model.get_input_embeddings().num_embeddings,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(param.dtype).removeprefix("torch."),
        "device": str(param.device),
        "device_map": getattr(model, "hf_device_map", None),
        "loss": "outputs.loss" if loss_fn is None else getattr(loss_fn, "__qualname__", repr(loss_fn)),
    }


def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _views(
    batch: Mapping[str, torch.Tensor],
    capture: Capture,
    tokenizer: Any,
    ends: frozenset[int],
    pad_id: int | None,
    first: int,
) -> list[SampleView]:
    role_codes = roles(batch)
    trained = capture.logit_grad_norm > 0
    texts = _decoder(tokenizer)
    return [
        SampleView(
            index=first + b,
            input_ids=batch["input_ids"][b].cpu(),
            roles=role_codes[b],
            trained=trained[b],
            target_id=capture.target_id[b],
            texts=[texts(i) for i in batch["input_ids"][b].tolist()],
            end_token_ids=ends,
            pad_token_id=pad_id,
        )
        for b in range(len(batch["input_ids"]))
    ]


_TEXTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _decoder(tokenizer: Any):
    """A cached id -> text function (None without a tokenizer); the cache lives as long as the tokenizer, so each
    token id is decoded once across batches and calls."""
    if tokenizer is None:
        return lambda token_id: None
    try:
        cache = _TEXTS.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that takes no weak reference: a cache for this call only
        cache = {}

    def text(token_id: int) -> str | None:
        if token_id not in cache:
            cache[token_id] = tokenizer.decode([token_id])
        return cache[token_id]

    return text


def _sample_report(view: SampleView, batch: Mapping[str, torch.Tensor], capture: Capture, b: int) -> SampleReport:
    # One .tolist() per quantity: indexing tensors element by element costs microseconds per token.
    ids, roles, trained = view.input_ids.tolist(), view.roles.tolist(), view.trained.tolist()
    labels, targets = batch["labels"][b].tolist(), view.target_id.tolist()
    loss, weight = capture.token_loss[b].tolist(), capture.weight[b].tolist()
    logit_norm, embedding_norm = capture.logit_grad_norm[b].tolist(), capture.embedding_grad_norm[b].tolist()
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
    return SampleReport(index=view.index, tokens=tokens, layer_grad_norms=capture.layer_grad_norms[b].tolist())
