"""gradscope.check end to end on the committed fixtures: each catalogue case yields exactly its findings."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

import gradscope
from gradscope.batch import with_default_labels
from gradscope.load import load_batches
from gradscope.testing import assert_masking
from tests.conftest import FIXTURES, fixture_model

CATALOGUE = json.loads((FIXTURES / "catalogue.json").read_text())
LLAMA, GPT2 = "models/tiny-llama-chat", "models/tiny-gpt2"


def run_case(case: dict) -> gradscope.Report:
    model, tokenizer = fixture_model(case["model"])
    batches = load_batches(FIXTURES / case["data"], pad_token_id=tokenizer.pad_token_id, batch_size=case.get("batch_size", 1))
    return gradscope.check_batches(model, batches, tokenizer=tokenizer)


@pytest.mark.parametrize("case", CATALOGUE, ids=[c["name"] for c in CATALOGUE])
def test_catalogue_case_yields_exactly_its_findings(case):
    report = run_case(case)
    got = sorted((f.check, f.sample) for f in report.findings)
    assert got == sorted((e["check"], e["sample"]) for e in case["expect"])
    assert report.ok == (not case["expect"])
    for f in report.findings:
        assert f.severity == "error" and f.message


def test_catalogue_covers_every_check_on_both_architectures():
    by_model = {LLAMA: set(), GPT2: set()}
    for case in CATALOGUE:
        by_model[case["model"]].update(e["check"] for e in case["expect"]) or by_model[case["model"]].add("clean")
    assert {"clean", "prompt_leak", "pad_leak", "eos_untrained", "no_loss", "label_misaligned"} <= by_model[GPT2] | {"clean"}
    assert {"prompt_leak", "pad_leak", "completion_untrained", "eos_untrained", "no_loss", "label_misaligned"} <= by_model[LLAMA]
    assert any(not c["expect"] for c in CATALOGUE if c["model"] == GPT2)
    assert any(not c["expect"] for c in CATALOGUE if c["model"] == LLAMA)


@pytest.mark.parametrize("name", [LLAMA, GPT2])
def test_per_token_loss_matches_cross_entropy_on_fixture_models(name):
    model, tokenizer = fixture_model(name)
    data = "llama_clean" if name == LLAMA else "gpt2_clean"
    [batch] = load_batches(FIXTURES / "batches" / f"{data}.safetensors", pad_token_id=tokenizer.pad_token_id)
    report = gradscope.check(model, batch, tokenizer=tokenizer)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:], reduction="none")
    got = torch.tensor([[t.loss for t in s.tokens[1:]] for s in report.samples])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_trained_tokens_are_exactly_the_labelled_ones():
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


def test_report_json_schema_v1():
    report = run_case(next(c for c in CATALOGUE if c["name"].startswith("llama_prompt_leak")))
    data = json.loads(json.dumps(report.to_dict()))  # strictly JSON: no NaN
    assert data["schema_version"] == 1
    assert set(data) >= {"model", "samples", "findings", "summary"}
    token = data["samples"][0]["tokens"][1]
    assert set(token) >= {"position", "token_id", "text", "role", "label", "trained", "target_id", "loss", "weight",
                          "logit_grad_norm", "embedding_grad_norm"}
    assert data["samples"][0]["tokens"][0]["loss"] is None
    layers = data["samples"][0]["layer_grad_norms"]
    assert len(layers) == data["model"]["num_layers"] == 2
    assert all(len(row) == len(data["samples"][0]["tokens"]) for row in layers)
    assert set(data["findings"][0]) == {"check", "severity", "sample", "positions", "message"}
    assert data["summary"]["ok"] is False and data["summary"]["errors"] == len(data["findings"])


def test_roles_unknown_is_said():
    report = run_case(next(c for c in CATALOGUE if c["name"].startswith("llama_unknown_roles")))
    assert report.ok
    assert any("roles unknown" in n for n in report.notes)
    assert {t.role for s in report.samples for t in s.tokens} <= {None, "pad"}


def test_nonfinite_weights_are_reported_once_for_the_batch():
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


def test_assert_masking_lists_every_finding():
    model, tokenizer = fixture_model(LLAMA)
    [leaky] = load_batches(FIXTURES / "batches/llama_prompt_leak.safetensors", pad_token_id=tokenizer.pad_token_id)
    with pytest.raises(AssertionError) as err:
        assert_masking(model, leaky, tokenizer=tokenizer)
    assert str(err.value).count("- prompt_leak (sample") == 3
    [clean] = load_batches(FIXTURES / "batches/llama_clean.safetensors", pad_token_id=tokenizer.pad_token_id)
    assert assert_masking(model, clean, tokenizer=tokenizer).ok


def test_bad_batch_raises_input_error():
    model, _ = fixture_model(LLAMA)
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(gradscope.DataError, match="shape"):
        gradscope.check(model, {"input_ids": ids, "labels": torch.tensor([[1, 2]])})
    with pytest.raises(gradscope.DataError, match="row 0: position 2"):
        gradscope.check(model, {"input_ids": torch.tensor([[1, 2, 10**6]])})


def test_bfloat16_model_reads_the_same_trained_tokens_with_fp32_norms():
    from gradscope.load import load_model

    model = load_model(FIXTURES / LLAMA, dtype="bfloat16")
    _, tokenizer = fixture_model(LLAMA)
    [batch] = load_batches(FIXTURES / "batches/llama_pad_leak.safetensors", pad_token_id=tokenizer.pad_token_id)
    half = gradscope.check(model, batch, tokenizer=tokenizer)
    full = gradscope.check(fixture_model(LLAMA)[0], batch, tokenizer=tokenizer)
    assert half.model["dtype"] == "bfloat16"
    assert [(f.check, f.sample, f.positions) for f in half.findings] == [(f.check, f.sample, f.positions) for f in full.findings]
    for s_half, s_full in zip(half.samples, full.samples):
        assert [t.trained for t in s_half.tokens] == [t.trained for t in s_full.tokens]
        torch.testing.assert_close(torch.tensor(s_half.layer_grad_norms), torch.tensor(s_full.layer_grad_norms), rtol=0.1, atol=1e-4)
