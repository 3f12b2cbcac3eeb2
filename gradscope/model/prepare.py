"""What a verb needs to know of a model and to hand it a batch: its description, the batch on its device."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from gradscope.model.layers import base_model, find_decoder_layers, vocab_size
from gradscope.model.usercode import LossFn


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
        "vocab_size": vocab_size(model),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(param.dtype).removeprefix("torch."),
        "device": str(param.device),
        "device_map": getattr(model, "hf_device_map", None),
        "loss": "outputs.loss" if loss_fn is None else getattr(loss_fn, "__qualname__", repr(loss_fn)),
    }


_TRANSFORMERS_KWARGS = (
    "num_items_in_batch",
    "cu_seq_lens_q",
    "cu_seq_lens_k",
    "max_length_q",
    "max_length_k",
    "position_ids",
    "is_causal",
    "seq_idx",
    "output_attentions",
    "output_hidden_states",
)
"""What transformers' models take through ``**kwargs`` (TransformersKwargs: flash-attention varlen and loss)."""


def model_arguments(model: nn.Module) -> frozenset[str] | None:
    """The keyword arguments the model's forward takes; None when it takes any keyword it is given (a user model
    whose ``**kwargs`` is not transformers')."""
    model = base_model(model)  # a PEFT model passes its inputs on to its base
    forward = getattr(model, "forward", None)
    if not callable(forward):
        return None
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return None
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        if getattr(model, "config", None) is None:
            return None
        named |= set(_TRANSFORMERS_KWARGS)
    return frozenset(named - {"self"})


def learned_positions(model: nn.Module) -> int | None:
    """Rows of the model's learned position embedding (GPT-2's ``wpe``), or None when positions are computed (RoPE)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in _POSITION_TABLES:
            return module.num_embeddings
    return None


_POSITION_TABLES = ("wpe", "position_embeddings", "embed_positions")


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch with every tensor on ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
