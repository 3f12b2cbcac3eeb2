"""The core run's forward once more, for probes that need its graph only sometimes.

The default check's core backward frees the forward as a bare training step does, so that on a clean batch its
peak is the core's; the windows, which run only where the screen fires, get the graph back by running the forward
again (``Graph.rerun``), with the same model state and hooks, on the same batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from gradscope.engine.forward import Graph, Recorder, call_model, loss_logits
from gradscope.model.usercode import LossFn


def forward_again(model: nn.Module, batch: Mapping[str, torch.Tensor], loss_fn: LossFn | None, rec: Recorder) -> Graph:
    """The core run's forward once more, inside the same model state and hooks, as a Graph for the probes.

    Only the network's part is kept: the loss is detached (its (B, T, V) saved tensors freed) and the logits are
    dropped where the LM head's input stands for them, as ``backward_through_head`` leaves them.
    """
    rec.forget_forward()
    logits, loss = call_model(model, batch, loss_fn)
    logits = loss_logits(logits, rec)
    rec.remove_gradient_hooks()
    head_input = rec.head_input
    kept: tuple[torch.Tensor | None, torch.Tensor | None] = (rec.head_output, logits)
    if head_input is not None and head_input.requires_grad and head_input.shape[:-1] == logits.shape[:-1]:
        kept = None, None
    del logits
    graph = Graph(model, batch, loss_fn, rec.embedding, head_input, *kept, loss.detach())
    rec.forget_forward()
    return graph
