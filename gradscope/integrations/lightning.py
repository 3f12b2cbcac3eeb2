"""Watch the first optimizer step of a PyTorch Lightning run: an adapter over ``StepWatcher``.

    trainer = lightning.Trainer(..., callbacks=[GradscopeLightningCallback(tokenizer=tokenizer, dataset=rows)])
    trainer.fit(module, loader)   # raises gradscope.MaskingError in on_before_optimizer_step if the step leaks

Each training batch is one micro-batch (``on_train_batch_start`` to ``on_before_backward``), so role tensors in the
batch (``completion_mask``) and RL inputs reach the roles; the verdict comes in ``on_before_optimizer_step``, after
every micro-batch of ``accumulate_grad_batches`` has run its backward and before the optimizer changes a weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradscope.integrations.watch import FailOn, MicroBatch, StepWatcher
from gradscope.modes import TrainOn

try:
    from lightning.pytorch import Callback  # type: ignore[import-not-found]
except ImportError:
    try:
        from pytorch_lightning import Callback
    except ImportError:  # the [lightning] extra is not installed: the class still imports, for the docs
        Callback = object


class GradscopeLightningCallback(Callback):
    """Check the first optimizer step of ``Trainer.fit`` before it changes any weight.

    Args:
        tokenizer: The run's tokenizer (dataset rows, chat template, end tokens).
        dataset: Rows with ``input_ids`` and raw ``prompt``/``completion`` or ``messages``; by default the train
            dataloader's dataset when it has such columns.
        fail_on: ``"error"`` (default), ``"warning"`` or ``None`` (log only).
        train_on: ``all-assistant`` or ``last-assistant``.
        end_token_ids: Tokens that close a completion; by default EOS and the end-of-turn tokens.
        report_path: Where rank 0 writes the report (JSON).

    Attributes:
        watcher: The StepWatcher; ``watcher.report`` is the step's Report once checked.
    """

    def __init__(
        self,
        tokenizer: Any = None,
        dataset: Any = None,
        *,
        fail_on: FailOn = "error",
        train_on: TrainOn = "all-assistant",
        end_token_ids: frozenset[int] | None = None,
        report_path: str | Path | None = None,
    ) -> None:
        self.watcher = StepWatcher(
            tokenizer=tokenizer,
            dataset=dataset,
            fail_on=fail_on,
            train_on=train_on,
            end_token_ids=end_token_ids,
            report_path=report_path,
            name="GradscopeLightningCallback",
        )
        self._micro: MicroBatch | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Attach to the module's causal LM (once: the first optimizer step only)."""
        if self.watcher.dataset is None:
            self.watcher.dataset = _rows_of(getattr(trainer, "train_dataloader", None))
        self.watcher.attach(pl_module)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.watcher.watching:
            self._micro = self.watcher.start_micro_batch(batch if isinstance(batch, dict) else None)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        if self._micro is not None:
            self.watcher.end_micro_batch(self._micro, loss)
            self._micro = None

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """The verdict on every micro-batch of every rank; raises before the optimizer step when the step leaks."""
        self.watcher.check()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.watcher.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.watcher.close()


def _rows_of(loader: Any) -> Any:
    """The train dataloader's dataset when it is rows gradscope can read (a datasets.Dataset or a list of dicts)."""
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "column_names") or isinstance(dataset, list) and dataset and isinstance(dataset[0], dict):
        return dataset
    return None
