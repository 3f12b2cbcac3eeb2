"""The verdict on a watched optimizer step: every observed micro-batch of every rank checked with gradscope's own
checks, the token weights of the whole step compared, and one agreed Report on every rank."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from gradscope.checks.masking import analyze
from gradscope.checks.roles import label_facts, labels_evidence, roles_unknown
from gradscope.checks.step import StepTokens, step_scale
from gradscope.checks.structure import mean_weights
from gradscope.constants import IGNORE_INDEX, ROLE_CODES_KEY
from gradscope.data.batch import document_starts, real_tokens
from gradscope.engine.run import Capture
from gradscope.integrations.observe import Observed
from gradscope.report import Finding, Report, SampleReport
from gradscope.tokenizer import Tokenizer
from gradscope.verbs.samples import sample_report, sample_views

STEP_WEIGHT_TOLERANCE = 0.05
"""Token weights within 5% are equal: under bf16 autocast (TRL's default, on the CPU too) the weight read back from a
bf16 gradient scatters by about 2%; the bugs it looks for differ by the ratio of token counts (x1.1 and more)."""

WATCHED_ROLES_HINT = (
    "To give roles: a completion_mask in the trainer's inputs (TRL's completion-only and assistant-only collators "
    "add one; in a loop, with watcher.micro_batch(inputs)); the tokenizer (processing_class on a Trainer, "
    "tokenizer= on StepWatcher) and the dataset rows (train_dataset, dataset= on StepWatcher) with input_ids and "
    "prompt/completion or messages whose tokens are the trainer's; or a tokenizer whose chat template gradscope "
    "can read"
)

UNTRAINED_CHECKS = frozenset({"no_loss", "completion_untrained", "eos_untrained", "turn_end_untrained"})
"""Findings that a token meant to be trained is not: not reported on rows whose loss is zero on purpose."""


@dataclass
class WatchedFinding(Finding):
    """A Finding and where in the step it came from (fields added to the v1 schema)."""

    rank: int | None = None
    micro_batch: int | None = None
    row: int | None = None  # the row within its micro-batch


@dataclass
class WatchedSample(SampleReport):
    """A SampleReport and where in the step it came from; ``read_at`` is ``logits`` or ``lm_head_input``."""

    rank: int = 0
    micro_batch: int = 0
    row: int = 0
    read_at: str = ""
    roles_from: str | None = None


@dataclass
class RankVerdict:
    """What one rank observed, small enough to gather across ranks."""

    rank: int
    samples: list[WatchedSample] = field(default_factory=list)
    findings: list[WatchedFinding] = field(default_factory=list)
    groups: list[tuple[int, int, int, int, float, int]] = field(default_factory=list)  # rank, mb, row, doc, w, n
    weights_comparable: bool = True
    losses: list[float] = field(default_factory=list)
    predicted: int = 0  # positions that predict a real token (what a denominator over attention_mask counts)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def shift(values: torch.Tensor, fill: float) -> torch.Tensor:
    """Move per-logit-position values onto the token they predict (position t + 1)."""
    out = torch.full_like(values, fill)
    out[:, 1:] = values[:, :-1]
    return out


def capture_of(record: Observed, loss: float) -> Capture:
    """The record as the Capture gradscope's checks read (layer norms are not observed: none)."""
    b, t = record.inputs["input_ids"].shape
    assert record.weight is not None and record.grad_norm is not None, "only a record the loss reached is checked"
    assert record.token_loss is not None and record.target is not None, "only a record the loss reached is checked"
    weight = shift(record.weight.float(), 0.0)
    weight[:, 0] = float("nan")
    emb = record.embedding_grad_norm if record.embedding_grad_norm is not None else torch.zeros(b, t)
    grad_norm = shift(record.grad_norm.float(), 0.0)
    return Capture(
        loss=loss,
        token_loss=shift(record.token_loss.float(), float("nan")),
        logit_grad_norm=grad_norm,
        target_id=shift(record.target, -1).long(),
        weight=weight,
        embedding_grad_norm=emb,
        layer_grad_norms=torch.zeros(b, 0, t),
        logits_finite=True,
        grads_finite=record.finite and bool(torch.isfinite(emb).all()),
        loss_uses_logits=True,
    )


def record_batch(record: Observed, codes: torch.Tensor) -> dict[str, Any]:
    """The observed inputs as a gradscope batch: labels from the model call or the trainer's inputs."""
    batch = dict(record.inputs)
    labels = record.context.get("inputs", {}).get("labels")
    if "labels" not in batch and isinstance(labels, torch.Tensor) and labels.shape == batch["input_ids"].shape:
        batch["labels"] = labels.detach().cpu()
    if "labels" not in batch:  # DPO/GRPO-style losses pass none: show what the gradient trained
        trained = shift(cast(torch.Tensor, record.grad_norm), 0.0) > 0  # set on every record the loss reached
        batch["labels"] = torch.where(trained, batch["input_ids"], IGNORE_INDEX)
    batch[ROLE_CODES_KEY] = codes
    return batch


def rank_verdict(
    rank: int,
    records: list[tuple[int, Observed, torch.Tensor, list[str | None]]],
    tokenizer: Tokenizer | None,
    ends: frozenset[int],
    pad_id: int | None,
    compare_weights: bool,
    idle: frozenset[tuple[int, int]] = frozenset(),
    unknown_reason: str | None = None,
    media: frozenset[int] = frozenset(),
) -> RankVerdict:
    """Check one rank's micro-batches.

    Args:
        rank: This process's rank.
        records: (micro-batch, observed forward, role codes (B, T), role source per row), reached ones only.
        tokenizer: Decodes token texts.
        ends: End-token ids.
        pad_id: The pad token id.
        compare_weights: Whether token weights are meant to be equal (token-mean losses; not DPO/GRPO).
        idle: (micro-batch, row) the trainer's loss leaves untrained on purpose (GRPO: advantage 0): findings that
            a trained token is missing are not reported there.
        unknown_reason: Why rows without a role source have none (a ``roles_unknown`` warning per micro-batch
            names them: the step is then not verified).
        media: Image, video and audio placeholder ids (``media_tokens_trained``), as ``check`` reads them.
    """
    out = RankVerdict(rank, weights_comparable=compare_weights)
    for micro, record, codes, sources in records:
        batch = record_batch(record, codes)
        loss = float(record.context.get("loss", float("nan")))
        capture = capture_of(record, 0.0 if math.isnan(loss) else loss)
        starts = document_starts(batch)
        views = sample_views(batch, capture, tokenizer, ends, pad_id, 0, starts, media)
        for finding in analyze(capture, views, batch["labels"]):
            if (micro, finding.sample) in idle and finding.check in UNTRAINED_CHECKS:
                continue
            out.findings.append(WatchedFinding(**vars(finding), rank=rank, micro_batch=micro, row=finding.sample))
        for b, view in enumerate(views):
            sample = sample_report(view, batch, capture, b, sources[b] or "unknown")
            out.samples.append(
                WatchedSample(
                    **vars(sample), rank=rank, micro_batch=micro, row=b, read_at=record.where, roles_from=sources[b]
                )
            )
        unjudged = [b for b, source in enumerate(sources) if source is None]
        unknown = roles_unknown(
            unjudged,
            [unknown_reason],
            noun="row",
            hint=WATCHED_ROLES_HINT,
            evidence=labels_evidence(*label_facts([views[b] for b in unjudged]), noun="row"),
        )
        if unknown is not None:
            out.findings.append(WatchedFinding(**vars(unknown), rank=rank, micro_batch=micro))
        # Weights are compared where the gradient is the loss of the token itself (a wrong target has no such weight).
        trained = (
            (capture.logit_grad_norm > 0) & (capture.target_id == batch["input_ids"]) & real_tokens(batch) & ~starts
        )
        trained[:, 0] = False
        out.predicted += int((real_tokens(batch) & ~starts)[:, 1:].sum())
        for mean, row, doc, count in mean_weights(capture.weight, trained, starts.cumsum(1)):
            out.groups.append((rank, micro, row, doc, mean, count))
        out.losses.append(loss)
    return out


def gather(local: RankVerdict) -> list[RankVerdict]:
    """Every rank's verdict on every rank (one all_gather_object of small objects); just this one when alone."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [local]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, local)
    return everyone


def merge(
    verdicts: list[RankVerdict], model: dict[str, Any], ranks_averaged: bool = True, grad_scale: float = 1.0
) -> Report:
    """One Report of the step: samples numbered in (rank, micro-batch, row) order, findings pointing at them;
    ``ranks_averaged``: the ranks' gradients are averaged (DDP, FSDP), not summed; ``grad_scale``: the factor the
    loop multiplies the gradients by after the backward."""
    report = Report(model=model)
    number: dict[tuple[int | None, int | None, int | None], int] = {}
    for verdict in sorted(verdicts, key=lambda v: v.rank):
        for sample in verdict.samples:
            number[(sample.rank, sample.micro_batch, sample.row)] = sample.index = len(report.samples)
            report.samples.append(sample)
        for finding in verdict.findings:
            if finding.row is not None:
                finding.sample = number[(finding.rank, finding.micro_batch, finding.row)]
            report.findings.append(finding)
        report.losses += verdict.losses
        report.notes += [n for n in verdict.notes if n not in report.notes]
    groups, comparable = [g for v in verdicts for g in v.groups], all(v.weights_comparable for v in verdicts)
    step = step_weights(groups, comparable)
    report.findings += [step] if step is not None else []
    # The scale of a step whose masking is otherwise right: tokens trained toward another target, or at a packed
    # document's start, carry weight that is not counted among the tokens compared.
    scaled = step is None and comparable and groups and min(g[4] for g in groups) > 0 and not report.errors
    scale = step_scale(step_tokens(verdicts, ranks_averaged, grad_scale)) if scaled else None
    report.findings += [WatchedFinding(**vars(scale))] if scale is not None else []
    if not comparable and groups:
        report.notes.append(
            "token weights were not compared, nor the step's scale (step_scale): a preference or RL "
            "loss (DPO, GRPO: advantages, chosen/rejected ids) weighs tokens differently by design"
        )
    return report


def step_tokens(verdicts: list[RankVerdict], ranks_averaged: bool, grad_scale: float = 1.0) -> StepTokens:
    """What the step-scale check reads: the trained tokens' weights and counts over every micro-batch and rank."""
    groups = [g for v in verdicts for g in v.groups]
    micro = max((len({g[1] for g in v.groups}) for v in verdicts), default=0)
    return StepTokens(
        sum(g[4] * g[5] for g in groups) * grad_scale,
        sum(g[5] for g in groups),
        sum(v.predicted for v in verdicts),
        micro,
        len(verdicts),
        ranks_averaged,
    )


def step_weights(groups: list[tuple[int, int, int, int, float, int]], comparable: bool) -> WatchedFinding | None:
    """``uneven_step_weights``: trained tokens of one optimizer step weigh differently in the update.

    The Trainer sums micro-batch gradients and DDP averages ranks, so a token's weight read at its own backward
    is its weight in the update up to one factor shared by the step. A token-mean loss gives every trained token
    the same weight; the level at which weights first differ (sequences, micro-batches, ranks) names the cause.
    """
    if not comparable or len(groups) < 2 or min(g[4] for g in groups) <= 0:
        return None
    low, high = min(groups, key=lambda g: g[4]), max(groups, key=lambda g: g[4])
    if high[4] <= low[4] * (1 + STEP_WEIGHT_TOLERANCE):
        return None
    level, cause = _weight_cause(groups)
    return WatchedFinding(
        "uneven_step_weights",
        "error",
        None,
        [],
        f"trained tokens of the first optimizer step weigh differently in the update: ×{high[4] / low[4]:.2f}, from "
        f"{low[4]:.3g} (rank {low[0]}, micro-batch {low[1]}, row {low[2]}) to {high[4]:.3g} (rank {high[0]}, "
        f"micro-batch {high[1]}, row {high[2]}); they differ across {level}. {cause}",
        rank=high[0] if level == "ranks" else None,
        micro_batch=high[1] if level == "micro-batches" else None,
    )


def _spread(values: list[float]) -> bool:
    return max(values) > min(values) * (1 + STEP_WEIGHT_TOLERANCE)


def _weight_cause(groups: list[tuple[int, int, int, int, float, int]]) -> tuple[str, str]:
    """(level, cause and fix) of uneven weights: the innermost level at which they differ."""
    by_micro: dict[tuple[int, int], list[tuple[float, int]]] = {}
    for rank, micro, _, _, weight, count in groups:
        by_micro.setdefault((rank, micro), []).append((weight, count))
    if any(_spread([w for w, _ in members]) for members in by_micro.values()):
        return "sequences", (
            "The loss is a mean per sequence: each token weighs 1/(its sequence's trained tokens). Use one token "
            "mean over the batch: sum of token losses / num_items_in_batch."
        )
    mean = {key: (members[0][0], sum(n for _, n in members)) for key, members in by_micro.items()}
    ranks = sorted({rank for rank, _ in mean})
    counts = "; ".join(f"rank {r} micro-batch {m}: {n} tokens × {w:.3g}" for (r, m), (w, n) in sorted(mean.items()))
    if any(_spread([w for (r, _), (w, _) in mean.items() if r == rank]) for rank in ranks):
        return "micro-batches", (
            f"Each micro-batch's loss is a mean over its own trained tokens ({counts}), divided by the "
            "accumulation steps (the Trainer's gradient_accumulation_steps): tokens of micro-batches with fewer "
            "trained tokens weigh more (the gradient-accumulation bug of transformers PR #34191). Normalise over "
            "the whole accumulated batch: the sum of token losses / the step's trained tokens (on a Trainer, take "
            "num_items_in_batch in compute_loss_func, or let the model's own loss receive it)."
        )
    return "ranks", (
        f"Each rank normalises by its own trained-token count ({counts}) and DDP averages the ranks' gradients: "
        "tokens of the rank with fewer trained tokens weigh more. Set average_tokens_across_devices=True "
        "(TrainingArguments / SFTConfig), which normalises by the tokens of every rank."
    )
