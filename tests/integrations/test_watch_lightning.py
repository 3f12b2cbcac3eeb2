"""GradscopeLightningCallback on a real PyTorch Lightning ``Trainer.fit`` (CPU, the tiny Llama fixture): a correct
run trains; broken ones stop in ``on_before_optimizer_step`` with the weights unchanged."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import gradscope
from fixtures.loops import (
    Step,
    ignores_the_mask,
    micro_batch_mean,
    step_of,
    token_mean,
    varied_rows,
)
from fixtures.trainers import MODEL, PROMPT_COMPLETION, pad_collator, tokenized
from gradscope.integrations.lightning import GradscopeLightningCallback
from gradscope.model.load import load_model, load_tokenizer

pl = pytest.importorskip("pytorch_lightning")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


class CausalLMModule(pl.LightningModule):
    """A LightningModule holding a transformers causal LM, its loss one of test_watch_loops' losses."""

    def __init__(self, loss: Any, step: Step) -> None:
        super().__init__()
        self.model, self.loss, self.step = load_model(MODEL), loss, step
        self.model.train()  # from_pretrained returns eval mode, which Lightning keeps for a submodule

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # Lightning divides the loss by accumulate_grad_batches: a token mean over the step multiplies by it.
        return self.loss(self.model, batch, self.step) * self.step.accumulation

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-2)


def fit(rows: list[dict[str, Any]], loss: Any, accumulation: int = 1, batch_size: int = 2):
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(
        rows[: accumulation * batch_size], batch_size=batch_size, collate_fn=pad_collator
    )
    module = CausalLMModule(loss, step_of(list(loader), accumulation))
    before = [p.detach().clone() for p in module.parameters()]
    callback = GradscopeLightningCallback(tokenizer=load_tokenizer(MODEL), dataset=rows)
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        devices=1,
        accumulate_grad_batches=accumulation,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    error = None
    try:
        trainer.fit(module, loader)
    except gradscope.MaskingError as err:
        error = err
    changed = any(not torch.equal(b, p) for b, p in zip(before, module.parameters(), strict=True))
    return callback, trainer, error, changed


def test_lightning_token_mean_with_accumulation_trains():
    callback, trainer, error, changed = fit(varied_rows(), token_mean, accumulation=4, batch_size=1)
    assert error is None and changed and trainer.global_step == 1
    report = callback.watcher.report
    assert report.findings == [] and report.data["watched"]["micro_batches"] == 4
    assert report.data["watched"]["roles_from"] == ["train_dataset"] and len(report.losses) == 4
    weights = torch.tensor([t.weight for s in report.samples for t in s.tokens if t.trained])
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / len(weights)), rtol=0.03, atol=0)
    assert not callback.watcher.watching and not trainer.lightning_module.model._forward_hooks


@pytest.mark.parametrize(
    "rows, loss, accumulation, expected",
    [
        (tokenized(PROMPT_COMPLETION, mask_prompt=False), token_mean, 1, "prompt_leak"),
        (tokenized(PROMPT_COMPLETION), ignores_the_mask, 1, "masked_label_trained"),
        (varied_rows(), micro_batch_mean, 4, "uneven_step_weights"),
    ],
    ids=["labels_copy_the_prompt", "loss_ignores_the_mask", "per_micro_batch_means"],
)
def test_lightning_broken_steps_stop_before_the_optimizer_step(rows, loss, accumulation, expected):
    batch_size = 1 if accumulation > 1 else 2
    callback, trainer, error, changed = fit(rows, loss, accumulation=accumulation, batch_size=batch_size)
    assert error is not None and not changed and trainer.global_step == 0
    assert {f.check for f in callback.watcher.report.findings} == {expected}
    assert "GradscopeLightningCallback(fail_on=None)" in str(error)
