"""The default check keeps no graph: its core backward frees the forward as a bare step does, the screen reads what
that backward left, and the windows run the forward again only where the screen fires. Their verdicts equal those
read off the graph kept from the core run (the reference)."""

from __future__ import annotations

import weakref

import pytest
import torch

import gradscope
from gradscope.engine import rerun as rerun_module
from gradscope.engine import run as run_module
from gradscope.engine.probes import ProbeRun
from gradscope.engine.run import forward_backward


def _packed_batch() -> dict[str, torch.Tensor]:
    """One row of two documents [0, 5), [5, 12) with restarted position_ids; document 1's end untrained."""
    ids = torch.randint(6, 97, (1, 12), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[0, [3, 4, 5, 11]] = -100
    return {"input_ids": ids, "labels": labels, "position_ids": torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]])}


def _probes(model: torch.nn.Module, batch: dict[str, torch.Tensor], **options: bool) -> ProbeRun:
    starts = torch.zeros(1, 12, dtype=torch.bool)
    starts[0, [0, 5]] = True
    probes = ProbeRun(starts, torch.ones(1, 12, dtype=torch.bool), causal=True, packing=True)
    forward_backward(model, batch, after_backward=probes, **options)
    return probes


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("use_cache", [False, True], ids=["isolated", "cache-leak"])
def test_probes_on_the_freed_graph_match_the_kept_graph(arch, use_cache, tiny_model, monkeypatch):
    model = tiny_model(arch)
    model.config.use_cache = use_cache  # True: the second document sees the first through the cache
    kept = _probes(model, _packed_batch())
    reruns = []
    real = rerun_module.forward_again
    monkeypatch.setattr(run_module, "forward_again", lambda *a: reruns.append(1) or real(*a))  # where it is called
    freed = _probes(model, _packed_batch(), rerun=True)
    assert torch.equal(freed.screen.reached, kept.screen.reached) and freed.windows == kept.windows
    assert len(reruns) == (1 if use_cache else 0)  # a clean batch never runs the forward again
    if use_cache:
        assert kept.screen.rows == [0] and kept.windows  # the screen fired, so the windows ran
        assert torch.equal(freed.dependence.seen, kept.dependence.seen)
        assert freed.dependence.seen[:, 0, :5].any()  # the window over document 2 sees document 1
    else:
        assert freed.dependence is None and kept.dependence is None
    assert freed.unexplained == kept.unexplained


def _saved_after_backward(model: torch.nn.Module, batch: dict[str, torch.Tensor], **options: object) -> int:
    """Bytes of the forward's saved tensors (parameters and inputs aside) still alive when the probes start."""
    saved: list[weakref.ref] = []
    keep = {id(p) for p in model.parameters()}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in keep and tensor.numel() > 12:  # not a parameter or a (1, 12) input
            saved.append(weakref.ref(tensor))
        return tensor

    alive = []

    def probes(graph: object) -> None:
        alive.append(sum(t.numel() * t.element_size() for r in saved if (t := r()) is not None))

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward_backward(model, batch, after_backward=probes, **options)
    return alive[0]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_freed_graph_holds_no_activation_when_the_probes_start(arch, tiny_model):
    model = tiny_model(arch)
    kept = _saved_after_backward(model, _packed_batch())
    freed = _saved_after_backward(model, _packed_batch(), rerun=True)
    assert kept > 50_000  # the reference: the retained graph holds every layer's activations
    assert freed < kept / 20


def test_the_default_check_frees_the_graph_and_the_windows_option_keeps_it(monkeypatch, tiny_model, make_batch):
    check_module = __import__("importlib").import_module("gradscope.verbs.check")
    seen: list[bool] = []
    real = check_module.forward_backward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("rerun", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(check_module, "forward_backward", spy)
    model = tiny_model("llama")
    gradscope.check(model, make_batch())
    gradscope.check(model, make_batch(), windows=1)  # windows in every row: the kept graph serves them
    gradscope.check(model, make_batch(), accumulate=3)  # the accumulation probe reads the loss's graph
    assert seen == [True, False, False]
