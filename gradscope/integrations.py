"""Integrations: check the batch a training run really trains on, from inside the run.

    from gradscope.integrations import GradscopeCallback

    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, callbacks=[GradscopeCallback()])
    trainer.train()   # raises gradscope.MaskingError before the first optimizer step if the first batch leaks

How it sees the batch: callbacks are not given the trainer's inputs, so on ``on_train_begin`` the callback puts a
forward pre-hook on the model. The first forward in training mode (the first micro-batch, before any optimizer step)
hands the hook exactly the keyword arguments the trainer passes to ``model(**inputs)``; the hook removes itself, runs
``gradscope.check`` on them with the same model, and lets the trainer's own forward go on. ``on_train_end`` removes
the hook if it never fired.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from gradscope.constants import ROLE_CODES_KEY, ROLE_KEYS
from gradscope.data.roles import TRAIN_ON
from gradscope.data.templates import template_markers
from gradscope.data.tokens import default_end_token_ids
from gradscope.errors import MaskingError
from gradscope.report.check import Report
from gradscope.report.text import format_findings
from gradscope.verbs.check import check

try:
    from transformers import TrainerCallback
except ImportError:  # transformers is a dependency; this only keeps the import honest
    TrainerCallback = object  # type: ignore[assignment,misc]

logger = logging.getLogger("gradscope")

# Forward arguments that select an output path rather than describe the batch. TRL's SFTTrainer calls
# model(..., fused_lm_head=True), which returns per-token log-probabilities without building the logits; the same
# token-mean loss comes from the plain forward, whose logits gradscope reads the gradient from.
_DROPPED_KWARGS = ("fused_lm_head",)


class GradscopeCallback(TrainerCallback):
    """Check the first batch a transformers Trainer (or TRL's SFTTrainer) trains on, before the first optimizer step.

    The check uses the trainer's model and its real inputs (labels included), and the model's own loss. Roles come
    from a ``completion_mask`` / ``assistant_masks`` in the inputs, else from the tokenizer's chat template (its
    assistant markers); without either, the role checks are skipped and the report says so.

    Args:
        fail_on: ``"error"`` (default): raise ``gradscope.MaskingError`` when the batch has an error finding, so the
            run stops before any weight changes; ``"warning"``: on any finding; ``None``: only log.
        train_on: ``all-assistant`` or ``last-assistant``: which assistant turns are completion when roles come from
            the chat template.
        end_token_ids: Tokens that close a completion; by default EOS and the tokenizer's end-of-turn tokens.
        keep_dropout: Leave dropout on during the check.

    Attributes:
        report: The Report of the checked batch, once the first training forward has run.
    """

    def __init__(
        self,
        fail_on: str | None = "error",
        *,
        train_on: str = "all-assistant",
        end_token_ids: frozenset[int] | None = None,
        keep_dropout: bool = False,
    ) -> None:
        if fail_on not in ("error", "warning", None):
            raise ValueError(f"fail_on must be 'error', 'warning' or None, not {fail_on!r}")
        if train_on not in TRAIN_ON:
            raise ValueError(f"train_on must be one of {TRAIN_ON}, not {train_on!r}")
        self.fail_on, self.train_on, self.end_token_ids, self.keep_dropout = fail_on, train_on, end_token_ids, keep_dropout
        self.report: Report | None = None
        self._tokenizer: Any = None
        self._handle: Any = None
        self._running = False

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       processing_class: Any = None, **kwargs: Any) -> None:
        """Hook the model so that its first training forward is checked."""
        self._tokenizer = getattr(processing_class, "tokenizer", processing_class)
        self._remove()
        if model is not None and self.report is None:
            self._handle = model.register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Remove the hook if no training forward ran."""
        self._remove()

    def _remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if self._running or not module.training or "input_ids" not in kwargs:
            return None  # gradscope's own forward, an evaluation, or a call it cannot read
        self._remove()
        self._running = True
        try:
            self.report = self._check(module, kwargs)
        finally:
            self._running = False
        if self.report is not None:
            self._act(self.report)
        return None

    def _check(self, model: nn.Module, inputs: Mapping[str, Any]) -> Report | None:
        batch = {k: v for k, v in inputs.items() if k not in _DROPPED_KWARGS}
        if "labels" not in batch:
            logger.warning(
                "gradscope: the trainer called the model without labels (a compute_loss_func or label smoothing "
                "computes the loss outside it), so the first batch was not checked"
            )
            return None
        ends = self.end_token_ids if self.end_token_ids is not None else default_end_token_ids(model, self._tokenizer)
        if not any(k in batch for k in ROLE_KEYS) and self._tokenizer is not None:
            codes = self._template_roles(batch["input_ids"], frozenset(ends))
            if codes is not None:
                batch[ROLE_CODES_KEY] = codes
        return check(model, batch, tokenizer=self._tokenizer, end_token_ids=ends, keep_dropout=self.keep_dropout)

    def _template_roles(self, input_ids: torch.Tensor, ends: frozenset[int]) -> torch.Tensor | None:
        """Role codes (B, T) read from the chat template's assistant markers, or None without a usable template."""
        if not getattr(self._tokenizer, "chat_template", None):
            return None
        markers = template_markers(self._tokenizer, ends)
        if markers is None:
            return None
        return torch.tensor([markers.roles(row, self.train_on) for row in input_ids.tolist()])

    def _act(self, report: Report) -> None:
        """Log the verdict; raise MaskingError when the findings reach fail_on."""
        summary = report.summary()
        if not report.findings:
            logger.info("gradscope: first batch clean: %d of %d tokens trained", summary["trained_tokens"], summary["tokens"])
            return
        text = format_findings(report.findings)
        logger.warning("gradscope: first batch: %d error(s), %d warning(s)\n%s", summary["errors"], summary["warnings"], text)
        failing = report.errors if self.fail_on == "error" else report.findings if self.fail_on == "warning" else []
        if failing:
            raise MaskingError(
                f"gradscope stopped training before the first optimizer step: the first batch has "
                f"{len(failing)} masking problem(s):\n{format_findings(failing)}\n"
                "(GradscopeCallback(fail_on=None) logs them and lets training go on)",
                report,
            )
