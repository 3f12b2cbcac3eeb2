"""Watch the first optimizer step of any training loop: a plain PyTorch loop, accelerate, Lightning, an RL update.

    watcher = StepWatcher(model, tokenizer=tokenizer, dataset=rows)
    for batch in first_step_micro_batches:        # every micro-batch of the accumulation window
        with watcher.micro_batch(batch):           # optional: the inputs the loss sees (role tensors, RL ids)
            loss = compute_loss(model, batch)
        loss.backward()
    watcher.check()                                # raises gradscope.MaskingError before the step if it leaks
    optimizer.step()

or as a context manager around the first step (``with StepWatcher(model, ...) as watcher: ...``: the verdict comes
when the block ends without an exception). Nothing is re-run: hooks (``gradscope.integrations.observe``) see the
loop's own forward and backward of every micro-batch; where the loss enters (the logits, or the LM head's input
when the logits are never built) is found from the backward. ``check`` gives the verdict before the optimizer
step, so a run it stops has its weights unchanged; under torch.distributed every rank checks its own
micro-batches, the verdicts are gathered, and every rank raises the same error. The transformers Trainer callback
and the Lightning callback are adapters over this class.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import torch
from torch import nn

from gradscope.checks.masking import for_trainer
from gradscope.checks.step import step_unobserved
from gradscope.data.roles import RoleSpec
from gradscope.data.token_roles import RoleSources
from gradscope.data.tokens import default_end_token_ids, media_token_ids, resolve_pad_token_id
from gradscope.errors import GradscopeError, MaskingError
from gradscope.integrations.lm import find_causal_lm, model_section
from gradscope.integrations.observe import Observed, Observer
from gradscope.integrations.sources import DatasetRoles, PreferenceRoles, rl_rows, step_roles
from gradscope.integrations.verdict import RankVerdict, WatchedFinding, WatchedSample, gather, merge, rank_verdict
from gradscope.modes import TRAIN_ON, TrainOn
from gradscope.render.sanitize import text_block
from gradscope.report import Report
from gradscope.report.verdict import verdict

logger = logging.getLogger("gradscope")

PREFERENCE_KEYS = ("chosen_input_ids", "rejected_input_ids", "prompt_ids", "completion_ids", "advantages")
"""Loss inputs of preference / RL losses, whose token weights differ on purpose."""

FailOn = Literal["error", "warning"] | None
"""When a watched step stops the run: ``gradscope.modes.FailOn`` or None (only log)."""


class MicroBatch:
    """What the loop tells the watcher about one micro-batch: set ``loss`` to the loss it backpropagates."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.loss: Any = None


class StepWatcher:
    """Check the first optimizer step a training loop really takes, before that step changes any weight.

    Roles come, in order, from RL inputs given to ``micro_batch`` (``prompt_ids`` / ``completion_ids`` /
    ``completion_mask``, ``advantages``, ``tool_mask``), a ``completion_mask`` / ``assistant_masks`` tensor of the
    batch's shape (in the model's call or given to ``micro_batch``), the dataset rows whose ``input_ids`` equal the
    batch's (their raw ``prompt``/``completion`` or ``messages`` re-tokenized with ``tokenizer``), else the
    tokenizer's chat-template markers; rows none of them explains are not judged, and the report says so.

    Args:
        model: The model the loop trains (a DDP / FSDP / PEFT wrapper is looked through); ``attach`` later if None.
        tokenizer: The loop's tokenizer: for the dataset rows, the chat template and the end tokens.
        dataset: Rows with ``input_ids`` and raw ``prompt``/``completion`` or ``messages`` columns (a
            ``datasets.Dataset`` or a list of dicts).
        chat_template: The chat template the data is really rendered with, when it is not the tokenizer's (TRL's
            training template for ``assistant_only_loss``, a collator's ``chat_template``).
        fail_on: ``"error"`` (default): raise ``gradscope.MaskingError`` when the step has an error finding;
            ``"warning"``: on any finding; ``None``: only log.
        train_on: ``all-assistant`` or ``last-assistant``: which assistant turns are completion.
        end_token_ids: Tokens that close a completion; by default EOS and the tokenizer's end-of-turn tokens.
        label_smoothing: The loss's label-smoothing epsilon, so token weights are read exactly.
        report_path: Where rank 0 writes the report (JSON) once the step has been checked.
        rank_reduction: How the ranks' gradients are combined: ``"mean"`` (DDP, FSDP) or ``"sum"``.
        name: How the error message names this watcher in its hint.

    Attributes:
        report: The Report of the first optimizer step, once it has been checked (on every rank).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        tokenizer: Any = None,
        dataset: Any = None,
        chat_template: str | None = None,
        fail_on: FailOn = "error",
        train_on: TrainOn = "all-assistant",
        end_token_ids: frozenset[int] | None = None,
        label_smoothing: float = 0.0,
        report_path: str | Path | None = None,
        rank_reduction: Literal["mean", "sum"] = "mean",
        name: str = "StepWatcher",
    ) -> None:
        if fail_on not in ("error", "warning", None):
            raise ValueError(f"fail_on must be 'error', 'warning' or None, not {fail_on!r}")
        if train_on not in TRAIN_ON:
            raise ValueError(f"train_on must be one of {TRAIN_ON}, not {train_on!r}")
        if rank_reduction not in ("mean", "sum"):
            raise ValueError(f"rank_reduction must be 'mean' or 'sum', not {rank_reduction!r}")
        self.tokenizer, self.dataset, self.fail_on, self.train_on = tokenizer, dataset, fail_on, train_on
        self.chat_template = chat_template
        self.end_token_ids, self.label_smoothing, self.report_path = end_token_ids, label_smoothing, report_path
        self.rank_reduction, self.name = rank_reduction, name
        self.report: Report | None = None
        self.observer: Observer | None = None
        self._micro_batch = 0
        if model is not None:
            self.attach(model)

    @property
    def watching(self) -> bool:
        """True between ``attach`` and the verdict (or ``close``)."""
        return self.observer is not None

    def attach(self, model: nn.Module) -> StepWatcher:
        """Start observing the model's training forwards (once: a checked step is not watched again)."""
        self.close()
        if self.report is None:
            self.observer = Observer(find_causal_lm(model), label_smoothing=float(self.label_smoothing))
            self._micro_batch = 0
        return self

    @contextmanager
    def micro_batch(
        self, inputs: Mapping[str, Any] | None = None, *, num_items_in_batch: Any = None
    ) -> Iterator[MicroBatch]:
        """Mark the forwards inside the block as one micro-batch whose loss sees ``inputs`` (role tensors, labels,
        RL ids and advantages); set ``.loss`` on what it yields to record the loss."""
        micro = self.start_micro_batch(inputs, num_items_in_batch=num_items_in_batch)
        try:
            yield micro
        finally:
            if self.observer is not None:
                self.observer.context = {}
        self.end_micro_batch(micro)

    def start_micro_batch(
        self, inputs: Mapping[str, Any] | None = None, *, num_items_in_batch: Any = None
    ) -> MicroBatch:
        """``micro_batch`` for loops driven by events (callbacks): the forwards from here to ``end_micro_batch``
        are one micro-batch whose loss sees ``inputs``."""
        micro = MicroBatch(self._micro_batch)
        if self.observer is not None:
            self.observer.context = {
                "inputs": dict(inputs or {}),
                "micro_batch": micro.index,
                "num_items_in_batch": num_items_in_batch,
            }
        return micro

    def end_micro_batch(self, micro: MicroBatch, loss: Any = None) -> None:
        """Close the micro-batch ``start_micro_batch`` opened, recording its loss (``loss`` or ``micro.loss``)."""
        observer, loss = self.observer, micro.loss if loss is None else loss
        if observer is None:
            return
        observer.context = {}
        loss = loss[0] if isinstance(loss, tuple) else loss
        if loss is not None:
            for record in observer.records:
                if record.context.get("micro_batch") == micro.index:
                    record.context["loss"] = float(loss.detach())
        self._micro_batch += 1

    def check(self, grad_scale: float = 1.0) -> Report | None:
        """Check every observed micro-batch of every rank, once; raise before the optimizer step when the step
        leaks (per ``fail_on``). Returns the report, or None when nothing is being watched.

        Args:
            grad_scale: The factor the loop multiplies the gradients by after the backward and before the step
                (torchtune's ``scale_grads(model, 1 / num_tokens)``), for the step's scale.
        """
        observer = self.observer
        if observer is None:
            return None
        self.close()
        self.report = self._verdict(observer, grad_scale)
        if self.report_path is not None and _rank() == 0:
            path = Path(self.report_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.report.to_dict(), indent=1))
        self._act(self.report)
        return self.report

    def close(self) -> None:
        """Remove every hook (after the verdict, or when no optimizer step came)."""
        if self.observer is not None:
            self.observer.close()
            self.observer = None

    def __enter__(self) -> StepWatcher:
        if self.observer is None and self.report is None:
            raise ValueError("StepWatcher needs a model: StepWatcher(model, ...) or watcher.attach(model)")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:
            self.check()
        self.close()

    def _verdict(self, observer: Observer, grad_scale: float = 1.0) -> Report:
        """This rank's verdict, gathered with the others' into one Report (an analysis error travels too)."""
        try:
            local = self._rank_verdict(observer)
        except Exception as err:  # noqa: BLE001 - every rank must reach the gather, or the others wait for ever
            local = RankVerdict(_rank(), error=f"{type(err).__name__}: {err}")
        verdicts = gather(local)
        failed = [v for v in verdicts if v.error is not None]
        if failed:
            raise GradscopeError(
                "gradscope could not check the first optimizer step: "
                + "; ".join(f"rank {v.rank}: {v.error}" for v in failed)
            )
        report = merge(
            verdicts, model_section(observer.lm), ranks_averaged=self.rank_reduction == "mean", grad_scale=grad_scale
        )
        samples = [s for s in report.samples if isinstance(s, WatchedSample)]
        report.data = {
            "watched": {
                "ranks": len(verdicts),
                "micro_batches": max((s.micro_batch for s in samples), default=-1) + 1,
                "read_at": sorted({s.read_at for s in samples}),
                "roles_from": sorted({s.roles_from or "not judged" for s in samples}),
            }
        }
        return report

    def _rank_verdict(self, observer: Observer) -> RankVerdict:
        lm, tokenizer = observer.lm, self.tokenizer
        ends = frozenset(self.end_token_ids) if self.end_token_ids is not None else default_end_token_ids(lm, tokenizer)
        spec = RoleSpec(ends, train_on=self.train_on, chat_template=self.chat_template)
        rows = as_dataset(self.dataset)
        dataset = DatasetRoles(rows, tokenizer, spec) if rows is not None else None
        preference = PreferenceRoles(rows)
        sources = RoleSources(
            train_on=self.train_on, chat_template=self.chat_template, dataset=dataset, preference=preference
        )
        notes, idle = [], []
        prepared: list[tuple[int, Observed, torch.Tensor, list[str | None]]] = []
        names: list[str | None]
        rl_seen = False
        failed = [r.error for r in observer.records if r.error is not None]
        if failed:
            raise GradscopeError(f"reading the backward of a training forward failed: {failed[0]}")
        unreached: list[str] = []
        for n, record in enumerate(observer.records):
            if not record.reached:
                unreached.append(record.where or "no logits or last hidden state")
                continue
            micro, rl = record.context.get("micro_batch", n), rl_rows(record.inputs, record.context.get("inputs", {}))
            if rl is not None:  # GRPO-style inputs: prompt_ids + completion_ids, the loss over completion_mask
                codes, names, rl_seen = rl.codes, ["inputs"] * len(rl.codes), True
                idle += [(micro, b) for b in rl.idle]
            else:
                codes, names = step_roles(record.inputs, record.context, tokenizer, ends, sources)
            prepared.append((micro, record, codes, names))
        comparable = not any(k in r.context.get("inputs", {}) for _, r, _, _ in prepared for k in PREFERENCE_KEYS)
        verdict = rank_verdict(
            _rank(),
            prepared,
            tokenizer,
            ends,
            resolve_pad_token_id(lm, tokenizer),
            comparable,
            frozenset(idle),
            unknown_reason(tokenizer),
            media_token_ids(lm, tokenizer),
        )
        for_trainer(
            verdict.findings, "rl" if rl_seen else "preference" if preference.usable or not comparable else "sft"
        )
        if idle:
            notes.append(
                f"{len(idle)} RL row(s) (micro-batch, row) {sorted(idle)[:8]} have advantage 0 (equal rewards "
                "in their group) or an empty completion_mask: the trainer's loss gives them no gradient on "
                "purpose; no_loss, completion_untrained and eos_untrained were not checked there"
            )
        unobserved = step_unobserved(len(observer.records), unreached, observer.eval_forwards)
        if unobserved is not None:  # the step is not verified, never clean
            verdict.findings.append(WatchedFinding(**vars(unobserved), rank=_rank()))
        if dataset is not None and dataset.mismatched:
            notes.append(
                f"gradscope tokenizes train_dataset rows {sorted(set(dataset.mismatched))[:8]} differently "
                "from the trainer: their roles were not read from the dataset"
            )
        verdict.notes += notes
        return verdict

    def _act(self, report: Report) -> None:
        """Log the verdict; raise MaskingError (the same on every rank) when the verdict reaches fail_on."""
        summary, v = report.summary(), verdict(report)
        if v.status == "clean":
            logger.info(
                "gradscope: first optimizer step clean: %d of %d tokens trained",
                summary["trained_tokens"],
                summary["tokens"],
            )
            return
        text = text_block(format_watched(report.findings))  # token texts and names: no control byte, no command
        # not verified is logged as a warning: only fail_on="warning" stops a run gradscope cannot read
        policy = (
            f" (logged as a warning; {self.name}(fail_on='warning') stops on it)"
            if (v.status == "not verified" and self.fail_on != "warning")
            else ""
        )
        logger.warning(
            "gradscope: first optimizer step %s%s: %d error(s), %d warning(s)\n%s",
            v.status,
            policy,
            summary["errors"],
            summary["warnings"],
            text,
        )
        if stops(report, self.fail_on):
            failing = (report.errors if self.fail_on == "error" else report.findings) or report.findings
            ranks = sorted({rank for f in failing if (rank := getattr(f, "rank", None)) is not None})
            where = f" on rank(s) {', '.join(map(str, ranks))}" if ranks else ""
            raise MaskingError(
                f"gradscope stopped training before the first optimizer step: the step has {len(failing)} masking "
                f"problem(s){where}:\n{text_block(format_watched(failing))}\n"
                f"({self.name}(fail_on=None) logs them and lets training go on)",
                report,
            )


def stops(report: Report, fail_on: FailOn) -> bool:
    """The pass/fail policy of a watched step, read from the one verdict (``gradscope.report.verdict``): under
    ``"error"`` a step stops on the status ``errors``; under ``"warning"`` on any status but ``clean``, ``not
    verified`` included; a step that is not verified does not stop a run under ``"error"``."""
    return fail_on is not None and verdict(report).fails(strict=fail_on == "warning", allow_unknown_roles=True)


def as_dataset(rows: Any) -> Any:
    """The rows as a ``datasets.Dataset`` (what the role sources read), or None without rows."""
    if rows is None or hasattr(rows, "column_names"):
        return rows
    from datasets import Dataset

    return Dataset.from_list(list(rows))


def unknown_reason(tokenizer: Any) -> str:
    """Why a row of the watched step has no role source."""
    if tokenizer is None:
        return (
            "no role tensor in the inputs, and no tokenizer was given (processing_class on a Trainer, tokenizer= "
            "on StepWatcher), so neither the dataset rows nor a chat template could be read"
        )
    return (
        "no role tensor in the inputs, no dataset row with prompt/completion or messages whose tokens "
        "match the row's, no chat-template marker in it"
    )


def format_watched(findings: list) -> str:
    """One line per finding, saying where in the step it came from."""
    lines = []
    for f in findings:
        places = (
            ("rank", getattr(f, "rank", None)),
            ("micro-batch", getattr(f, "micro_batch", None)),
            ("sample", f.sample),
            ("row", getattr(f, "row", None)),
        )
        where = [f"{k} {v}" for k, v in places if v is not None]
        at = f"; positions {f.positions}" if f.positions else ""
        lines.append(f"- {f.check} ({', '.join(where) or 'whole step'}{at}): {f.message}")
    return "\n".join(lines)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
