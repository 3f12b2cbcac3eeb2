"""Report sections on the gradient that reaches the weights: grads, overfit and verify."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ParamGrad:
    """One parameter in the parameter-gradient pass.

    Attributes:
        name: As ``model.named_parameters()`` names it.
        module: The module that owns it.
        group: The module group it is reported under (``embedding``, ``layer 0 attention``, ``head``, ...).
        adapter: A PEFT adapter parameter (else a base-model parameter).
        shape: Its shape.
        trainable: ``requires_grad``.
        status: ``trained``, ``no_gradient`` (nothing reached it), ``zero_gradient`` (exactly zero, and still zero
            after one optimizer step), ``nonfinite`` or ``frozen`` (not trainable).
        grad_norm: ||dL/dp||, None when no gradient reached it or it is frozen.
        weight_norm: ||p||.
        sgd_update_ratio: ||lr * g|| / ||p||, SGD's update relative to the weight.
        adam_update_ratio: ||lr * g / (|g| + eps)|| / ||p||, Adam's first update relative to the weight.
        tied_to: Other names of the same tensor (tied embeddings), reported once under ``name``.
    """

    name: str
    module: str
    group: str
    adapter: bool
    shape: list[int]
    trainable: bool
    status: str
    grad_norm: float | None
    weight_norm: float
    sgd_update_ratio: float | None
    adam_update_ratio: float | None
    tied_to: list[str] = field(default_factory=list)


@dataclass
class ModuleGrad:
    """One module group (adapter and base parameters in separate rows): its norms and update ratios.

    Norms and ratios are over its trainable parameters that received a gradient; ``weight_norm`` over all of them.
    """

    name: str
    kind: str
    layer: int | None
    adapter: bool
    modules: list[str]
    parameters: int
    trainable_parameters: int
    grad_norm: float | None
    weight_norm: float
    sgd_update_ratio: float | None
    adam_update_ratio: float | None
    group: str = ""
    """The parameter group the row covers (``name`` without the adapter mark)."""


@dataclass
class GradReport:
    """The parameter-gradient pass: one backward with parameter gradients on one batch.

    Attributes:
        loss: The batch's loss.
        lr: The learning rate the update ratios are computed at.
        max_grad_norm: The clipping threshold the clip factor is computed for.
        global_norm: The norm ``torch.nn.utils.clip_grad_norm_`` computes over every gradient.
        clip_factor: ``min(1, max_grad_norm / (global_norm + 1e-6))``, what clipping multiplies the gradient by.
        depth_ratio: The first decoder block's gradient norm over the last one's (> 1: it grows toward the input).
        block_grad_norms: Gradient norm of each decoder block's trainable parameters (None: none has a gradient).
        modules: Per module group.
        parameters: Per parameter.
        adapter: For a PEFT model: its type and how many parameters are adapter and base, trainable, and their norms.
        notes: What was decided or could not be checked.
    """

    loss: float
    lr: float
    max_grad_norm: float
    global_norm: float | None
    clip_factor: float | None
    depth_ratio: float | None
    block_grad_norms: list[float | None]
    modules: list[ModuleGrad]
    parameters: list[ParamGrad]
    adapter: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class OverfitReport:
    """``--overfit N``: N optimizer steps on the one batch, on a deep copy of the model.

    Attributes:
        steps: N.
        optimizer: ``adamw`` or ``sgd``.
        lr: Learning rate.
        losses: N + 1 losses: before each step, then after the last.
        drop: ``1 - last / first``; None when a loss is not finite.
        dropped: The last loss is at most ``1 - min_drop`` times the first.
        min_drop: The fraction the loss must fall by.
    """

    steps: int
    optimizer: str
    lr: float
    losses: list[float]
    drop: float | None
    dropped: bool
    min_drop: float

    def sentence(self) -> str:
        """The rule and what the loss did, in the words every view shows: it at least halves, or it does not."""
        if self.drop is None:
            return f"the loss does not fall {self.min_drop:.0%} (it went non-finite)"
        moved = f"it {'fell' if self.drop >= 0 else 'rose'} {abs(self.drop):.0%}"
        if self.dropped:
            return (
                f"the loss at least halves ({moved})"
                if self.min_drop == 0.5
                else f"the loss falls {self.min_drop:.0%} ({moved})"
            )
        rule = "does not halve" if self.min_drop == 0.5 else f"does not fall {self.min_drop:.0%}"
        return f"the loss {rule} ({moved}, it must fall {self.min_drop:.0%})"


@dataclass
class DirectionCheck:
    """Autograd's directional derivative against central finite differences, along one unit direction.

    Attributes:
        target: What was perturbed (``input embeddings``, a parameter's name, or an input's name).
        direction: ``gradient`` (along autograd's own gradient) or ``random N``.
        autograd: <grad, d>.
        finite_difference: The derivative along d by the fourth-order central difference.
        relative_error: |fd - autograd| / max(|fd|, |autograd|, floor).
        ok: relative_error <= tolerance.
    """

    target: str
    direction: str
    autograd: float
    finite_difference: float
    relative_error: float
    ok: bool


@dataclass
class VerifyReport:
    """``gradscope verify``: directional derivatives of the loss, autograd against finite differences.

    Attributes:
        dtype: The dtype of the model copy that was checked.
        precision: The precision the loss was found to be computed in (``float64`` or ``float32``), which sets the
            step and the tolerance.
        step: h of the fourth-order central difference.
        tolerance: The largest relative error that counts as agreement.
        loss: The loss of the copy.
        checks: One per target and direction.
        max_relative_error: The largest relative error.
        notes: What limited the check.
    """

    dtype: str
    precision: str
    step: float
    tolerance: float
    loss: float
    checks: list[DirectionCheck]
    max_relative_error: float | None
    notes: list[str] = field(default_factory=list)
