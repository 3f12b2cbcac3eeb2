"""gradscope on the batches TRL's own SFT pipeline builds, as a new user would check them.

Each test builds a tiny random model of one architecture in memory, lets ``SFTTrainer`` prepare a small dataset
(prompt-completion strings, or conversations) and collate it with its own data collator
(``trainer.get_train_dataloader()``: the very batches ``trainer.train()`` would see, in order), and checks the
collated batch with ``gradscope.check``. A last case uses transformers' own LM collator with pad == eos.

What TRL 1.16 hands the model: ``input_ids``, ``labels`` and ``attention_mask``, nothing else. Labels are built during
dataset preparation: ``assistant_masks`` always, and ``completion_mask`` when ``completion_only_loss=True``, are folded
into them and the columns dropped; with ``completion_only_loss=False`` the ``completion_mask`` column stays in the
prepared dataset but the collator ignores it. So the collated batch never carries a role tensor. Where a test needs
roles it rebuilds them the way a user would (with TRL's own tokenization) and adds the role tensor beside TRL's
batch; TRL's ``labels`` are never touched.
"""

from __future__ import annotations

import pytest

pytest.importorskip("trl")
pytest.importorskip("datasets")

# SFTConfig defaults gradient_checkpointing=True, which transformers 5 renames: noise, not a finding.
pytestmark = pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")

from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer, DataCollatorForLanguageModeling  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402
from trl.data_utils import common_prefix_length  # noqa: E402

import gradscope  # noqa: E402

TOKENIZER = Path(__file__).resolve().parents[2] / "fixtures" / "models" / "tiny-llama-chat"

ROWS = [
    {"prompt": "What is 2+2?", "completion": " It is 4."},
    {"prompt": "Name a colour of the sky.", "completion": " Blue, on a clear day."},
    {"prompt": "Say hi", "completion": " Hi!"},
    {"prompt": "Translate 'chat' from French:", "completion": " cat"},
]

CONVERSATIONS = [
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6, of course."},
    ],
    [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}],
    [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "A pear."}],
]

TEXTS = ["The cat sat on the mat.", "Hello there", "A longer line of plain text to pad the others against."]


# --- tiny random models, one per architecture ---------------------------------------------------------------------


def _ids(tok) -> dict:
    """The special ids a user copies from the tokenizer into the config (this tokenizer has no BOS)."""
    return {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id, "bos_token_id": None}


def _llama(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            **_ids(tok),
        )
    )


def _gpt2(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=256, **_ids(tok))
    )


def _qwen2(tok):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            **_ids(tok),
        )
    )


def _mistral(tok):
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(
        MistralConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            sliding_window=None,
            **_ids(tok),
        )
    )


def _gemma(tok):
    from transformers import GemmaConfig, GemmaForCausalLM

    return GemmaForCausalLM(
        GemmaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=256,
            **_ids(tok),
        )
    )


def _phi3(tok):
    from transformers import Phi3Config, Phi3ForCausalLM

    return Phi3ForCausalLM(
        Phi3Config(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            original_max_position_embeddings=256,
            **_ids(tok),
        )
    )


def _opt(tok):
    from transformers import OPTConfig, OPTForCausalLM

    return OPTForCausalLM(
        OPTConfig(
            vocab_size=len(tok),
            hidden_size=32,
            ffn_dim=64,
            word_embed_proj_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
            **_ids(tok),
        )
    )


ARCHITECTURES = {
    "llama": _llama,
    "gpt2": _gpt2,
    "qwen2": _qwen2,
    "mistral": _mistral,
    "gemma": _gemma,
    "phi3": _phi3,
    "opt": _opt,
}


def build_model(arch: str, tok):
    torch.manual_seed(0)
    model = ARCHITECTURES[arch](tok)
    assert model.get_input_embeddings().num_embeddings == len(tok)
    return model


@pytest.fixture
def tok():
    """A fresh tokenizer per test: SFTTrainer sets its pad token, and case 3 changes it."""
    if not (TOKENIZER / "tokenizer.json").exists():
        pytest.fail(f"missing tokenizer fixture {TOKENIZER}")
    return AutoTokenizer.from_pretrained(TOKENIZER)


# --- TRL's pipeline ----------------------------------------------------------------------------------------------


def trl_batch(model, tok, tmp_path, rows=ROWS, **options):
    """Build an SFTTrainer as a user would and take the first batch its train dataloader yields.

    Returns the trainer and the batch. One batch holds every row; the sequential sampler keeps dataset order so
    that rows can be matched to ``trainer.train_dataset``.
    """
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        report_to=[],
        max_length=128,
        per_device_train_batch_size=len(rows),
        train_sampling_strategy="sequential",
        use_cpu=True,
        bf16=False,
        fp16=False,
        save_strategy="no",
        logging_strategy="no",
        **options,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    batch = dict(next(iter(trainer.get_train_dataloader())))
    # TRL 1.16's collator returns exactly input_ids, labels and attention_mask: never a role tensor.
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    prepared = trainer.train_dataset
    assert len(prepared) == len(rows)
    for i, row in enumerate(prepared):  # the batch is the prepared dataset, in order, right-padded
        n = len(row["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == row["input_ids"]
        assert batch["labels"][i, :n].tolist() == row["labels"]
        assert (batch["labels"][i, n:] == -100).all()
        assert batch["attention_mask"][i].sum() == n
    return trainer, batch


def derived_completion_mask(trainer, tok, batch) -> torch.Tensor:
    """The completion mask a user rebuilds with TRL's own tokenization.

    TRL tokenizes the prompt alone (``processing_class(text=prompt)``) and prompt + completion, and the completion
    starts where the two diverge (``common_prefix_length``). Same here, against the prepared ``input_ids``.
    """
    mask = torch.zeros_like(batch["input_ids"])
    for i, row in enumerate(trainer.train_dataset):
        prompt_len = common_prefix_length(tok(text=row["prompt"])["input_ids"], row["input_ids"])
        assert 0 < prompt_len < len(row["input_ids"])
        mask[i, prompt_len : len(row["input_ids"])] = 1
    return mask


def pairs(report) -> set[tuple[str, int | None]]:
    return {(f.check, f.sample) for f in report.findings}


# --- 1. completion_only_loss=True: clean -------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_completion_only_loss_batch_is_clean(arch, tok, tmp_path):
    model = build_model(arch, tok)
    trainer, batch = trl_batch(model, tok, tmp_path, completion_only_loss=True)
    # TRL 1.16 folds completion_mask into the labels and drops the column: the collated batch has no role tensor.
    assert "completion_mask" not in trainer.train_dataset.column_names

    # As TRL hands it over: the rows are not chats, so the ChatML markers find no turn and the roles are unknown:
    # pad/eos/no_loss/alignment are checked and pass, and the report says it is not verified.
    plain = gradscope.check(model, batch, tokenizer=tok)
    assert plain.ok, plain.findings
    assert pairs(plain) == {("roles_unknown", None)} and plain.summary()["verified"] is False
    assert [s.roles_source for s in plain.samples] == ["unknown"] * len(ROWS)

    # With the user's roles (TRL's own prompt/completion split) added beside TRL's untouched labels.
    labels = batch["labels"].clone()
    roles = derived_completion_mask(trainer, tok, batch)
    report = gradscope.check(model, {**batch, "completion_mask": roles}, tokenizer=tok)
    assert torch.equal(batch["labels"], labels)
    assert report.ok, [(f.check, f.sample, f.positions, f.message) for f in report.findings]
    assert report.findings == []
    assert report.notes == []

    assert len(report.samples) == len(ROWS)
    for i, sample in enumerate(report.samples):
        n = int(batch["attention_mask"][i].sum())
        start = int(roles[i].nonzero()[0])
        assert sample.trained_positions == list(range(start, n)), f"sample {i}"
        prompt = [t for t in sample.tokens if t.role == "prompt"]
        assert [t.position for t in prompt] == list(range(start))
        assert not any(t.trained for t in prompt)
        assert all(t.label == -100 for t in prompt)
        assert all(t.role == "pad" and not t.trained for t in sample.tokens[n:])
        last = sample.tokens[n - 1]  # TRL appends EOS to the completion: it is trained
        assert (last.token_id, last.role, last.trained) == (tok.eos_token_id, "completion", True)
        assert last.target_id == tok.eos_token_id


# --- 2. completion_only_loss=False: every prompt leaks -----------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_full_sequence_loss_flags_prompt_leak(arch, tok, tmp_path):
    model = build_model(arch, tok)
    trainer, batch = trl_batch(model, tok, tmp_path, completion_only_loss=False)
    real = batch["attention_mask"].bool()
    assert torch.equal(batch["labels"][real], batch["input_ids"][real])  # TRL trains every real token

    # Without roles gradscope cannot tell a prompt token from a completion token: not verified, never clean.
    plain = gradscope.check(model, batch, tokenizer=tok)
    assert pairs(plain) == {("roles_unknown", None)}

    # TRL's collator drops the roles, but in this mode the prepared dataset keeps TRL's own completion_mask column
    # (it only folds it into labels when completion_only_loss=True). Pad it to the batch and add it as the role
    # tensor, which is what the user meant to train. It must agree with the split rebuilt from the tokenizer.
    assert "completion_mask" in trainer.train_dataset.column_names
    roles = torch.zeros_like(batch["input_ids"])
    for i, row in enumerate(trainer.train_dataset):
        roles[i, : len(row["completion_mask"])] = torch.tensor(row["completion_mask"])
    assert torch.equal(roles, derived_completion_mask(trainer, tok, batch))

    labels = batch["labels"].clone()
    report = gradscope.check(model, {**batch, "completion_mask": roles}, tokenizer=tok)
    assert torch.equal(batch["labels"], labels)
    assert not report.ok
    assert pairs(report) == {("prompt_leak", i) for i in range(len(ROWS))}
    for finding in report.findings:
        start = int(roles[finding.sample].nonzero()[0])
        assert finding.positions == list(range(1, start))  # position 0 is never predicted
        assert finding.severity == "error"
        assert "completion_only_loss=True" in finding.message


# --- conversational data: assistant_only_loss ----------------------------------------------------------------------


def chat_assistant_masks(tok, batch) -> torch.Tensor:
    """The assistant mask a user rebuilds with the same call TRL makes (the template's {% generation %} markers)."""
    mask = torch.zeros_like(batch["input_ids"])
    for i, messages in enumerate(CONVERSATIONS):
        out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        n = len(out["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == out["input_ids"]
        mask[i, :n] = torch.tensor(out["assistant_masks"])
    return mask


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_assistant_only_loss_multi_turn_is_clean(arch, tok, tmp_path):
    model = build_model(arch, tok)
    rows = [{"messages": m} for m in CONVERSATIONS]
    trainer, batch = trl_batch(model, tok, tmp_path, rows, assistant_only_loss=True)
    # assistant_masks is folded into the labels and dropped during preparation, like completion_mask.
    assert "assistant_masks" not in trainer.train_dataset.column_names

    # Without a role tensor the roles come from the ChatML template's markers, and agree with TRL's labels.
    plain = gradscope.check(model, batch, tokenizer=tok)
    assert plain.findings == [], [(f.check, f.sample, f.positions) for f in plain.findings]
    assert [s.roles_source for s in plain.samples] == ["chat_template"] * len(CONVERSATIONS)

    roles = chat_assistant_masks(tok, batch)
    report = gradscope.check(model, {**batch, "assistant_masks": roles}, tokenizer=tok)
    assert report.findings == [], [(f.check, f.sample, f.positions, f.message) for f in report.findings]
    assert report.notes == []
    ends_checked = 0
    for i, sample in enumerate(report.samples):
        assert sample.trained_positions == roles[i].nonzero().flatten().tolist(), f"sample {i}"
        for t in sample.tokens:
            if t.token_id == tok.eos_token_id and t.role != "pad":  # <|im_end|> trained iff it ends an assistant turn
                assert t.trained == (t.role == "completion"), (i, t.position)
                ends_checked += t.trained
    assert ends_checked == sum(m["role"] == "assistant" for c in CONVERSATIONS for m in c)


@pytest.mark.parametrize("arch", ["llama", "gemma", "opt"])
def test_full_conversation_loss_flags_prompt_leak(arch, tok, tmp_path):
    model = build_model(arch, tok)
    rows = [{"messages": m} for m in CONVERSATIONS]
    _, batch = trl_batch(model, tok, tmp_path, rows, assistant_only_loss=False)
    # TRL's batch as it is: the template's markers give the roles, so the leak is seen without a role tensor.
    assert pairs(gradscope.check(model, batch, tokenizer=tok)) == {
        ("prompt_leak", i) for i in range(len(CONVERSATIONS))
    }
    roles = chat_assistant_masks(tok, batch)
    report = gradscope.check(model, {**batch, "assistant_masks": roles}, tokenizer=tok)
    assert pairs(report) == {("prompt_leak", i) for i in range(len(CONVERSATIONS))}
    for finding in report.findings:
        i = finding.sample
        prompt = (roles[i] == 0) & batch["attention_mask"][i].bool()
        assert finding.positions == [p for p in prompt.nonzero().flatten().tolist() if p > 0]


# --- 3. pad == eos in transformers' collator: the real EOS is masked ---------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_pad_equals_eos_collator_flags_eos_untrained(arch, tok, tmp_path):
    tok.pad_token = tok.eos_token  # the common "no pad token? use EOS" fix, on this copy only
    assert tok.pad_token_id == tok.eos_token_id
    model = build_model(arch, tok)
    rows = [tok(text + tok.eos_token) for text in TEXTS]
    assert all(r["input_ids"][-1] == tok.eos_token_id for r in rows)
    assert all(r["input_ids"].count(tok.eos_token_id) == 1 for r in rows)
    batch = dict(DataCollatorForLanguageModeling(tok, mlm=False)(rows))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}

    report = gradscope.check(model, batch, tokenizer=tok)
    assert not report.ok
    # Plain texts: no role source reads them (not verified), and the gradient shows the untrained EOS.
    assert pairs(report) == {("eos_untrained", i) for i in range(len(TEXTS))} | {("roles_unknown", None)}
    for finding in report.errors:
        n = len(rows[finding.sample]["input_ids"])
        assert finding.positions == [n - 1]
        assert "pad_token == eos_token" in finding.message
    for i, sample in enumerate(report.samples):  # everything else of the text is trained
        n = len(rows[i]["input_ids"])
        assert sample.trained_positions == list(range(1, n - 1))


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_trl_collator_with_pad_equals_eos_keeps_eos_trained(arch, tok, tmp_path):
    # The contrast: TRL 1.16 builds labels before padding and pads them with -100 by length, not by token id, so
    # the same pad == eos tokenizer leaves the real EOS trained.
    tok.pad_token = tok.eos_token
    model = build_model(arch, tok)
    trainer, batch = trl_batch(model, tok, tmp_path, completion_only_loss=True)
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.eos_token_id).all()  # padded with EOS
    roles = derived_completion_mask(trainer, tok, batch)
    report = gradscope.check(model, {**batch, "completion_mask": roles}, tokenizer=tok)
    assert report.findings == [], [(f.check, f.sample, f.positions) for f in report.findings]
    for i, sample in enumerate(report.samples):
        last = sample.tokens[int(batch["attention_mask"][i].sum()) - 1]
        assert (last.token_id, last.trained) == (tok.eos_token_id, True)
