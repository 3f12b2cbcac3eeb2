"""Run: one forward and one backward of the user's model on the user's batch, with hooks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from gradscope.engine.forward import Graph, Recorder, backward_error, call_model, loss_logits
from gradscope.engine.logits import LogitStats, shift_to_targets
from gradscope.engine.rerun import forward_again
from gradscope.engine.split_backward import backward_through_head, only_through
from gradscope.errors import ModelCallError
from gradscope.model.layers import find_decoder_layers, input_embeddings, output_embeddings
from gradscope.model.usercode import LossFn

_DROPOUT_ATTRS = ("attention_dropout", "attn_dropout", "dropout", "hidden_dropout", "resid_dropout")


@dataclass
class Capture:
    """What one instrumented forward + backward saw. Per-position tensors are (B, T) on the CPU, in fp32.

    Values at position t describe token t as a prediction target, i.e. they come from the logits at t - 1;
    position 0 is never predicted and holds NaN (loss, weight) or 0 (norms) and -1 (target).
    """

    loss: float
    token_loss: torch.Tensor  # (B, T) -log p(input_ids[t] | prefix)
    logit_grad_norm: torch.Tensor  # (B, T) ||dL/dlogits[t-1]||
    target_id: torch.Tensor  # (B, T) argmin of dL/dlogits[t-1]; -1 where that gradient is zero
    weight: torch.Tensor  # (B, T) dL/d(loss of token t), read off the logit gradient
    embedding_grad_norm: torch.Tensor  # (B, T) ||dL/d embedding[t]||
    layer_grad_norms: torch.Tensor  # (B, L, T) ||dL/dh_l[t]|| at each decoder layer's output
    logits_finite: bool
    grads_finite: bool
    loss_uses_logits: bool
    nonfinite_layers: list[int] = field(default_factory=list)
    network_backward: bool = True  # False at the masking-only depth: embedding and layer norms were not computed


@contextmanager
def training_state(model: nn.Module, *, keep_dropout: bool = False) -> Iterator[None]:
    """Run ``model`` as a trainer does, and always put it back as it was.

    Inside the context the model is in training mode and dropout is off unless ``keep_dropout``. On exit
    requires_grad, the training flags and dropout probabilities are restored (requires_grad too, so that a pass
    that freezes parameters inside the context needs no restoring of its own).
    """
    saved_grad = [(p, p.requires_grad) for p in model.parameters()]
    saved_mode = [(m, m.training) for m in model.modules()]
    saved_dropout = [] if keep_dropout else _disable_dropout(model)
    try:
        model.train()
        yield
    finally:
        for p, flag in saved_grad:
            p.requires_grad_(flag)
        for m, flag in saved_mode:
            m.training = flag
        for obj, attr, value in saved_dropout:
            setattr(obj, attr, value)


@contextmanager
def instrumented(model: nn.Module, *, keep_dropout: bool = False) -> Iterator[Recorder]:
    """Prepare ``model`` for a gradscope run and always put it back as it was.

    Inside the context the model is in training mode (as a trainer runs it), every parameter is frozen, dropout is
    off unless ``keep_dropout``, and hooks sit on the input embedding and on each decoder layer. On exit the hooks
    are removed and requires_grad, the training flags and dropout probabilities are restored.
    """
    layers = find_decoder_layers(model)
    recorder = Recorder(len(layers) if layers is not None else 0)
    with training_state(model, keep_dropout=keep_dropout):
        handles = [input_embeddings(model).register_forward_hook(recorder.embedding_hook)]
        head = output_embeddings(model)
        if isinstance(head, nn.Module):
            handles.append(head.register_forward_hook(recorder.head_hook))
        if layers is not None:
            handles += [layer.register_forward_hook(recorder.layer_hook(i)) for i, layer in enumerate(layers)]
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            yield recorder
        finally:
            for h in handles:
                h.remove()


def _disable_dropout(model: nn.Module) -> list[tuple[object, str, float]]:
    """Set every dropout probability to 0 (modules and the float attributes attention code reads).

    Returns what was changed, to be restored.
    """
    changed: list[tuple[object, str, float]] = []
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            changed.append((module, "p", module.p))
            module.p = 0.0
        for attr in _DROPOUT_ATTRS:
            value = module.__dict__.get(attr)
            if isinstance(value, float) and value > 0:
                changed.append((module, attr, value))
                setattr(module, attr, 0.0)
    return changed


def forward_backward(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    loss_fn: LossFn | None = None,
    keep_dropout: bool = False,
    after_backward: Callable[[Graph], None] | None = None,
    loss_graph: bool = True,
    rerun: bool = False,
) -> Capture:
    """Run ``model(**batch)``, take the loss, and backpropagate it to the input embeddings with hooks.

    Args:
        model: A causal LM (``*ForCausalLM``); it is left as it was found.
        batch: Tensors on the model's device, ``labels`` included; role tensors are not passed to the model.
        loss_fn: ``fn(logits, labels) -> scalar``; when given, the model is called without labels and this computes
            the loss, as a trainer with a custom ``compute_loss`` does. Otherwise the model's own ``outputs.loss``.
        keep_dropout: Leave dropout on (the report is then not deterministic).
        after_backward: Called with the still differentiable forward once the core backward is done and its
            hooks are removed, inside the same model state (training mode, dropout off, parameters frozen).
        loss_graph: Keep the loss -> logits part of the graph for ``after_backward`` (the accumulation probe
            reads it). When False and the loss reaches the network only through the logits, the logits and the
            loss's saved tensors are freed before the backward through the network; ``Graph.logits`` is then None.
        rerun: Free the graph in the core backward, as a plain training step does, and give ``after_backward`` a
            Graph without it whose ``rerun`` runs the forward again, for probes that need it only sometimes (the
            windows, where the screen fires). Ignored with ``keep_dropout``: a second forward would drop other units.

    Returns:
        The captured per-position quantities.

    Raises:
        ModelCallError: the model or loss fails on this batch, or the loss does not flow through the logits.
    """
    with instrumented(model, keep_dropout=keep_dropout) as rec:
        logits, loss = call_model(model, batch, loss_fn)
        logits = loss_logits(logits, rec)
        stats = LogitStats(logits, batch["input_ids"])
        keep_graph = after_backward is not None and not (rerun and not keep_dropout)
        differentiable = rec.embedding is not None and logits.requires_grad
        backward = loss.requires_grad and differentiable
        reentrant = backward and reentrant_checkpointing(model)
        split = keep_graph and not loss_graph and backward and not reentrant and _splittable(loss, logits, rec)
        if backward and not split:
            rec.gradient_hooks.append(logits.register_hook(stats.hook))
        if not keep_graph:
            # Freed before the backward (unless the loss saved them), as in a step that keeps only the loss.
            rec.head_input = rec.head_output = None
            del logits
        loss_uses_logits = False
        embedding_grad = None
        if split:
            head_input = cast(torch.Tensor, rec.head_input)  # split: the head's and the embedding's hooks fired
            embedding = cast(torch.Tensor, rec.embedding)
            try:
                embedding_grad = backward_through_head(loss, logits, head_input, embedding, stats.hook)
            except Exception as err:  # a custom autograd Function of the user's loss or model raised in its backward
                raise backward_error(err) from err
            logits = rec.head_output = None  # type: ignore[assignment]  # freed; the probes start at the head's input
        elif backward:
            embedding = cast(torch.Tensor, rec.embedding)  # backward: the embedding hook fired
            embedding_grad = _gradient_at(loss, embedding, reentrant=reentrant, retain_graph=keep_graph)
        if backward:
            loss_uses_logits = stats.grad_norm is not None
        if loss.requires_grad and not loss_uses_logits:
            raise ModelCallError(
                "the loss does not flow through outputs.logits, so gradscope cannot read which tokens it trains",
                hint="a fused loss that skips the logits? pass `loss`, a function of (logits, labels)",
            )
        capture = build_capture(batch, loss, stats, embedding_grad, rec)
        if after_backward is not None and differentiable:
            rec.remove_gradient_hooks()
            trained = stats.grad_norm > 0 if stats.grad_norm is not None else None
            if keep_graph:
                after_backward(
                    Graph(
                        model,
                        batch,
                        loss_fn,
                        rec.embedding,
                        rec.head_input,
                        rec.head_output,
                        logits,
                        loss,
                        embedding_grad,
                        trained,
                    )
                )
            else:
                rec.forget_forward()
                after_backward(
                    Graph(
                        model,
                        batch,
                        loss_fn,
                        None,
                        None,
                        None,
                        None,
                        loss.detach(),
                        embedding_grad,
                        trained,
                        rerun=lambda: forward_again(model, batch, loss_fn, rec),
                    )
                )
        return capture


def _splittable(loss: torch.Tensor, logits: torch.Tensor, rec: Recorder) -> bool:
    """The probes can start at the LM head's input (one vector per logits position) and the loss reaches the
    network only through the logits, so its backward can be taken apart (``backward_through_head``)."""
    head_input = rec.head_input
    aligned = head_input is not None and head_input.requires_grad and head_input.shape[:-1] == logits.shape[:-1]
    return aligned and rec.embedding is not None and only_through(loss, logits, rec.embedding)


def reentrant_checkpointing(model: nn.Module) -> bool:
    """True when a layer runs under ``torch.utils.checkpoint`` with use_reentrant=True (transformers keeps the
    checkpoint function, a partial, on each checkpointed layer; torch's own default is reentrant)."""
    for module in model.modules():
        function = getattr(module, "_gradient_checkpointing_func", None)
        if function is not None and getattr(module, "gradient_checkpointing", False):
            if getattr(function, "keywords", {}).get("use_reentrant", True):
                return True
    return False


def _gradient_at(
    loss: torch.Tensor, embedding: torch.Tensor, *, reentrant: bool, retain_graph: bool = False
) -> torch.Tensor | None:
    """dL/d(embedding output). ``autograd.grad`` computes only what leads there; reentrant checkpointing refuses it,
    so there a plain backward fills ``.grad`` (every parameter is frozen: the embedding output is the only leaf
    that requires grad)."""
    if not reentrant:
        try:
            return torch.autograd.grad(loss, embedding, allow_unused=True, retain_graph=retain_graph)[0]
        except RuntimeError as err:
            if "use_reentrant=True" not in str(err):
                raise backward_error(err) from err
            raise ModelCallError(
                "the model's own code checkpoints its layers with use_reentrant=True, which allows no partial backward",
                hint="enable checkpointing with transformers' gradient_checkpointing_enable(), "
                "or use use_reentrant=False",
            ) from err
        except Exception as err:  # a custom autograd Function of the user's loss or model raised in its backward
            raise backward_error(err) from err
    embedding.retain_grad()
    try:
        loss.backward(retain_graph=retain_graph)
    except Exception as err:
        raise backward_error(err) from err
    return embedding.grad


def build_capture(
    batch: Mapping[str, torch.Tensor],
    loss: torch.Tensor,
    stats: LogitStats,
    embedding_grad: torch.Tensor | None,
    rec: Recorder,
) -> Capture:
    ids = batch["input_ids"]
    b, t = ids.shape
    zeros = torch.zeros(b, t)
    grad_norm = shift_to_targets(stats.grad_norm, 0.0) if stats.grad_norm is not None else zeros
    target = shift_to_targets(stats.target, -1).long() if stats.target is not None else torch.full((b, t), -1)
    weight = shift_to_targets(stats.weight, 0.0) if stats.weight is not None else zeros
    weight[:, 0] = float("nan")
    emb = embedding_grad.detach().float().norm(dim=-1).cpu() if embedding_grad is not None else zeros
    layers = [n if n is not None else zeros for n in rec.layer_norms]
    layer_norms = torch.stack(layers, dim=1) if layers else torch.zeros(b, 0, t)
    nonfinite_layers = [i for i, n in enumerate(layers) if not torch.isfinite(n).all()]
    grads_finite = bool(torch.isfinite(grad_norm).all() and torch.isfinite(emb).all()) and not nonfinite_layers
    return Capture(
        loss=float(loss.detach()),
        token_loss=stats.token_loss,
        logit_grad_norm=grad_norm,
        target_id=target,
        weight=weight,
        embedding_grad_norm=emb,
        layer_grad_norms=layer_norms,
        logits_finite=stats.finite,
        grads_finite=grads_finite,
        loss_uses_logits=stats.grad_norm is not None,
        nonfinite_layers=nonfinite_layers,
    )
