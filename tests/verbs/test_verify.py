"""gradscope.verify: the finite-difference machinery against derivatives worked out by hand, then on the models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gradscope.engine.finite_diff import (
    FLOAT32,
    FLOAT64,
    KeepFloat64,
    autograd_gradients,
    check_gradient,
    effective_precision,
    finite_difference,
)
from gradscope.model.usercode import load_loss_fn
from gradscope.verbs.verify import verify

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
X, Y, W1, W2 = 0.5, 0.2, 0.8, -1.3


def chain(tanh=torch.tanh):
    """h = tanh(w1 * x), o = tanh(w2 * h), L = 1/2 (y - o)^2, as a function of [w1, w2, x]."""

    def fn(tensors):
        w1, w2, x = tensors
        h = tanh(w1 * x)
        o = tanh(w2 * h)
        return 0.5 * (Y - o) ** 2

    return fn


def by_hand() -> dict[str, float]:
    """The chain rule, one factor at a time.

    dL/do = -(y - o) = o - y
    do/dw2 = (1 - o^2) * h               (tanh' = 1 - tanh^2)
    dL/dh = (o - y) * (1 - o^2) * w2
    dh/dw1 = (1 - h^2) * x,  dh/dx = (1 - h^2) * w1
    so dL/dw2 = (o - y)(1 - o^2) h,  dL/dw1 = (o - y)(1 - o^2) w2 (1 - h^2) x,  dL/dx = (o - y)(1 - o^2) w2 (1 - h^2) w1
    """
    h = math.tanh(W1 * X)
    o = math.tanh(W2 * h)
    upstream = (o - Y) * (1 - o**2)
    return {
        "L": 0.5 * (Y - o) ** 2,
        "w1": upstream * W2 * (1 - h**2) * X,
        "w2": upstream * h,
        "x": upstream * W2 * (1 - h**2) * W1,
    }


def _point() -> list[torch.Tensor]:
    return [torch.tensor(v, dtype=torch.float64) for v in (W1, W2, X)]


def test_chain_rule_example_autograd_reproduces_the_hand_derivation():
    expected = by_hand()
    value, grads = autograd_gradients(chain(), _point())
    assert value == pytest.approx(expected["L"], rel=1e-14)
    assert [float(g) for g in grads] == pytest.approx([expected["w1"], expected["w2"], expected["x"]], rel=1e-12)


@pytest.mark.parametrize("index, name", [(0, "w1"), (1, "w2"), (2, "x")])
def test_chain_rule_example_finite_differences_reproduce_the_hand_derivation(index, name):
    one = torch.tensor(1.0, dtype=torch.float64)  # the unit direction of a scalar: the partial derivative
    assert finite_difference(chain(), _point(), index, one, FLOAT64.step) == pytest.approx(by_hand()[name], rel=1e-9)


def test_chain_rule_example_passes_the_check():
    value, precision, checks = check_gradient(chain(), _point(), names=["w1", "w2", "x"], directions=1)
    assert precision is FLOAT64
    assert value == pytest.approx(by_hand()["L"])
    assert {c.target for c in checks} == {"w1", "w2", "x"}
    assert all(c.ok for c in checks), checks
    assert max(c.relative_error for c in checks) < 1e-9


class ForgetfulTanh(torch.autograd.Function):
    """tanh whose backward forgets the (1 - tanh^2) factor."""

    @staticmethod
    def forward(ctx, x):
        return torch.tanh(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def test_chain_rule_example_with_a_wrong_backward_is_caught():
    _, _, checks = check_gradient(chain(ForgetfulTanh.apply), _point(), names=["w1", "w2", "x"], directions=1)
    assert not any(c.ok for c in checks)
    # Autograd now gives g = (o - y) h for dL/dw2 instead of (o - y)(1 - o^2) h. Along its direction sign(g), autograd
    # reads |g| and finite differences read the true derivative times sign(g): |(o - y)(1 - o^2) h|, same sign.
    h = math.tanh(W1 * X)
    o = math.tanh(W2 * h)
    wrong_w2 = next(c for c in checks if c.target == "w2" and c.direction == "gradient")
    assert wrong_w2.autograd == pytest.approx(abs((o - Y) * h), rel=1e-12)
    assert wrong_w2.finite_difference == pytest.approx(abs(by_hand()["w2"]), rel=1e-8)


def test_fourth_order_difference_is_exact_on_a_quartic():
    torch.manual_seed(0)
    x = torch.randn(5, dtype=torch.float64)
    d = torch.randn(5, dtype=torch.float64)
    d /= d.norm()
    fn = lambda t: (t[0] ** 4 - 3 * t[0] ** 3 + t[0]).sum()  # noqa: E731
    exact = float(((4 * x**3 - 9 * x**2 + 1) * d).sum())
    assert finite_difference(fn, [x], 0, d, 0.1) == pytest.approx(exact, rel=1e-10)


def test_effective_precision_sees_float32_inside_a_float64_function():
    x = [torch.linspace(0.1, 1.0, 7, dtype=torch.float64)]
    in_float64 = lambda t: (t[0] ** 2).sum().log()  # noqa: E731
    through_float32 = lambda t: (t[0].float() ** 2).sum().log().double()  # noqa: E731
    for fn, expected in ((in_float64, FLOAT64), (through_float32, FLOAT32)):
        value, grads = autograd_gradients(fn, x)
        assert effective_precision(fn, x, grads, value) is expected
    with KeepFloat64():  # the cast goes up instead of down
        value, grads = autograd_gradients(through_float32, x)
        assert effective_precision(through_float32, x, grads, value) is FLOAT64


MODELS = [
    "models/tiny-llama-chat",
    "models/tiny-gpt2",
    "adapters/tiny-llama-lora",
    "adapters/tiny-llama-lora-detached",
    "models/tiny-llama-frozen-block",
    "models/tiny-llama-exploding",
]


@pytest.mark.parametrize("name", MODELS)
def test_verify_passes_on_the_fixture_models(name, fixture_model, fixture_batch):
    model, _ = fixture_model(name)
    batch = fixture_batch("gpt2_clean" if "gpt2" in name else "llama_clean")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = verify(model, batch, directions=1, parameters=1)
    v = report.verify
    assert report.findings == [], v.checks
    assert v.dtype == "float64" and v.precision == "float64"
    assert {c.target for c in v.checks} == {
        "input embeddings",
        next(n for n, p in model.named_parameters() if p.requires_grad),
    }
    assert v.max_relative_error < FLOAT64.tolerance
    assert all(torch.equal(t, before[k]) for k, t in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("loss, mismatch", [("fused_token_mean", False), ("wrong_backward", True)])
def test_verify_catches_the_wrong_backward_loss(loss, mismatch, fixture_model, fixture_batch):
    model, _ = fixture_model("models/tiny-llama-chat")
    loss_fn = load_loss_fn(f"{FIXTURES / 'losses.py'}:{loss}")
    report = verify(model, fixture_batch("llama_clean"), loss_fn=loss_fn, directions=1, parameters=1)
    assert [f.check for f in report.findings] == (["gradient_mismatch"] if mismatch else [])
    if mismatch:
        # the backward divides by every position instead of the labelled ones: autograd is too small by that ratio
        labels = fixture_batch("llama_clean")["labels"][:, 1:]
        ratio = float((labels != -100).sum()) / labels.numel()
        for c in report.verify.checks:
            assert c.autograd == pytest.approx(ratio * c.finite_difference, rel=1e-6)
        assert "input embeddings" in report.findings[0].message


def test_fixture_losses_agree_with_cross_entropy():
    """The custom losses compute the right value; only wrong_backward's gradient is off."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[-100, 1, 2, -100, 3], [-100, -100, 4, 5, 6]])
    reference = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    (expected,) = torch.autograd.grad(reference, logits)
    for name, scale in (("token_mean", 1.0), ("fused_token_mean", 1.0), ("wrong_backward", 6 / 8)):
        loss = load_loss_fn(f"{FIXTURES / 'losses.py'}:{name}")(logits, labels)
        assert float(loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-12)
        (grad,) = torch.autograd.grad(loss, logits)
        torch.testing.assert_close(grad, scale * expected)


def test_falls_back_to_float32_when_the_loss_refuses_float64(tiny_model, make_batch):
    def float32_only(logits, labels):
        if logits.dtype == torch.float64:
            raise RuntimeError("this kernel has no float64 version")
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)

    report = verify(tiny_model("llama"), make_batch(), loss_fn=float32_only, directions=1, parameters=1)
    v = report.verify
    assert (v.dtype, v.precision, v.tolerance) == ("float32", "float32", FLOAT32.tolerance)
    assert any("float32" in note for note in v.notes)
    assert report.findings == [], v.checks


def test_a_nan_loss_is_nonfinite_with_nothing_to_compare(tiny_model, make_batch):
    report = verify(
        tiny_model("llama"), make_batch(), loss_fn=lambda logits, labels: logits.sum() * float("nan"), parameters=1
    )
    assert [f.check for f in report.findings] == ["nonfinite"]
    assert report.verify.checks == [] and report.verify.max_relative_error is None
