"""gradscope.check end to end on the committed fixtures: each catalogue case yields exactly its findings."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gradscope
from gradscope.data.batch import with_default_labels
from gradscope.data.load import load_batches
from gradscope.report.catalogue import CATALOGUE as CATALOGUE_SPECS
from gradscope.testing import assert_masking

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CATALOGUE = json.loads((FIXTURES / "catalogue.json").read_text())
LLAMA, GPT2 = "models/tiny-llama-chat", "models/tiny-gpt2"
WARNINGS = {spec.name for spec in CATALOGUE_SPECS if spec.severity == "warning"}
"""Severities as the check catalogue declares them (held to docs/findings.md by tests/report/test_catalogue.py)."""


def _key(check: str, sample: int | None) -> tuple[str, int]:
    return check, -1 if sample is None else sample


@pytest.mark.parametrize("case", CATALOGUE, ids=[c["name"] for c in CATALOGUE])
def test_catalogue_case_yields_exactly_its_findings(case, run_case):
    report = run_case(case)
    got = sorted(_key(f.check, f.sample) for f in report.findings)
    assert got == sorted(_key(e["check"], e["sample"]) for e in case["expect"])
    assert report.ok == all(e["check"] in WARNINGS for e in case["expect"])
    for f in report.findings:
        assert f.severity == ("warning" if f.check in WARNINGS else "error") and f.message


def test_catalogue_covers_every_check_on_both_architectures():
    by_model = {LLAMA: set(), GPT2: set()}
    for case in CATALOGUE:
        found = by_model.setdefault(case["model"], set())
        found.update(e["check"] for e in case["expect"]) or found.add("clean")
    assert {"clean", "prompt_leak", "pad_leak", "eos_untrained", "no_loss", "label_misaligned"} <= by_model[GPT2] | {
        "clean"
    }
    assert {
        "prompt_leak",
        "pad_leak",
        "completion_untrained",
        "eos_untrained",
        "no_loss",
        "label_misaligned",
    } <= by_model[LLAMA]
    structural = {
        "causal_leak",
        "cross_document_leak",
        "boundary_leak",
        "uneven_token_weights",
        "accumulation_mismatch",
    }
    assert structural <= by_model[LLAMA] and structural <= by_model[GPT2]
    assert any(not c["expect"] for c in CATALOGUE if c["model"] == GPT2)
    assert any(not c["expect"] for c in CATALOGUE if c["model"] == LLAMA)


@pytest.mark.parametrize("name", [LLAMA, GPT2])
def test_per_token_loss_matches_cross_entropy_on_fixture_models(name, fixture_model):
    model, tokenizer = fixture_model(name)
    data = "llama_clean" if name == LLAMA else "gpt2_clean"
    [batch] = load_batches(FIXTURES / "batches" / f"{data}.safetensors", pad_token_id=tokenizer.pad_token_id)
    report = gradscope.check(model, batch, tokenizer=tokenizer)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:], reduction="none")
    got = torch.tensor([[t.loss for t in s.tokens[1:]] for s in report.samples])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_trained_tokens_are_exactly_the_labelled_ones(fixture_model):
    model, tokenizer = fixture_model(LLAMA)
    [batch] = load_batches(FIXTURES / "batches/llama_clean.safetensors", pad_token_id=tokenizer.pad_token_id)
    report = gradscope.check(model, batch, tokenizer=tokenizer)
    trained = torch.tensor([[t.trained for t in s.tokens] for s in report.samples])
    labelled = batch["labels"] != -100
    labelled[:, 0] = False
    assert torch.equal(trained, labelled)
    n = int(labelled.sum())
    for s in report.samples:
        for t in s.tokens:
            assert (t.target_id == t.token_id) if t.trained else t.target_id is None
            if t.trained:
                assert t.weight == pytest.approx(1 / n, rel=1e-4)


def test_report_json_schema_v1(run_case):
    report = run_case(next(c for c in CATALOGUE if c["name"].startswith("llama_prompt_leak")))
    data = json.loads(json.dumps(report.to_dict()))  # strictly JSON: no NaN
    assert data["schema_version"] == 1
    assert set(data) >= {"model", "samples", "findings", "summary"}
    token = data["samples"][0]["tokens"][1]
    assert set(token) >= {
        "position",
        "token_id",
        "text",
        "role",
        "label",
        "trained",
        "target_id",
        "loss",
        "weight",
        "logit_grad_norm",
        "embedding_grad_norm",
    }
    assert data["samples"][0]["tokens"][0]["loss"] is None
    layers = data["samples"][0]["layer_grad_norms"]
    assert len(layers) == data["model"]["num_layers"] == 2
    assert all(len(row) == len(data["samples"][0]["tokens"]) for row in layers)
    assert set(data["findings"][0]) == {"check", "severity", "sample", "positions", "message"}
    assert data["summary"]["ok"] is False and data["summary"]["errors"] == len(data["findings"])


def test_roles_without_a_role_tensor_come_from_the_chat_template(run_case):
    report = run_case(next(c for c in CATALOGUE if c["name"].startswith("llama_unknown_roles")))
    assert report.ok and report.findings == []
    assert [s.roles_source for s in report.samples] == ["chat_template"] * 3
    [clean] = load_batches(FIXTURES / "batches/llama_clean.safetensors", pad_token_id=3)
    # The template's markers give every token the role the fixture's completion_mask gives it, except the "\n" glue
    # after each <|im_end|>, which is not judged.
    for b, sample in enumerate(report.samples):
        for t in sample.tokens:
            if t.role == "pad":
                assert not clean["attention_mask"][b, t.position]
            elif t.role is not None:
                assert (t.role == "completion") == bool(clean["completion_mask"][b, t.position])
            else:
                assert t.text == "\n" and not clean["completion_mask"][b, t.position]


def test_nonfinite_weights_are_reported_once_for_the_batch(fixture_model):
    model, tokenizer = fixture_model(LLAMA)
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.model.norm.weight[0] = float("inf")
    [batch] = load_batches(FIXTURES / "batches/llama_clean.safetensors", pad_token_id=tokenizer.pad_token_id)
    report = gradscope.check(broken, batch, tokenizer=tokenizer)
    assert [(f.check, f.sample) for f in report.findings] == [("nonfinite", None)]


def test_missing_labels_default_to_input_ids_masked_at_padding():
    batch = {"input_ids": torch.tensor([[5, 6, 7, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 0]])}
    assert with_default_labels(batch)["labels"].tolist() == [[5, 6, 7, -100]]


def test_assert_masking_lists_every_finding(fixture_model):
    model, tokenizer = fixture_model(LLAMA)
    [leaky] = load_batches(FIXTURES / "batches/llama_prompt_leak.safetensors", pad_token_id=tokenizer.pad_token_id)
    with pytest.raises(AssertionError) as err:
        assert_masking(model, leaky, tokenizer=tokenizer)
    assert str(err.value).count("- prompt_leak (sample") == 3
    [clean] = load_batches(FIXTURES / "batches/llama_clean.safetensors", pad_token_id=tokenizer.pad_token_id)
    assert assert_masking(model, clean, tokenizer=tokenizer).ok


def test_bad_batch_raises_input_error(fixture_model):
    model, _ = fixture_model(LLAMA)
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(gradscope.DataError, match="shape"):
        gradscope.check(model, {"input_ids": ids, "labels": torch.tensor([[1, 2]])})
    with pytest.raises(gradscope.DataError, match="row 0: position 2"):
        gradscope.check(model, {"input_ids": torch.tensor([[1, 2, 10**6]])})


def _beyond_roles(report: gradscope.Report) -> list:
    """The findings other than roles_unknown: these batches have no roles and no tokenizer, so none are read."""
    assert [f.check for f in report.findings if f.sample is None] == ["roles_unknown"]
    return [f for f in report.findings if f.check != "roles_unknown"]


def _trl_padding_free(model):
    """Three documents through TRL's own padding-free collator: one row, position_ids restarting per document."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(6, 97, (n,), generator=g).tolist()} for n in (7, 5, 9)]
    return dict(DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_trl_padding_free_batch_is_clean_only_when_the_call_isolates_documents(arch, attention, tiny_model):
    model = tiny_model(arch)
    model.set_attn_implementation(attention)
    batch = _trl_padding_free(model)
    model.config.use_cache = False  # what transformers' Trainer sets, and TRL passes
    clean = gradscope.check(model, batch)
    assert _beyond_roles(clean) == []
    isolated = clean.probes["packing"]  # the screen tests both boundaries, so no extra backward pass runs
    assert isolated.ran and isolated.backward_passes == 0 and "2 of 2 document boundaries screened" in isolated.note
    ones = gradscope.check(model, {**batch, "attention_mask": torch.ones_like(batch["input_ids"])})
    assert [(f.check, f.sample, f.positions) for f in _beyond_roles(ones)] == [
        ("cross_document_leak", 0, list(range(12)))
    ]
    assert "attention_mask is passed" in ones.findings[0].message
    model.config.use_cache = True
    cached = gradscope.check(model, batch)
    assert [(f.check, f.sample) for f in _beyond_roles(cached)] == [("cross_document_leak", 0)]
    assert "config has use_cache=True" in cached.findings[0].message
    assert _beyond_roles(gradscope.check(model, {**batch, "use_cache": False})) == []  # TRL's compute_loss passes it
    packing = cached.probes["packing"]  # the screen fired: two confirming windows (the future, later documents)
    assert (
        packing.ran
        and packing.backward_passes == 2
        and packing.batched
        and "2 of 2 document boundaries" in packing.note
    )


def test_documents_declared_only_for_flash_attention_leak_under_sdpa(tiny_model):
    model = tiny_model("llama")
    model.config.use_cache = False
    ids = torch.randint(6, 97, (1, 12), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "labels": ids.clone(), "cu_seq_lens_q": torch.tensor([0, 5, 12], dtype=torch.int32)}
    batch["labels"][0, 5] = -100
    report = gradscope.check(model, batch)
    assert [(f.check, f.positions) for f in _beyond_roles(report)] == [("cross_document_leak", [0, 1, 2, 3, 4])]
    assert "do not restart at 5" in report.findings[0].message and "flash-attention" in report.findings[0].message


def test_eager_attention_adds_a_boolean_4d_mask_instead_of_masking(tiny_model, make_batch):
    """transformers 5.23: eager attention adds a 4D mask to the scores, so a correct boolean mask masks nothing."""
    model = tiny_model("gpt2")
    batch = make_batch()
    causal = torch.ones(12, 12, dtype=torch.bool).tril() & batch["attention_mask"].bool()[:, None, None, :]
    batch["attention_mask"] = causal
    assert gradscope.check(model, batch).findings == []  # sdpa reads a boolean mask as "may attend"
    model.set_attn_implementation("eager")
    report = gradscope.check(model, batch)
    assert [(f.check, f.sample) for f in report.findings] == [
        ("causal_leak", 0),
        ("causal_leak", 1),
        ("causal_leak", 2),
    ]
    assert "additive float mask" in report.findings[0].message
    additive = torch.zeros(causal.shape).masked_fill(~causal, torch.finfo(torch.float32).min)
    assert gradscope.check(model, {**batch, "attention_mask": additive}).findings == []


def test_probes_can_be_chosen_and_their_cost_is_reported(tiny_model):
    model = tiny_model("llama")
    model.config.use_cache = True
    batch = _trl_padding_free(model)
    report = gradscope.check(model, batch, probes=["causal"])
    assert _beyond_roles(report) == []  # the cache leak is there, but packing was not probed
    data = report.to_dict()["probes"]
    assert set(data) == {"causal", "packing", "weights"}
    # The screen sees the loss reach tokens it may not; the causal window finds no future dependence.
    assert data["causal"]["ran"] and data["causal"]["backward_passes"] == 1 and data["causal"]["shared"] == []
    assert (
        "in 1 row(s) the loss's gradient reaches such tokens but no window of the chosen probes"
        in data["causal"]["note"]
    )
    windows = gradscope.check(model, batch, probes=["causal"], windows=3).to_dict()["probes"]["causal"]
    assert windows["backward_passes"] == 4 and "4 random-projection cut(s)" in windows["note"]  # 3 asked, 1 confirming
    assert data["packing"] == {
        "ran": False,
        "seconds": 0.0,
        "backward_passes": 0,
        "forward_passes": 0,
        "batched": None,
        "shared": [],
        "note": "not chosen (--probes)",
    }
    none = gradscope.check(model, batch, probes=[])
    assert not any(p.ran for p in none.probes.values())
    with pytest.raises(gradscope.InputError, match="unknown probe 'casual'"):
        gradscope.check(model, batch, probes=["casual"])


def test_accumulate_reports_each_batch_and_needs_enough_rows(fixture_model):
    model, tokenizer = fixture_model(GPT2)
    [batch] = load_batches(FIXTURES / "batches/gpt2_clean.safetensors", pad_token_id=tokenizer.pad_token_id)
    report = gradscope.check(model, batch, tokenizer=tokenizer, accumulate=3)
    [acc] = report.to_dict()["accumulation"]
    assert acc["micro_batches"] == 3 and acc["trained_tokens"] == [14, 9, 9] and acc["relative_error"] > 0.1
    assert report.probes["accumulate"].forward_passes == 3
    with pytest.raises(gradscope.DataError, match="too few to split into 4"):
        gradscope.check(model, batch, accumulate=4)


def test_bfloat16_model_reads_the_same_trained_tokens_with_fp32_norms(fixture_model):
    from gradscope.model.load import load_model

    model = load_model(FIXTURES / LLAMA, dtype="bfloat16")
    _, tokenizer = fixture_model(LLAMA)
    [batch] = load_batches(FIXTURES / "batches/llama_pad_leak.safetensors", pad_token_id=tokenizer.pad_token_id)
    half = gradscope.check(model, batch, tokenizer=tokenizer)
    full = gradscope.check(fixture_model(LLAMA)[0], batch, tokenizer=tokenizer)
    assert half.model["dtype"] == "bfloat16"
    assert [(f.check, f.sample, f.positions) for f in half.findings] == [
        (f.check, f.sample, f.positions) for f in full.findings
    ]
    for s_half, s_full in zip(half.samples, full.samples, strict=True):
        assert [t.trained for t in s_half.tokens] == [t.trained for t in s_full.tokens]
        torch.testing.assert_close(
            torch.tensor(s_half.layer_grad_norms), torch.tensor(s_full.layer_grad_norms), rtol=0.1, atol=1e-4
        )


def test_end_token_ids_are_the_vocabulary_end_tokens_and_never_the_unknown_token(fixture_model):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from gradscope.data.tokens import END_OF_TURN_TOKENS, default_end_token_ids

    vocab = {"[UNK]": 0, "hello": 1, "<|im_end|>": 2, "</s>": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    with_unk = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    assert with_unk.convert_tokens_to_ids("<|eot_id|>") == 0  # absent tokens map to [UNK] ...
    assert default_end_token_ids(None, with_unk) == {2, 3}  # ... which is not taken for an end token
    for name in (LLAMA, GPT2):
        tokenizer = fixture_model(name)[1]
        known = tokenizer.get_vocab()
        expected = {known[t] for t in END_OF_TURN_TOKENS if t in known} | {tokenizer.eos_token_id} - {None}
        assert default_end_token_ids(None, tokenizer) == expected


def _tiny_gemma3():
    """A random-init Gemma 3 (vision tower included) small enough for the CPU: 35k parameters, built in the test."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    torch.manual_seed(0)
    text = Gemma3TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=128,
        sliding_window=64,
        layer_types=["full_attention", "full_attention"],
    )
    vision = SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        image_token_index=60,
        boi_token_index=61,
        eoi_token_index=62,
    )
    model = Gemma3ForConditionalGeneration(config).eval()
    model.config.use_cache = False
    return model


def test_gemma3_bidirectional_image_tokens_are_no_causal_leak_but_a_mask_without_its_causal_part_is(monkeypatch):
    ids = torch.tensor([[5, 6, 61, 60, 60, 60, 60, 62, 7, 8, 9, 10, 11, 12]])
    labels = torch.where(torch.arange(14) >= 8, ids, -100)
    batch = {"input_ids": ids, "token_type_ids": (ids == 60).long(), "labels": labels}

    def causal(model, **extra):
        report = gradscope.check_batches(model, [{**batch, **extra}], windows=6, probes=("causal",))
        return [f for f in report.findings if f.check == "causal_leak"]

    assert causal(_tiny_gemma3()) == []
    # A custom 4D additive mask of zeros lets every token see the future: a real leak, outside the image too.
    broken = causal(_tiny_gemma3(), attention_mask=torch.zeros(1, 1, 14, 14))
    assert broken and any(p >= 8 for p in broken[0].positions)
    # The clean verdict is the span rule's: with the declaration ignored, the same windows see the image's future.
    monkeypatch.setattr("gradscope.checks.structure.BIDIRECTIONAL_MEDIA_MODELS", ())
    [leak] = causal(_tiny_gemma3())
    assert set(leak.positions) <= {4, 5, 6}
