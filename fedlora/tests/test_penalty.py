"""SubspacePenalty: value and gradient against the dense formula, zero weights, bad input."""
import pytest
import torch

from fedlora.methods import PenaltyWeights
from fedlora.penalty import SubspacePenalty
from fedlora.state import AdapterState, LoraFactors

S = 2.0
R = 4
# Two layers share a shape so the stacked path is exercised; one differs.
SHAPES = {"l0.q": (12, 10), "l1.q": (12, 10), "l0.up": (20, 10), "l0.down": (10, 20)}


def random_lora(seed, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (d_out, d_in) in SHAPES.items():
        A = torch.randn(R, d_in, generator=g, dtype=torch.float64).requires_grad_(requires_grad)
        B = torch.randn(d_out, R, generator=g, dtype=torch.float64).requires_grad_(requires_grad)
        out[name] = LoraFactors(A, B)
    return out


def dense_penalty(live, ref, w):
    total = 0.0
    for name, f in live.items():
        g = ref[name]
        total = total + 0.5 * w.mu * (S * f.B @ f.A - S * g.B @ g.A).square().sum()
        total = total + 0.5 * w.a_b * (f.B - g.B).square().sum()
        total = total + 0.5 * w.lam * (f.A.square().sum() + f.B.square().sum())
    return total / len(live)


@pytest.mark.parametrize(
    "weights",
    [PenaltyWeights(0.05, 0.01, 1e-5), PenaltyWeights(mu=0.7), PenaltyWeights(a_b=0.3), PenaltyWeights(lam=0.2)],
)
def test_value_and_gradient_match_dense(weights):
    ref = random_lora(0)
    penalty = SubspacePenalty(AdapterState(lora=ref), weights, S)
    live = random_lora(1, requires_grad=True)
    value = penalty(live)
    expected = dense_penalty(live, ref, weights)
    assert value.item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-8)
    params = [t for f in live.values() for t in f]
    grads = torch.autograd.grad(value, params, allow_unused=True)
    dense_grads = torch.autograd.grad(expected, params)
    for got, want, param in zip(grads, dense_grads, params):
        got = torch.zeros_like(param) if got is None else got  # a_b alone does not touch A
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-8)


def test_zero_weights_give_exactly_zero():
    ref = random_lora(0)
    live = random_lora(1, requires_grad=True)
    value = SubspacePenalty(AdapterState(lora=ref), PenaltyWeights(), S)(live)
    assert value.item() == 0.0


def test_proximity_terms_vanish_at_the_reference_and_grow_away():
    ref = random_lora(0)
    penalty = SubspacePenalty(AdapterState(lora=ref), PenaltyWeights(mu=1.0, a_b=1.0), S)
    at_ref = penalty({k: LoraFactors(f.A.clone(), f.B.clone()) for k, f in ref.items()})
    assert abs(at_ref.item()) < 1e-9
    moved = {k: LoraFactors(f.A + 0.1, f.B) for k, f in ref.items()}
    assert penalty(moved).item() > 1e-3


def test_reference_is_frozen_at_construction():
    ref = random_lora(0)
    state = AdapterState(lora=ref)
    penalty = SubspacePenalty(state, PenaltyWeights(mu=1.0, a_b=1.0), S)
    before = penalty(random_lora(2)).item()
    for f in ref.values():  # the engine may overwrite the global adapter in place later
        f.A.mul_(3.0)
        f.B.mul_(3.0)
    assert penalty(random_lora(2)).item() == pytest.approx(before, rel=1e-12)


def test_float32_live_uses_float32_references():
    ref = {k: LoraFactors(f.A.float(), f.B.float()) for k, f in random_lora(0).items()}
    live = {k: LoraFactors(f.A.float(), f.B.float()) for k, f in random_lora(1).items()}
    w = PenaltyWeights(0.05, 0.01, 1e-5)
    value = SubspacePenalty(AdapterState(lora=ref), w, S)(live)
    assert value.dtype == torch.float32
    dense = dense_penalty({k: LoraFactors(f.A.double(), f.B.double()) for k, f in live.items()},
                          {k: LoraFactors(f.A.double(), f.B.double()) for k, f in ref.items()}, w)
    assert value.item() == pytest.approx(dense.item(), rel=1e-5)


def test_mismatched_layers_are_named():
    penalty = SubspacePenalty(AdapterState(lora=random_lora(0)), PenaltyWeights(mu=1.0), S)
    live = random_lora(1)
    del live["l0.up"]
    with pytest.raises(ValueError, match="l0.up"):
        penalty(live)
    live = random_lora(1)
    live["l0.q"] = LoraFactors(torch.zeros(R, 11, dtype=torch.float64), live["l0.q"].B)
    with pytest.raises(ValueError, match=r"layer 'l0.q'.*\(4, 11\)"):
        penalty(live)
