"""GradscopeCallback on a plain transformers Trainer over today's chat-template families: the batches hold
input_ids and labels only, so the callback reads the roles from the tokenizer's chat template through the same
engine as ``check`` and ``scan``. Each correct batch trains; labels = input_ids stops with ``prompt_leak``."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from fixtures.trainers import COMMON, FIXTURES, train
from gradscope.model.load import load_model, load_tokenizer

pytest.importorskip("transformers")

FAMILIES = ["harmony", "glm", "smollm3", "mistral-small", "granite", "deepseek-v3"]
PREFILL_IN_PROMPT_LEAK = {"glm", "smollm3"}  # labels = input_ids trains their empty think blocks too


def rows(name: str) -> list[dict[str, list[int]]]:
    batch = load_file(FIXTURES / "batches" / f"{name}.safetensors")
    real = batch["attention_mask"].bool()
    return [
        {"input_ids": batch["input_ids"][b][real[b]].tolist(), "labels": batch["labels"][b][real[b]].tolist()}
        for b in range(len(real))
    ]


def family_trainer(family: str, name: str, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    directory = FIXTURES / "models" / f"tiny-{family}"
    tokenizer = load_tokenizer(directory)

    def collate(batch):
        width = max(len(r["input_ids"]) for r in batch)

        def pad(key, fill):
            return torch.tensor([list(r[key]) + [fill] * (width - len(r[key])) for r in batch])

        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch])
        return {
            "input_ids": pad("input_ids", tokenizer.pad_token_id),
            "labels": pad("labels", -100),
            "attention_mask": mask,
        }

    def make(callbacks):
        args = TrainingArguments(output_dir=str(tmp_path), **{**COMMON, "per_device_train_batch_size": 3})
        return Trainer(
            model=load_model(directory),
            args=args,
            train_dataset=Dataset.from_list(rows(name)),
            processing_class=tokenizer,
            data_collator=collate,
            callbacks=callbacks,
        )

    return make


@pytest.mark.parametrize("family", FAMILIES)
def test_a_correct_family_batch_trains_with_roles_from_the_chat_template(family, tmp_path):
    run = train(family_trainer(family, f"{family}_clean_noroles", tmp_path))
    assert run.error is None, str(run.error)
    assert run.changed and run.callback.report.findings == []
    assert run.callback.report.data["watched"]["roles_from"] == ["chat_template"]


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_copied_from_input_ids_stop_the_family_run(family, tmp_path):
    run = train(family_trainer(family, f"{family}_prompt_leak_noroles", tmp_path))
    assert run.error is not None and not run.changed
    expected = {"prompt_leak", "prefill_trained"} if family in PREFILL_IN_PROMPT_LEAK else {"prompt_leak"}
    assert {c for c, _ in run.checks} == expected
