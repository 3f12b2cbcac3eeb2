"""The core backward in two parts, when the probes need the network's graph but not the loss's.

A single backward with ``retain_graph=True`` keeps every saved tensor of the step, the loss's (B, T, V) log-softmax
among them, and the probes then hold the logits too. When the loss reaches the network only through the logits,
the same gradients come from dL/dlogits first (freeing the loss's saved tensors, read chunk by chunk), then
dL/d(LM head input), then on through the network with its graph kept: nothing of size (B, T, V) outlives the loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

WALK_LIMIT = 10_000
"""Autograd nodes the dependence walk visits before giving up (a loss term outside the logits, such as an MoE
router's auxiliary loss, leads it into the network)."""


def only_through(loss: torch.Tensor, logits: torch.Tensor, leaf: torch.Tensor) -> bool:
    """Whether every path from ``loss`` back to ``leaf`` passes through ``logits``.

    Walks the loss's autograd graph without entering ``logits``' own node: reaching ``leaf`` (or more than
    WALK_LIMIT nodes) means some term of the loss depends on the network by another way.
    """
    stop, seen = logits.grad_fn, set()
    todo = [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node is stop or node in seen:
            continue
        seen.add(node)
        if len(seen) > WALK_LIMIT or getattr(node, "variable", None) is leaf:
            return False
        todo += [next_node for next_node, _ in node.next_functions]
    return True


def backward_through_head(
    loss: torch.Tensor,
    logits: torch.Tensor,
    head_input: torch.Tensor,
    embedding: torch.Tensor,
    read_logit_grad: Callable[[torch.Tensor], None],
) -> torch.Tensor | None:
    """dL/d embedding, in three parts; the network's graph (from ``head_input`` down) is kept for the probes.

    Args:
        loss: The scalar loss; it must reach the network only through ``logits`` (``only_through``).
        logits: (B, T, V) what the loss was computed from.
        head_input: (B, T, D) the LM head's input.
        embedding: (B, T, D) the leaf.
        read_logit_grad: Called with dL/dlogits (B, T, V) before it is freed.

    Returns:
        dL/d embedding (B, T, D), or None when the loss does not reach the logits.
    """
    grad = torch.autograd.grad(loss, logits, allow_unused=True)[0]  # (B, T, V); frees the loss's saved tensors
    if grad is None:
        return None
    read_logit_grad(grad)
    at_head_input = torch.autograd.grad(logits, head_input, grad)[0]  # (B, T, D)
    del grad
    return torch.autograd.grad(head_input, embedding, at_head_input, retain_graph=True, allow_unused=True)[0]
