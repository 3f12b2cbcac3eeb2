"""GradscopeCallback on TRL's GRPOTrainer (CPU, no vLLM): the model generates, a Python reward scores, and the loss
runs over completion_mask; the callback reads the trained map from the gradient of that loss."""

from __future__ import annotations

import pytest
import torch

from fixtures.trainers import COMMON, MODEL, train

pytest.importorskip("trl")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

PROMPTS = [{"prompt": "Question: What colour is the sky?\nAnswer:"}, {"prompt": "Question: What is 2 plus 3?\nAnswer:"}]


def text_reward(completions, **kwargs):
    """A reward that differs between most completions (GRPO's advantage is 0 where a group's rewards are equal)."""
    return [float(sum(map(ord, str(c))) % 7) for c in completions]


def constant_reward(completions, **kwargs):
    return [1.0] * len(completions)


def grpo_class(fold_prompt: bool):
    """GRPOTrainer, recording the inputs its loss receives; with ``fold_prompt`` a subclass bug: the loss mask
    covers the prompt (the prompt is folded into completion_ids / completion_mask before TRL's loss)."""
    from trl import GRPOTrainer

    class Recorded(GRPOTrainer):
        seen: list = []

        def _compute_loss(self, model, inputs):
            self.seen.append(inputs)
            if fold_prompt:
                prompt, mask = inputs["prompt_ids"], inputs["prompt_mask"]
                inputs = {
                    **inputs,
                    "prompt_ids": prompt[:, :1],
                    "prompt_mask": mask[:, :1],
                    "completion_ids": torch.cat([prompt[:, 1:], inputs["completion_ids"]], 1),
                    "completion_mask": torch.cat([mask[:, 1:], inputs["completion_mask"]], 1),
                }
            return super()._compute_loss(model, inputs)

    Recorded.seen = []
    return Recorded


def grpo(tmp_path, reward=text_reward, fold_prompt=False, **options):
    from datasets import Dataset
    from trl import GRPOConfig

    from gradscope.model.load import load_model, load_tokenizer

    def make(callbacks):
        args = GRPOConfig(
            output_dir=str(tmp_path),
            **{**COMMON, "per_device_train_batch_size": 4},
            num_generations=2,
            max_completion_length=4,
            **options,
        )
        return grpo_class(fold_prompt)(
            model=load_model(MODEL),
            reward_funcs=reward,
            args=args,
            train_dataset=Dataset.from_list(PROMPTS),
            processing_class=load_tokenizer(MODEL),
            callbacks=callbacks,
        )

    return make


def test_grpo_trains_the_completion_mask_only(tmp_path):
    run = train(grpo(tmp_path))
    assert run.error is None and run.trainer.state.global_step == 1 and run.changed
    report = run.callback.report
    assert report.findings == [] and report.data["watched"]["roles_from"] == ["inputs"]
    (inputs,) = run.trainer.seen
    prompt, mask, advantages = inputs["prompt_mask"], inputs["completion_mask"], inputs["advantages"]
    assert len(report.samples) == len(mask) == 4  # 2 prompts x 2 generations, one forward
    width = prompt.shape[1]
    for sample, p_mask, c_mask, advantage in zip(report.samples, prompt, mask, advantages, strict=True):
        trained = torch.tensor([t.trained for t in sample.tokens])
        expected = torch.cat([torch.zeros(width, dtype=torch.bool), c_mask.bool()]) & (advantage != 0)
        assert torch.equal(trained, expected)  # exactly the completion_mask, nothing of the prompt
        assert {t.role for t in sample.tokens[:width]} <= {"prompt", "pad"}
        assert [t.role == "pad" for t in sample.tokens[:width]] == (p_mask == 0).tolist()
        # TRL's default loss (dapo): sum over the step's completion tokens of -advantage * log p / their count.
        weights = torch.tensor([t.weight for t in sample.tokens if t.trained])
        torch.testing.assert_close(weights, torch.full_like(weights, float(advantage / mask.sum())), rtol=0.03, atol=0)
    assert (advantages != 0).any()


def test_grpo_with_equal_rewards_trains_nothing_and_says_why(tmp_path):
    run = train(grpo(tmp_path, reward=constant_reward))
    assert run.error is None and run.trainer.state.global_step == 1
    report = run.callback.report
    assert report.findings == [] and not any(t.trained for s in report.samples for t in s.tokens)
    assert any("advantage 0" in note for note in report.notes)
    assert not run.changed  # a zero gradient: Adam moves nothing


def test_grpo_with_a_loss_mask_over_the_prompt_stops(tmp_path):
    run = train(grpo(tmp_path, fold_prompt=True))
    assert run.error is not None and run.trainer.state.global_step == 0 and not run.changed
    assert sorted({c for c, _ in run.checks}) == ["prompt_leak"]
    (inputs,) = run.trainer.seen
    leaking = {b for b, a in enumerate(inputs["advantages"].tolist()) if a != 0}
    assert {s for _, s in run.checks} == leaking and leaking
    for finding in run.callback.report.findings:  # every real prompt token after the first, as TRL's mask gives it
        real = inputs["prompt_mask"][finding.sample].nonzero().flatten().tolist()
        assert finding.positions == [p for p in real if p >= 1]


def test_rl_rows_match_a_sub_batch_and_read_tool_output_as_prompt():
    from gradscope.constants import COMPLETION, PROMPT
    from gradscope.integrations.sources import rl_rows

    given = {
        "prompt_ids": torch.tensor([[3, 5, 6], [7, 8, 9], [7, 8, 9]]),
        "prompt_mask": torch.tensor([[0, 1, 1], [1, 1, 1], [1, 1, 1]]),
        "completion_ids": torch.tensor([[10, 2, 3], [11, 12, 2], [13, 2, 3]]),
        "completion_mask": torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0]]),
        "tool_mask": torch.tensor([[1, 1, 1], [1, 0, 1], [1, 1, 1]]),
        "advantages": torch.tensor([0.5, 0.0, -0.5]),
    }
    # A forward over rows 2 and 1 only (a sub-batch, in another order).
    rl = rl_rows({"input_ids": torch.tensor([[7, 8, 9, 13, 2, 3], [7, 8, 9, 11, 12, 2]])}, given)
    P, C = PROMPT, COMPLETION
    assert rl.codes.tolist() == [[P, P, P, C, C, P], [P, P, P, C, P, C]]
    assert rl.idle == [1]  # row 1 of the forward is input row 1: advantage 0
    assert rl_rows({"input_ids": torch.tensor([[7, 8, 9, 13, 2, 4]])}, given) is None  # no such row
    assert rl_rows({"input_ids": torch.tensor([[7, 8, 9, 13, 2]])}, given) is None  # not prompt + completion


def grpo_with_tools(drop_tool_mask: bool):
    """GRPOTrainer whose completions carry a tool's output at completion positions 1-2 (``tool_mask`` 0 there, as
    TRL sets it after a tool call); with ``drop_tool_mask`` a loss bug: ``_compute_loss`` drops the tool mask, so
    the tool's output is trained."""
    from trl import GRPOTrainer

    class WithTools(GRPOTrainer):
        seen: list = []

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            tool = torch.ones_like(out["completion_mask"])
            tool[:, 1:3] = 0
            out["tool_mask"] = tool
            return out

        def _compute_loss(self, model, inputs):
            self.seen.append(inputs)
            if drop_tool_mask:
                inputs = {k: v for k, v in inputs.items() if k != "tool_mask"}
            return super()._compute_loss(model, inputs)

    WithTools.seen = []
    return WithTools


def grpo_tools(tmp_path, drop_tool_mask: bool):
    from datasets import Dataset
    from trl import GRPOConfig

    from gradscope.model.load import load_model, load_tokenizer

    def make(callbacks):
        args = GRPOConfig(
            output_dir=str(tmp_path),
            **{**COMMON, "per_device_train_batch_size": 4},
            num_generations=2,
            max_completion_length=4,
        )
        return grpo_with_tools(drop_tool_mask)(
            model=load_model(MODEL),
            reward_funcs=text_reward,
            args=args,
            train_dataset=Dataset.from_list(PROMPTS),
            processing_class=load_tokenizer(MODEL),
            callbacks=callbacks,
        )

    return make


def test_grpo_with_tools_trains_the_model_tokens_only(tmp_path):
    run = train(grpo_tools(tmp_path, drop_tool_mask=False))
    assert run.error is None and run.changed and run.callback.report.findings == []
    (inputs,) = run.trainer.seen
    width = inputs["prompt_ids"].shape[1]
    for sample, mask, advantage in zip(
        run.callback.report.samples, inputs["completion_mask"], inputs["advantages"], strict=True
    ):
        trained = torch.tensor([t.trained for t in sample.tokens[width:]])
        expected = mask.bool() & (inputs["tool_mask"][0].bool()) & (advantage != 0)
        assert torch.equal(trained, expected)  # the tool's output is not trained
        assert all(t.role != "completion" for t in sample.tokens[width + 1 : width + 3])


def test_grpo_loss_that_trains_the_tool_output_stops_with_prompt_leak(tmp_path):
    run = train(grpo_tools(tmp_path, drop_tool_mask=True))
    assert run.error is not None and run.trainer.state.global_step == 0 and not run.changed
    assert sorted({c for c, _ in run.checks}) == ["prompt_leak"]
    (inputs,) = run.trainer.seen
    width = inputs["prompt_ids"].shape[1]
    leaking = {
        b
        for b, (a, m) in enumerate(zip(inputs["advantages"].tolist(), inputs["completion_mask"], strict=True))
        if a != 0 and m[1:3].any()
    }
    assert {s for _, s in run.checks} == leaking and leaking
    for finding in run.callback.report.findings:  # exactly the tool's tokens inside the completion mask
        mask = inputs["completion_mask"][finding.sample]
        assert finding.positions == [width + p for p in (1, 2) if mask[p]]
