"""Finite differences: does autograd's gradient match the derivative of the forward? Central differences decide."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from gradscope.engine.forward import backward_error, call_model
from gradscope.engine.run import training_state
from gradscope.errors import ModelCallError
from gradscope.model.layers import input_embeddings
from gradscope.model.usercode import LossFn
from gradscope.report.weights import DirectionCheck

ScalarFn = Callable[[Sequence[torch.Tensor]], torch.Tensor]
EMBEDDINGS = "input embeddings"
FLOAT32_NOTE = (
    "the model or loss does not compute in float64: checked with float32 steps and tolerance, which catch a wrong "
    "backward only when it is far off"
)


@dataclass(frozen=True)
class Precision:
    """Finite-difference settings for the precision a function is really computed in.

    Attributes:
        name: ``float64`` or ``float32``.
        step: h of the fourth-order central difference along a unit direction.
        tolerance: The largest relative error that counts as agreement.
        floor: Relative errors are taken against at least floor * max(1, |f|), so that derivatives at the level of
            rounding noise are not compared digit by digit.
    """

    name: str
    step: float
    tolerance: float
    floor: float


FLOAT64 = Precision("float64", step=1e-4, tolerance=1e-5, floor=1e-8)
FLOAT32 = Precision("float32", step=1e-2, tolerance=1e-2, floor=1e-3)


def autograd_gradients(fn: ScalarFn, inputs: Sequence[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    """fn at ``inputs`` and autograd's gradient with respect to each (zeros where fn does not depend on it)."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    value = fn(leaves)
    try:
        grads = torch.autograd.grad(value, leaves, allow_unused=True) if value.requires_grad else [None] * len(leaves)
    except Exception as err:  # a custom autograd Function of the user's loss or model raised in its backward
        raise backward_error(err) from err
    return float(value.detach()), [
        torch.zeros_like(x) if g is None else g.detach() for x, g in zip(leaves, grads, strict=True)
    ]


Point = Sequence[torch.Tensor]


def _along(fn: ScalarFn, inputs: Point, index: int, direction: torch.Tensor) -> Callable[[float], float]:
    """t -> fn with input ``index`` moved by t * direction."""

    def f(t: float) -> float:
        with torch.no_grad():
            return float(fn([x.detach() + t * direction if i == index else x.detach() for i, x in enumerate(inputs)]))

    return f


def finite_difference(fn: ScalarFn, inputs: Point, index: int, direction: torch.Tensor, step: float) -> float:
    """The derivative of fn along ``direction`` in input ``index``, by the fourth-order central difference
    (8 (f(h) - f(-h)) - (f(2h) - f(-2h))) / 12h: its error is O(h^4), so h can stay well above rounding noise."""
    f, h = _along(fn, inputs, index, direction), step
    return (8 * (f(h) - f(-h)) - (f(2 * h) - f(-2 * h))) / (12 * h)


def effective_precision(fn: ScalarFn, inputs: Point, grads: Sequence[torch.Tensor], value: float) -> Precision:
    """FLOAT64 when fn resolves a change 1e-9 of its size (far below float32's 6e-8) linearly, else FLOAT32.

    A float64 model is not computed in float64 when its code casts to float32 on the way (norms and losses that
    upcast for half precision): the dtype of the inputs cannot tell, a step this small can.
    """
    if inputs[0].dtype != torch.float64:
        return FLOAT32
    index = next((i for i, g in enumerate(grads) if float(g.norm()) > 0), None)
    if index is None:
        return FLOAT64
    norm = float(grads[index].norm())
    f = _along(fn, inputs, index, grads[index] / norm)
    tau = 1e-9 * max(1.0, abs(value)) / norm
    one, two = f(tau) - value, f(2 * tau) - value
    return FLOAT64 if one != 0 and abs(two / one - 2) < 1e-3 else FLOAT32


def unit_directions(grad: torch.Tensor, count: int, generator: torch.Generator) -> list[tuple[str, torch.Tensor]]:
    """Autograd's gradient direction (when it is not zero), then ``count`` random Gaussian directions, all unit."""
    out = []
    norm = float(grad.norm())
    if norm > 0 and math.isfinite(norm):
        out.append(("gradient", grad / norm))
    for k in range(count):
        d = torch.randn(grad.shape, generator=generator, dtype=torch.float64).to(grad)
        out.append((f"random {k + 1}", d / d.norm()))
    return out


def relative_error(autograd: float, fd: float, scale: float) -> float:
    """|fd - autograd| / max(|fd|, |autograd|, scale); 0 when both are 0."""
    denom = max(abs(fd), abs(autograd), scale)
    if not math.isfinite(denom):
        return math.inf
    return abs(fd - autograd) / denom if denom > 0 else 0.0


def check_gradient(
    fn: ScalarFn,
    inputs: Sequence[torch.Tensor],
    *,
    names: Sequence[str] | None = None,
    directions: int = 2,
    seed: int = 0,
    precision: Precision | None = None,
) -> tuple[float, Precision, list[DirectionCheck]]:
    """Compare autograd's directional derivatives of ``fn`` with finite differences, input by input.

    Args:
        fn: A scalar function of the tensors in ``inputs``.
        inputs: The point to differentiate at.
        names: A name for each input, for the report.
        directions: Random directions per input, after autograd's own gradient direction.
        seed: Seeds the random directions.
        precision: Step and tolerance; by default measured (``effective_precision``).

    Returns:
        fn at ``inputs``, the precision used and one DirectionCheck per input and direction.
    """
    names = list(names) if names is not None else [f"input {i}" for i in range(len(inputs))]
    generator = torch.Generator().manual_seed(seed)
    value, grads = autograd_gradients(fn, inputs)
    precision = precision or effective_precision(fn, inputs, grads, value)
    scale = precision.floor * max(1.0, abs(value))
    checks = []
    for i, (name, grad) in enumerate(zip(names, grads, strict=True)):
        for label, d in unit_directions(grad, directions, generator):
            ad = float((grad * d).sum())
            fd = finite_difference(fn, inputs, i, d, precision.step)
            err = relative_error(ad, fd, scale)
            checks.append(DirectionCheck(name, label, ad, fd, err, err <= precision.tolerance))
    return value, precision, checks


# ----------------------------------------------------------------------------------------------- the model on top


def _cast(batch: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors of the batch (a 4D float attention mask) in the probe's dtype; ids stay integers."""
    return {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in batch.items()}


class KeepFloat64(TorchFunctionMode):
    """Inside, a cast to float32 becomes a cast to float64.

    transformers' RMSNorm and causal-LM loss cast to float32 so that bf16/fp16 models compute them in more
    precision; in a float64 copy that cast goes the other way and rounds every perturbation to float32's 6e-8.
    Casting up instead keeps the whole computation in float64. Only ``Tensor.float()`` and ``Tensor.to(float32)``
    are rewritten; the derivative being checked does not depend on the precision it is computed in.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.float:
            return args[0].to(torch.float64)
        if func is torch.Tensor.to:
            args = tuple(torch.float64 if a is torch.float32 else a for a in args)
            if kwargs.get("dtype") is torch.float32:
                kwargs = {**kwargs, "dtype": torch.float64}
        return func(*args, **kwargs)


def precision_context(model: nn.Module) -> AbstractContextManager:
    return KeepFloat64() if next(model.parameters()).dtype == torch.float64 else nullcontext()


def probe_copy(
    model: nn.Module, batch: Mapping[str, torch.Tensor], loss_fn: LossFn | None
) -> tuple[nn.Module, dict[str, torch.Tensor], list[str]]:
    """A deep copy of the model in float64 when the model and loss run in it, else in float32; its batch; notes.

    Raises:
        ModelCallError: the model or loss fails in float32 too.
    """
    for dtype in (torch.float64, torch.float32):
        probe, cast = copy.deepcopy(model).to(dtype), _cast(batch, dtype)
        try:
            with training_state(probe), torch.no_grad(), precision_context(probe):
                call_model(probe, cast, loss_fn)
        except ModelCallError:
            if dtype == torch.float32:
                raise
            continue
        return probe, cast, [] if dtype == torch.float64 else [FLOAT32_NOTE]
    raise AssertionError("unreachable")


def sample_parameters(model: nn.Module, count: int) -> list[str]:
    """``count`` parameter names spread evenly over the model's order (first is the embedding, last the head):
    among the trainable ones when there are any."""
    named = [(n, p) for n, p in model.named_parameters()]
    pool = [n for n, p in named if p.requires_grad] or [n for n, _ in named]
    if count <= 0 or not pool:
        return []
    if count == 1 or len(pool) == 1:
        return pool[:1]
    picks = sorted({round(i * (len(pool) - 1) / (count - 1)) for i in range(count)})
    return [pool[i] for i in picks]


@contextmanager
def _added_to_embeddings(model: nn.Module, delta: torch.Tensor) -> Iterator[None]:
    """Add ``delta`` (B, T, H) to the input embeddings' output for the forward inside the context."""
    handle = input_embeddings(model).register_forward_hook(lambda m, a, out: out + delta)
    try:
        yield
    finally:
        handle.remove()


def model_loss_fn(
    model: nn.Module, batch: Mapping[str, torch.Tensor], loss_fn: LossFn | None, names: Sequence[str]
) -> ScalarFn:
    """The loss as a function of [embedding perturbation, *parameter values for ``names``]."""

    def fn(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        delta, values = tensors[0], tensors[1:]
        overrides = dict(zip(names, values, strict=True))

        def forward(**inputs: torch.Tensor) -> object:
            return torch.func.functional_call(model, overrides, (), inputs)

        with _added_to_embeddings(model, delta), precision_context(model):
            return call_model(model, batch, loss_fn, forward=forward)[1]

    return fn
