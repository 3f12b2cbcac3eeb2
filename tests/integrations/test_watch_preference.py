"""GradscopeCallback on TRL's DPOTrainer: the prompt of chosen and rejected gets no loss, both completions do."""

from __future__ import annotations

import pytest
import torch

from fixtures.trainers import COMMON, MODEL, train

pytest.importorskip("trl")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

PAIRS = [
    {"prompt": "Question: What colour is the sky?\nAnswer:", "chosen": " blue", "rejected": " green"},
    {"prompt": "Question: What is 2 plus 3?\nAnswer:", "chosen": " 5", "rejected": " seven or so"},
]


def dpo(tmp_path, collator=None):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from gradscope.model.load import load_model, load_tokenizer

    def make(callbacks):
        return DPOTrainer(
            model=load_model(MODEL),
            args=DPOConfig(output_dir=str(tmp_path), **COMMON),
            train_dataset=Dataset.from_list(PAIRS),
            processing_class=load_tokenizer(MODEL),
            data_collator=collator,
            callbacks=callbacks,
        )

    return make


def prompt_in_completion_mask():
    """TRL's preference collator, with a completion_mask that also covers the prompt (a collator bug)."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    inner = DataCollatorForPreference(pad_token_id=3)

    def collate(rows):
        batch = inner(rows)
        batch["completion_mask"] = batch["attention_mask"].clone()
        return batch

    return collate


def test_dpo_trains_chosen_and_rejected_completions_only(tmp_path):
    run = train(dpo(tmp_path))
    assert run.error is None and run.trainer.state.global_step == 1 and run.changed
    report = run.callback.report
    assert report.findings == [] and report.data["watched"]["roles_from"] == ["train_dataset"]
    assert len(report.samples) == 4  # chosen and rejected of both pairs, one forward
    for sample in report.samples:
        trained = [t for t in sample.tokens if t.trained]
        assert trained and {t.role for t in trained} == {"completion"}
        assert not any(t.trained for t in sample.tokens if t.role == "prompt")
    # DPO pushes chosen up and rejected down: the weight's sign says which (first half chosen, second rejected).
    signs = [torch.tensor([t.weight for t in s.tokens if t.trained]).sign().unique().tolist() for s in report.samples]
    assert signs == [[1.0], [1.0], [-1.0], [-1.0]]


def test_dpo_with_a_collator_that_unmasks_the_prompt_stops(tmp_path):
    run = train(dpo(tmp_path, collator=prompt_in_completion_mask()))
    assert run.error is not None and run.trainer.state.global_step == 0 and not run.changed
    assert sorted({c for c, _ in run.checks}) == ["prompt_leak"]
    assert {s for _, s in run.checks} == {0, 1, 2, 3}
    for finding in run.callback.report.findings:  # the fix named for the trainer in use, not SFT's options
        assert "completion_only_loss" not in finding.message and "assistant_only_loss" not in finding.message
        assert "chosen and rejected" in finding.message
