"""Where a model keeps its parts: the decoder layers (found by shape rather than by name), the embeddings, the head."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from torch import nn


def find_decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The model's stack of decoder layers, found by shape rather than by name.

    The stack is the outermost ``nn.ModuleList`` of identical blocks whose length is the config's
    ``num_hidden_layers`` (``model.layers`` in Llama, ``transformer.h`` in GPT-2); failing that, the longest.
    """
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    stacks = [
        m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(c) for c in m}) == 1
    ]
    for stack in stacks:
        if len(stack) == n_layers:
            return stack
    return max(stacks, key=len, default=None)


def input_embeddings(model: nn.Module) -> nn.Module:
    """The model's input embedding module (transformers' ``get_input_embeddings()``, which every causal LM has)."""
    get = cast(Callable[[], nn.Module], model.get_input_embeddings)  # nn.Module types unknown attributes as Tensor
    return get()


def output_embeddings(model: nn.Module) -> nn.Module | None:
    """The model's LM head (``get_output_embeddings()``), or None when it has none or does not say."""
    get = cast("Callable[[], nn.Module | None] | None", getattr(model, "get_output_embeddings", None))
    head = get() if callable(get) else None
    return head if isinstance(head, nn.Module) else None


def vocab_size(model: nn.Module) -> int:
    """Rows of the input embedding: the token ids the model accepts."""
    return int(cast(nn.Embedding, input_embeddings(model)).num_embeddings)


def base_model(model: nn.Module) -> nn.Module:
    """The model a PEFT wrapper passes its inputs on to (``get_base_model()``), else the model itself."""
    get = getattr(model, "get_base_model", None)
    return cast(nn.Module, get()) if callable(get) else model
