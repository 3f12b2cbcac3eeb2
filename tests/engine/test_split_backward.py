"""The core backward taken apart at the LM head: the same gradients, and the loss's (B, T, V) tensors freed."""

from __future__ import annotations

import torch

from gradscope.engine.forward import Graph
from gradscope.engine.run import find_decoder_layers, forward_backward
from gradscope.engine.split_backward import only_through


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, 97, (2, 10), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _run(model, batch, loss_graph: bool, loss_fn=None) -> tuple[object, list[Graph], torch.Tensor]:
    graphs, dependence = [], []

    def after(graph: Graph) -> None:
        graphs.append(graph)
        # what a probe does: a VJP from the head's input to the embeddings through the kept graph
        dependence.append(
            torch.autograd.grad(
                graph.head_input, graph.embedding, torch.ones_like(graph.head_input), retain_graph=True
            )[0]
        )

    capture = forward_backward(model, batch, loss_fn=loss_fn, after_backward=after, loss_graph=loss_graph)
    return capture, graphs, dependence[0]


def _same_capture(a, b) -> None:
    for key in ("token_loss", "logit_grad_norm", "target_id", "weight", "embedding_grad_norm", "layer_grad_norms"):
        torch.testing.assert_close(getattr(a, key), getattr(b, key), equal_nan=True, rtol=1e-5, atol=1e-7)
    assert a.loss == b.loss


def test_split_backward_gives_the_single_backwards_gradients_and_frees_the_logits(random_model):
    batch = _batch()
    whole, whole_graphs, whole_vjp = _run(random_model, batch, loss_graph=True)
    split, split_graphs, split_vjp = _run(random_model, batch, loss_graph=False)
    _same_capture(split, whole)
    torch.testing.assert_close(split_vjp, whole_vjp)
    assert whole_graphs[0].logits is not None
    assert split_graphs[0].logits is None and split_graphs[0].head_output is None


def test_a_loss_term_outside_the_logits_keeps_the_single_backward(random_model):
    hidden = []
    layer = find_decoder_layers(random_model)[0]
    handle = layer.register_forward_hook(lambda m, args, out: hidden.append(out[0] if isinstance(out, tuple) else out))

    def with_aux(logits, labels):  # an auxiliary term on a layer's output, as a router's aux loss reaches the network
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100)
        return ce + 1e-3 * hidden[-1].square().mean()

    batch = _batch(1)
    try:
        whole, _, _ = _run(random_model, batch, loss_graph=True, loss_fn=with_aux)
        kept, graphs, _ = _run(random_model, batch, loss_graph=False, loss_fn=with_aux)
    finally:
        handle.remove()
    assert graphs[0].logits is not None  # not split: the aux term's gradient would be lost
    _same_capture(kept, whole)


def test_only_through_sees_a_second_path_to_the_leaf():
    leaf = torch.randn(3, 4, requires_grad=True)
    logits = (leaf * 2).exp()
    assert only_through(logits.log_softmax(-1).sum(), logits, leaf)
    assert not only_through(logits.sum() + leaf.sum(), logits, leaf)
    assert only_through(logits.sum() + torch.ones((), requires_grad=True), logits, leaf)
