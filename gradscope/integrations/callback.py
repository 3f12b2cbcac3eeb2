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
import json
import logging
import weakref
from pathlib import Path
from typing import Any

from torch import nn

from gradscope.data.roles import TRAIN_ON, RoleSpec
from gradscope.data.tokens import default_end_token_ids, resolve_pad_token_id
from gradscope.errors import GradscopeError, MaskingError
from gradscope.integrations.observe import Observer
from gradscope.integrations.sources import (
    DatasetRoles,
    LazyMarkers,
    PreferenceRoles,
    batch_roles,
    rl_rows,
)
from gradscope.integrations.verdict import RankVerdict, gather, merge, rank_verdict
from gradscope.model.prepare import describe_model
from gradscope.render.sanitize import text_block
from gradscope.report import Report

try:
    from transformers import Trainer, TrainerCallback
except ImportError:  # transformers is a dependency; this only keeps the import honest
    Trainer, TrainerCallback = None, object  # type: ignore[assignment,misc]

logger = logging.getLogger("gradscope")

REPORT_FILE = "gradscope.json"
"""Written to the trainer's output_dir (by rank 0) when the first step has been checked."""

PREFERENCE_KEYS = ("chosen_input_ids", "rejected_input_ids", "prompt_ids", "completion_ids", "advantages")
"""Trainer inputs of preference / RL losses, whose token weights differ on purpose."""


class GradscopeCallback(TrainerCallback):
    """Check the first optimizer step a transformers Trainer really takes, before that step changes any weight.

    Roles come from a ``completion_mask`` / ``assistant_masks`` in the trainer's inputs, else from the trainer's
    train_dataset (raw ``prompt``/``completion`` or ``messages`` columns, re-tokenized and matched by token ids),
    else from the chat template's assistant markers; rows none of them explains are not judged, and the report
    says so.

    Args:
        fail_on: ``"error"`` (default): raise ``gradscope.MaskingError`` when the step has an error finding;
            ``"warning"``: on any finding; ``None``: only log.
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
    """

    def __init__(self, fail_on: str | None = "error", *, train_on: str = "all-assistant",
                 end_token_ids: frozenset[int] | None = None, write_report: bool = True,
                 keep_dropout: bool = False) -> None:
        if fail_on not in ("error", "warning", None):
            raise ValueError(f"fail_on must be 'error', 'warning' or None, not {fail_on!r}")
        if train_on not in TRAIN_ON:
            raise ValueError(f"train_on must be one of {TRAIN_ON}, not {train_on!r}")
        self.fail_on, self.train_on, self.end_token_ids, self.write_report = fail_on, train_on, end_token_ids, write_report
        self.report: Report | None = None
        self._trainer: weakref.ref | None = None
        self._observer: Observer | None = None
        self._tokenizer: Any = None
        self._micro_batch = 0

    @property
    def trainer(self) -> Any:
        return self._trainer() if self._trainer is not None else None

    @trainer.setter
    def trainer(self, trainer: Any) -> None:
        self._trainer = weakref.ref(trainer) if trainer is not None else None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       processing_class: Any = None, **kwargs: Any) -> None:
        """Start observing the model's training forwards (and the trainer's compute_loss when it is found)."""
        self._tokenizer = getattr(processing_class, "tokenizer", processing_class)
        self._close()
        if model is None or self.report is not None or state is not None and state.global_step > 0:
            return
        self.trainer = self.trainer or _calling_trainer()
        smoothing = getattr(getattr(self.trainer, "label_smoother", None), "epsilon", 0.0)
        self._observer = Observer(model, label_smoothing=float(smoothing))
        if self.trainer is not None:
            self._wrap_compute_loss(self.trainer)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Check every observed micro-batch of every rank; raise before the optimizer step when the step leaks."""
        if self._observer is None:
            return
        observer = self._observer
        self._close()
        self.report = self._verdict(observer)
        if self.write_report and args is not None and getattr(args, "output_dir", None) and _rank() == 0:
            path = Path(args.output_dir) / REPORT_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.report.to_dict(), indent=1))
        self._act(self.report)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Remove the hooks if no optimizer step came."""
        self._close()

    def _close(self) -> None:
        if self._observer is not None:
            self._observer.close()
            self._observer = None
        trainer = self.trainer
        if trainer is not None and getattr(trainer.__dict__.get("compute_loss"), "_gradscope", False):
            del trainer.compute_loss  # the class's own method again

    def _wrap_compute_loss(self, trainer: Any) -> None:
        original = trainer.compute_loss
        self._micro_batch = 0

        @functools.wraps(original)
        def compute_loss(model: nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            observer = self._observer
            if observer is None or not model.training:
                return original(model, inputs, *args, **kwargs)
            observer.context = {"inputs": dict(inputs), "micro_batch": self._micro_batch,
                                "num_items_in_batch": kwargs.get("num_items_in_batch")}
            try:
                result = original(model, inputs, *args, **kwargs)
            finally:
                observer.context = {}
            loss = result[0] if isinstance(result, tuple) else result
            for record in observer.records:
                if record.context.get("micro_batch") == self._micro_batch:
                    record.context["loss"] = float(loss.detach())
            self._micro_batch += 1
            return result

        compute_loss._gradscope = True  # type: ignore[attr-defined]
        trainer.compute_loss = compute_loss

    def _verdict(self, observer: Observer) -> Report:
        """This rank's verdict, gathered with the others' into one Report (an analysis error travels too)."""
        try:
            local = self._rank_verdict(observer)
        except Exception as err:  # noqa: BLE001 - every rank must reach the gather, or the others wait for ever
            local = RankVerdict(_rank(), error=f"{type(err).__name__}: {err}")
        verdicts = gather(local)
        failed = [v for v in verdicts if v.error is not None]
        if failed:
            raise GradscopeError("gradscope could not check the first optimizer step: " + "; ".join(
                f"rank {v.rank}: {v.error}" for v in failed))
        report = merge(verdicts, describe_model(observer.lm))
        report.data = {"watched": {
            "ranks": len(verdicts),
            "micro_batches": max((s.micro_batch for s in report.samples), default=-1) + 1,
            "read_at": sorted({s.read_at for s in report.samples}),
            "roles_from": sorted({s.roles_from or "not judged" for s in report.samples}),
        }}
        return report

    def _rank_verdict(self, observer: Observer) -> RankVerdict:
        lm, tokenizer = observer.lm, self._tokenizer
        ends = frozenset(self.end_token_ids) if self.end_token_ids is not None else default_end_token_ids(lm, tokenizer)
        spec = RoleSpec(ends, train_on=self.train_on)
        dataset = DatasetRoles(getattr(self.trainer, "train_dataset", None), tokenizer, spec) if self.trainer else None
        preference = PreferenceRoles(getattr(self.trainer, "train_dataset", None))
        markers, prepared, notes, idle = LazyMarkers(tokenizer, ends), [], [], []
        failed = [r.error for r in observer.records if r.error is not None]
        if failed:
            raise GradscopeError(f"reading the backward of a training forward failed: {failed[0]}")
        for n, record in enumerate(observer.records):
            if not record.reached:
                notes.append(f"a training forward ({record.where or 'no logits or last hidden state'}) never received "
                             "gradient from the loss; it was not checked")
                continue
            micro, rl = record.context.get("micro_batch", n), rl_rows(record.inputs, record.context.get("inputs", {}))
            if rl is not None:  # GRPO-style inputs: prompt_ids + completion_ids, the loss over completion_mask
                codes, sources = rl.codes, ["inputs"] * len(rl.codes)
                idle += [(micro, b) for b in rl.idle]
            else:
                codes, sources = batch_roles(record.inputs, record.context, dataset, markers, self.train_on, preference)
            prepared.append((micro, record, codes, sources))
        comparable = not any(k in r.context.get("inputs", {}) for _, r, _, _ in prepared for k in PREFERENCE_KEYS)
        verdict = rank_verdict(_rank(), prepared, tokenizer, ends, resolve_pad_token_id(lm, tokenizer), comparable,
                               frozenset(idle), _unknown_reason(tokenizer))
        if idle:
            notes.append(f"{len(idle)} RL row(s) (micro-batch, row) {sorted(idle)[:8]} have advantage 0 (equal rewards "
                         "in their group) or an empty completion_mask: the trainer's loss gives them no gradient on "
                         "purpose; no_loss, completion_untrained and eos_untrained were not checked there")
        if not observer.records:
            notes.append("no training forward was observed before the first optimizer step: nothing was checked")
        if dataset is not None and dataset.mismatched:
            notes.append(f"gradscope tokenizes train_dataset rows {sorted(set(dataset.mismatched))[:8]} differently "
                         "from the trainer: their roles were not read from the dataset")
        verdict.notes += notes
        return verdict

    def _act(self, report: Report) -> None:
        """Log the verdict; raise MaskingError (the same on every rank) when the findings reach fail_on."""
        summary = report.summary()
        if not report.findings:
            logger.info("gradscope: first optimizer step clean: %d of %d tokens trained", summary["trained_tokens"],
                        summary["tokens"])
            return
        text = text_block(format_watched(report.findings))  # token texts and names: no control byte, no command
        logger.warning("gradscope: first optimizer step: %d error(s), %d warning(s)\n%s", summary["errors"],
                       summary["warnings"], text)
        failing = report.errors if self.fail_on == "error" else report.findings if self.fail_on == "warning" else []
        if failing:
            ranks = sorted({f.rank for f in failing if getattr(f, "rank", None) is not None})
            where = f" on rank(s) {', '.join(map(str, ranks))}" if ranks else ""
            raise MaskingError(
                f"gradscope stopped training before the first optimizer step: the step has {len(failing)} masking "
                f"problem(s){where}:\n{text_block(format_watched(failing))}\n"
                "(GradscopeCallback(fail_on=None) logs them and lets training go on)",
                report,
            )


def _unknown_reason(tokenizer: Any) -> str:
    """Why a row of the watched step has no role source."""
    if tokenizer is None:
        return ("no role tensor in the inputs, and the Trainer was given no processing_class (tokenizer), so neither "
                "the train_dataset rows nor a chat template could be read")
    return ("no role tensor in the inputs, no train_dataset row with prompt/completion or messages whose tokens "
            "match the row's, no chat-template marker in it")


def format_watched(findings: list) -> str:
    """One line per finding, saying where in the step it came from."""
    lines = []
    for f in findings:
        where = [f"{k} {v}" for k, v in (("rank", getattr(f, "rank", None)), ("micro-batch", getattr(f, "micro_batch", None)),
                                         ("sample", f.sample), ("row", getattr(f, "row", None))) if v is not None]
        at = f"; positions {f.positions}" if f.positions else ""
        lines.append(f"- {f.check} ({', '.join(where) or 'whole step'}{at}): {f.message}")
    return "\n".join(lines)


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


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
