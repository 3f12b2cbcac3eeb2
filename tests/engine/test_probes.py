"""gradscope.probes against independent computations: the dependence a causal, packed model must have, plain
autograd per micro-batch, and the closed form of a token-mean loss accumulated over micro-batches."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gradscope
from gradscope.engine import accumulate as accumulate_module
from gradscope.engine import screen
from gradscope.engine.accumulate import accumulate
from gradscope.engine.forward import Graph
from gradscope.engine.probes import trace_dependence
from gradscope.engine.run import forward_backward
from gradscope.engine.windows import Window, plan_windows

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def _starts(t: int, *boundaries: int) -> torch.Tensor:
    starts = torch.zeros(1, t, dtype=torch.bool)
    starts[0, list(boundaries)] = True
    return starts


def test_unpacked_row_is_cut_at_quarters():
    windows = plan_windows(_starts(12), torch.ones(1, 12, dtype=torch.bool), causal=True, packing=True, per_row=3)
    assert [(w.slice, w.start, w.cut, w.boundary, w.future) for w in windows] == [
        (0, 0, 3, False, True),
        (1, 0, 6, False, True),
        (2, 0, 9, False, True),
    ]


def test_packed_row_windows_start_at_boundaries_and_cut_inside_documents():
    # documents [0, 4), [4, 10), [10, 12)
    windows = plan_windows(
        _starts(12, 4, 10), torch.ones(1, 12, dtype=torch.bool), causal=True, packing=True, per_row=3
    )
    assert [(w.start, w.cut, w.boundary) for w in windows] == [(0, 1, False), (4, 7, True), (10, 12, True)]
    assert [w.future for w in windows] == [True, True, False]  # the last document's cut is the row's end


def test_packing_only_windows_run_to_the_end_and_padding_is_left_out():
    real = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)  # left and right padding
    windows = plan_windows(_starts(8, 1, 4), real, causal=False, packing=True, per_row=3)
    assert [(w.start, w.cut, w.boundary, w.future) for w in windows] == [(4, 7, True, False)]
    assert plan_windows(_starts(8), real, causal=False, packing=True) == []
    assert plan_windows(_starts(3), torch.tensor([[1, 0, 0]], dtype=torch.bool), causal=True, packing=True) == []


def test_many_boundaries_are_spread_over_the_row():
    starts = _starts(40, *range(4, 40, 4))  # 9 boundaries
    windows = plan_windows(starts, torch.ones(1, 40, dtype=torch.bool), causal=True, packing=True, per_row=3)
    assert [w.start for w in windows] == [0, 16, 36]


def _graph(model, batch):
    """forward_backward's graph, kept for the test."""
    kept = []
    forward_backward(model, batch, after_backward=kept.append)
    return kept[0]


def _packed_batch():
    """One row of two documents [0, 5), [5, 12) with restarted position_ids, no attention_mask."""
    ids = torch.randint(6, 97, (1, 12), generator=torch.Generator().manual_seed(3))
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]])
    return {"input_ids": ids, "labels": ids.clone(), "position_ids": position_ids}


def _packed_dependence(model, use_cache: bool):
    """The packed batch through ``model`` (use_cache=True breaks isolation): its windows and their dependence."""
    model.config.use_cache = use_cache
    graph = _graph(model, _packed_batch())
    windows = plan_windows(_starts(12, 5), torch.ones(1, 12, dtype=torch.bool), causal=True, packing=True, per_row=3)
    return graph, windows, trace_dependence(graph, windows)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_dependence_is_exactly_the_causal_document_prefix(arch, tiny_model):
    _, windows, dep = _packed_dependence(tiny_model(arch), use_cache=False)
    assert dep.batched and dep.passes == 3
    for w in windows:
        doc_start = 5 if w.start >= 5 else 0
        expected = torch.zeros(12, dtype=torch.bool)
        expected[doc_start : w.cut] = True  # every earlier position of the same document, nothing else
        assert torch.equal(dep.seen[w.slice, 0], expected), w


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_dependence_matches_brute_force_jacobian_when_documents_leak(arch, tiny_model):
    model = tiny_model(arch)
    _, windows, dep = _packed_dependence(model, use_cache=True)  # the KV cache turns packed-sequence masking off
    batch = _packed_batch()
    # Independent: the full Jacobian of the logits with respect to the input embeddings, one output at a time.
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, position_ids=batch["position_ids"]).logits[0]  # (T, V)
    depends = torch.stack(
        [torch.autograd.grad(logits[t].sum(), embeds, retain_graph=True)[0][0].ne(0).any(-1) for t in range(12)]
    )
    for w in windows:
        assert torch.equal(dep.seen[w.slice, 0], depends[w.start : w.cut].any(0)), w
    assert depends[5:, :5].any()  # the second document sees the first: the leak is real


def test_loop_fallback_gives_the_same_answer(monkeypatch, tiny_model):
    graph, windows, batched = _packed_dependence(tiny_model("llama"), use_cache=False)
    real_grad = torch.autograd.grad

    def no_vmap(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("vmap: batching rule not implemented")
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_vmap)
    looped = trace_dependence(graph, windows)
    assert not looped.batched and looped.passes == batched.passes
    assert torch.equal(looped.seen, batched.seen)


class _ItemInBackward(torch.autograd.Function):
    """Identity whose backward reads a Python number from the gradient, which vmap cannot batch."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * (1.0 if grad.abs().sum().item() >= 0 else 0.0)


def test_a_model_that_cannot_be_vmapped_falls_back_to_a_loop():
    embedding = torch.randn(1, 6, 4, requires_grad=True)
    hidden = _ItemInBackward.apply(embedding).cumsum(1)  # position t sees positions <= t
    logits = hidden @ torch.randn(4, 9)
    graph = Graph(None, {}, None, embedding, hidden, logits, logits, torch.zeros(()))
    dep = trace_dependence(graph, [Window(0, 0, 0, 3, boundary=False, future=True)])
    assert not dep.batched
    assert dep.seen[0, 0].tolist() == [True, True, True, False, False, False]


def _micro_reference(model, batch, k):
    """The accumulated gradient at the logits by plain autograd: each micro-batch run alone, its loss / k."""
    grads = []
    for rows in torch.tensor_split(torch.arange(len(batch["input_ids"])), k):
        logits = model(input_ids=batch["input_ids"][rows], attention_mask=batch["attention_mask"][rows]).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][rows][:, 1:].flatten(), ignore_index=-100)
        grads.append(torch.autograd.grad(loss / k, logits)[0])
    return torch.cat(grads)


def test_accumulation_matches_plain_autograd_and_the_closed_form(tiny_model, make_batch):
    model = tiny_model("llama")
    batch = {k: v for k, v in make_batch().items() if k != "completion_mask"}
    batch["labels"][2, 4:6] = -100  # trained tokens per row: 3, 3, 1
    graph = _graph(model, batch)
    acc = accumulate(graph, 3)
    full = torch.autograd.grad(graph.loss, graph.logits, retain_graph=True)[0].double()
    summed = _micro_reference(model, batch, 3).double()
    assert acc.cosine == pytest.approx(float((full * summed).sum() / (full.norm() * summed.norm())), rel=1e-6)
    assert acc.relative_error == pytest.approx(float((summed - full).norm() / full.norm()), rel=1e-5)
    # Closed form: with one row per micro-batch, a token of row r weighs 1/(3 n_r) instead of 1/N, so the
    # gradient at its logits is scaled by N/(3 n_r): the relative error weighs each token's |softmax - onehot|^2.
    counts = torch.tensor([3.0, 3.0, 1.0])
    logits = graph.logits.detach().double()
    targets = batch["labels"][:, 1:]
    residual = (logits[:, :-1].softmax(-1) - F.one_hot(targets.clamp_min(0), 97)).pow(2).sum(-1) * (targets != -100)
    per_row = residual.sum(1)
    ratio = counts.sum() / (3 * counts)
    assert acc.relative_error == pytest.approx(
        math.sqrt(float((per_row * (ratio - 1) ** 2).sum() / per_row.sum())), rel=1e-5
    )
    assert acc.rows == [[0], [1], [2]]


def test_accumulation_is_exact_when_micro_batches_hold_equal_tokens(tiny_model, make_batch):
    model = tiny_model("gpt2")
    batch = {k: v for k, v in make_batch().items() if k != "completion_mask"}
    acc = accumulate(_graph(model, batch), 3)  # every row trains positions 4-6
    assert acc.relative_error < 1e-6 and acc.cosine == pytest.approx(1.0, abs=1e-9)


def test_per_sequence_mean_accumulates_exactly(tiny_model, make_batch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("fixture_losses", FIXTURES / "losses.py")
    losses = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(losses)
    model = tiny_model("llama")
    batch = {k: v for k, v in make_batch().items() if k != "completion_mask"}
    batch["labels"][2, 4:6] = -100
    kept = []
    forward_backward(model, batch, loss_fn=losses.per_sequence_mean, after_backward=kept.append)
    assert accumulate(kept[0], 3).relative_error < 1e-6  # a mean of per-row means splits evenly by rows


def test_compare_edge_cases():
    assert accumulate_module._compare(0.0, 0.0, 0.0, 0.0) == (1.0, 0.0, 1.0)  # nothing trained anywhere: equal
    cosine, relative, scale = accumulate_module._compare(2.0, 4.0, 1.0, 1.0)  # acc = full / 2
    assert (cosine, relative, scale) == (1.0, 0.5, 0.5)


def test_core_only_run_keeps_no_graph(monkeypatch, tiny_model, make_batch):
    """With no probe pass to run, the core run is handed no after_backward, so it can free the logits."""
    import importlib

    import gradscope

    check_module = importlib.import_module("gradscope.verbs.check")  # gradscope imports it on first use

    seen = []
    real = check_module.forward_backward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("after_backward"))
        return real(*args, **kwargs)

    monkeypatch.setattr(check_module, "forward_backward", spy)
    model = tiny_model("llama")
    gradscope.check(model, make_batch(), probes=())
    gradscope.check(model, make_batch())
    assert seen[0] is None and seen[1] is not None


def test_tokens_after_the_loss_are_found_per_document():
    # documents [0, 5), [5, 12); padding at 11; logits 1-3 trained in the first, 6-7 in the second
    trained = torch.zeros(1, 12, dtype=torch.bool)
    trained[0, [1, 2, 3, 6, 7]] = True
    real = torch.ones(1, 12, dtype=torch.bool)
    real[0, 11] = False
    after = screen.after_the_loss(trained, _starts(12, 5), real)
    assert after[0].nonzero().flatten().tolist() == [4, 8, 9, 10]
    trained[0, 11] = True  # a trained logit on the padding: everything of the document before it may reach it
    assert screen.after_the_loss(trained, _starts(12, 5), real)[0].nonzero().flatten().tolist() == [4]
    untrained = screen.after_the_loss(torch.zeros(1, 12, dtype=torch.bool), _starts(12, 5), real)
    assert torch.equal(untrained, real)  # nothing trained: no token may be reached


def _independent_loss_grad(model, batch):
    """dL/d(input embeddings) by plain autograd on a fresh forward (inputs_embeds), no gradscope code."""
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    inputs = {k: v for k, v in batch.items() if k not in ("input_ids", "completion_mask")}
    loss = model(inputs_embeds=embeds, **inputs).loss
    return torch.autograd.grad(loss, embeds)[0]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("use_cache", [False, True], ids=["isolated", "cache-leak"])
def test_screen_reads_the_loss_gradient_where_no_trained_logit_may_look(arch, use_cache, tiny_model):
    model = tiny_model(arch)
    model.config.use_cache = use_cache
    batch = _packed_batch()
    batch["labels"][0, [3, 4, 5, 11]] = -100  # logits 2, 3, 4 (document 1's end, the boundary) and 10 untrained
    starts, real = _starts(12, 5), torch.ones(1, 12, dtype=torch.bool)
    found = screen.screen(_graph(model, batch), starts, real)
    assert found.after[0].nonzero().flatten().tolist() == [2, 3, 4, 10, 11]  # 11: the last logit predicts nothing
    reached = _independent_loss_grad(model, batch).ne(0).any(-1)  # (1, T)
    assert torch.equal(found.reached, reached & found.after)
    assert found.boundaries == 1
    if use_cache:  # document 2 sees document 1's last tokens; the future stays unseen
        assert found.reached[0].nonzero().flatten().tolist() == [2, 3, 4]
        assert screen.confirming_windows(found, starts, real, causal=True, packing=True) == [
            Window(0, 0, 0, 4, boundary=False, future=True),
            Window(0, 0, 5, 12, boundary=True, future=False),
        ]
    else:
        assert not found.reached.any()


def test_a_row_the_screen_cannot_test_gets_a_window(tiny_model, make_batch):
    model = tiny_model("llama")
    batch = make_batch()
    # A loss on unshifted labels trains every logit up to the last real token: no token is after the loss.

    def unshifted(logits, labels):
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)

    labels = torch.where(batch["attention_mask"].bool(), batch["input_ids"], -100)
    report = gradscope.check(model, {**batch, "labels": labels}, loss_fn=unshifted, probes=["causal"])
    causal = report.probes["causal"]
    assert causal.backward_passes == 1 and "3 random-projection cut(s)" in causal.note  # one per row, one slice
    assert gradscope.check(model, batch, probes=["causal"]).probes["causal"].backward_passes == 0


def test_a_single_window_takes_the_last_document():
    windows = plan_windows(_starts(12, 4, 10), torch.ones(1, 12, dtype=torch.bool), causal=True, packing=True)
    assert [(w.start, w.cut, w.boundary, w.future) for w in windows] == [(10, 11, True, True)]


def test_a_loss_term_outside_the_logits_is_no_leak(make_batch):
    """Mixtral's router loss reads every token's router logits, so the loss reaches tokens no logit may see."""
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        output_router_logits=True,
        router_aux_loss_coef=0.1,
        eos_token_id=5,
        pad_token_id=0,
    )
    report = gradscope.check(MixtralForCausalLM(config).eval(), make_batch())
    assert report.findings == []
    assert report.probes["causal"].backward_passes == 1  # the confirming windows, all rows in one slice
    assert "in 3 row(s) the loss's gradient reaches such tokens" in report.probes["causal"].note


def test_a_packed_row_that_sees_everything_has_both_leaks(tiny_model):
    model = tiny_model("llama")
    batch = _packed_batch()
    batch["labels"][0, 5] = -100  # the second document's first token is not trained
    batch["attention_mask"] = torch.zeros(1, 1, 12, 12)  # an additive 4D mask that masks nothing
    report = gradscope.check(model, batch)
    assert [(f.check, f.positions) for f in report.findings] == [
        ("causal_leak", [11]),
        ("cross_document_leak", [0, 1, 2, 3, 4]),
        ("roles_unknown", []),  # no tokenizer
    ]
