"""GradscopeCallback on real trainers: each correct configuration trains, each broken one stops before the first
optimizer step with the weights unchanged. The table in docs/training-runs.md is built from these tests."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fixtures.trainers import (
    CHAT_PROMPT_COMPLETION,
    CHATS,
    PAD,
    PROMPT_COMPLETION,
    plain,
    sft,
    tokenized,
    train,
)
from gradscope.integrations import REPORT_FILE, GradscopeCallback, watch

pytest.importorskip("trl")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def assert_trains(run, read_at=None, roles_from=None):
    __tracebackhide__ = True
    assert run.error is None, str(run.error)
    assert run.trainer.state.global_step == run.trainer.args.max_steps and run.changed
    report = run.callback.report
    assert report is not None and report.findings == []
    watched = report.data["watched"]
    if read_at is not None:
        assert watched["read_at"] == [read_at]
    if roles_from is not None:
        assert watched["roles_from"] == [roles_from]
    return report


def assert_stops(run, expected):
    __tracebackhide__ = True
    assert run.error is not None, "the run was not stopped"
    assert run.trainer.state.global_step == 0 and not run.changed  # stopped before any weight moved
    assert run.error.report is run.callback.report
    assert str(run.error).startswith("gradscope stopped training before the first optimizer step")
    assert sorted({c for c, _ in run.checks}) == sorted(expected)
    assert not run.trainer.model._forward_hooks and not run.trainer.model._forward_pre_hooks


# --- SFTTrainer: the fused LM head (TRL's default): read at the LM head's input ---------------------------------


def test_sft_prompt_completion_default_trains(tmp_path):
    run = train(sft(PROMPT_COMPLETION, tmp_path))
    report = assert_trains(run, read_at="lm_head_input", roles_from="train_dataset")
    roles = [[t.role for t in s.tokens if t.trained] for s in report.samples]
    assert all(r and set(r) == {"completion"} for r in roles)  # trained = the completion, judged by its roles
    saved = json.loads((tmp_path / REPORT_FILE).read_text())
    assert saved["summary"]["ok"] and saved["samples"][0]["micro_batch"] == 0 and saved["samples"][0]["rank"] == 0


def test_sft_without_completion_only_loss_stops(tmp_path):
    run = train(sft(PROMPT_COMPLETION, tmp_path, completion_only_loss=False))
    assert_stops(run, ["prompt_leak"])
    assert run.checks == [("prompt_leak", 0), ("prompt_leak", 1)]


def test_sft_conversational_assistant_only_trains(tmp_path):
    assert_trains(train(sft(CHATS, tmp_path, assistant_only_loss=True)), roles_from="train_dataset")


def test_sft_conversational_without_assistant_only_stops(tmp_path):
    assert_stops(train(sft(CHATS, tmp_path, assistant_only_loss=False)), ["prompt_leak"])


def test_sft_conversational_prompt_completion_trains(tmp_path):
    report = assert_trains(train(sft(CHAT_PROMPT_COMPLETION, tmp_path)), roles_from="train_dataset")
    # Earlier assistant turns sit in the prompt: neither trained nor called untrained completion.
    first = report.samples[0].tokens
    assert any(t.role == "prompt" and not t.trained for t in first) and any(t.role == "completion" for t in first)


def assert_not_verified(run, *words):
    """The run trained (fail_on="error"), and its report says the step was not verified, never clean."""
    __tracebackhide__ = True
    assert run.error is None and run.changed
    report = run.callback.report
    assert [(f.check, f.severity) for f in report.findings] == [("roles_unknown", "warning")]
    assert not report.summary()["verified"] and report.data["watched"]["roles_from"] == ["not judged"]
    assert all(w in report.findings[0].message for w in words), report.findings[0].message
    return report


def test_sft_packing_trains_and_says_what_it_could_not_judge(tmp_path):
    assert_not_verified(train(sft(PROMPT_COMPLETION, tmp_path, packing=True)), "row 0", "not verified")


def test_sft_packed_chats_without_assistant_only_stops(tmp_path):
    # Packing drops the raw columns; the chat template's markers give the roles of every packed document.
    run = train(sft(CHATS, tmp_path, packing=True, assistant_only_loss=False))
    assert_stops(run, ["prompt_leak"])
    assert run.callback.report.data["watched"]["roles_from"] == ["chat_template"]


def test_sft_packed_chats_assistant_only_trains(tmp_path):
    assert_trains(train(sft(CHATS, tmp_path, packing=True, assistant_only_loss=True)), roles_from="chat_template")


def padding_free(keep_boundaries: bool):
    """TRL's padding-free collator, or one that forgets labels[position_ids == 0] = -100."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    inner = DataCollatorForLanguageModeling(pad_token_id=PAD, padding_free=True)

    def collate(rows):
        batch = inner([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
        if keep_boundaries:
            batch["labels"] = torch.where(batch["position_ids"] == 0, batch["input_ids"], batch["labels"])
            batch["labels"][:, 0] = -100
        return batch

    return collate


def test_padding_free_collator_trains(tmp_path):
    run = train(
        plain(
            tokenized(PROMPT_COMPLETION, mask_prompt=False),
            tmp_path,
            collator=padding_free(False),
            per_device_train_batch_size=3,
            remove_unused_columns=False,
        )
    )
    assert run.error is not None  # labels copy the prompt: caught per packed document
    assert {c for c, _ in run.checks} == {"prompt_leak"} and not run.changed
    assert_trains(
        train(
            plain(
                tokenized(PROMPT_COMPLETION),
                tmp_path,
                collator=padding_free(False),
                per_device_train_batch_size=3,
                remove_unused_columns=False,
            )
        ),
        roles_from="train_dataset",
    )


def test_padding_free_collator_that_keeps_boundaries_stops(tmp_path):
    run = train(
        plain(
            tokenized(PROMPT_COMPLETION),
            tmp_path,
            collator=padding_free(True),
            per_device_train_batch_size=3,
            remove_unused_columns=False,
        )
    )
    assert_stops(run, ["boundary_leak"])


def test_sft_label_smoothing_reads_the_logits_and_trains(tmp_path):
    report = assert_trains(train(sft(PROMPT_COMPLETION, tmp_path, label_smoothing_factor=0.1)), read_at="logits")
    weights = [t.weight for s in report.samples for t in s.tokens if t.trained]
    trained = len(weights)
    torch.testing.assert_close(torch.tensor(weights), torch.full((trained,), 1 / trained), rtol=0.03, atol=0)


# --- plain transformers Trainer ----------------------------------------------------------------------------------


def test_plain_trainer_with_a_correct_collator_trains(tmp_path):
    report = assert_trains(
        train(plain(tokenized(PROMPT_COMPLETION), tmp_path)), read_at="logits", roles_from="train_dataset"
    )
    # A token-mean loss: every trained token weighs 1 / (trained tokens of the step), read off the real gradient.
    weights = torch.tensor([t.weight for s in report.samples for t in s.tokens if t.trained])
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / len(weights)), rtol=0.03, atol=0)


def test_plain_trainer_with_a_collator_that_trains_the_prompt_stops(tmp_path):
    assert_stops(train(plain(tokenized(PROMPT_COMPLETION, mask_prompt=False), tmp_path)), ["prompt_leak"])


def test_plain_trainer_without_a_tokenizer_is_not_verified(tmp_path):
    """No processing_class and no role tensor: no source gives the roles, so a collator that trains the prompt
    cannot be seen; the step is not verified (a warning naming what is missing), never clean."""
    leak = plain(tokenized(PROMPT_COMPLETION, mask_prompt=False), tmp_path, with_tokenizer=False)
    assert_not_verified(train(leak), "processing_class", "not verified")
    assert_stops(train(leak, GradscopeCallback(fail_on="warning")), ["roles_unknown"])


def token_mean(outputs, labels, num_items_in_batch=None):
    """A correct compute_loss_func: sum of token losses over the step's trained tokens."""
    logits = outputs.logits[:, :-1].flatten(0, 1).float()
    total = F.cross_entropy(logits, labels[:, 1:].flatten(), ignore_index=-100, reduction="sum")
    return total / num_items_in_batch


def pad_as_target(outputs, labels, num_items_in_batch=None):
    """A compute_loss_func that ignores -100: masked positions are trained toward the pad token."""
    return token_mean(outputs, torch.where(labels == -100, PAD, labels), num_items_in_batch)


def micro_batch_mean(outputs, labels, num_items_in_batch=None):
    """A compute_loss_func that averages each micro-batch by itself, ignoring num_items_in_batch."""
    logits = outputs.logits[:, :-1].flatten(0, 1).float()
    return F.cross_entropy(logits, labels[:, 1:].flatten(), ignore_index=-100)


def test_compute_loss_func_token_mean_trains(tmp_path):
    assert_trains(train(plain(tokenized(PROMPT_COMPLETION), tmp_path, compute_loss_func=token_mean)), read_at="logits")


def test_compute_loss_func_that_ignores_the_mask_stops(tmp_path):
    run = train(plain(tokenized(PROMPT_COMPLETION), tmp_path, compute_loss_func=pad_as_target))
    # prompt positions (label -100) are trained toward <|pad|>: the loss ignores the mask, the root cause
    assert_stops(run, ["masked_label_trained"])


def varied_rows():
    """Four prompt-completion rows whose completions have 2, 4, 8 and 3 tokens."""
    words = [" blue", " a b c", " one two three four five six seven", " x y"]
    return tokenized([{"prompt": f"Question {i}?\nAnswer:", "completion": w} for i, w in enumerate(words)])


def test_accumulation_with_a_micro_batch_mean_stops(tmp_path):
    run = train(
        plain(
            varied_rows(),
            tmp_path,
            compute_loss_func=micro_batch_mean,
            gradient_accumulation_steps=4,
            per_device_train_batch_size=1,
        )
    )
    assert_stops(run, ["uneven_step_weights"])
    assert run.callback.report.data["watched"]["micro_batches"] == 4
    (finding,) = run.callback.report.findings
    assert "micro-batches" in finding.message and "num_items_in_batch" in finding.message
    # Independent reading: each micro-batch's tokens weigh 1 / (its own trained tokens).
    for sample in run.callback.report.samples:
        weights = [t.weight for t in sample.tokens if t.trained]
        torch.testing.assert_close(
            torch.tensor(weights), torch.full((len(weights),), 1 / len(weights)), rtol=0.03, atol=0
        )


def test_accumulation_with_num_items_in_batch_trains(tmp_path):
    run = train(
        plain(
            varied_rows(),
            tmp_path,
            compute_loss_func=token_mean,
            gradient_accumulation_steps=4,
            per_device_train_batch_size=1,
        )
    )
    report = assert_trains(run)
    assert report.data["watched"]["micro_batches"] == 4
    weights = torch.tensor([t.weight for s in report.samples for t in s.tokens if t.trained])
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / len(weights)), rtol=0.03, atol=0)


def test_accumulation_with_equal_micro_batch_means_gets_step_scale(tmp_path):
    """Each micro-batch's own token mean with equal token counts: every token weighs alike (no uneven weights), but
    the Trainer does not divide a compute_loss_func's loss by the accumulation steps: ×2 of a token mean."""
    rows = tokenized([{"prompt": f"Question {i}?\nAnswer:", "completion": " a b c"} for i in range(4)])
    run = train(plain(rows, tmp_path, compute_loss_func=micro_batch_mean, gradient_accumulation_steps=2))
    assert_stops(run, ["step_scale"])
    message = run.callback.report.findings[0].message
    assert "×2 of a token mean" in message and "×2 = the gradient accumulation steps" in message
    weights = torch.tensor([t.weight for s in run.callback.report.samples for t in s.tokens if t.trained])
    torch.testing.assert_close(weights, torch.full_like(weights, 2 / len(weights)), rtol=0.03, atol=0)


def test_assistant_mask_without_generation_markers_stops(tmp_path):
    # transformers' assistant mask from a template without {% generation %} is all zeros: nothing is trained.
    from fixtures.trainers import MODEL
    from gradscope.model.load import load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    tokenizer.chat_template = tokenizer.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    rows = []
    for chat in CHATS:
        out = tokenizer.apply_chat_template(chat["messages"], return_dict=True, return_assistant_tokens_mask=True)
        rows.append(
            {
                **chat,
                "input_ids": out["input_ids"],
                "labels": [t if m else -100 for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True)],
            }
        )
    run = train(plain(rows, tmp_path))
    assert_stops(run, ["no_loss"])


# --- the callback itself ---------------------------------------------------------------------------------------


def test_watch_adds_the_callback_and_fail_on_none_lets_it_train(tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from fixtures.trainers import COMMON, MODEL
    from gradscope.model.load import load_model, load_tokenizer

    trainer = SFTTrainer(
        model=load_model(MODEL),
        args=SFTConfig(output_dir=str(tmp_path), completion_only_loss=False, **COMMON),
        train_dataset=Dataset.from_list(PROMPT_COMPLETION),
        processing_class=load_tokenizer(MODEL),
    )
    callback = watch(trainer, fail_on=None)
    assert callback in trainer.callback_handler.callbacks and callback.trainer is trainer
    trainer.train()
    assert trainer.state.global_step == 1 and [f.check for f in callback.report.findings] == ["prompt_leak"] * 2
    assert "compute_loss" not in trainer.__dict__  # the wrapper is gone after the first step


@pytest.mark.parametrize("watched", [False, True])
def test_a_finished_trainer_is_freed_by_its_last_reference(tmp_path, watched):
    """The callback adds no reference cycle: a plain Trainer (which has none of its own, the unwatched case shows)
    is freed, model, gradients and optimizer state with it, as soon as its last reference goes, with the cyclic
    collector off. Held by a cycle, its memory would wait for the next collection."""
    import gc
    import weakref

    trainer = plain(tokenized(PROMPT_COMPLETION), tmp_path)([GradscopeCallback(write_report=False)] if watched else [])
    gc.collect()
    gc.disable()
    try:
        trainer.train()
        model = weakref.ref(trainer.model)
        del trainer
        assert model() is None
    finally:
        gc.enable()


def test_the_first_step_only_is_watched(tmp_path):
    run = train(sft(PROMPT_COMPLETION, tmp_path, max_steps=3))
    assert run.trainer.state.global_step == 3 and len(run.callback.report.samples) == 2
    # Later steps run untouched: no gradscope hook is left on any module, no wrapper on the trainer.
    hooks = [
        h for m in run.trainer.model.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())
    ]
    assert not [h for h in hooks if "gradscope" in getattr(h, "__module__", "")]
    assert all(h.__qualname__.startswith("PreTrainedModel.enable_input_require_grads") for h in hooks)  # TRL's own
    assert "compute_loss" not in run.trainer.__dict__


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_positions_gathers_what_advanced_indexing_gives(layout):
    from gradscope.integrations.observe import positions

    values = torch.randn(3, 7, 5) if layout == "contiguous" else torch.randn(7, 3, 5).transpose(0, 1)
    rows, cols = torch.tensor([0, 2, 2, 1, 0]), torch.tensor([6, 0, 3, 3, 0])
    assert torch.equal(
        positions(values, rows, cols), torch.stack([values[r, c] for r, c in zip(rows, cols, strict=True)])
    )


@pytest.mark.parametrize("fused", [True, False])
def test_observer_matches_an_independent_computation(fused):
    """Loss, trained map and weight read from the real backward equal a plain recomputation, on both paths."""
    from trl.trainer.utils import add_fused_lm_head

    from fixtures.trainers import MODEL
    from gradscope.integrations.observe import Observer
    from gradscope.model.load import load_model

    torch.manual_seed(0)
    model = load_model(MODEL)
    add_fused_lm_head(model)
    model.train()
    ids = torch.randint(5, 300, (2, 12))
    labels = ids.clone()
    labels[0, :5] = labels[1, :8] = -100
    count = int((labels[:, 1:] != -100).sum())
    observer = Observer(model)
    if fused:
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        (-out.log_probs.sum() / count * 3).backward()
    else:
        (model(input_ids=ids, labels=labels).loss * 3).backward()
    observer.close()
    (record,) = observer.records
    assert record.where == ("lm_head_input" if fused else "logits")
    with torch.no_grad():
        expected = -model(input_ids=ids).logits.log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    trained = labels[:, 1:] != -100  # logit position t predicts token t + 1
    assert torch.equal(record.grad_norm[:, :-1] > 0, trained)
    torch.testing.assert_close(record.token_loss[:, :-1][trained], expected[trained], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(record.weight[:, :-1][trained], torch.full((count,), 3 / count), rtol=1e-4, atol=0)
    assert torch.equal(record.target[:, :-1][trained], ids[:, 1:][trained])


def test_a_failure_inside_the_backward_hook_leaves_the_backward_alone_and_is_reported(monkeypatch):
    import gradscope
    from fixtures.trainers import MODEL
    from gradscope.integrations import GradscopeCallback, observe
    from gradscope.model.load import load_model

    def broken(*args, **kwargs):
        raise RuntimeError("cannot read this gradient")

    monkeypatch.setattr(observe, "_read", broken)
    model = load_model(MODEL)
    callback = GradscopeCallback(write_report=False)
    callback.on_train_begin(None, None, None, model=model)
    model.train()
    ids = torch.randint(5, 300, (1, 8))
    model(input_ids=ids, labels=ids).loss.backward()  # the trainer's backward completes
    assert model.get_input_embeddings().weight.grad is not None
    with pytest.raises(gradscope.GradscopeError, match="RuntimeError: cannot read this gradient"):
        callback.on_pre_optimizer_step(None, None, None)


@pytest.mark.parametrize("dtype, autocast", [(torch.bfloat16, False), (torch.float32, True)])
def test_fused_path_re_projects_in_the_precision_the_head_ran_in(dtype, autocast):
    """A bf16 head, or bf16 autocast: the per-token loss read back is the trainer's own log-probability (an fp32
    re-projection is off by about 3e-2 here), and the weight is the loss's 1 / count."""
    import contextlib

    from trl.trainer.utils import add_fused_lm_head

    from fixtures.trainers import MODEL
    from gradscope.integrations.observe import Observer
    from gradscope.model.load import load_model

    torch.manual_seed(1)
    model = load_model(MODEL).to(dtype)
    add_fused_lm_head(model)
    model.train()
    ids = torch.randint(5, 300, (3, 40))
    labels = ids.clone()
    labels[0, :5] = labels[1, :20] = labels[2, :39] = -100
    observer = Observer(model)
    with torch.autocast("cpu", torch.bfloat16) if autocast else contextlib.nullcontext():
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    (-out.log_probs.sum() / 7).backward()
    observer.close()
    (record,) = observer.records
    trained = labels[:, 1:] != -100
    assert torch.equal(record.grad_norm[:, :-1] > 0, trained)
    own = -out.log_probs.detach().float()
    torch.testing.assert_close(record.token_loss[:, :-1][trained], own[trained], rtol=0, atol=1e-5)
    torch.testing.assert_close(
        record.weight[:, :-1][trained], torch.full((int(trained.sum()),), 1 / 7), rtol=0.01, atol=0
    )
    assert torch.equal(record.target[:, :-1][trained], ids[:, 1:][trained])
