"""StepWatcher around the first optimizer step of loops without a Trainer: a plain PyTorch loop and an accelerate
loop with ``accelerator.accumulate``. Each correct loop trains; each broken one stops before the first optimizer step
with the weights unchanged; a uniformly mis-scaled step gets ``step_scale`` with its factor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

import gradscope
from fixtures.loops import (
    Loss,
    accumulation_inflated,
    divided_twice,
    equal_rows,
    ignores_the_mask,
    micro_batch_mean,
    over_every_position,
    prompt_completion_rows,
    step_of,
    token_mean,
    varied_rows,
)
from fixtures.trainers import MODEL, pad_collator
from gradscope.integrations import StepWatcher
from gradscope.model.load import load_model, load_tokenizer
from gradscope.render.check import model_line
from gradscope.report.verdict import headline, verdict

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@dataclass
class LoopRun:
    watcher: StepWatcher
    error: gradscope.MaskingError | None
    changed: bool

    @property
    def checks(self) -> list[str]:
        return sorted({f.check for f in self.watcher.report.findings})


def plain_loop(
    rows: list[dict[str, Any]],
    loss: Loss,
    accumulation: int = 1,
    batch_size: int = 2,
    dataset_rows: list[dict[str, Any]] | None = None,
    **options: Any,
) -> LoopRun:
    """One optimizer step of a plain PyTorch loop over ``rows``, watched as the module docstring of
    gradscope.integrations.watch shows."""
    torch.manual_seed(0)
    model, tokenizer = load_model(MODEL), load_tokenizer(MODEL)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    batches = [pad_collator(rows[i : i + batch_size]) for i in range(0, batch_size * accumulation, batch_size)]
    step = step_of(batches, accumulation)
    dataset = rows if dataset_rows is None else dataset_rows
    watcher, error = StepWatcher(model, tokenizer=tokenizer, dataset=dataset, **options), None
    try:
        for batch in batches:
            loss(model, batch, step).backward()
        watcher.check()
        optimizer.step()
    except gradscope.MaskingError as err:
        error = err
    changed = any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    return LoopRun(watcher, error, changed)


def assert_trains(run: LoopRun) -> None:
    __tracebackhide__ = True
    assert run.error is None, str(run.error)
    assert run.changed and run.watcher.report.findings == [] and run.watcher.report.summary()["verified"]
    assert not run.watcher.watching


def assert_stops(run: LoopRun, expected: list[str]) -> None:
    __tracebackhide__ = True
    assert run.error is not None, "the loop was not stopped"
    assert not run.changed and run.error.report is run.watcher.report
    assert run.checks == sorted(expected), run.error
    assert "StepWatcher(fail_on=None)" in str(run.error)


# --- a plain PyTorch loop ------------------------------------------------------------------------------------------


def test_plain_loop_token_mean_trains():
    run = plain_loop(prompt_completion_rows(), token_mean)
    assert_trains(run)
    report = run.watcher.report
    assert report.data["watched"]["roles_from"] == ["train_dataset"] and report.data["watched"]["read_at"] == ["logits"]
    weights = torch.tensor([t.weight for s in report.samples for t in s.tokens if t.trained])
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / len(weights)), rtol=0.03, atol=0)


def test_plain_loop_labels_that_copy_the_prompt_stop():
    assert_stops(plain_loop(prompt_completion_rows(mask_prompt=False), token_mean), ["prompt_leak"])


def test_plain_loop_loss_that_ignores_the_mask_stops():
    assert_stops(plain_loop(prompt_completion_rows(), ignores_the_mask), ["prompt_leak"])


def test_plain_loop_per_micro_batch_means_under_accumulation_stop():
    run = plain_loop(varied_rows(), micro_batch_mean, accumulation=4, batch_size=1)
    assert_stops(run, ["uneven_step_weights"])
    assert run.watcher.report.data["watched"]["micro_batches"] == 4
    assert "the Trainer divides" not in str(run.error)  # a plain loop has no Trainer: the fix is the loop's own
    assert "the sum of token losses / the step's trained tokens" in str(run.error)


def test_plain_loop_accumulation_with_a_step_token_mean_trains():
    run = plain_loop(varied_rows(), token_mean, accumulation=4, batch_size=1)
    assert_trains(run)
    assert run.watcher.report.data["watched"]["micro_batches"] == 4


@pytest.mark.parametrize(
    "loss, factor, cause",
    [
        (accumulation_inflated, "×2 of a token mean", "×2 = the gradient accumulation steps"),
        (divided_twice, "×0.5 of a token mean", "÷2 = the gradient accumulation steps"),
    ],
)
def test_plain_loop_mis_scaled_accumulation_gets_step_scale(loss, factor, cause):
    run = plain_loop(equal_rows(), loss, accumulation=2, batch_size=2)
    assert_stops(run, ["step_scale"])
    assert factor in str(run.error) and cause in str(run.error)


def test_plain_loop_denominator_counting_masked_tokens_gets_step_scale():
    rows = equal_rows()
    run = plain_loop(rows, over_every_position, accumulation=2, batch_size=2)
    assert_stops(run, ["step_scale"])
    # Independent: the factor is the trained tokens over the predicted positions the denominator counted.
    step = step_of([pad_collator(rows[0:2]), pad_collator(rows[2:4])], 2)
    assert step.positions > step.tokens
    assert f"×{step.tokens}/{step.positions}" in str(run.error)
    assert f"×{step.tokens / step.positions:.3g} of a token mean" in str(run.error)


@pytest.mark.parametrize(
    "train, backward, cause",
    [
        (False, True, "grad-enabled forward(s) ran with the model in eval mode"),
        (True, False, "never received gradient from the loss"),
    ],
)
def test_a_step_with_nothing_checked_is_not_verified(train, backward, cause):
    """from_pretrained returns the model in eval mode: a loop that forgets model.train(), or checks before its
    backward, has its forwards unread; the step is then not verified, never clean, though its labels leak."""
    torch.manual_seed(0)
    model, tokenizer, rows = load_model(MODEL), load_tokenizer(MODEL), prompt_completion_rows(mask_prompt=False)
    model.train(train)
    batches = [pad_collator(rows[i : i + 1]) for i in range(len(rows))]
    step = step_of(batches, len(batches))
    watcher = StepWatcher(model, tokenizer=tokenizer, dataset=rows)
    for batch in batches:
        loss = token_mean(model, batch, step)
        if backward:
            loss.backward()
    report = watcher.check()
    assert report is not None and report.samples == []
    assert verdict(report).status == "not verified" and not report.summary()["verified"]
    assert [f.check for f in report.findings] == ["step_unobserved"] and cause in report.findings[0].message
    assert "nothing was checked" in headline(report)[2] or "not checked" in headline(report)[2]
    assert headline(report)[2].endswith("(step_unobserved)")
    assert model_line(report).endswith("; loss outputs.loss: none observed")  # no loss: said, not left blank
    with pytest.raises(gradscope.MaskingError, match="nothing was checked"):
        StepWatcher(model, tokenizer=tokenizer, fail_on="warning").check()


def test_rows_without_input_ids_leave_the_step_not_verified_and_say_how_a_loop_gives_roles():
    """dataset= rows with prompt/completion but no input_ids cannot be matched to the step's rows: not verified,
    and the hint names StepWatcher's own arguments, not only a Trainer's."""
    rows = [{k: row[k] for k in ("prompt", "completion")} for row in prompt_completion_rows()]
    run = plain_loop(prompt_completion_rows(), token_mean, dataset_rows=rows)
    assert run.error is None and verdict(run.watcher.report).status == "not verified"
    assert run.checks == ["roles_unknown"]
    message = run.watcher.report.findings[0].message
    assert "tokenizer= on StepWatcher" in message and "dataset= on StepWatcher" in message


def test_watcher_as_a_context_manager_stops_before_the_step_and_removes_its_hooks():
    torch.manual_seed(0)
    model, tokenizer, rows = load_model(MODEL), load_tokenizer(MODEL), prompt_completion_rows(mask_prompt=False)
    model.train()
    batch = pad_collator(rows[:2])
    stepped = False
    with pytest.raises(gradscope.MaskingError, match="prompt_leak"):
        with StepWatcher(model, tokenizer=tokenizer, dataset=rows) as watcher:
            token_mean(model, batch, step_of([batch], 1)).backward()
        stepped = True
    assert not stepped and not watcher.watching and not model._forward_hooks and not model._forward_pre_hooks
    assert watcher.check() is None  # checked once: later steps are not watched


def test_a_step_whose_loss_is_never_seen_is_not_verified():
    """A model run in eval mode (no training forward), or a loss that never reaches what was watched: nothing was
    checked, so the step is not verified (never clean); it stops only under fail_on="warning"."""
    torch.manual_seed(0)
    model, tokenizer, rows = load_model(MODEL), load_tokenizer(MODEL), prompt_completion_rows()
    batch = pad_collator(rows[:2])
    model.eval()  # the loop forgot model.train(): the watcher records training forwards only
    watcher = StepWatcher(model, tokenizer=tokenizer, dataset=rows)
    token_mean(model, batch, step_of([batch], 1)).backward()
    report = watcher.check()
    assert [f.check for f in report.findings] == ["step_unobserved"] and "no training forward" in report.findings[
        0
    ].message
    assert report.summary()["status"] == "not verified" and not report.summary()["verified"]
    model.train()  # a forward seen whose output the loss never reaches (a detached copy of the logits)
    strict = StepWatcher(model, tokenizer=tokenizer, dataset=rows, fail_on="warning")
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.detach().requires_grad_()
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten()).backward()
    with pytest.raises(gradscope.MaskingError, match="step_unobserved"):
        strict.check()


def test_role_tensor_given_with_the_micro_batch_judges_the_rows():
    """No tokenizer and no dataset: a completion_mask given with the micro-batch gives the roles."""
    torch.manual_seed(0)
    model, rows = load_model(MODEL), prompt_completion_rows(mask_prompt=False)
    model.train()
    batch = pad_collator(rows[:2])
    masked = pad_collator(prompt_completion_rows()[:2])
    watcher = StepWatcher(model, fail_on=None)
    with watcher.micro_batch({"completion_mask": masked["labels"] != -100}) as micro:
        micro.loss = token_mean(model, batch, step_of([batch], 1))
    micro.loss.backward()
    report = watcher.check()
    assert report.data["watched"]["roles_from"] == ["inputs"]
    assert {f.check for f in report.findings} == {"prompt_leak"} and report.losses == [pytest.approx(float(micro.loss))]


# --- accelerate: accelerator.accumulate, accelerator.backward ----------------------------------------------------


def accelerate_loop(rows: list[dict[str, Any]], loss: Loss, accumulation: int = 2, batch_size: int = 1) -> LoopRun:
    """An accelerate loop: ``accelerator.backward`` divides each loss by the accumulation steps, and the step is
    taken when ``accelerator.sync_gradients``; the watcher checks right before it."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    torch.manual_seed(0)
    accelerator = Accelerator(gradient_accumulation_steps=accumulation, cpu=True)
    model, tokenizer = load_model(MODEL), load_tokenizer(MODEL)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    loader = torch.utils.data.DataLoader(
        rows[: accumulation * batch_size], batch_size=batch_size, collate_fn=pad_collator
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    step = step_of(list(loader), accumulation)
    watcher, error = StepWatcher(model, tokenizer=tokenizer, dataset=rows), None
    try:
        for batch in loader:
            with accelerator.accumulate(model):
                # accelerate divides by the accumulation steps: a token mean over the step multiplies by them.
                accelerator.backward(loss(model, batch, step) * accumulation)
                if accelerator.sync_gradients:
                    watcher.check()
                optimizer.step()
                optimizer.zero_grad()
    except gradscope.MaskingError as err:
        error = err
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    changed = any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    return LoopRun(watcher, error, changed)


def test_accelerate_accumulate_token_mean_trains():
    run = accelerate_loop(varied_rows(), token_mean, accumulation=4)
    assert_trains(run)
    assert run.watcher.report.data["watched"]["micro_batches"] == 4
    weights = torch.tensor([t.weight for s in run.watcher.report.samples for t in s.tokens if t.trained])
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / len(weights)), rtol=0.03, atol=0)


def test_accelerate_labels_that_copy_the_prompt_stop():
    assert_stops(accelerate_loop(prompt_completion_rows(mask_prompt=False), token_mean), ["prompt_leak"])


def test_accelerate_loss_that_ignores_the_mask_stops():
    assert_stops(accelerate_loop(prompt_completion_rows(), ignores_the_mask), ["prompt_leak"])


def test_accelerate_per_micro_batch_means_stop():
    assert_stops(accelerate_loop(varied_rows(), micro_batch_mean, accumulation=4), ["uneven_step_weights"])


def test_accelerate_loss_not_multiplied_back_gets_step_scale():
    """The plain per-step token mean handed to accelerator.backward, which divides it by the accumulation steps."""
    run = accelerate_loop(equal_rows(), divided_twice, accumulation=2, batch_size=2)
    assert_stops(run, ["step_scale"])
    assert "×0.5 of a token mean" in str(run.error)


# --- an RL policy-gradient step (verl / OpenRLHF shape): prompt + completion ids, per-token advantages ---------


def policy_gradient_step(train_tool_output: bool = False, train_prompt: bool = False) -> LoopRun:
    """One actor update: the model on prompt + completion, -advantage * log p of each completion token in the loss
    mask (completion_mask times tool_mask: a tool's output inside the completion is not the model's), summed over
    the step's loss-mask tokens and divided by their count; the three watcher lines around it."""
    torch.manual_seed(0)
    model, tokenizer = load_model(MODEL), load_tokenizer(MODEL)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    prompts = [
        tokenizer("Question: What colour is the sky?\nAnswer:").input_ids,
        tokenizer("Question: Add 2 and 3.\nAnswer:").input_ids,
    ]
    width = max(map(len, prompts))
    prompt_ids = torch.tensor([[3] * (width - len(p)) + p for p in prompts])  # left-padded, as RL trainers do
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    completion_ids = torch.tensor(
        [
            tokenizer(" calling a tool: result 42 blue").input_ids[:8],
            tokenizer(" the sum is five, done now").input_ids[:8],
        ]
    )
    completion_mask = torch.ones_like(completion_ids)
    completion_mask[1, 6:] = 0  # the second completion ended early: padding after it
    tool_mask = torch.ones_like(completion_ids)
    tool_mask[0, 3:6] = 0  # a tool's output inside the first completion
    advantages = torch.tensor([[1.0], [-0.5]]).expand_as(completion_ids)  # per token (GRPO: per row)
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "tool_mask": tool_mask,
        "advantages": advantages,
    }
    loss_mask = completion_mask * (1 if train_tool_output else tool_mask)
    watcher, error = StepWatcher(model, tokenizer=tokenizer), None
    try:
        with watcher.micro_batch(inputs) as micro:  # the watcher's lines: this one, the constructor, check()
            ids = torch.cat([prompt_ids, completion_ids], 1)
            logits = model(input_ids=ids, attention_mask=torch.cat([prompt_mask, completion_mask], 1)).logits
            logp = logits[:, width - 1 : -1].float().log_softmax(-1).gather(-1, completion_ids[..., None]).squeeze(-1)
            if train_prompt:  # a loss that also takes the prompt's log-probabilities
                prompt_logp = logits[:, : width - 1].float().log_softmax(-1).gather(-1, ids[:, 1:width, None])
                logp = torch.cat([prompt_logp.squeeze(-1), logp], 1)
                loss_mask = torch.cat([prompt_mask[:, 1:], loss_mask], 1)
                advantages = torch.cat([advantages[:, :1].expand(-1, width - 1), advantages], 1)
            micro.loss = -(advantages * logp * loss_mask).sum() / loss_mask.sum()
        micro.loss.backward()
        watcher.check()
        optimizer.step()
    except gradscope.MaskingError as err:
        error = err
    changed = any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    return LoopRun(watcher, error, changed)


def test_policy_gradient_step_trains_the_model_tokens_only():
    run = policy_gradient_step()
    assert run.error is None and run.changed and run.watcher.report.findings == []
    assert any("step_scale" in note for note in run.watcher.report.notes)  # RL weights: the scale is not compared
    first, second = run.watcher.report.samples
    width = len(first.tokens) - 8
    assert [t.trained for t in first.tokens[width:]] == [True] * 3 + [False] * 3 + [True] * 2  # not the tool output
    assert [t.trained for t in second.tokens[width:]] == [True] * 6 + [False] * 2
    # Weights: the token's advantage over the step's loss-mask tokens (11), sign included; not a token mean.
    torch.testing.assert_close(
        torch.tensor([t.weight for t in first.tokens if t.trained]), torch.full((5,), 1 / 11), rtol=0.03, atol=0
    )
    torch.testing.assert_close(
        torch.tensor([t.weight for t in second.tokens if t.trained]), torch.full((6,), -0.5 / 11), rtol=0.03, atol=0
    )


def test_policy_gradient_step_that_trains_the_tool_output_stops():
    run = policy_gradient_step(train_tool_output=True)
    assert_stops(run, ["prompt_leak"])
    (finding,) = run.watcher.report.findings
    width = len(run.watcher.report.samples[0].tokens) - 8
    assert finding.sample == 0 and finding.positions == [width + 3, width + 4, width + 5]


def test_policy_gradient_step_that_trains_the_prompt_stops():
    run = policy_gradient_step(train_prompt=True)
    assert_stops(run, ["prompt_leak"])
    assert {f.sample for f in run.watcher.report.findings} == {0, 1}
