"""The masking-only depth: the network without autograd, the loss's own backward only, and the same verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gradscope
from gradscope.data.batch import with_default_labels
from gradscope.engine.loss_only import forward_loss_backward
from gradscope.engine.run import find_decoder_layers, forward_backward
from gradscope.errors import InputError, ModelCallError

FIXTURES = Path(__file__).resolve().parent.parent.parent / "fixtures"
CATALOGUE = json.loads((FIXTURES / "catalogue.json").read_text())
# the only findings that need a backward through the network
NETWORK_CHECKS = {"causal_leak", "cross_document_leak", "aux_loss_reaches_padding"}


def _batch(vocab: int = 97, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two rows of 12 tokens; row 1 right-padded from 9; labels on positions 4-8 of real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, vocab, (2, 12), generator=g)
    attention = torch.ones_like(ids)
    attention[1, 9:] = 0
    labels = ids.clone()
    labels[:, :4] = -100
    labels[attention == 0] = -100
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def _per_token(report: gradscope.Report, key: str) -> torch.Tensor:
    return torch.tensor(
        [float("nan") if getattr(t, key) is None else float(getattr(t, key)) for s in report.samples for t in s.tokens],
        dtype=torch.float64,
    )


@pytest.mark.parametrize("case", CATALOGUE, ids=[c["name"] for c in CATALOGUE])
def test_logits_depth_gives_the_full_checks_verdict_on_every_catalogue_case(case, run_case):
    full = run_case(case, depth="full")
    masking = run_case(case, depth="logits")
    assert [s.trained_positions for s in masking.samples] == [s.trained_positions for s in full.samples]
    assert [[(t.trained, t.role) for t in s.tokens] for s in masking.samples] == [
        [(t.trained, t.role) for t in s.tokens] for s in full.samples
    ]
    for key in ("target_id", "label", "token_id"):
        torch.testing.assert_close(_per_token(masking, key), _per_token(full, key), rtol=0, atol=0, equal_nan=True)
    for key in ("loss", "weight", "logit_grad_norm"):
        torch.testing.assert_close(
            _per_token(masking, key), _per_token(full, key), rtol=1e-5, atol=1e-7, equal_nan=True
        )
    torch.testing.assert_close(torch.tensor(masking.losses), torch.tensor(full.losses), equal_nan=True)

    def findings(report):
        return [(f.check, f.severity, f.sample, f.positions, f.message) for f in report.findings]

    assert findings(masking) == [f for f in findings(full) if f[0] not in NETWORK_CHECKS]
    assert [(a.batch, a.micro_batches, a.trained_tokens) for a in masking.accumulation] == [
        (a.batch, a.micro_batches, a.trained_tokens) for a in full.accumulation
    ]
    assert [x for a in masking.accumulation for x in (a.cosine, a.relative_error)] == pytest.approx(
        [x for a in full.accumulation for x in (a.cosine, a.relative_error)], rel=1e-4, abs=1e-6
    )


def test_the_catalogue_has_leaks_only_the_full_depth_sees():
    """The equality above is not vacuous: the catalogue holds cases whose findings the masking depth cannot give,
    and cases with masking findings it must give."""
    expected = {e["check"] for c in CATALOGUE for e in c["expect"]}
    assert expected & NETWORK_CHECKS and expected - NETWORK_CHECKS >= {"prompt_leak", "eos_untrained", "no_loss"}
    assert any(c.get("accumulate") for c in CATALOGUE) and any("loss" in c for c in CATALOGUE)


def test_capture_matches_cross_entropy_computed_independently(random_model):
    batch = _batch()
    capture = forward_loss_backward(random_model, batch)
    logits = random_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.detach()
    targets = batch["labels"][:, 1:]
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:], reduction="none")
    torch.testing.assert_close(capture.token_loss[:, 1:], per_token, rtol=1e-5, atol=1e-6)
    trained = targets != -100
    assert torch.equal(capture.logit_grad_norm[:, 1:] > 0, trained)
    assert torch.equal(capture.target_id[:, 1:], torch.where(trained, targets, -1))
    expected_weight = torch.where(trained, 1.0 / trained.sum(), 0.0)  # a mean over the trained tokens
    torch.testing.assert_close(capture.weight[:, 1:], expected_weight, rtol=1e-4, atol=1e-7)
    reference = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100)
    assert capture.loss == pytest.approx(float(reference), rel=1e-5)
    assert capture.network_backward is False and capture.layer_grad_norms.shape[1] == 0


def test_the_network_runs_without_autograd_and_the_model_is_left_as_found(random_model):
    seen = []
    hooks = [
        layer.register_forward_hook(lambda m, a, out: seen.append((torch.is_grad_enabled(), out[0].requires_grad)))
        for layer in find_decoder_layers(random_model)
    ]
    flags = [p.requires_grad for p in random_model.parameters()]
    try:
        forward_loss_backward(random_model, _batch())
    finally:
        for h in hooks:
            h.remove()
    assert seen == [(False, False)] * len(find_decoder_layers(random_model))
    assert [p.requires_grad for p in random_model.parameters()] == flags and not random_model.training
    assert torch.is_grad_enabled()


def test_the_users_loss_is_what_is_differentiated(random_model):
    def doubled_sum(logits, labels):  # weight 2 on every trained token, whatever their number
        return 2 * F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="sum")

    batch = _batch()
    capture = forward_loss_backward(random_model, batch, loss_fn=doubled_sum)
    trained = batch["labels"][:, 1:] != -100
    torch.testing.assert_close(capture.weight[:, 1:], torch.where(trained, 2.0, 0.0), rtol=1e-4, atol=1e-6)
    full = forward_backward(random_model, batch, loss_fn=doubled_sum)
    torch.testing.assert_close(capture.weight, full.weight, equal_nan=True)


def test_a_loss_that_skips_the_logits_is_refused(random_model):
    def no_logits(logits, labels):
        return random_model.get_input_embeddings().weight.sum() * 0 + torch.ones((), requires_grad=True)

    with pytest.raises(ModelCallError, match="does not flow through outputs.logits"):
        forward_loss_backward(random_model, _batch(), loss_fn=no_logits)


def test_without_an_output_embedding_module_the_verdict_is_the_same(random_model, monkeypatch):
    batch = _batch(seed=3)
    expected = forward_loss_backward(random_model, batch)
    monkeypatch.setattr(random_model, "get_output_embeddings", lambda: None)
    got = forward_loss_backward(random_model, batch)
    for key in ("token_loss", "logit_grad_norm", "target_id", "weight"):
        torch.testing.assert_close(getattr(got, key), getattr(expected, key), equal_nan=True)


def test_logits_depth_reports_what_it_did_not_run(random_model):
    report = gradscope.check(random_model, with_default_labels(_batch()), depth="logits")
    data = report.to_dict()
    assert data["depth"] == "logits"
    assert data["probes"]["causal"]["ran"] is False and "not run" in data["probes"]["causal"]["note"]
    assert data["probes"]["packing"]["ran"] is False and "not run" in data["probes"]["packing"]["note"]
    assert data["probes"]["weights"]["ran"] is True
    assert all(t["embedding_grad_norm"] is None for s in data["samples"] for t in s["tokens"])
    assert all(s["layer_grad_norms"] == [] for s in data["samples"])
    assert any("layer gradient norms" in n and "not run" in n for n in data["summary"]["notes"])
    assert gradscope.check(random_model, with_default_labels(_batch())).to_dict()["depth"] == "full"


def test_an_unknown_depth_is_an_input_error_naming_the_parameter(random_model):
    with pytest.raises(InputError, match="depth 'shallow'.*full, logits"):
        gradscope.check(random_model, _batch(), depth="shallow")


def test_the_heat_map_of_a_logits_depth_sample_draws_without_the_norms_it_lacks(random_model):
    import io

    from rich.console import Console

    from gradscope.render.inspect import HeatMap

    report = gradscope.check(random_model, with_default_labels(_batch()), depth="logits")
    console = Console(width=100, file=io.StringIO())
    console.print(HeatMap(report.samples[0]))
    assert "emb" not in console.file.getvalue() and "sample" in console.file.getvalue()
