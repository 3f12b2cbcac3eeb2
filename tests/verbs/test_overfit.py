"""gradscope.overfit: the loss curve against a plain training loop, and the cannot_overfit verdict."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from gradscope.checks.overfit import dropped
from gradscope.verbs.overfit import overfit

MODEL_KEYS = ("input_ids", "attention_mask", "labels")


def _plain_loop(model, batch, steps, make_optimizer):
    """What a user writes: N steps of forward, backward, step on a copy; the N + 1 losses."""
    student = copy.deepcopy(model).train()
    opt = make_optimizer(student.parameters())
    inputs = {k: batch[k] for k in MODEL_KEYS}
    losses = []
    for _ in range(steps):
        loss = student(**inputs).loss
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        losses.append(float(student(**inputs).loss))
    return losses


@pytest.mark.parametrize(
    "name, make_optimizer",
    [
        ("adamw", lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.0)),
        ("sgd", lambda ps: torch.optim.SGD(ps, lr=1e-2)),
    ],
)
def test_loss_curve_matches_a_plain_training_loop(name, make_optimizer, tiny_model, make_batch):
    model = tiny_model("llama")
    report = overfit(model, make_batch(), steps=3, lr=1e-2, optimizer=name)
    assert report.overfit.losses == pytest.approx(_plain_loop(model, make_batch(), 3, make_optimizer), rel=1e-5)
    assert report.overfit.optimizer == name and report.overfit.steps == 3


def test_overfit_drives_the_fixture_models_loss_down_and_leaves_it_untouched(fixture_model, fixture_batch):
    model, _ = fixture_model("models/tiny-llama-chat")
    batch = fixture_batch("llama_clean")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = overfit(model, batch, steps=8, lr=1e-3)
    o = report.overfit
    with torch.no_grad():
        start = float(model(**{k: batch[k] for k in MODEL_KEYS}).loss)
    assert len(o.losses) == 9 and o.losses[0] == pytest.approx(start, rel=1e-6)
    assert o.dropped and o.losses[-1] < 0.5 * o.losses[0]
    assert o.drop == pytest.approx(1 - o.losses[-1] / o.losses[0])
    assert report.findings == []
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_a_learning_rate_of_zero_cannot_overfit(tiny_model, make_batch):
    report = overfit(tiny_model("llama"), make_batch(), steps=2, lr=0.0)
    o = report.overfit
    assert o.losses[0] == o.losses[-1] and not o.dropped
    assert [f.check for f in report.findings] == ["cannot_overfit"]
    assert report.findings[0].severity == "warning"


def test_a_frozen_model_cannot_overfit_and_says_why(tiny_model, make_batch):
    model = tiny_model("llama")
    model.requires_grad_(False)
    report = overfit(model, make_batch(), steps=2, lr=1e-2)
    assert [f.check for f in report.findings] == ["cannot_overfit"]
    assert "nothing is trainable" in report.findings[0].message


@pytest.mark.parametrize(
    "losses, expected",
    [([1.0, 0.7, 0.5], True), ([1.0, 0.2, 0.51], False), ([1.0, math.nan], False), ([2.0, 2.5], False)],
)
def test_dropped_means_at_least_halved(losses, expected):
    assert dropped(losses) is expected
