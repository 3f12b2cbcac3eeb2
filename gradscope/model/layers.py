"""Where a model keeps its decoder layers, found by shape rather than by name."""

from __future__ import annotations

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
