"""The parameter pass: one backward with parameter gradients, read parameter by parameter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from gradscope.engine.forward import backward_error, call_model
from gradscope.engine.run import training_state
from gradscope.model.layers import find_decoder_layers, input_embeddings
from gradscope.model.usercode import LossFn

ADAM_EPS = 1e-8
"""torch.optim.AdamW's default eps."""
PROBE_STEP = 1e-3
"""The sign step taken on the other parameters before a zero gradient is looked at again."""


@dataclass
class Slot:
    """Where one parameter sits in the model."""

    name: str
    param: nn.Parameter
    module: str
    group: str
    kind: str
    layer: int | None
    adapter: bool
    tied_to: list[str] = field(default_factory=list)


def block_part(name: str, module: nn.Module) -> str:
    """``attention``, ``mlp``, ``norms`` or ``other`` for a child of a decoder block, by its class and attribute name.

    Norms first: ``post_attention_layernorm`` is a norm, not attention.
    """
    cls, key = type(module).__name__.lower(), name.lower()
    if "norm" in cls or "norm" in key or key.startswith("ln"):
        return "norms"
    if any(k in cls or k in key for k in ("attn", "attention")):
        return "attention"
    if any(k in cls or k in key for k in ("mlp", "feed_forward", "ffn", "moe", "experts")):
        return "mlp"
    return "other"


def _group_owners(model: nn.Module) -> dict[int, tuple[str, str, int | None]]:
    """id(parameter) -> (group, kind, layer), first claim wins: embedding, blocks, head, then by module type."""
    owners: dict[int, tuple[str, str, int | None]] = {}

    def claim(module: nn.Module | None, group: str, kind: str, layer: int | None = None, recurse: bool = True) -> None:
        for p in module.parameters(recurse=recurse) if module is not None else ():
            owners.setdefault(id(p), (group, kind, layer))

    claim(input_embeddings(model), "embedding", "embedding")
    for i, layer in enumerate(find_decoder_layers(model) or []):
        for child_name, child in layer.named_children():
            part = block_part(child_name, child)
            claim(child, f"layer {i} {part}", part, i)
        claim(layer, f"layer {i} other", "other", i, recurse=False)
    claim(getattr(model, "get_output_embeddings", lambda: None)(), "head", "head")
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            claim(module, "embedding", "embedding")
        elif "norm" in type(module).__name__.lower():
            claim(module, "final norm", "final_norm")
    return owners


def _adapter_modules(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> the name of the PEFT layer it adapts, for every adapter parameter.

    PEFT's tuner layers (LoRA, IA3, ...) and its modules_to_save / trainable-token wrappers list the attributes that
    hold adapter weights in ``adapter_layer_names``; read that rather than guess from parameter names.
    """
    out: dict[int, str] = {}
    for name, module in model.named_modules():
        for attr in getattr(module, "adapter_layer_names", None) or ():
            out.update((id(p), name) for p in _parameters_of(getattr(module, attr, None)))
    return out


def _parameters_of(holder: object) -> list[nn.Parameter]:
    if isinstance(holder, nn.Module):
        return list(holder.parameters())
    return [holder] if isinstance(holder, nn.Parameter) else []


def parameter_layout(model: nn.Module) -> list[Slot]:
    """Every parameter once (a tied one under its first name), with its module, group and adapter flag."""
    owners = _group_owners(model)
    adapters = _adapter_modules(model)
    names: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
        params[id(p)] = p
    slots = []
    for key, (first, *others) in names.items():
        group, kind, layer = owners.get(key, ("other", "other", None))
        module = adapters.get(key, first.rpartition(".")[0])
        slots.append(Slot(first, params[key], module, group, kind, layer, key in adapters, others))
    return slots


@dataclass
class ParamStats:
    """One parameter's gradient, reduced: the numbers the report needs (fp32/fp64 on the CPU)."""

    grad_norm: float | None
    adam_unit_norm: float | None  # ||g / (|g| + eps)||: Adam's first update is lr times this
    weight_norm: float
    finite: bool
    zero: bool


def widened(t: torch.Tensor) -> torch.Tensor:
    """At least fp32 for reductions: half-precision sums lose digits; float64 stays float64."""
    t = t.detach()
    return t if t.dtype == torch.float64 else t.float()


def gradient_stats(param: torch.Tensor, grad: torch.Tensor | None) -> ParamStats:
    """Reduce one parameter's gradient to its norm, Adam's first-step update norm and flags."""
    weight_norm = float(widened(param).norm())
    if grad is None:
        return ParamStats(None, None, weight_norm, True, False)
    g = widened(grad)
    # Adam's first step with bias correction: m_hat = g, v_hat = g^2, update = lr * g / (|g| + eps)
    adam_unit = float((g / (g.abs() + ADAM_EPS)).norm())
    finite = bool(torch.isfinite(g).all())
    return ParamStats(float(g.norm()), adam_unit, weight_norm, finite, finite and not bool(g.any()))


def param_backward(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    loss_fn: LossFn | None,
    params: Sequence[nn.Parameter],
    keep_dropout: bool,
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """The loss and dL/dp for each of ``params`` (None where nothing reaches p), without touching ``.grad``."""
    with training_state(model, keep_dropout=keep_dropout):
        _, loss = call_model(model, batch, loss_fn)
        if not params or not loss.requires_grad:
            return loss.detach(), [None] * len(params)
        try:
            return loss.detach(), list(torch.autograd.grad(loss, list(params), allow_unused=True))
        except Exception as err:  # a custom autograd Function of the user's loss or model raised in its backward
            raise backward_error(err) from err


def still_zero(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    loss_fn: LossFn | None,
    keep_dropout: bool,
    zero: list[nn.Parameter],
    moving: list[tuple[nn.Parameter, torch.Tensor]],
) -> set[int]:
    """Of the parameters whose gradient is exactly zero, those still at zero after a sign step on the others.

    A fresh LoRA has lora_B = 0, so its lora_A receives an exactly zero gradient until B's first update: that is
    not a parameter that never trains. Only a gradient still zero once everything else has moved is. The weights
    are restored bit for bit.
    """
    saved = [p.detach().clone() for p, _ in moving]
    try:
        with torch.no_grad():
            for p, g in moving:
                p.sub_(PROBE_STEP * g.sign().to(p.dtype))
        _, again = param_backward(model, batch, loss_fn, zero, keep_dropout)
    finally:
        with torch.no_grad():
            for (p, _), w in zip(moving, saved, strict=True):
                p.copy_(w)
    return {id(p) for p, g in zip(zero, again, strict=True) if g is None or not bool(g.any())}
