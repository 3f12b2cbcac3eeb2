"""Masking checks: small pure functions from what the run captured (plus roles) to findings."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from gradscope.checks.layout import LAYOUT_CHECKS
from gradscope.checks.sample import SampleView
from gradscope.constants import IGNORE_INDEX
from gradscope.data.batch import COMPLETION, PAD, PROMPT
from gradscope.engine.run import Capture
from gradscope.report import catalogue
from gradscope.report.finding import Finding
from gradscope.report.text import format_positions, tokens_word

Check = Callable[[SampleView], "Finding | None"]


def no_loss(s: SampleView) -> Finding | None:
    """No token of the sample is trained; the message names truncation when it removed the whole completion."""
    if s.trained.any():
        return None
    head = f"no token of sample {s.index} is trained: every label is -100, so the sample adds nothing to the loss. "
    if s.completion_cut and not (s.roles == COMPLETION).any():
        cause = (
            f"Truncation did it: the maximum length cut all {s.completion_cut} completion "
            f"{tokens_word(s.completion_cut)}. "
            "Raise max_length, shorten the prompt, or drop the row (TRL drops such rows itself)."
        )
    else:
        cause = (
            "Usual causes: a response template that tokenizes differently in context and is never found, a template "
            "containing the pad/eos id, a chat template without {% generation %} markers (assistant_only_loss), or "
            "truncation that cut the whole completion. Check the template strings against the tokenized text."
        )
    return Finding("no_loss", "error", s.index, [], head + cause)


def completion_truncated(s: SampleView) -> Finding | None:
    """Truncation removed part of the completion: the model trains on an answer that stops mid-way."""
    if not s.completion_cut:
        return None
    kept = int((s.roles == COMPLETION).sum())
    return Finding(
        "completion_truncated",
        "warning",
        s.index,
        [],
        f"the maximum length cut {s.completion_cut} of the {s.completion_cut + kept} completion tokens of sample "
        f"{s.index}: the model trains on part of an answer (keeping the start loses its end and closing token, "
        "keeping the end loses its beginning). Raise max_length or drop rows longer than it.",
    )


def masked_label_trained(s: SampleView) -> Finding | None:
    """A position the labels mask (-100) is trained: the loss does not honour the labels' mask.

    The labels are the pipeline's declared intent and need no roles, so this holds on every route. It is a root
    cause: what the labels say about prompt, padding and end tokens cannot be read from a gradient that ignores them.
    """
    if s.labelled is None:
        return None
    leaked = s.where(s.trained & ~s.labelled)
    if not leaked:
        return None
    return Finding(
        "masked_label_trained",
        "error",
        s.index,
        leaked,
        f"{len(leaked)} {tokens_word(len(leaked))} {format_positions(leaked)} whose label is -100 "
        f"{'is' if len(leaked) == 1 else 'are'} trained: the loss does not honour labels == -100, so every token "
        "the pipeline masked (prompt, padding) is trained anyway. Usual causes: a custom loss or compute_loss_func "
        "without ignore_index=-100 (or one that replaces or clamps -100 to a real token id), a fused or kernel loss "
        "that drops the mask (TRL with use_liger_kernel ignoring assistant_only_loss / completion_only_loss, trl "
        "#3781). Use cross_entropy(..., ignore_index=-100) or weight each token's loss by labels != -100.",
    )


def label_misaligned(s: SampleView) -> Finding | None:
    """A trained token is pushed toward a target other than itself (labels shifted twice, off by one).

    Padding is left to ``pad_leak``: a trained pad is a leak whatever its target.
    """
    wrong = s.where(s.trained & (s.target_id != s.input_ids) & (s.roles != PAD))
    if not wrong:
        return None
    offset = _likely_offset(s, wrong)
    learns = f"position t learns token t{offset:+d}" if offset else "the targets are not the tokens in the input"
    return Finding(
        "label_misaligned",
        "error",
        s.index,
        wrong,
        f"{len(wrong)} trained {tokens_word(len(wrong))} ({format_positions(wrong)}) point at "
        f"the wrong target: {learns}. "
        "Usual cause: labels shifted by the pipeline and shifted again inside the model's loss. Pass labels aligned "
        "with input_ids (labels[t] is token t; transformers' causal-LM loss shifts internally).",
    )


def _likely_offset(s: SampleView, positions: Sequence[int]) -> int:
    """The k for which target(t) == input_ids[t + k] most often, or 0 when no small shift explains them."""
    ids, n = s.input_ids.tolist(), len(s.input_ids)
    best, best_hits = 0, 0
    for k in (1, 2, -1, 3, -2):
        hits = sum(0 <= p + k < n and ids[p + k] == int(s.target_id[p]) for p in positions)
        if hits > best_hits:
            best, best_hits = k, hits
    return best if best_hits * 2 > len(positions) else 0


FIXES = {
    "sft": "the labels copy input_ids instead of masking the prompt; set them to -100 (TRL: "
    "completion_only_loss=True or assistant_only_loss=True)",
    "preference": "the loss's completion mask covers the prompt: a preference loss (DPO) sums log-probabilities over "
    "the chosen and rejected completions only; TRL's DPOTrainer masks the prompt itself, so a custom "
    "collator must set completion_mask to 0 on the prompt",
    "rl": "the loss's completion mask covers the prompt: an RL loss (GRPO) trains the completion_ids only; set "
    "completion_mask to 0 on the prompt",
}
"""prompt_leak's fix when the whole prompt is trained, by the kind of trainer in use (``for_trainer``)."""


def for_trainer(findings: Sequence[Finding], trainer: str) -> None:
    """Name each finding's fix for the trainer in use (``sft``, ``preference``, ``rl``): in place."""
    for f in findings:
        if trainer in FIXES and f.check == "prompt_leak":
            f.message = f.message.replace(FIXES["sft"], FIXES[trainer])


def prompt_leak(s: SampleView) -> Finding | None:
    """A prompt-role token is trained."""
    closing = set(s.closing)
    ids = s.input_ids.tolist()
    prompt = [
        p
        for p in s.where(s.roles == PROMPT)
        if p not in closing and ids[p] not in s.media_token_ids and p not in s.prefill
    ]
    trained = s.trained.tolist()
    leaked = [p for p in prompt if trained[p]]
    if not leaked:
        return None
    if len(leaked) == len(prompt):
        cause = FIXES["sft"]
    elif all(p + 1 < len(s.roles) and s.roles[p + 1] == COMPLETION for p in leaked):
        cause = (
            "the mask boundary is off by a token: the prompt tokenized alone is not a prefix of prompt + "
            "completion; mask by the tokens of the full text, not by the prompt's own length"
        )
    else:
        cause = (
            "part of the prompt is unmasked (a system, user or tool turn, or an earlier turn under a last-turn "
            "policy); set those labels to -100"
        )
    return Finding(
        "prompt_leak",
        "error",
        s.index,
        leaked,
        f"prompt {tokens_word(len(leaked))} {format_positions(leaked)} "
        f"{'is' if len(leaked) == 1 else 'are'} trained: {cause}.",
    )


def pad_leak(s: SampleView) -> Finding | None:
    """A padding position (attention_mask 0) is trained."""
    leaked = s.where(s.trained & (s.roles == PAD))
    if not leaked:
        return None
    return Finding(
        "pad_leak",
        "error",
        s.index,
        leaked,
        f"padding {format_positions(leaked)} (attention_mask 0) is trained: the collator labels padding. "
        "Set labels to -100 where attention_mask is 0 (transformers' and TRL's collators do).",
    )


def completion_untrained(s: SampleView) -> Finding | None:
    """A completion token, other than the end token that closes it, is not trained."""
    closing = set(s.closing)
    missed = [p for p in s.where((s.roles == COMPLETION) & ~s.trained) if p not in closing and p not in s.prefill]
    if not missed:
        return None
    return Finding(
        "completion_untrained",
        "error",
        s.index,
        missed,
        f"completion {tokens_word(len(missed))} {format_positions(missed)} {'is' if len(missed) == 1 else 'are'} not "
        "trained (label -100). Usual causes: the mask ends late or starts after the first response token (a prompt "
        "tokenized alone that is not a prefix of the full text), or a policy that trains only the last turn. "
        "Label every completion token.",
    )


def eos_untrained(s: SampleView) -> Finding | None:
    """The end token (EOS or end-of-turn) that closes a completion is not trained.

    When every closing token is missed but the last one, the finding is ``turn_end_untrained``: the pattern of a
    template that gives each turn's terminator to the next message and only the final turn its EOS.
    """
    missed = [p for p in s.closing if not s.trained[p]]
    if not missed:
        return None
    names = sorted({repr(s.texts[p]) if s.texts[p] is not None else f"id {int(s.input_ids[p])}" for p in missed})
    if s.roles_known and len(s.closing) > 1 and missed == list(s.closing[:-1]):
        return _turn_end_untrained(s, missed, names)
    if any(s.roles[p] == PAD for p in missed):
        cause = (
            "pad_token == eos_token, and the attention_mask and labels were built from ids != pad, so the real end "
            "token is taken for padding and masked. Use a pad token distinct from EOS, or build the masks from the "
            "sequence lengths, not from the token id"
        )
    elif s.pad_token_id is not None and s.pad_token_id in {int(s.input_ids[p]) for p in missed}:
        cause = (
            "pad_token == eos_token, so the collator's padding mask (-100 on every pad id) also masks the real end "
            "token. Use a pad token distinct from EOS, or mask padding by attention_mask, not by token id"
        )
    else:
        cause = (
            "the end-of-turn token falls outside the completion mask (a template that gives it to the next turn, "
            "or truncation). Include the closing token in the completion's labels"
        )
    return Finding(
        "eos_untrained",
        "error",
        s.index,
        missed,
        f"the end {tokens_word(len(missed))} {', '.join(names)} at {format_positions(missed)} closing the completion "
        f"{'is' if len(missed) == 1 else 'are'} not trained: the model will not learn to stop. {cause}.",
    )


def _turn_end_untrained(s: SampleView, missed: list[int], names: list[str]) -> Finding:
    return Finding(
        "turn_end_untrained",
        "error",
        s.index,
        missed,
        f"the end {tokens_word(len(missed))} {', '.join(names)} at {format_positions(missed)} closing the "
        f"{len(missed)} earlier assistant turn(s) {'is' if len(missed) == 1 else 'are'} not trained; only the final "
        "turn's is. The model learns to stop after a last answer but to run on after every other one. Usual "
        "cause: the template or masking gives each turn's terminator to the next message (GLM, Nemotron-style "
        "templates; a per-turn mask that ends before the end-of-turn token) and only the last turn gets its EOS. "
        "Include every assistant turn's closing token in its labels.",
    )


def boundary_leak(s: SampleView) -> Finding | None:
    """The first token of a packed document is trained as the continuation of the previous document."""
    leaked = sorted(p for p in s.document_starts if s.trained[p])
    if not leaked:
        return None
    return Finding(
        "boundary_leak",
        "error",
        s.index,
        leaked,
        f"the first {tokens_word(len(leaked))} of the packed {'document' if len(leaked) == 1 else 'documents'} at "
        f"{format_positions(leaked)} {'is' if len(leaked) == 1 else 'are'} trained as the continuation of the "
        "previous document: the model learns to predict a new document from an unrelated one. Mask labels where "
        "position_ids == 0, the first token of every packed document (TRL's padding-free collator does).",
    )


FUNCTIONS: dict[str, Check] = {
    check.__name__: check
    for check in (
        no_loss,
        masked_label_trained,
        label_misaligned,
        prompt_leak,
        pad_leak,
        completion_untrained,
        eos_untrained,
        completion_truncated,
        boundary_leak,
        *LAYOUT_CHECKS,
    )
}
"""The per-sample check functions by the name their findings carry (``eos_untrained`` also gives
``turn_end_untrained``); the catalogue orders them."""
ROOT_CHECKS: tuple[Check, ...] = tuple(FUNCTIONS[name] for name in catalogue.ROOT_CHECKS)
SAMPLE_CHECKS: tuple[Check, ...] = tuple(
    FUNCTIONS[name] for name in catalogue.SAMPLE_CHECKS if name in FUNCTIONS and name not in catalogue.ROOT_CHECKS
)


def check_sample(s: SampleView) -> list[Finding]:
    """All findings for one sample: a root cause alone, else every role and boundary check that fires."""
    for check in ROOT_CHECKS:
        finding = check(s)
        if finding is not None:
            return [finding]
    return [f for check in SAMPLE_CHECKS if (f := check(s)) is not None]


def nonfinite(capture: Capture) -> Finding | None:
    """NaN or Inf in the loss, the logits or the gradients."""
    where = []
    if capture.loss != capture.loss or abs(capture.loss) == float("inf"):
        where.append(f"the loss is {capture.loss}")
    if not capture.logits_finite:
        where.append("the logits hold NaN/Inf")
    if not capture.grads_finite:
        layers = capture.nonfinite_layers
        where.append("the gradients hold NaN/Inf" + (f" (from layer {layers[-1]} down)" if layers else ""))
    if not where:
        return None
    return Finding(
        "nonfinite",
        "error",
        None,
        [],
        "; ".join(where) + ". Usual causes: fp16 overflow (try `dtype` float32 or bfloat16), a loss that divides by "
        "zero or takes log(0), or NaN weights. Which tokens are trained cannot be read from a non-finite gradient.",
    )


def analyze(capture: Capture, samples: Sequence[SampleView], labels: torch.Tensor) -> list[Finding]:
    """Every finding for one batch.

    A non-finite loss with finite logits and every label -100 is a mean over zero tokens: that is ``no_loss`` for
    each sample, its root cause, rather than ``nonfinite``.
    """
    problem = nonfinite(capture)
    if problem is not None:
        if capture.logits_finite and not (labels != IGNORE_INDEX).any():
            return [_no_loss_nan(s) for s in samples]
        return [problem]
    return [f for s in samples for f in check_sample(s)]


def _no_loss_nan(s: SampleView) -> Finding:
    finding = no_loss(s) or Finding("no_loss", "error", s.index, [], "")
    finding.message = "the loss is NaN, a mean over zero tokens, because " + finding.message
    return finding
