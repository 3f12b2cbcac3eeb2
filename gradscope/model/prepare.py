"""What a verb needs to know of a model and to hand it a batch: its description, the batch on its device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from gradscope.data.batch import validate, with_default_labels
from gradscope.model.layers import find_decoder_layers
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
        "vocab_size": model.get_input_embeddings().num_embeddings,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(param.dtype).removeprefix("torch."),
        "device": str(param.device),
        "device_map": getattr(model, "hf_device_map", None),
        "loss": "outputs.loss" if loss_fn is None else getattr(loss_fn, "__qualname__", repr(loss_fn)),
    }


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
    validate(batch, model.get_input_embeddings().num_embeddings, source, first_row=first_row)
    return with_default_labels(batch)


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch with every tensor on ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
