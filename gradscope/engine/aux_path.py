"""Padding reached outside the logits: which padding the loss's gradient reaches by a path that skips the logits,
and through which module.

With a 2D attention_mask no logit of a real token reads a pad, and a pad's own logit is untrained, so the gradient at
a pad's embedding is exactly 0 unless a loss term reads the network's activations there: an auxiliary loss over
every position (an MoE router's load-balancing loss or a z-loss averaged over the padding too). This pass tells the
two paths apart (the loss's full gradient against the gradient that flows back from the loss's gradient at the
logits alone) and names the last module, in forward order, whose output carries gradient at such a pad: no module
after it does, so the loss reads that module's output directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from gradscope.engine.forward import backward_error, call_model, loss_logits
from gradscope.engine.run import instrumented, reentrant_checkpointing
from gradscope.model.usercode import LossFn


@dataclass
class PaddingPath:
    """Where the loss reaches padding outside the logits.

    Attributes:
        reached: (B, T) bool on the CPU: padding whose embedding the loss's gradient reaches while the gradient
            flowing back from the logits alone does not.
        norms: (B, T) the loss's gradient norm at the embedding of each such pad (0 elsewhere), in fp32.
        modules: Names of the modules whose outputs carry that gradient: the last one in forward order, then the
            others of its class, in forward order.
    """

    reached: torch.Tensor
    norms: torch.Tensor
    modules: list[str]


def padding_path(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    pad: torch.Tensor,
    *,
    loss_fn: LossFn | None = None,
    keep_dropout: bool = False,
) -> PaddingPath:
    """One more forward and two backward passes, to find the padding the loss reaches outside the logits.

    Args:
        model: The causal LM, left as it was found.
        batch: Tensors on the model's device, ``labels`` included.
        pad: (B, T) bool, the padding (a 2D attention_mask's zeros).
        loss_fn: The user's loss, as in ``forward_backward``.
        keep_dropout: Leave dropout on.

    Returns:
        The padding reached outside the logits; none under reentrant gradient checkpointing, which refuses the
        partial backward passes this needs.

    Raises:
        ModelCallError: the model or loss fails on this batch, or its backward does.
    """
    outputs: list[tuple[str, torch.Tensor]] = []
    names = {m: n for n, m in model.named_modules() if n}
    shape = tuple(batch["input_ids"].shape)
    if reentrant_checkpointing(model):  # it refuses the partial backward passes this needs: nothing to name
        return PaddingPath(torch.zeros(shape, dtype=torch.bool), torch.zeros(shape), [])
    with instrumented(model, keep_dropout=keep_dropout) as rec:
        handles = [m.register_forward_hook(_recorder(name, outputs, shape)) for m, name in names.items()]
        try:
            logits, loss = call_model(model, batch, loss_fn)
        finally:
            for h in handles:
                h.remove()
        logits = loss_logits(logits, rec)
        if rec.embedding is None or not loss.requires_grad:
            return PaddingPath(torch.zeros(shape, dtype=torch.bool), torch.zeros(shape), [])
        pad = pad.to(rec.embedding.device)
        carries: list[torch.Tensor] = []
        hooks = [t.register_hook(_carrier(carries, i, pad)) for i, (_, t) in enumerate(outputs)]
        try:
            loss_grad, full = _grads(loss, [logits, rec.embedding])
        finally:
            for h in hooks:
                h.remove()
        via_logits = _grads(logits, [rec.embedding], loss_grad)[0] if loss_grad is not None else None
    reached = pad & _nonzero(full) & ~_nonzero(via_logits)
    seen = {i for i, where in carries if bool((where & reached).any())}
    return PaddingPath(reached.cpu(), torch.where(reached, _norm(full), 0.0).cpu(), _sources(outputs, seen, names))


def _recorder(name: str, outputs: list, shape: tuple[int, ...]) -> Callable:
    """A forward hook keeping the module's first output tensor when it holds one vector per token."""

    def hook(module: nn.Module, args: tuple, output: object) -> None:
        tensor = (
            output
            if isinstance(output, torch.Tensor)
            else (
                output[0]
                if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor)
                else None
            )
        )
        if tensor is not None and tensor.requires_grad and tensor.is_floating_point() and _per_token(tensor, shape):
            outputs.append((name, tensor))

    return hook


def _per_token(tensor: torch.Tensor, shape: tuple[int, ...]) -> bool:
    """(B, T, ...) or (B * T, ...): the layouts a decoder's modules give their per-token outputs."""
    return tuple(tensor.shape[:2]) == shape or (tensor.dim() >= 1 and tensor.shape[0] == shape[0] * shape[1])


def _carrier(carries: list, index: int, pad: torch.Tensor) -> Callable[[torch.Tensor], None]:
    """A gradient hook recording where the output's gradient is non-zero at padding (it keeps no gradient)."""

    def hook(grad: torch.Tensor) -> None:
        where = (grad.detach().reshape(*pad.shape, -1) != 0).any(-1) & pad
        carries.append((index, where))

    return hook


def _grads(output: torch.Tensor, inputs: list[torch.Tensor], cotangent: torch.Tensor | None = None) -> list:
    try:
        return list(torch.autograd.grad(output, inputs, cotangent, retain_graph=True, allow_unused=True))
    except Exception as err:  # a custom autograd Function of the user's loss or model raised in its backward
        raise backward_error(err) from err


def _nonzero(grad: torch.Tensor | None) -> torch.Tensor:
    return (grad != 0).any(-1) if grad is not None else torch.zeros((), dtype=torch.bool)


def _norm(grad: torch.Tensor | None) -> torch.Tensor:
    return grad.detach().float().norm(dim=-1) if grad is not None else torch.zeros(())


def _sources(outputs: list[tuple[str, torch.Tensor]], seen: set[int], names: Mapping[nn.Module, str]) -> list[str]:
    """The last module carrying the gradient, then the others of its class that carry it (forward order)."""
    if not seen:
        return []
    kinds = {name: type(module) for module, name in names.items()}
    last = outputs[max(seen)][0]
    kin = [outputs[i][0] for i in sorted(seen) if kinds[outputs[i][0]] is kinds[last]]
    return [last] + [n for n in dict.fromkeys(kin) if n != last]
