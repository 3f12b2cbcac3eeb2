"""The causal LM a training loop trains, found inside what the loop holds, and the report's description of it."""

from __future__ import annotations

from typing import Any

from torch import nn

from gradscope.errors import GradscopeError
from gradscope.integrations.observe import causal_lm, input_embeddings
from gradscope.model.prepare import describe_model


def find_causal_lm(model: nn.Module) -> nn.Module:
    """The causal LM the loop trains: the model itself (a DDP or PEFT wrapper is looked through by the observer),
    else the first submodule with input and output embeddings (a LightningModule or a user's wrapper holding it)."""
    if _is_lm(causal_lm(model)):
        return model
    for module in model.modules():
        if _is_lm(module):
            return module
    raise GradscopeError(
        f"{type(model).__name__} holds no causal LM (a transformers PreTrainedModel with "
        "get_input_embeddings, or a torchtune TransformerDecoder): pass that model to the watcher"
    )


def _is_lm(module: nn.Module) -> bool:
    return callable(getattr(module, "get_input_embeddings", None)) or (
        isinstance(getattr(module, "tok_embeddings", None), nn.Embedding) and hasattr(module, "output")
    )


def model_section(lm: nn.Module) -> dict[str, Any]:
    """The report's ``model`` section (of a torchtune model too, which has no config)."""
    if callable(getattr(lm, "get_input_embeddings", None)):
        return describe_model(lm)
    param = next(lm.parameters())
    return {
        "name_or_path": None,
        "architecture": type(lm).__name__,
        "model_type": None,
        "num_layers": len(getattr(lm, "layers", [])),
        "vocab_size": input_embeddings(lm).num_embeddings,
        "parameters": sum(p.numel() for p in lm.parameters()),
        "dtype": str(param.dtype).removeprefix("torch."),
        "device": str(param.device),
        "device_map": None,
        "loss": "the loop's loss",
    }
