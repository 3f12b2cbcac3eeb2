"""The masking-only depth: a forward with no graph through the network, and the loss's own backward only.

Which tokens the loss trains is read off dL/dlogits, which needs no backward through the network. The model is
called exactly as the core calls it (training mode, ``model(**batch)``, its own loss or the user's ``loss_fn``), but
the network runs under ``torch.no_grad``: a hook on the LM head hands the rest of the forward a detached copy of
the head's output that requires grad, and turns autograd back on from there. Whatever the model does after its
head (soft-capping, a dtype copy, its loss function) and the user's loss are recorded and differentiated; no
activation of the network is kept, so the step costs a forward and the memory of inference plus the loss's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from gradscope.engine.forward import Graph, Recorder, call_model, loss_logits
from gradscope.engine.logits import LogitStats
from gradscope.engine.run import Capture, build_capture, training_state
from gradscope.errors import ModelCallError
from gradscope.model.layers import input_embeddings, output_embeddings
from gradscope.model.usercode import LossFn

LOGITS_DEPTH_NOTE = (
    "depth logits: the loss's backward only, no backward through the network; embedding and layer gradient norms "
    "and the causal and packing probes (causal_leak, cross_document_leak) were not run"
)
NOT_RUN_AT_LOGITS = "not run: depth logits has no backward through the network (use depth full)"


@contextmanager
def _graph_from_head(model: nn.Module) -> Iterator[Recorder]:
    """Run the network without autograd; make the LM head's output the leaf of a graph that holds the loss only.

    Yields a recorder whose ``head_output`` is that leaf (the first call's, when the head is called more than once).
    Without an output embedding module the whole forward keeps its graph from the input embedding's output (a
    correct verdict, without the memory saving). Parameters are frozen throughout and restored on exit.
    """
    rec = Recorder(0)
    head = output_embeddings(model)
    at_head = head is not None

    def hook(module: nn.Module, args: tuple, output: object) -> object:
        if not isinstance(output, torch.Tensor):
            return None
        leaf = output.detach().requires_grad_(True)
        if at_head and rec.head_output is None:
            rec.head_output = leaf
        torch.set_grad_enabled(True)  # from here on (the model's loss, the user's loss) autograd records
        return leaf

    handle = (head if head is not None else input_embeddings(model)).register_forward_hook(hook)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.set_grad_enabled(not at_head):  # restores the caller's mode on exit, whatever the hook set
            yield rec
    finally:
        handle.remove()


def forward_loss_backward(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    loss_fn: LossFn | None = None,
    keep_dropout: bool = False,
    after_backward: Callable[[Graph], None] | None = None,
) -> Capture:
    """``forward_backward`` at the masking-only depth: per-token loss, trained map, targets and weights.

    Args:
        model: A causal LM; it is left as it was found.
        batch: Tensors on the model's device, ``labels`` included.
        loss_fn: ``fn(logits, labels) -> scalar`` replacing the model's own loss, as in ``forward_backward``.
        keep_dropout: Leave dropout on.
        after_backward: Called with the loss -> logits graph (``embedding`` and ``head_input`` None), for the
            accumulation probe, which needs nothing else.

    Returns:
        The Capture, with ``network_backward`` False: no embedding or layer gradient norms were computed.

    Raises:
        ModelCallError: the model or loss fails on this batch, or the loss does not flow through the logits.
    """
    keep_graph = after_backward is not None
    with training_state(model, keep_dropout=keep_dropout), _graph_from_head(model) as rec:
        logits, loss = call_model(model, batch, loss_fn)
        logits = loss_logits(logits, rec)
    stats = LogitStats(logits, batch["input_ids"])
    grad = None
    if loss.requires_grad and logits.requires_grad:
        grad = torch.autograd.grad(loss, logits, allow_unused=True, retain_graph=keep_graph)[0]  # (B, T, V)
    if grad is not None:
        stats.hook(grad)
        del grad
    if loss.requires_grad and stats.grad_norm is None:
        raise ModelCallError(
            "the loss does not flow through outputs.logits, so gradscope cannot read which tokens it trains",
            hint="a fused loss that skips the logits? pass `loss`, a function of (logits, labels)",
        )
    capture = build_capture(batch, loss, stats, None, rec)
    capture.network_backward = False
    if after_backward is not None and stats.grad_norm is not None:
        with training_state(model, keep_dropout=keep_dropout):
            for p in model.parameters():
                p.requires_grad_(False)
            after_backward(
                Graph(model, batch, loss_fn, None, None, rec.head_output, logits, loss, None, stats.grad_norm > 0)
            )
    return capture
