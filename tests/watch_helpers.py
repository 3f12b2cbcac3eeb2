"""Shared pieces of the watched-training tests: tiny runs of real trainers on the committed tiny Llama fixture."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

import gradscope
from gradscope.integrations import GradscopeCallback
from gradscope.load import load_model, load_tokenizer
from tests.conftest import FIXTURES

MODEL = FIXTURES / "models/tiny-llama-chat"
PAD = 3  # <|pad|> of the fixture
PROMPT_COMPLETION = [json.loads(line) for line in (FIXTURES / "raw/prompt_completion.jsonl").read_text().splitlines()]
CHATS = [json.loads(line) for line in (FIXTURES / "raw/chat.jsonl").read_text().splitlines()]
CHAT_PROMPT_COMPLETION = json.loads((FIXTURES / "raw/chat_prompt_completion.json").read_text())
COMMON = {"report_to": [], "use_cpu": True, "save_strategy": "no", "logging_strategy": "no", "learning_rate": 1e-2,
          "per_device_train_batch_size": 2, "max_steps": 1}


@dataclass
class Run:
    """What a watched run did: the callback's report, the error that stopped it, and whether any weight moved."""

    callback: GradscopeCallback
    trainer: Any
    error: gradscope.MaskingError | None
    changed: bool

    @property
    def checks(self) -> list[tuple[str, int | None]]:
        return sorted((f.check, f.sample) for f in self.callback.report.findings)


def train(make_trainer, callback: GradscopeCallback | None = None) -> Run:
    """Build a trainer with the callback, train, and record whether the weights moved."""
    callback = callback or GradscopeCallback()
    trainer = make_trainer([callback])
    model = trainer.model
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    error = None
    try:
        trainer.train()
    except gradscope.MaskingError as err:
        error = err
    changed = any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    return Run(callback, trainer, error, changed)


def sft(rows, tmp_path, tokenizer=None, collator=None, **options):
    """A maker of TRL SFTTrainers on a fresh fixture model."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    def make(callbacks):
        args = SFTConfig(output_dir=str(tmp_path), **{**COMMON, **options})
        return SFTTrainer(model=load_model(MODEL), args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer or load_tokenizer(MODEL), data_collator=collator,
                          callbacks=callbacks)

    return make


def pad_collator(rows):
    """A correct collator for pre-tokenized rows: right padding, labels padded with -100."""
    width = max(len(r["input_ids"]) for r in rows)

    def pad(key, fill):
        return torch.tensor([list(r[key]) + [fill] * (width - len(r[key])) for r in rows])

    mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
    return {"input_ids": pad("input_ids", PAD), "labels": pad("labels", -100), "attention_mask": mask}


def tokenized(rows, mask_prompt: bool = True):
    """prompt/completion rows tokenized as gradscope reads them, with labels masking the prompt (or not)."""
    from gradscope.check import default_end_token_ids
    from gradscope.roles import RoleSpec, derive

    tokenizer = load_tokenizer(MODEL)
    spec = RoleSpec(default_end_token_ids(load_model(MODEL), tokenizer))
    out = []
    for i, row in enumerate(rows):
        derived = derive(row, i, tokenizer, spec)
        labels = [t if (r == 1 or not mask_prompt) else -100 for t, r in zip(derived.input_ids, derived.roles)]
        out.append({**row, "input_ids": derived.input_ids, "labels": labels})
    return out


def plain(rows, tmp_path, collator=pad_collator, compute_loss_func=None, **options):
    """A maker of plain transformers Trainers on pre-tokenized rows."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    def make(callbacks):
        args = TrainingArguments(output_dir=str(tmp_path), **{**COMMON, **options})
        return Trainer(model=load_model(MODEL), args=args, train_dataset=Dataset.from_list(rows),
                       processing_class=load_tokenizer(MODEL), data_collator=collator,
                       compute_loss_func=compute_loss_func, callbacks=callbacks)

    return make
