"""A few optimizer steps on a copy of the model: the loss curve of ``--overfit``."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from gradscope.engine.forward import call_model
from gradscope.engine.run import training_state
from gradscope.model.usercode import LossFn
from gradscope.modes import Optimizer


def _optimizer(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    # Weight decay off: it would pull the loss of one batch up, and transformers' default is 0 too.
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def loss_curve(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    steps: int,
    lr: float,
    optimizer: Optimizer = "adamw",
    loss_fn: LossFn | None = None,
    keep_dropout: bool = False,
) -> list[float]:
    """Train ``model`` itself for ``steps`` steps on ``batch``; the N + 1 losses (before each step, after the last).

    The caller passes a copy: this updates the weights in place.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(optimizer, params, lr) if params else None
    losses = []
    with training_state(model, keep_dropout=keep_dropout):
        for _ in range(steps):
            _, loss = call_model(model, batch, loss_fn)
            losses.append(float(loss.detach()))
            if opt is None or not loss.requires_grad:
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            losses.append(float(call_model(model, batch, loss_fn)[1]))
    return losses
