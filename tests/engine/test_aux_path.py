"""Padding reached outside the logits: the numbers against the auxiliary loss's own gradient, and the path named."""

from __future__ import annotations

import torch
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

import gradscope
from gradscope.data.batch import real_tokens
from gradscope.engine.aux_path import padding_path

STOCK, UNMASKED = "models/tiny-mixtral", "models/tiny-mixtral-unmasked-aux"


def aux_gradient_at_embeddings(model, batch) -> torch.Tensor:
    """(B, T) the norm of d(coef * router loss over every position)/d(embedding), computed here alone: the
    router logits of a forward from the embeddings, transformers' load_balancing_loss_func without a mask."""
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    out = model.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], output_router_logits=True)
    aux = model.router_aux_loss_coef * load_balancing_loss_func(
        out.router_logits, model.config.num_local_experts, model.config.num_experts_per_tok
    )
    (grad,) = torch.autograd.grad(aux, embeds)
    return grad.norm(dim=-1)


def test_padding_reached_by_the_router_loss_is_its_gradient_alone(fixture_model, fixture_batch):
    model, tokenizer = fixture_model(UNMASKED, trust_remote_code=True)
    batch = fixture_batch("llama_clean")
    pad = ~real_tokens(batch)
    report = gradscope.check(model, batch, tokenizer=tokenizer)
    expected = aux_gradient_at_embeddings(model, batch)
    found = {f.sample: f for f in report.findings if f.check == "aux_loss_reaches_padding"}
    assert sorted(found) == [1, 2] and [f.check for f in report.findings] == ["aux_loss_reaches_padding"] * 2
    for row, finding in found.items():
        assert finding.positions == (pad[row] & (expected[row] > 0)).nonzero().flatten().tolist()
        assert finding.positions == pad[row].nonzero().flatten().tolist()  # every pad is routed, so every pad
        got = torch.tensor([report.samples[row].tokens[p].embedding_grad_norm for p in finding.positions])
        torch.testing.assert_close(got, expected[row, finding.positions], rtol=1e-4, atol=1e-9)
        assert f"norm {float(expected[row, finding.positions].norm()):.3g}" in finding.message
        assert "through model.layers.1.mlp.gate (and model.layers.0.mlp.gate, of the same class)" in finding.message
        assert "attention_mask" in finding.message and "--" not in finding.message


def test_a_router_loss_masked_by_the_attention_mask_leaves_padding_alone(fixture_model, fixture_batch):
    model, tokenizer = fixture_model(STOCK)
    batch = fixture_batch("llama_clean")
    report = gradscope.check(model, batch, tokenizer=tokenizer)
    assert report.findings == []
    pad = ~real_tokens(batch)
    norms = torch.tensor([[t.embedding_grad_norm for t in s.tokens] for s in report.samples])
    assert (norms[pad] == 0).all() and (norms[~pad] > 0).any()


def test_a_trained_pad_is_reached_through_the_logits_not_outside_them(tiny_model):
    """pad_leak's padding gets its gradient from its own logit, and padding that real tokens attend to gets it from
    theirs: neither is outside the logits."""
    model = tiny_model("llama")
    ids = torch.randint(6, 97, (1, 10), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    declared = torch.zeros(1, 10, dtype=torch.bool)
    declared[0, 3:5] = True  # called padding here, attended by the tokens after it (the mask is all ones)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    path = padding_path(model, batch, declared)
    assert not path.reached.any() and path.modules == []
    assert (path.norms == 0).all()
