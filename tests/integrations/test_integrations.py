"""GradscopeCallback inside real training runs: TRL's SFTTrainer on the tiny Llama fixture, a couple of steps."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

import gradscope
from fixtures.trainers import sft, train
from gradscope.integrations import GradscopeCallback
from gradscope.model.load import load_model, load_tokenizer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
pytest.importorskip("trl")
pytestmark = pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")

MODEL = FIXTURES / "models/tiny-llama-chat"
CHATS = [json.loads(line) for line in (FIXTURES / "raw/chat.jsonl").read_text().splitlines()]


def sft_run(tmp_path, callback, **options):
    """A fresh copy of the fixture model trained for 2 steps by SFTTrainer; returns (model, trainer, error, changed)."""
    run = train(sft(CHATS, tmp_path, max_steps=2, **options), callback)
    return run.trainer.model, run.trainer, run.error, run.changed


def test_callback_stops_a_run_that_trains_the_prompt(tmp_path):
    callback = GradscopeCallback(fail_on="error")
    model, trainer, error, changed = sft_run(tmp_path, callback, assistant_only_loss=False)
    assert error is not None and error.report is callback.report
    assert str(error).startswith("gradscope stopped training before the first optimizer step")
    assert sorted((f.check, f.sample) for f in callback.report.findings) == [("prompt_leak", 0), ("prompt_leak", 1)]
    assert trainer.state.global_step == 0 and not changed  # stopped before any weight moved
    assert not model._forward_pre_hooks


def test_callback_lets_a_correct_run_train(tmp_path):
    callback = GradscopeCallback(fail_on="error")
    model, trainer, error, changed = sft_run(tmp_path, callback, assistant_only_loss=True)
    assert error is None and trainer.state.global_step == 2 and changed
    report = callback.report
    assert report.findings == [] and report.notes == []  # roles read from the chat template
    roles = [[t.role for t in s.tokens] for s in report.samples]
    assert all("completion" in r and "prompt" in r for r in roles)
    assert not model._forward_pre_hooks


# The hook itself, without a trainer: the fixture model called in training mode as a trainer calls it.


def _hooked(callback):
    model, tokenizer = load_model(MODEL), load_tokenizer(MODEL)
    callback.on_train_begin(None, None, None, model=model, processing_class=tokenizer)
    return model.train(), tokenizer


def _leaky_batch(tokenizer):
    ids = torch.tensor(
        [tokenizer.apply_chat_template(CHATS[1]["messages"], tokenize=True, return_dict=True)["input_ids"]]
    )
    return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


def _step(callback, model, batch):
    """One training forward and backward as a trainer runs them, then the callback's pre-optimizer-step verdict."""
    outputs = model(**batch)
    if outputs.loss is not None:
        outputs.loss.backward()
    callback.on_pre_optimizer_step(None, None, None)
    return outputs


def test_fail_on_none_logs_and_lets_the_forward_go_on(caplog):
    callback = GradscopeCallback(fail_on=None)
    model, tokenizer = _hooked(callback)
    batch = _leaky_batch(tokenizer)
    with caplog.at_level(logging.WARNING, logger="gradscope"):
        outputs = _step(callback, model, batch)
    assert outputs.loss is not None
    assert [f.check for f in callback.report.findings] == ["prompt_leak"]
    assert "prompt_leak" in caplog.text and not model._forward_pre_hooks
    with pytest.raises(gradscope.MaskingError, match="prompt_leak"):
        callback2 = GradscopeCallback(fail_on="warning")
        model2, _ = _hooked(callback2)
        _step(callback2, model2, batch)


def test_a_forward_without_labels_is_not_checked(caplog):
    callback = GradscopeCallback()
    model, tokenizer = _hooked(callback)
    batch = _leaky_batch(tokenizer)
    del batch["labels"]
    _step(callback, model, batch)
    assert callback.report.samples == [] and [f.check for f in callback.report.findings] == ["step_unobserved"]
    assert "never received gradient" in callback.report.findings[0].message
    assert callback.report.summary()["status"] == "not verified"  # nothing was checked: never clean


def test_bad_arguments():
    with pytest.raises(ValueError, match="fail_on"):
        GradscopeCallback(fail_on="always")
    with pytest.raises(ValueError, match="train_on"):
        GradscopeCallback(train_on="everything")
