"""The callback reads roles with the one roles engine, from the template the data is really rendered with, and takes
the labels as declared intent: TRL's swapped-in training template, preference glue, a loss that ignores the labels,
pad == eos."""

from __future__ import annotations

import pytest
import torch

from fixtures.trainers import CHATS, COMMON, FIXTURES, MODEL, PROMPT_COMPLETION, plain, tokenized, train
from gradscope.model.load import load_model, load_tokenizer

pytest.importorskip("trl")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

QWEN25 = FIXTURES / "tokenizers/qwen2.5-chat"


def resized(tokenizer):
    """The fixture model with room for the chat tokenizer's special tokens (ids from 480 on)."""
    model = load_model(MODEL)
    model.resize_token_embeddings(len(tokenizer))
    return model


def test_qwen25_assistant_only_loss_trains_under_trls_training_template(tmp_path):
    """TRL swaps its qwen2_5_training.jinja in (kept on the trainer): it trains the header's "\\n"; the roles are read
    from that template, where the "\\n" is unjudged, so a correct run trains."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(QWEN25)

    def make(callbacks):
        args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, **COMMON)
        return SFTTrainer(
            model=resized(tokenizer),
            args=args,
            train_dataset=Dataset.from_list(CHATS),
            processing_class=tokenizer,
            callbacks=callbacks,
        )

    run = train(make)
    assert run.trainer.chat_template is not None and run.trainer.chat_template != tokenizer.chat_template
    assert run.error is None and run.changed, run.error
    report = run.callback.report
    assert report.findings == [] and report.data["watched"]["roles_from"] == ["train_dataset"]
    # The tokens trained are the training template's assistant mask: judged or unjudged, never a prompt token.
    for sample in report.samples:
        assert not any(t.trained for t in sample.tokens if t.role == "prompt")
        assert any(t.trained and t.role is None and t.text == "\n" for t in sample.tokens)


def test_check_pipeline_trl_agrees_on_the_same_model_and_rows(tmp_path):
    import json

    from typer.testing import CliRunner

    from gradscope.cli import app

    tokenizer = load_tokenizer(QWEN25)
    resized(tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    result = CliRunner().invoke(
        app,
        [
            "check",
            str(tmp_path / "model"),
            str(FIXTURES / "raw/chat.jsonl"),
            "--pipeline",
            "trl",
            "--assistant-only-loss",
            "--probes",
            "none",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["findings"] == [] and len(data["samples"]) == len(CHATS)


def test_qwen25_without_assistant_only_loss_still_stops(tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(QWEN25)

    def make(callbacks):
        args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=False, **COMMON)
        return SFTTrainer(
            model=resized(tokenizer),
            args=args,
            train_dataset=Dataset.from_list(CHATS),
            processing_class=tokenizer,
            callbacks=callbacks,
        )

    run = train(make)
    assert run.error is not None and not run.changed
    assert {c for c, _ in run.checks} == {"prompt_leak"}


def test_a_loss_that_ignores_the_labels_stops_a_trainer_without_processing_class(tmp_path):
    """No processing_class: no roles. The labels mask the prompt, the loss trains it anyway: masked_label_trained, an
    error that needs no roles, stops the run before its first optimizer step."""
    from fixtures.losses import drops_the_mask

    def loss(outputs, labels, num_items_in_batch=None):
        return drops_the_mask(outputs.logits, labels)

    run = train(plain(tokenized(PROMPT_COMPLETION), tmp_path, compute_loss_func=loss, with_tokenizer=False))
    assert run.error is not None and not run.changed and run.trainer.state.global_step == 0
    assert run.checks == [("masked_label_trained", 0), ("masked_label_trained", 1), ("roles_unknown", None)]
    finding = run.callback.report.findings[0]
    assert "-100" in finding.message and "compute_loss_func" in finding.message


def test_not_verified_says_what_the_labels_alone_establish(tmp_path):
    """Roles unknown (no processing_class): the warning says what the labels show, next to "not verified"."""
    copy = train(plain(tokenized(PROMPT_COMPLETION, mask_prompt=False), tmp_path, with_tokenizer=False))
    (finding,) = copy.callback.report.findings
    assert "not verified" in finding.message and "rows 0–1: they copy input_ids" in finding.message
    masked = train(plain(tokenized(PROMPT_COMPLETION), tmp_path, with_tokenizer=False))
    (finding,) = masked.callback.report.findings
    assert (
        "not verified" in finding.message
        and "mask some real tokens (-100) and the gradient trains none" in finding.message
    )


def test_dpo_conversational_leaves_the_template_glue_unjudged(tmp_path):
    """DPO on chat rows: the "\\n" ChatML writes after <|im_end|> is template glue, unjudged as in SFT and check."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    pairs = [
        {
            "prompt": [{"role": "user", "content": "What colour is the sky?"}],
            "chosen": [{"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "assistant", "content": "Green."}],
        },
        {
            "prompt": [{"role": "user", "content": "What is 2 plus 3?"}],
            "chosen": [{"role": "assistant", "content": "5."}],
            "rejected": [{"role": "assistant", "content": "Seven."}],
        },
    ]

    def make(callbacks):
        return DPOTrainer(
            model=load_model(MODEL),
            args=DPOConfig(output_dir=str(tmp_path), **COMMON),
            train_dataset=Dataset.from_list(pairs),
            processing_class=load_tokenizer(MODEL),
            callbacks=callbacks,
        )

    run = train(make)
    assert run.error is None and run.changed, run.error
    report = run.callback.report
    assert report.findings == [] and report.data["watched"]["roles_from"] == ["train_dataset"]
    for sample in report.samples:
        ids = [t.text for t in sample.tokens]
        end = max(i for i, text in enumerate(ids) if text == "<|im_end|>")
        if end + 1 < len(ids) and ids[end + 1] == "\n":
            assert sample.tokens[end + 1].role is None


def test_pad_equal_to_eos_masked_interior_end_token_is_eos_untrained_alone(tmp_path):
    """Llama-3 style, <|eot_id|> as pad, attention_mask = ids != pad and labels[ids == pad] = -100: every turn's
    <|eot_id|> is hidden. The callback says eos_untrained, and nothing else, as check does on the same batch."""
    from safetensors.torch import load_file
    from transformers import Trainer, TrainingArguments

    llama3 = FIXTURES / "models/tiny-llama3-chat"
    batch = load_file(FIXTURES / "batches/llama3_eos_untrained_mask_by_id.safetensors")
    rows = [{k: v[i] for k, v in batch.items()} for i in range(len(batch["input_ids"]))]

    def make(callbacks):
        args = TrainingArguments(output_dir=str(tmp_path), **{**COMMON, "per_device_train_batch_size": 3})
        return Trainer(
            model=load_model(llama3),
            args=args,
            train_dataset=rows,
            processing_class=load_tokenizer(llama3),
            data_collator=lambda r: {k: torch.stack([x[k] for x in r]) for k in r[0]},
            callbacks=callbacks,
        )

    run = train(make)
    assert run.error is not None and not run.changed
    assert {c for c, _ in run.checks} == {"eos_untrained"}
    assert len(run.checks) == 3


def test_the_engine_reads_roles_with_the_template_the_data_is_rendered_with():
    """The same tokens, read with the tokenizer's template and with TRL's training template handed to the engine
    (as the callback hands it what the trainer or its collator holds): only the header's "\\n" differs, prompt in
    the first, unjudged in the second."""
    from types import SimpleNamespace

    from trl.chat_template_utils import get_training_chat_template

    from gradscope.constants import PROMPT, UNKNOWN
    from gradscope.data.token_roles import RoleSources
    from gradscope.integrations.sources import rendered_with, step_roles

    tokenizer = load_tokenizer(QWEN25)
    training = get_training_chat_template(tokenizer)
    assert training is not None and training != tokenizer.chat_template
    assert rendered_with(SimpleNamespace(chat_template=training)) == training
    assert (
        rendered_with(SimpleNamespace(chat_template=None, data_collator=SimpleNamespace(chat_template=training)))
        == training
    )
    assert rendered_with(SimpleNamespace()) is None
    ids = tokenizer.apply_chat_template(CHATS[1]["messages"], tokenize=True, return_dict=True)["input_ids"]
    inputs = {"input_ids": torch.tensor([list(ids)])}
    ends = frozenset({tokenizer.eos_token_id})
    plain, _ = step_roles(inputs, {}, tokenizer, ends, RoleSources())
    swapped, names = step_roles(inputs, {}, tokenizer, ends, RoleSources(chat_template=training))
    assert names == ["chat_template"]
    differ = (plain != swapped).nonzero()[:, 1].tolist()
    header = tokenizer("<|im_start|>assistant", add_special_tokens=False)["input_ids"]
    newline = [t for t in range(len(ids)) if list(ids[t - len(header) : t]) == header]
    assert differ == newline and len(differ) == 1
    assert plain[0, differ[0]] == PROMPT and swapped[0, differ[0]] == UNKNOWN


def test_glue_is_unjudged_only_right_after_a_closing_token_at_the_completion_end():
    from gradscope.constants import COMPLETION as C
    from gradscope.constants import PROMPT as P
    from gradscope.constants import UNKNOWN as U
    from gradscope.data.token_roles import unjudged_glue

    end, nl = 2, 202
    ends = frozenset({end})
    # prompt, answer "5 <end> \n": the "\n" after the closing token is glue
    assert unjudged_glue([P, P, C, C, C], [7, 8, 5, end, nl], [nl], ends) == [P, P, C, C, U]
    # an answer that itself ends with "\n" (no closing token before it) keeps it as completion
    assert unjudged_glue([P, P, C, C, C], [7, 8, 5, 6, nl], [nl], ends) == [P, P, C, C, C]
    # a "\n" after the closing token but inside a longer completion (the next turn's text) is completion too
    assert unjudged_glue([P, C, C, C, C], [7, 5, end, nl, 9], [nl], ends) == [P, C, C, C, C]
