"""The recorded forward: the trainer's call of the model, the hooks' recorder, the loss's logits, and the graph the
core run keeps for the probes (``gradscope.engine.run`` runs it; ``gradscope.engine.rerun`` runs it again)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from gradscope.data.batch import model_inputs
from gradscope.errors import ModelCallError
from gradscope.model.usercode import LossFn, raised_in


@dataclass
class Graph:
    """The core run's forward, still differentiable, for extra backward passes after the core one.

    ``embedding`` is the leaf every backward runs to; ``head_input`` and ``head_output`` are what the output
    embedding (the LM head) received and returned, None when the model has no output embedding module.
    ``loss_grad`` and ``trained`` are what the core backward found, for probes that read it as evidence.
    """

    model: nn.Module
    batch: Mapping[str, torch.Tensor]
    loss_fn: LossFn | None
    embedding: torch.Tensor | None  # (B, T, D); None at the masking-only depth
    head_input: torch.Tensor | None  # (B, T, D)
    head_output: torch.Tensor | None  # (B, T, V)
    logits: torch.Tensor | None  # (B, T, V); None when freed before the probes (forward_backward's loss_graph)
    loss: torch.Tensor  # ()
    loss_grad: torch.Tensor | None = None  # (B, T, D) the core backward's dL/d embedding
    trained: torch.Tensor | None = None  # (B, T) bool on the CPU: dL/dlogits[t] != 0 (logit positions, unshifted)
    rerun: Callable[[], Graph] | None = None
    """Set when the core backward freed the graph (``forward_backward(..., rerun=True)``): runs the forward again
    and returns its graph, for a probe that needs one; ``embedding``, ``head_input``, ``head_output`` and
    ``logits`` are then None."""

    @property
    def device(self) -> torch.device:
        return self.loss.device

    def network(self) -> Graph:
        """The differentiable forward: this one when it was kept, else the forward run again."""
        return self.rerun() if self.rerun is not None else self


def _first_tensor(output: object) -> torch.Tensor | None:
    """The hidden states in a module's output: the tensor itself or the first element of a tuple/ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        output = tuple(output.values())
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


class Recorder:
    """Holds what the hooks capture during one forward and backward."""

    def __init__(self, n_layers: int) -> None:
        self.embedding: torch.Tensor | None = None
        self.head_input: torch.Tensor | None = None
        self.head_output: torch.Tensor | None = None
        self.layer_norms: list[torch.Tensor | None] = [None] * n_layers
        self.gradient_hooks: list[torch.utils.hooks.RemovableHandle] = []

    def embedding_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        # Parameters are frozen, so nothing upstream requires grad: make the embedding output the leaf the
        # backward runs to. The values are untouched.
        if self.embedding is None:
            if not output.requires_grad:
                output = output.detach().requires_grad_(True)
            self.embedding = output
        return output

    def head_hook(self, module: nn.Module, args: tuple, output: object) -> None:
        self.head_output = _first_tensor(output)
        if self.head_input is None and args and isinstance(args[0], torch.Tensor):
            self.head_input = args[0]  # the last hidden state, where the probes' projections start

    def layer_hook(self, index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            hidden = _first_tensor(output)
            if hidden is not None and hidden.requires_grad:
                self.gradient_hooks.append(hidden.register_hook(self._store_norm(index)))

        return hook

    def forget_forward(self) -> None:
        """Forget what the last forward recorded, so that the hooks record the next one."""
        self.embedding = self.head_input = self.head_output = None

    def remove_gradient_hooks(self) -> None:
        """Detach the gradient hooks from the graph, so that later backward passes through it record nothing."""
        for handle in self.gradient_hooks:
            handle.remove()
        self.gradient_hooks.clear()

    def _store_norm(self, index: int) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            norm = grad.detach().float().norm(dim=-1).cpu()  # (B, T)
            self.layer_norms[index] = norm if self.layer_norms[index] is None else self.layer_norms[index] + norm

        return hook


def backward_error(err: BaseException) -> ModelCallError:
    """The backward through the user's model or loss failed: bad input, named (with the user's function it was
    raised in, when it was raised in code outside torch, transformers and gradscope)."""
    where = raised_in(err)
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return ModelCallError(
        f"the backward pass failed{where}: {type(err).__name__}: {first}",
        hint="a custom autograd Function in the loss or model raises in its backward?",
    )


def loss_logits(logits: torch.Tensor, rec: Recorder) -> torch.Tensor:
    """The logits the loss was computed from.

    Under mixed precision accelerate wraps the forward so that it returns its outputs cast to fp32 after the loss
    was computed: ``outputs.logits`` is then a copy outside the loss's graph. The LM head's own output, of which it
    is exactly a dtype copy, is the tensor the loss used.
    """
    head = rec.head_output
    fn = logits.grad_fn
    if head is None or head is logits or fn is None or type(fn).__name__ != "ToCopyBackward0":
        return logits
    source = fn.next_functions[0][0] if fn.next_functions else None
    return head if source is not None and source is head.grad_fn and head.shape == logits.shape else logits


def call_model(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    loss_fn: LossFn | None,
    forward: Callable[..., object] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Call the model as a trainer does and take the loss: ``(logits, scalar loss)``.

    Args:
        model: The causal LM.
        batch: Tensors on the model's device; role tensors are dropped.
        loss_fn: ``fn(logits, labels)``; when given, the model is called without labels. Otherwise ``outputs.loss``.
        forward: Calls the model with the inputs as keywords; ``model`` itself by default (verify passes a
            ``torch.func.functional_call`` here to substitute parameter values).

    Raises:
        ModelCallError: the model or loss fails, or returns no scalar loss.
    """
    inputs = model_inputs(batch)
    labels = inputs.pop("labels") if loss_fn is not None else inputs.get("labels")
    try:
        outputs: Any = (forward or model)(**inputs)
        logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
        loss = loss_fn(logits, cast(torch.Tensor, labels)) if loss_fn is not None else outputs.loss
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError) as err:
        who = "the loss function" if loss_fn is not None else "model(**batch)"
        raise ModelCallError(f"{who} failed: {type(err).__name__}: {err}") from err
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ModelCallError(
            "the model returned no loss"
            if loss is None
            else f"the loss is not a scalar tensor (got {type(loss).__name__})",
            hint="include 'labels' in the batch, or pass `loss` FILE.py:FN returning a scalar tensor",
        )
    return logits, loss.reshape(())
