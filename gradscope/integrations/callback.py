"""Watch the first optimizer step of a transformers Trainer (or TRL's SFTTrainer, DPOTrainer, ...) from inside it.

    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, callbacks=[GradscopeCallback()])
    trainer.train()   # raises gradscope.MaskingError before the first optimizer step if that step trains wrong tokens

Nothing is re-run: hooks observe the trainer's own forward and backward of every micro-batch of the first optimizer
step (``gradscope.integrations.observe``), and the verdict comes in ``on_pre_optimizer_step``, so a run stopped by
it has its weights unchanged. Callbacks are not handed the trainer, so on ``on_train_begin`` the callback finds the
Trainer that called it on the call stack; through it it sees the inputs ``compute_loss`` gets (role tensors, labels
a ``compute_loss_func`` takes, ``num_items_in_batch``) and the train_dataset (for roles). ``watch(trainer)`` does the
same without the stack lookup. Under torchrun every rank checks its own micro-batches, the verdicts are gathered,
and every rank raises the same error.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from pathlib import Path
from typing import Any

from torch import nn

from gradscope.integrations.sources import rendered_with
from gradscope.integrations.watch import FailOn, StepWatcher, format_watched
from gradscope.modes import TrainOn
from gradscope.report import Report

try:
    from transformers import Trainer, TrainerCallback
except ImportError:  # transformers is a dependency; this only keeps the import honest
    Trainer, TrainerCallback = None, object  # type: ignore[assignment,misc]

REPORT_FILE = "gradscope.json"
"""Written to the trainer's output_dir (by rank 0) when the first step has been checked."""

__all__ = ["REPORT_FILE", "GradscopeCallback", "format_watched", "watch"]


class GradscopeCallback(TrainerCallback):
    """Check the first optimizer step a transformers Trainer really takes, before that step changes any weight: an
    adapter over ``gradscope.integrations.watch.StepWatcher``, given the Trainer's model, processing_class,
    train_dataset, label smoothing and the inputs its ``compute_loss`` sees.

    Roles come from a ``completion_mask`` / ``assistant_masks`` in the trainer's inputs, else from the trainer's
    train_dataset (raw ``prompt``/``completion`` or ``messages`` columns, re-tokenized and matched by token ids),
    else from the chat template's assistant markers; rows none of them explains are not judged, and the report
    says so.

    Args:
        fail_on: ``"error"`` (default): raise ``gradscope.MaskingError`` when the step's verdict is ``errors``
            (``gradscope.report.verdict``); ``"warning"``: on any verdict but ``clean``, ``not verified`` included;
            ``None``: only log. A step that is not verified is logged as a warning, saying so, and does not stop
            training under ``"error"``: stopping a correct run gradscope cannot read would be worse.
        train_on: ``all-assistant`` or ``last-assistant``: which assistant turns are completion when roles come
            from the chat template or from chat rows of the dataset.
        end_token_ids: Tokens that close a completion; by default EOS and the tokenizer's end-of-turn tokens.
        write_report: Write the report to ``output_dir/gradscope.json`` (rank 0).
        keep_dropout: Accepted for compatibility and ignored: the watched step is the trainer's own, dropout
            included (dropout changes activations, not which logits the labels put a loss on).

    Attributes:
        report: The Report of the first optimizer step, once it has been checked (on every rank).
        trainer: The Trainer being watched, once found (held weakly: the callback adds no reference cycle, so a
            finished Trainer is freed when its last reference goes, as it would be without the callback).
        watcher: The StepWatcher that observes the step and gives the verdict.
    """

    def __init__(
        self,
        fail_on: FailOn = "error",
        *,
        train_on: TrainOn = "all-assistant",
        end_token_ids: frozenset[int] | None = None,
        write_report: bool = True,
        keep_dropout: bool = False,
    ) -> None:
        self.watcher = StepWatcher(
            fail_on=fail_on, train_on=train_on, end_token_ids=end_token_ids, name="GradscopeCallback"
        )
        self.write_report = write_report
        self._trainer: weakref.ref[Any] | None = None

    @property
    def report(self) -> Report | None:
        return self.watcher.report

    @property
    def trainer(self) -> Any:
        return self._trainer() if self._trainer is not None else None

    @trainer.setter
    def trainer(self, trainer: Any) -> None:
        self._trainer = weakref.ref(trainer) if trainer is not None else None

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: nn.Module | None = None,
        processing_class: Any = None,
        **kwargs: Any,
    ) -> None:
        """Start observing the model's training forwards (and the trainer's compute_loss when it is found)."""
        self.watcher.tokenizer = getattr(processing_class, "tokenizer", processing_class)
        self._close()
        if model is None or self.report is not None or state is not None and state.global_step > 0:
            return
        self.trainer = self.trainer or _calling_trainer()
        self.watcher.label_smoothing = getattr(getattr(self.trainer, "label_smoother", None), "epsilon", 0.0)
        self.watcher.dataset = getattr(self.trainer, "train_dataset", None)
        self.watcher.chat_template = rendered_with(self.trainer)
        self.watcher.attach(model)
        if self.trainer is not None:
            self._wrap_compute_loss(self.trainer)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Check every observed micro-batch of every rank; raise before the optimizer step when the step leaks."""
        if not self.watcher.watching:
            return
        self._unwrap()
        output_dir = getattr(args, "output_dir", None)
        self.watcher.report_path = Path(output_dir) / REPORT_FILE if self.write_report and output_dir else None
        self.watcher.check()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Remove the hooks if no optimizer step came."""
        self._close()

    def _close(self) -> None:
        self.watcher.close()
        self._unwrap()

    def _unwrap(self) -> None:
        trainer = self.trainer
        if trainer is not None and getattr(trainer.__dict__.get("compute_loss"), "_gradscope", False):
            del trainer.compute_loss  # the class's own method again

    def _wrap_compute_loss(self, trainer: Any) -> None:
        original = trainer.compute_loss

        @functools.wraps(original)
        def compute_loss(model: nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            if not self.watcher.watching or not model.training:
                return original(model, inputs, *args, **kwargs)
            with self.watcher.micro_batch(inputs, num_items_in_batch=kwargs.get("num_items_in_batch")) as micro:
                micro.loss = original(model, inputs, *args, **kwargs)
            return micro.loss

        compute_loss._gradscope = True  # type: ignore[attr-defined]
        trainer.compute_loss = compute_loss


def watch(trainer: Any, **options: Any) -> GradscopeCallback:
    """Add a GradscopeCallback to ``trainer`` (no call-stack lookup needed); returns it.

    Args:
        trainer: A transformers Trainer or a subclass (TRL's trainers).
        **options: GradscopeCallback's arguments.
    """
    callback = GradscopeCallback(**options)
    callback.trainer = trainer
    trainer.add_callback(callback)
    return callback


def _calling_trainer() -> Any:
    """The Trainer whose training loop is calling the callbacks: callback events are not given the trainer, but
    transformers' CallbackHandler is called from the Trainer's own methods, a few frames up."""
    if Trainer is None:
        return None
    frame = inspect.currentframe()
    for _ in range(12):
        frame = frame.f_back if frame is not None else None
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, Trainer):
            return owner
    return None
