"""gradscope.run against independent computations: F.cross_entropy, softmax - onehot, torch.autograd.grad."""

from __future__ import annotations

import functools
import weakref
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from gradscope.engine import logits as engine_logits
from gradscope.engine.logits import logit_grad_stats, logits_finite, token_losses
from gradscope.engine.run import forward_backward, instrumented
from gradscope.model.layers import find_decoder_layers


def _reference(model, batch):
    """The same quantities by plain autograd: per-token CE, the closed-form logit gradient, grads at activations."""
    layers = find_decoder_layers(model)
    outputs = []
    handles = [
        layer.register_forward_hook(lambda m, a, o: outputs.append(o[0] if isinstance(o, tuple) else o))
        for layer in layers
    ]
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    try:
        out = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"])
    finally:
        for h in handles:
            h.remove()
    grads = torch.autograd.grad(out.loss, [out.logits, embeds, *outputs])
    return out, grads


def test_token_loss_matches_cross_entropy(random_model, make_batch):
    batch = make_batch()
    capture = forward_backward(random_model, batch)
    with torch.no_grad():
        logits = random_model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
    expected = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:], reduction="none")
    torch.testing.assert_close(capture.token_loss[:, 1:], expected, rtol=0, atol=1e-5)
    assert torch.isnan(capture.token_loss[:, 0]).all()


def test_logit_gradient_is_softmax_minus_onehot(random_model, make_batch):
    batch = make_batch()
    capture = forward_backward(random_model, batch)
    with torch.no_grad():
        logits = random_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    trained = targets != -100
    n = trained.sum()
    # mean cross-entropy over n tokens: dL/dlogits[t] = (softmax - onehot(label[t+1])) / n
    closed = (logits[:, :-1].softmax(-1) - F.one_hot(targets.clamp_min(0), logits.shape[-1])) / n
    closed = closed * trained[..., None]
    torch.testing.assert_close(capture.logit_grad_norm[:, 1:], closed.norm(dim=-1), rtol=1e-4, atol=1e-7)
    assert torch.equal(capture.target_id[:, 1:], torch.where(trained, targets, -1))
    torch.testing.assert_close(capture.weight[:, 1:], torch.where(trained, 1.0 / n, 0.0), rtol=1e-4, atol=1e-7)


def test_hook_gradients_match_autograd(random_model, make_batch):
    batch = make_batch()
    capture = forward_backward(random_model, batch)
    out, grads = _reference(random_model, batch)
    logit_grad, embed_grad, *layer_grads = grads
    torch.testing.assert_close(capture.logit_grad_norm[:, 1:], logit_grad[:, :-1].norm(dim=-1), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(capture.embedding_grad_norm, embed_grad.norm(dim=-1), rtol=1e-4, atol=1e-7)
    expected = torch.stack([g.norm(dim=-1) for g in layer_grads], dim=1)  # (B, L, T)
    assert capture.layer_grad_norms.shape == expected.shape
    torch.testing.assert_close(capture.layer_grad_norms, expected, rtol=1e-4, atol=1e-7)
    assert capture.loss == pytest.approx(float(out.loss.detach()), rel=1e-6)


def test_logit_grad_stats_reads_weight_and_target():
    torch.manual_seed(1)
    logits = torch.randn(4, 11)
    targets = torch.tensor([3, 0, 7, 10])
    weights = torch.tensor([0.5, 0.0, 2.0, 0.125])
    grad = weights[:, None] * (logits.softmax(-1) - F.one_hot(targets, 11))
    norm, target, weight = logit_grad_stats(logits, grad)
    assert target.tolist() == [3, -1, 7, 10]
    torch.testing.assert_close(weight, weights, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(norm, grad.norm(dim=-1))


def test_token_losses_position_zero_is_nan():
    logits = torch.randn(1, 3, 5)
    ids = torch.tensor([[1, 2, 3]])
    out = token_losses(logits, ids)
    assert torch.isnan(out[0, 0])
    torch.testing.assert_close(out[0, 1:], F.cross_entropy(logits[0, :2], ids[0, 1:], reduction="none"))


def test_custom_loss_fn_is_used(tiny_model, make_batch):
    model = tiny_model("llama")
    batch = make_batch()
    calls = []

    def summed(logits, labels):  # sum, not mean: every trained token weighs 1
        calls.append(labels.shape)
        return F.cross_entropy(
            logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="sum"
        )

    capture = forward_backward(model, batch, loss_fn=summed)
    assert calls == [batch["labels"].shape]
    trained = batch["labels"][:, 1:] != -100
    torch.testing.assert_close(capture.weight[:, 1:], torch.where(trained, 1.0, 0.0), rtol=1e-4, atol=1e-6)


def test_parameters_get_no_grad_and_state_is_restored(tiny_model, make_batch):
    model = tiny_model("gpt2", dropout=0.1)
    model.train()
    model.transformer.h[0].mlp.c_fc.weight.requires_grad_(False)  # a user's own freezing survives
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    forward_backward(model, make_batch())
    assert all(p.grad is None for p in model.parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert all(m.training for m in model.modules())
    assert model.transformer.drop.p == 0.1
    model.eval()
    forward_backward(model, make_batch())
    assert not any(m.training for m in model.modules())


def test_dropout_is_off_so_runs_are_deterministic(tiny_model, make_batch):
    model = tiny_model("gpt2", dropout=0.3)
    first = forward_backward(model, make_batch())
    second = forward_backward(model, make_batch())
    assert first.loss == second.loss
    assert torch.equal(first.layer_grad_norms, second.layer_grad_norms)
    kept = {forward_backward(model, make_batch(), keep_dropout=True).loss for _ in range(3)}
    assert len(kept) > 1  # with dropout kept the runs differ, so the default really turned it off


def test_hooks_are_removed_even_on_error(tiny_model):
    model = tiny_model("llama")
    with pytest.raises(RuntimeError):
        with instrumented(model):
            raise RuntimeError("boom")
    assert not model.get_input_embeddings()._forward_hooks
    assert all(not layer._forward_hooks for layer in find_decoder_layers(model))
    assert all(p.requires_grad for p in model.parameters())


def test_find_decoder_layers_without_names(random_model):
    layers = find_decoder_layers(random_model)
    assert len(layers) == random_model.config.num_hidden_layers
    assert layers is (random_model.model.layers if hasattr(random_model, "model") else random_model.transformer.h)


def test_mixed_precision_forward_returning_fp32_copies_reads_the_logits_the_loss_used(tiny_model, make_batch):
    # accelerate wraps a mixed-precision forward so that it returns its outputs cast to fp32 after computing the loss
    # (Trainer with bf16=True): outputs.logits is then a copy outside the loss's graph.
    accelerate_utils = pytest.importorskip("accelerate.utils")  # installed with the [trl] extra
    convert_outputs_to_fp32 = accelerate_utils.convert_outputs_to_fp32

    model = tiny_model("llama").to(torch.bfloat16)
    batch = make_batch()
    plain = forward_backward(model, batch)
    model.forward = convert_outputs_to_fp32(model.forward)
    try:
        wrapped = forward_backward(model, batch)
    finally:
        del model.forward
    assert torch.equal(wrapped.logit_grad_norm > 0, plain.logit_grad_norm > 0)
    torch.testing.assert_close(wrapped.logit_grad_norm, plain.logit_grad_norm)
    assert torch.equal(wrapped.target_id, plain.target_id)


def test_after_backward_gets_the_live_graph_and_leaves_the_capture_alone(random_model, make_batch):
    batch = make_batch()
    plain = forward_backward(random_model, batch)
    graphs = []

    def probe(graph):
        graphs.append(graph)
        # A batched backward through the same graph must not reach the core's hooks (they cannot run under vmap).
        cotangents = torch.randn(2, *graph.logits.shape)
        torch.autograd.grad(graph.logits, graph.embedding, cotangents, retain_graph=True, is_grads_batched=True)

    probed = forward_backward(random_model, batch, after_backward=probe)
    [graph] = graphs
    assert graph.embedding.shape[:2] == graph.head_input.shape[:2] == graph.logits.shape[:2] == (3, 12)
    assert graph.logits.requires_grad and graph.loss.requires_grad
    torch.testing.assert_close(probed.layer_grad_norms, plain.layer_grad_norms, rtol=0, atol=0)
    torch.testing.assert_close(probed.logit_grad_norm, plain.logit_grad_norm, rtol=0, atol=0)
    assert all(p.requires_grad for p in random_model.parameters())  # restored after the probe ran


def test_weight_is_exact_where_the_target_is_the_most_likely_token():
    # a confident model: p(target) close to 1, where w * (p - 1) has lost its digits
    logits = torch.zeros(3, 40, dtype=torch.float64)
    targets = torch.tensor([7, 0, 39])
    logits[torch.arange(3), targets] = torch.tensor([12.0, 16.0, 9.0], dtype=torch.float64)
    weights = torch.tensor([0.25, 1e-3, 3.0], dtype=torch.float64)
    grad = weights[:, None] * (logits.softmax(-1) - F.one_hot(targets, 40))  # float64, then what autograd would hold
    norm, target, weight = logit_grad_stats(logits.float(), grad.float())
    assert target.tolist() == targets.tolist()
    torch.testing.assert_close(weight, weights.float(), rtol=1e-5, atol=0)
    torch.testing.assert_close(norm, grad.norm(dim=-1).float())


def test_logits_finite_matches_isfinite():
    finite = torch.randn(2, 5, 7)
    assert logits_finite(finite)
    for value in (float("nan"), float("inf"), float("-inf")):
        broken = finite.clone()
        broken[1, 3, 2] = value
        assert logits_finite(broken) == bool(torch.isfinite(broken).all()) is False
    both = finite.clone()
    both[0, 0, 0], both[1, 1, 1] = float("inf"), float("-inf")
    assert not logits_finite(both)


def test_small_chunks_give_the_same_numbers(random_model, monkeypatch, make_batch):
    batch = make_batch()
    whole = forward_backward(random_model, batch)
    monkeypatch.setattr(engine_logits, "CHUNK_ELEMENTS", 97 * 5)  # 5 positions at a time, a partial chunk at the end
    assert len(engine_logits.position_chunks(12, 97)) == 3
    chunked = forward_backward(random_model, batch)
    for name in ("token_loss", "logit_grad_norm", "target_id", "weight"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), rtol=0, atol=0, equal_nan=True)


def test_logits_are_freed_before_the_backward(tiny_model, make_batch):
    seen = []

    def loss_fn(logits, labels):
        alive = weakref.ref(logits)
        logp = logits[:, :-1].log_softmax(-1)
        logp.register_hook(lambda g: seen.append(alive() is None))  # fires in the backward
        return F.nll_loss(logp.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)

    forward_backward(tiny_model("llama"), make_batch(), loss_fn=loss_fn)
    assert seen == [True]


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_norms(reentrant, tiny_model, make_batch):
    model = tiny_model("llama")
    batch = make_batch()
    out, grads = _reference(model, batch)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    capture = forward_backward(model, batch)
    _, embed_grad, *layer_grads = grads
    expected = torch.stack([g.norm(dim=-1) for g in layer_grads], dim=1)
    torch.testing.assert_close(capture.layer_grad_norms, expected, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(capture.embedding_grad_norm, embed_grad.norm(dim=-1), rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())


class _CheckpointedStack(nn.Module):
    """A causal LM that checkpoints each layer's __call__ (transformers 4.x style): module hooks run inside the
    checkpoint, so they fire again when the backward recomputes the layer."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(97, 16)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(3))
        self.head = nn.Linear(16, 97)
        self.gradient_checkpointing = True
        self._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=reentrant)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(self, input_ids, labels, attention_mask=None):
        h = self.embed(input_ids)
        for layer in self.layers:
            h = self._gradient_checkpointing_func(layer.__call__, h) if self.gradient_checkpointing else layer(h)
        logits = self.head(h)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return SimpleNamespace(logits=logits, loss=loss)


@pytest.mark.parametrize("reentrant", [True, False])
def test_layer_hooks_that_fire_again_in_recomputation_count_once(reentrant, make_batch):
    model, batch = _CheckpointedStack(reentrant), make_batch()
    calls = []
    model.layers[0].register_forward_hook(lambda *_: calls.append(1))
    checkpointed = forward_backward(model, batch)
    if reentrant:
        assert len(calls) == 2  # the forward, then the recomputation in the backward (with grad this time)
    model.gradient_checkpointing = False
    plain = forward_backward(model, batch)
    torch.testing.assert_close(checkpointed.layer_grad_norms, plain.layer_grad_norms, rtol=1e-6, atol=0)
    torch.testing.assert_close(checkpointed.embedding_grad_norm, plain.embedding_grad_norm, rtol=1e-6, atol=0)
