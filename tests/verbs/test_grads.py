"""gradscope.grads against independent computations: loss.backward(), clip_grad_norm_, real SGD and AdamW steps."""

from __future__ import annotations

import copy
import json
import math
import re
import warnings
from pathlib import Path

import pytest
import torch

from gradscope.checks.grads import GradThresholds, clip_factor, depth_gradient, depth_ratio
from gradscope.engine.params import block_part, parameter_layout
from gradscope.report.weights import GradReport
from gradscope.verbs.grads import grads

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
LR = 1e-3
MODEL_KEYS = ("input_ids", "attention_mask", "labels")


def _float64_llama(tiny_model):
    return tiny_model("llama").double().train()


def _reference(model, batch):
    """A copy whose .grad holds the gradient from a plain loss.backward()."""
    ref = copy.deepcopy(model)
    ref.train()
    ref(**{k: batch[k] for k in MODEL_KEYS}).loss.backward()
    return ref


def test_parameter_norms_match_backward(make_batch, tiny_model):
    model = _float64_llama(tiny_model)
    g = grads(model, make_batch()).grads
    ref = dict(_reference(model, make_batch()).named_parameters())
    assert len(g.parameters) == len(ref)
    for p in g.parameters:
        assert p.grad_norm == pytest.approx(float(ref[p.name].grad.norm()), rel=1e-9)
        assert p.weight_norm == pytest.approx(float(ref[p.name].detach().norm()), rel=1e-12)
        assert p.status == "trained"


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_global_norm_and_clip_factor_match_clip_grad_norm(max_norm, make_batch, tiny_model):
    model = _float64_llama(tiny_model)
    g = grads(model, make_batch(), max_grad_norm=max_norm).grads
    ref = _reference(model, make_batch())
    before = torch.cat([p.grad.flatten() for p in ref.parameters()]).clone()
    total = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm)
    after = torch.cat([p.grad.flatten() for p in ref.parameters()])
    assert g.global_norm == pytest.approx(float(total), rel=1e-9)
    assert g.clip_factor == pytest.approx(float(after.norm() / before.norm()), rel=1e-9)
    assert (g.clip_factor == 1.0) == (max_norm == 100.0)


def _step(model, batch, optimizer):
    """Weights before and after one real optimizer step, by name."""
    ref = _reference(model, batch)
    before = {n: p.detach().clone() for n, p in ref.named_parameters()}
    optimizer(ref.parameters()).step()
    return before, dict(ref.named_parameters())


@pytest.mark.parametrize(
    "field, optimizer",
    [
        ("sgd_update_ratio", lambda ps: torch.optim.SGD(ps, lr=LR)),
        ("adam_update_ratio", lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=0.0)),
    ],
)
def test_update_ratios_match_a_real_optimizer_step(field, optimizer, make_batch, tiny_model):
    model = _float64_llama(tiny_model)
    g = grads(model, make_batch(), lr=LR).grads
    before, after = _step(model, make_batch(), optimizer)
    for p in g.parameters:
        delta = (after[p.name].detach() - before[p.name]).norm()
        assert getattr(p, field) == pytest.approx(float(delta / before[p.name].norm()), rel=1e-6), p.name
    for row in g.modules:  # a row: the step over all its parameters against all its weights
        names = [p.name for p in g.parameters if p.group == row.name]
        delta = math.sqrt(sum(float((after[n].detach() - before[n]).norm()) ** 2 for n in names))
        weight = math.sqrt(sum(float(before[n].norm()) ** 2 for n in names))
        assert getattr(row, field) == pytest.approx(delta / weight, rel=1e-6), row.name


def _expected_group(name: str) -> str:
    """The group a parameter belongs to, read off its name (Llama and GPT-2 spellings)."""
    if m := re.match(r".*(?:layers|h)\.(\d+)\.(\w+)", name):
        layer, child = m.groups()
        part = "norms" if "norm" in child or child.startswith("ln") else "attention" if "attn" in child else "mlp"
        return f"layer {layer} {part}"
    if re.search(r"embed_tokens|wte|wpe", name):
        return "embedding"
    if re.search(r"\.norm\.|ln_f", name):
        return "final norm"
    return "head" if name.startswith("lm_head") else "other"


def test_groups_found_by_structure_agree_with_names(random_model):
    slots = parameter_layout(random_model)
    assert [s.group for s in slots] == [_expected_group(s.name) for s in slots]
    assert {s.name for s in slots} == {n for n, _ in random_model.named_parameters()}


def test_tied_embedding_is_reported_once(tiny_model, make_batch):
    model = tiny_model("gpt2")
    g = grads(model, make_batch()).grads
    names = [p.name for p in g.parameters]
    assert "lm_head.weight" not in names
    wte = next(p for p in g.parameters if p.name == "transformer.wte.weight")
    assert wte.tied_to == ["lm_head.weight"] and wte.group == "embedding"
    assert any("tied" in note for note in g.notes)
    assert sum(m.parameters for m in g.modules) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, child, part",
    [
        ("self_attn", torch.nn.Linear(2, 2), "attention"),
        ("post_attention_layernorm", torch.nn.LayerNorm(2), "norms"),
        ("ln_1", torch.nn.LayerNorm(2), "norms"),
        ("mlp", torch.nn.Linear(2, 2), "mlp"),
        ("block_sparse_moe", torch.nn.Linear(2, 2), "mlp"),
        ("adapter_gate", torch.nn.Linear(2, 2), "other"),
    ],
)
def test_block_part(name, child, part):
    assert block_part(name, child) == part


def test_model_is_left_exactly_as_it_was(tiny_model, make_batch):
    model = tiny_model("gpt2", dropout=0.1)
    model.train()
    model.transformer.h[0].mlp.c_fc.weight.requires_grad_(False)  # the user's own freezing
    accumulated = torch.randn_like(model.lm_head.weight)
    model.lm_head.weight.grad = accumulated.clone()  # a gradient the user is accumulating
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    g = grads(model, make_batch()).grads
    assert all(p.grad is None for n, p in model.named_parameters() if n != "transformer.wte.weight")
    assert torch.equal(model.lm_head.weight.grad, accumulated)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(m.training for m in model.modules()) and model.transformer.drop.p == 0.1
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert next(p for p in g.parameters if p.name == "transformer.h.0.mlp.c_fc.weight").status == "frozen"
    model.eval()
    grads(model, make_batch())
    assert not any(m.training for m in model.modules())


def _lora(model, **kwargs):
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a transformers API marked deprecated
        return get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], **kwargs))


def test_fresh_lora_is_clean_and_its_weights_are_restored_after_the_probe(tiny_model, make_batch):
    model = _lora(tiny_model("llama"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = grads(model, make_batch())
    g = report.grads
    # lora_B = 0 at init, so lora_A's gradient is exactly zero now: the probe step shows it is not stuck.
    assert any("exactly zero gradient" in note for note in g.notes)
    assert report.findings == []
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    adapter = {p.name for p in g.parameters if p.adapter}
    assert adapter == {n for n, p in model.named_parameters() if p.requires_grad}
    assert g.adapter["adapter"]["trainable_parameters"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert g.adapter["base"]["trainable_parameters"] == 0 and g.adapter["peft_type"] == ["LORA"]


def _untrained_modules(report) -> set[str]:
    return {p.module for p in report.grads.parameters if p.status in ("no_gradient", "zero_gradient")}


def test_reentrant_checkpointing_without_input_grads_detaches_the_adapters(tiny_model, make_batch):
    model = _lora(tiny_model("llama"))
    model.base_model.model.activation_checkpointing_enable({"use_reentrant": True})
    model.base_model.model.disable_input_require_grads()  # what a custom training loop forgets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that no input requires grad: that is the bug
        report = grads(model, make_batch())
    assert [f.check for f in report.findings] == ["untrained_parameters"]
    assert "no gradient reaches" in report.findings[0].message
    assert _untrained_modules(report) == {
        f"base_model.model.model.layers.{i}.self_attn.{m}" for i in range(3) for m in ("q_proj", "v_proj")
    }


def test_a_detached_block_cuts_everything_below_it(tiny_model, make_batch):
    model = tiny_model("llama")
    handle = model.model.layers[1].register_forward_hook(lambda m, a, out: out.detach())
    try:
        report = grads(model, make_batch())
    finally:
        handle.remove()
    expected = {
        n.rpartition(".")[0]
        for n, _ in model.named_parameters()
        if re.match(r"model\.(embed_tokens|layers\.[01]\.)", n)
    }
    assert _untrained_modules(report) == expected
    assert [f.check for f in report.findings] == ["untrained_parameters"]


def test_frozen_model_is_the_only_finding(tiny_model, make_batch):
    model = tiny_model("llama")
    model.requires_grad_(False)
    try:
        report = grads(model, make_batch())
    finally:
        model.requires_grad_(True)
    assert [f.check for f in report.findings] == ["frozen_model"]
    assert report.grads.global_norm is None and report.grads.clip_factor is None


def test_nan_weight_gives_nonfinite_and_no_depth_verdict(tiny_model, make_batch):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    report = grads(model, make_batch())
    assert [f.check for f in report.findings] == ["nonfinite"]
    assert "the loss is nan" in report.findings[0].message


def _synthetic(blocks: list[float | None]) -> GradReport:
    return GradReport(1.0, 1e-4, 1.0, 5.0, clip_factor(5.0, 1.0), depth_ratio(blocks), blocks, [], [])


@pytest.mark.parametrize(
    "blocks, check",
    [
        ([50.0, 9.0, 4.0], "exploding_gradient"),
        ([0.01, 0.2, 1.5], "vanishing_gradient"),
        ([2.0, 1.0, 0.5], None),
        ([None, 1.0, 0.0, 200.0], "vanishing_gradient"),  # blocks without gradient left out: 1.0 against 200
        ([1.0], None),
    ],
)
def test_depth_checks(blocks, check):
    finding = depth_gradient(_synthetic(blocks), GradThresholds(depth_ratio=10.0))
    assert (finding.check if finding else None) == check
    if finding:
        assert "threshold 10" in finding.message and f"ratio {depth_ratio(blocks):.3g}" in finding.message


def test_depth_ratio_and_clip_factor_by_hand():
    assert depth_ratio([None, 8.0, 0.0, 2.0]) == 4.0
    assert depth_ratio([3.0]) is None
    assert clip_factor(4.0, 1.0) == pytest.approx(1.0 / (4.0 + 1e-6))
    assert clip_factor(0.5, 1.0) == 1.0 and clip_factor(math.nan, 1.0) is None


CASES = json.loads((FIXTURES / "grads_catalogue.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_catalogue_case_yields_exactly_its_findings(case, fixture_model, fixture_batch):
    model, _ = fixture_model(case["model"])
    report = grads(model, fixture_batch(case["data"].removeprefix("batches/").removesuffix(".safetensors")))
    assert [f.check for f in report.findings] == case["expect"]
    assert _untrained_modules(report) == set(case.get("modules", []))
    for module in case.get("modules", [])[:6]:
        assert module in report.findings[0].message
