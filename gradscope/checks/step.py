"""Step-level checks of a watched optimizer step: how much the step's trained tokens weigh together.

A token-mean loss over the whole step (every micro-batch, every rank) gives each of its N trained tokens the weight
1/N in the update, so the weights sum to 1. The weights are read from each token's own backward; micro-batch
gradients add up, and DDP / FSDP average the ranks' gradients, so the weight a token has in the update is its read
weight divided by the number of ranks (``ranks_averaged``). Their sum, the step's *scale*, is then 1 for a correct
token mean; a uniform excess or deficit (×GA, ÷ranks, a denominator that counts masked tokens) is a finding.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradscope.report.finding import Finding

STEP_SCALE_TOLERANCE = 0.05
"""A scale within 5% of 1 is a token mean: bf16 autocast scatters read weights by about 2%; the bugs it looks for
are ×GA, ÷ranks, or a denominator off by the masked share of the batch (×0.83 and further)."""


@dataclass(frozen=True)
class StepTokens:
    """What the step-scale check reads of a watched step.

    Attributes:
        weight_sum: Sum of the read weights of the trained tokens (all micro-batches, all ranks), times the factor
            the loop scales the gradients by after the backward, if any.
        trained: Number of trained tokens whose weight was read (N).
        predicted: Positions that predict a real token (real tokens minus each row's first), all micro-batches
            and ranks: what a denominator that counts masked tokens counts.
        micro_batches: Micro-batches per rank in the step (the accumulation factor), at most.
        ranks: Ranks in the step.
        ranks_averaged: Whether the ranks' gradients are averaged (DDP, FSDP) rather than summed.
    """

    weight_sum: float
    trained: int
    predicted: int
    micro_batches: int
    ranks: int
    ranks_averaged: bool = True


def step_scale(step: StepTokens) -> Finding | None:
    """``step_scale``: the step's token weights are all a factor off a token mean over the whole step.

    Call it only where the weights are meant to be equal and are (no ``uneven_step_weights``): it compares their
    common level with 1 / N, N the step's trained tokens.
    """
    if step.trained == 0 or step.weight_sum <= 0:
        return None
    factor = step.weight_sum / (step.ranks if step.ranks_averaged else 1)
    if abs(factor - 1) <= STEP_SCALE_TOLERANCE:
        return None
    normaliser = step.trained / factor
    return Finding(
        "step_scale",
        "error",
        None,
        [],
        f"every trained token of the first optimizer step weighs ×{factor:.3g} of a token mean over the step: the "
        f"update is the loss summed over the step's {step.trained} trained tokens divided by {normaliser:.4g}, not "
        f"by {step.trained} ({step.micro_batches} micro-batch(es) per rank, {step.ranks} rank(s), ranks' gradients "
        f"{'averaged' if step.ranks_averaged else 'summed'}). {scale_cause(factor, step)}",
    )


def _near(factor: float, value: float) -> bool:
    return value > 0 and abs(factor / value - 1) <= STEP_SCALE_TOLERANCE


def scale_cause(factor: float, step: StepTokens) -> str:
    """The likely cause of a step scale ``factor`` and the setting that fixes it."""
    ga, ranks, n = step.micro_batches, step.ranks, step.trained
    if ga > 1 and _near(factor, ga):
        return (
            f"×{ga} = the gradient accumulation steps: each micro-batch's loss is normalised by its own tokens "
            "(or by the whole step's) but not divided by the accumulation steps (transformers #47688, a loss "
            "that ignores num_items_in_batch). Divide the summed token losses by num_items_in_batch, the "
            "trained tokens of the whole accumulated step, or let the trainer divide by "
            "gradient_accumulation_steps."
        )
    if ga > 1 and _near(factor, 1 / ga):
        return (
            f"÷{ga} = the gradient accumulation steps: the loss is divided by the step's tokens and again by "
            "the accumulation steps (unsloth #8261; accelerate's backward divides by gradient_accumulation_steps "
            "too). Divide once: by num_items_in_batch, or multiply the loss by the accumulation steps before "
            "accelerator.backward."
        )
    if ranks > 1 and _near(factor, 1 / ranks):
        return (
            f"÷{ranks} = the ranks: each rank divides by the trained tokens of every rank, and the ranks' "
            "gradients are averaged (DDP, FSDP, context parallelism: Megatron-LM #7513). Multiply the loss by "
            "the world size (transformers does so with average_tokens_across_devices=True)."
        )
    if ranks > 1 and _near(factor, ranks):
        return (
            f"×{ranks} = the ranks: the loss is multiplied by the world size but the ranks' gradients are "
            "summed, or each rank divides by its own tokens only; set average_tokens_across_devices=True and do "
            "not scale the loss by hand."
        )
    if factor < 1 and step.predicted > n and _near(factor, n / step.predicted):
        return (
            f"×{n}/{step.predicted}: the denominator counts every predicted position ({step.predicted}), masked "
            "ones included, not the trained tokens (a mean over attention_mask, not over labels != -100; "
            "trl #6369, miles #2796). Divide by the number of trained tokens (labels != -100)."
        )
    if _near(factor, n):
        return (
            "×N: the loss is a sum of token losses with no normaliser. Divide by the step's trained tokens "
            "(num_items_in_batch)."
        )
    if factor < 1:
        return (
            "The denominator is larger than the step's trained tokens: it counts tokens the loss does not train "
            "(masked, padding or truncated completions, fully masked rows). Divide by the trained tokens."
        )
    return (
        "The denominator is smaller than the step's trained tokens, or the loss is scaled up. Divide the summed "
        "token losses by the step's trained tokens (num_items_in_batch)."
    )


STEP_CHECKS = (step_scale,)
"""Checks of a whole watched step (the per-sample ones are gradscope.checks.masking's)."""


def step_unobserved(observed: int, unreached: list[str], eval_forwards: int = 0) -> Finding | None:
    """``step_unobserved``: the watched step's loss was not seen, so nothing (or part of it) was checked.

    Args:
        observed: Training forwards the watcher saw before the optimizer step.
        unreached: Where each seen forward that the loss's backward never reached was read (``logits``, ...).
        eval_forwards: Grad-enabled forwards the model ran in eval mode (not watched: a loop that forgot
            ``model.train()``; ``from_pretrained`` returns the model in eval mode).
    """
    if observed and not unreached:
        return None
    if not observed and eval_forwards:
        what = (
            f"{eval_forwards} grad-enabled forward(s) ran with the model in eval mode (from_pretrained returns "
            "it so) and no training forward, so nothing was checked: call model.train() before the step's "
            "forwards"
        )
    elif not observed:
        what = (
            "no training forward was observed before the first optimizer step, so nothing was checked: attach "
            "the watcher to the model the loop trains (a wrapper's model is found inside it)"
        )
    else:
        what = (
            f"{len(unreached)} of {observed} training forward(s) never received gradient from the loss before "
            f"the check ({', '.join(sorted(set(unreached)))}), so they were not checked: call loss.backward() "
            "on every micro-batch before check(), and compute the loss from the model's own output"
        )
    return Finding("step_unobserved", "warning", None, [], f"{what}. The step is not verified.")
