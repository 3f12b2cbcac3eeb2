"""Read the logits and their gradient chunk by chunk: per-token loss, target, weight, norms."""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 22
"""Largest (positions, V) temporary the logit reductions make: 16 MiB in fp32."""


class LogitStats:
    """What the run needs from the logits: read once after the forward, so the logits need not outlive it.

    After the forward: per-token loss, finiteness, and each position's two most likely tokens with their
    log-probabilities. In the backward, a hook reduces the gradient at the logits, chunk by chunk, to its norm, its
    target and the token's weight (``grad_stats``).
    """

    def __init__(self, logits: torch.Tensor, input_ids: torch.Tensor) -> None:
        self.token_loss, self.top_ids, self.top_logp = read_logits(logits, input_ids)
        self.finite = logits_finite(logits)
        self.grad_norm: torch.Tensor | None = None
        self.target: torch.Tensor | None = None
        self.weight: torch.Tensor | None = None

    def hook(self, grad: torch.Tensor) -> None:
        b, t, v = grad.shape
        norm = torch.empty(b, t, device=grad.device)
        target = torch.empty(b, t, dtype=torch.long, device=grad.device)
        weight = torch.empty(b, t, device=grad.device)
        for i in range(b):
            for rows in position_chunks(t, v):
                stats = grad_stats(grad[i, rows].detach(), self.top_ids[i, rows], self.top_logp[i, rows])
                norm[i, rows], target[i, rows], weight[i, rows] = stats
        self.grad_norm, self.target, self.weight = norm.cpu(), target.cpu(), weight.cpu()


def position_chunks(length: int, vocab: int) -> list[slice]:
    """Slices of positions whose (positions, V) temporaries hold at most CHUNK_ELEMENTS values.

    The logit reductions run when every activation is alive: (T, V) temporaries there would raise the peak memory
    of the whole run (250 MiB each at T = 2048, V = 32000).
    """
    step = max(1, CHUNK_ELEMENTS // max(1, vocab))
    return [slice(start, min(start + step, length)) for start in range(0, length, step)]


def read_logits(logits: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token loss (B, T) on the CPU, NaN at t = 0, and the two most likely tokens at each position with their
    log-probabilities (B, T, 2) on the logits' device, fp32."""
    logits = logits.detach()
    b, t, v = logits.shape
    loss = torch.full((b, t), float("nan"))
    top_logp = torch.empty(b, t, min(2, v), device=logits.device)
    top_ids = torch.empty(b, t, min(2, v), dtype=torch.long, device=logits.device)
    for i in range(b):
        for rows in position_chunks(t, v):
            logp = logits[i, rows].float().log_softmax(dim=-1)  # (chunk, V)
            top_logp[i, rows], top_ids[i, rows] = logp.topk(min(2, v), dim=-1)
            predicted = slice(rows.start + 1, min(rows.stop + 1, t))  # logits[t] predict token t + 1
            next_ids = input_ids[i, predicted, None].to(logp.device)
            loss[i, predicted] = -logp[: len(next_ids)].gather(-1, next_ids).squeeze(-1).cpu()
    return loss, top_ids, top_logp


def token_losses(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """-log p(input_ids[t] | input_ids[:t]) for every t >= 1, NaN at t = 0. (B, T) fp32 on the CPU."""
    return read_logits(logits, input_ids)[0]


def logits_finite(logits: torch.Tensor) -> bool:
    """True when no logit is NaN or +-Inf: their sum is then finite (one reduction, no (B, T, V) mask; a sum of
    finite logits overflows only near 1e38 / (B T V), far beyond what a working model produces)."""
    return bool(torch.isfinite(logits.detach().sum(dtype=torch.float32)))


def logit_grad_stats(logits: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-position norm, target and weight of the loss gradient at the logits of one sample.

    Args:
        logits: (T, V) logits.
        grad: (T, V) dL/dlogits.

    Returns:
        norm (T,), target (T,) with -1 where the gradient is zero, weight (T,), all fp32 / int64.
    """
    top_logp, top_ids = logits.detach().float().log_softmax(dim=-1).topk(min(2, logits.shape[-1]), dim=-1)
    return grad_stats(grad, top_ids, top_logp)


def grad_stats(
    grad: torch.Tensor, top_ids: torch.Tensor, top_logp: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Norm, target and weight of the loss gradient at the logits, given each position's two most likely tokens.

    For cross-entropy the gradient at the logits is ``w * (softmax(logits) - onehot(target))``: the target is its
    most negative entry, and at any other token u it is ``w * p_u``, so ``w = grad_u / p_u``. u is the most likely
    token other than the target, whose gradient entry has the most significant digits (reading w at the target,
    ``w * (p - 1)``, loses them all when p is close to 1).

    Args:
        grad: (T, V) dL/dlogits.
        top_ids: (T, 2) the two most likely tokens at each position.
        top_logp: (T, 2) their log-probabilities.

    Returns:
        norm (T,), target (T,) with -1 where the gradient is zero, weight (T,), all fp32 / int64.
    """
    g = grad.float()
    norm = torch.linalg.vector_norm(g, dim=-1)
    target = g.min(dim=-1).indices  # as argmin, first of ties; 2-4x faster than argmin on the CPU
    second = (top_ids[:, 0] == target) & (top_ids.shape[-1] > 1)
    pick = second.long()[:, None].clamp_max(top_ids.shape[-1] - 1)  # (T, 1): column of u in top_ids
    other = top_ids.gather(-1, pick)
    weight = (g.gather(-1, other).double() / top_logp.gather(-1, pick).double().exp()).squeeze(-1).float()
    trained = norm > 0
    return norm, torch.where(trained, target, -1), torch.where(trained, weight, 0.0)


def shift_to_targets(values: torch.Tensor, fill: float) -> torch.Tensor:
    """Move per-logit values (from logits[t]) onto the token they predict (position t + 1)."""
    out = torch.full_like(values, fill)
    out[:, 1:] = values[:, :-1]
    return out
