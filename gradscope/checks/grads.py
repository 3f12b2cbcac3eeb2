"""The gradient at the weights summarised (norms, clip factor, update ratios) and the checks on it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from gradscope.constants import DEFAULT_LR, DEFAULT_MAX_GRAD_NORM  # noqa: F401  (re-exported)
from gradscope.engine.params import (
    ParamStats,
    Slot,
    widened,
)
from gradscope.report.finding import Finding
from gradscope.report.text import format_count, name_list
from gradscope.report.weights import GradReport, ModuleGrad, ParamGrad

CLIP_EPS = 1e-6
"""What ``clip_grad_norm_`` adds to the norm before dividing."""


@dataclass(frozen=True)
class GradThresholds:
    """Where the depth checks fire.

    Attributes:
        depth_ratio: ``exploding_gradient`` when the first block's gradient norm is more than this many times the
            last block's, ``vanishing_gradient`` when it is less than 1/this.
    """

    depth_ratio: float = 10.0


def param_status(slot: Slot, stats: ParamStats | None, stuck: set[int]) -> str:
    if not slot.param.requires_grad or stats is None:
        return "frozen"
    if stats.grad_norm is None:
        return "no_gradient"
    if not stats.finite:
        return "nonfinite"
    return "zero_gradient" if id(slot.param) in stuck else "trained"


def _ratio(lr: float, norm: float | None, weight_norm: float) -> float | None:
    return lr * norm / weight_norm if norm is not None and weight_norm > 0 else None


def param_grad(slot: Slot, stats: ParamStats | None, status: str, lr: float) -> ParamGrad:
    weight_norm = stats.weight_norm if stats is not None else float(widened(slot.param).norm())
    grad_norm = stats.grad_norm if stats is not None else None
    adam = stats.adam_unit_norm if stats is not None else None
    return ParamGrad(
        name=slot.name,
        module=slot.module,
        group=slot.group,
        adapter=slot.adapter,
        shape=list(slot.param.shape),
        trainable=slot.param.requires_grad,
        status=status,
        grad_norm=grad_norm,
        weight_norm=weight_norm,
        sgd_update_ratio=_ratio(lr, grad_norm, weight_norm),
        adam_update_ratio=_ratio(lr, adam, weight_norm),
        tied_to=slot.tied_to,
    )


def _root_sum_squares(values: Sequence[float]) -> float:
    return math.sqrt(sum(v * v for v in values))


def _module_row(slots: list[Slot], stats: dict[int, ParamStats], lr: float) -> ModuleGrad:
    """One row: the group's (or its adapter part's) parameters summed."""
    first = slots[0]
    moved = [stats[id(s.param)] for s in slots if id(s.param) in stats and stats[id(s.param)].grad_norm is not None]
    grad_norm = _root_sum_squares([m.grad_norm for m in moved if m.grad_norm is not None]) if moved else None
    moved_weight = _root_sum_squares([m.weight_norm for m in moved])
    adam = _root_sum_squares([m.adam_unit_norm for m in moved if m.adam_unit_norm is not None]) if moved else None
    return ModuleGrad(
        name=first.group + (" (adapter)" if first.adapter else ""),
        kind=first.kind,
        layer=first.layer,
        adapter=first.adapter,
        modules=sorted({s.module for s in slots}),
        parameters=sum(s.param.numel() for s in slots),
        trainable_parameters=sum(s.param.numel() for s in slots if s.param.requires_grad),
        grad_norm=grad_norm,
        weight_norm=_root_sum_squares([float(widened(s.param).norm()) for s in slots]),
        sgd_update_ratio=_ratio(lr, grad_norm, moved_weight),
        adam_update_ratio=_ratio(lr, adam, moved_weight),
        group=first.group,
    )


def module_rows(slots: list[Slot], stats: dict[int, ParamStats], lr: float) -> list[ModuleGrad]:
    """Rows per (group, adapter), in the model's order."""
    rows: dict[tuple[str, bool], list[Slot]] = {}
    for s in slots:
        rows.setdefault((s.group, s.adapter), []).append(s)
    return [_module_row(members, stats, lr) for members in rows.values()]


def block_norms(params: list[ParamGrad], slots: list[Slot], n_layers: int) -> list[float | None]:
    """Each decoder block's gradient norm over its trained parameters (None where none is trained)."""
    squares: list[float | None] = [None] * n_layers
    for p, s in zip(params, slots, strict=True):
        if s.layer is not None and p.status == "trained" and p.grad_norm is not None:
            squares[s.layer] = (squares[s.layer] or 0.0) + p.grad_norm**2
    return [None if v is None else math.sqrt(v) for v in squares]


def depth_ratio(blocks: list[float | None]) -> float | None:
    """First block's norm over the last block's, among blocks with a positive norm; None with fewer than two."""
    present = [v for v in blocks if v is not None and v > 0]
    return present[0] / present[-1] if len(present) >= 2 else None


def global_norm(params: list[ParamGrad]) -> float | None:
    """The total 2-norm over every gradient, as ``clip_grad_norm_`` computes it; None without any gradient."""
    norms = [p.grad_norm for p in params if p.grad_norm is not None]
    if not norms:
        return None
    if not all(math.isfinite(n) for n in norms):
        return math.nan
    return _root_sum_squares(norms)


def clip_factor(norm: float | None, max_grad_norm: float) -> float | None:
    """What ``clip_grad_norm_`` multiplies every gradient by: min(1, max_norm / (norm + 1e-6))."""
    if norm is None or not math.isfinite(norm):
        return None
    return min(1.0, max_grad_norm / (norm + CLIP_EPS))


def adapter_summary(model: nn.Module, params: list[ParamGrad]) -> dict[str, object] | None:
    """Adapter against base parameters, for a PEFT model; None when there is no adapter parameter."""
    if not any(p.adapter for p in params):
        return None
    configs = getattr(model, "peft_config", None) or {}
    types = sorted({getattr(c.peft_type, "value", str(c.peft_type)) for c in configs.values()})

    def part(adapter: bool) -> dict[str, object]:
        mine = [p for p in params if p.adapter == adapter]
        norms = [p.grad_norm for p in mine if p.grad_norm is not None]
        return {
            "parameters": sum(math.prod(p.shape) for p in mine),
            "trainable_parameters": sum(math.prod(p.shape) for p in mine if p.trainable),
            "grad_norm": _root_sum_squares(norms) if norms else None,
        }

    return {"peft_type": types, "adapter": part(True), "base": part(False)}


# ---------------------------------------------------------------------------------------------------------- checks


def frozen_model(g: GradReport) -> Finding | None:
    """Nothing in the model is trainable."""
    if any(p.trainable for p in g.parameters):
        return None
    return Finding(
        "frozen_model",
        "error",
        None,
        [],
        f"nothing is trainable: all {format_count(len(g.parameters), 'parameter')} have requires_grad=False, so an "
        "optimizer has nothing to update. Usual causes: a PEFT adapter loaded for inference "
        "(PeftModel.from_pretrained without is_trainable=True), model.requires_grad_(False) left on, or a freeze "
        "pattern that matches everything.",
    )


def untrained_parameters(g: GradReport) -> Finding | None:
    """Trainable parameters that receive no gradient, or one that is exactly zero and stays so."""
    none = [p for p in g.parameters if p.status == "no_gradient"]
    zero = [p for p in g.parameters if p.status == "zero_gradient"]
    if not none and not zero:
        return None
    parts = []
    if none:
        parts.append(
            f"no gradient reaches {format_count(len(none), 'trainable parameter')} in "
            f"{name_list(sorted({p.module for p in none}))}: they are not on the path from the loss (a module the "
            "forward never calls, a no_grad or detached section, or reentrant gradient checkpointing with no input "
            "that requires grad: call model.enable_input_require_grads())"
        )
    if zero:
        parts.append(
            f"the gradient of {format_count(len(zero), 'trainable parameter')} in "
            f"{name_list(sorted({p.module for p in zero}))} is exactly zero, and still zero after a step on every "
            "other parameter: weights that cut the path (a LoRA pair with both factors zero, a block whose output "
            "projections are zero) keep them where they are"
        )
    return Finding(
        "untrained_parameters",
        "error",
        None,
        [],
        "; ".join(parts) + ". An optimizer holds them but they never change.",
    )


def nonfinite_gradients(g: GradReport) -> Finding | None:
    """NaN or Inf in the loss or in a parameter gradient."""
    bad = [p for p in g.parameters if p.status == "nonfinite"]
    if math.isfinite(g.loss) and not bad:
        return None
    where = [] if math.isfinite(g.loss) else [f"the loss is {g.loss}"]
    if bad:
        where.append(f"the gradients of {name_list([p.name for p in bad])} hold NaN/Inf")
    return Finding(
        "nonfinite",
        "error",
        None,
        [],
        "; ".join(where) + ". Usual causes: fp16 overflow (try `dtype` float32 or bfloat16), a loss that divides "
        "by zero or takes log(0), NaN weights, or a learning rate that already blew the weights up.",
    )


def depth_gradient(g: GradReport, thresholds: GradThresholds = GradThresholds()) -> Finding | None:
    """``exploding_gradient`` / ``vanishing_gradient``: the first block's norm against the last's, past a ratio."""
    ratio, limit = g.depth_ratio, thresholds.depth_ratio
    if ratio is None or 1 / limit <= ratio <= limit:
        return None
    present = [(i, v) for i, v in enumerate(g.block_grad_norms) if v is not None and v > 0]
    (first, a), (last, b) = present[0], present[-1]
    numbers = f"block {first}: {a:.3g}, block {last}: {b:.3g}, ratio {ratio:.3g} (threshold {limit:g})"
    clip = ""
    if g.clip_factor is not None:
        clip = f"; global norm {g.global_norm:.3g}, clip factor {g.clip_factor:.3g} at max norm {g.max_grad_norm:g}"
    if ratio > limit:
        return Finding(
            "exploding_gradient",
            "warning",
            None,
            [],
            f"the gradient grows {ratio:.3g}× from the last decoder block to the first ({numbers}{clip}). Usual "
            "causes: an init scale far too large (initializer_range), weights already blown up by a high learning "
            "rate, or missing normalization. Clipping hides it by shrinking every update.",
        )
    return Finding(
        "vanishing_gradient",
        "warning",
        None,
        [],
        f"the gradient shrinks {1 / ratio:.3g}× from the last decoder block to the first ({numbers}{clip}): the "
        "lower blocks barely train. Usual causes: post-norm blocks without warm-up, a residual path scaled down, "
        "or saturated activations.",
    )


def grad_findings(g: GradReport, thresholds: GradThresholds = GradThresholds()) -> list[Finding]:
    """Every finding of the parameter-gradient pass; root causes first (nothing trainable, then NaN)."""
    frozen = frozen_model(g)
    if frozen is not None:
        return [frozen]
    problem = nonfinite_gradients(g)
    if problem is not None:
        return [f for f in (problem, untrained_parameters(g)) if f is not None]
    return [f for f in (untrained_parameters(g), depth_gradient(g, thresholds)) if f is not None]
