"""Differential privacy: clipping bounds, noise scale, the accountant's epsilon, and the no-op limit."""
import math

import pytest
import torch
from flwr.supercore.differential_privacy import compute_clip_model_update, compute_stdv

from fedlora.config import MethodConfig, PrivacySection
from fedlora.flower.records import state_to_arrays
from fedlora.methods import build_method
from fedlora.privacy import clip_factors, epsilon_after, noisy_mean, private_aggregate
from fedlora.state import AdapterState, LoraFactors

S, R = 2.0, 4
SHAPES = {"l0": (12, 10), "l1": (16, 10)}


def adapter(seed, base=None, step=0.5):
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for name, (d_out, d_in) in SHAPES.items():
        A, B = torch.randn(R, d_in, generator=g), torch.randn(d_out, R, generator=g)
        if base is not None:
            A, B = base.lora[name].A + step * A, base.lora[name].B + step * B
        lora[name] = LoraFactors(A, B)
    head = {"h": torch.randn(3, generator=g) if base is None else base.head["h"] + step * torch.randn(3, generator=g)}
    return AdapterState(lora=lora, head=head)


def sent_norm(update, start, sent):
    sq = sum((getattr(u, k) - getattr(start.lora[n], k)).double().square().sum().item()
             for n, u in update.lora.items() for k in sent)
    return math.sqrt(sq + (update.head["h"] - start.head["h"]).double().square().sum().item())


@pytest.mark.parametrize("sent", ["AB", "B", "A"])
def test_clipped_updates_never_exceed_the_clipping_norm(sent):
    start = adapter(0)
    for k in range(5):
        update = adapter(k + 1, base=start, step=0.1 * (k + 1))
        norm = sent_norm(update, start, sent)
        clipped = clip_factors(update, start, sent, clipping_norm=1.0)
        # float32 tensors: the clipped norm is 1 up to float32 rounding (~1e-7 relative)
        assert sent_norm(clipped, start, sent) <= 1.0 + 1e-5
        if norm <= 1.0:
            assert clipped is update
        for name, f in clipped.lora.items():  # factors not sent are untouched
            for k2 in "AB":
                if k2 not in sent:
                    assert torch.equal(getattr(f, k2), getattr(update.lora[name], k2))


def test_client_clipping_equals_flowers_fixedclipping_mod():
    """FedAvg's reply carries every array the server sent, the one case `fixedclipping_mod` takes:
    Flower's clipping of it (`compute_clip_model_update`, what the mod runs) is ours."""
    start = adapter(0)
    update = adapter(1, base=start, step=0.3)
    assert sent_norm(update, start, "AB") > 1.0  # so that the clipping acts
    ours = state_to_arrays(clip_factors(update, start, "AB", clipping_norm=1.0)).to_numpy_ndarrays()
    flowers = state_to_arrays(update).to_numpy_ndarrays()
    compute_clip_model_update(flowers, state_to_arrays(start).to_numpy_ndarrays(), clipping_norm=1.0)
    for a, b in zip(ours, flowers, strict=True):
        # float32 on both sides, ours scales in float32 from a float64 norm: a few ulps apart
        assert a == pytest.approx(b, rel=1e-6, abs=1e-6)


def test_noise_has_the_configured_standard_deviation():
    start = AdapterState(lora={"big": LoraFactors(torch.zeros(8, 400), torch.zeros(300, 8))}, head={})
    updates = [start] * 4  # zero contributions: the mean is pure noise
    cfg = PrivacySection(enabled=True, noise_multiplier=1.5, clipping_norm=2.0)
    mean, norms = noisy_mean(updates, start, "AB", S, "factors", cfg, torch.Generator().manual_seed(0), clip=True)
    assert norms == [0.0] * 4
    noise = torch.cat([t.flatten() for t in mean.values()])
    expected = compute_stdv(noise_multiplier=1.5, clipping_norm=2.0, num_sampled_clients=4)  # 1.5 * 2 / 4
    # 5600 draws: the sample std is within 3% of sigma with probability > 0.99 (std error ~1%).
    assert noise.std().item() == pytest.approx(expected, rel=0.03)
    assert abs(noise.mean().item()) < 4 * expected / math.sqrt(noise.numel())


def test_epsilon_matches_the_dp_accounting_value():
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    cfg = PrivacySection(enabled=True, noise_multiplier=1.1, delta=1e-5)
    got = epsilon_after(cfg, rounds=20, sampled=3, population=10)
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.SampledWithoutReplacementDpEvent(10, 3, dp_accounting.GaussianDpEvent(1.1)), 20)
    accountant = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    accountant.compose(event)
    assert got == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert epsilon_after(cfg, rounds=40, sampled=3, population=10) > got  # composition only grows
    assert epsilon_after(PrivacySection(enabled=True, noise_multiplier=0.0), 1, 3, 10) == math.inf


@pytest.mark.parametrize("name", ["fedavg", "fedsvd", "rolora", "svd", "subspace", "flora"])
def test_no_noise_and_no_clipping_give_the_plain_aggregate(name):
    start = adapter(0)
    updates = [adapter(k + 1, base=start) for k in range(3)]
    method = build_method(MethodConfig(name=name, clip=False), rank=R, scaling=S, family_clip_tau=15.0)
    weights = torch.full((3,), 1 / 3, dtype=torch.float64)
    plain = method.aggregate(updates, weights, start, 2, 7)
    cfg = PrivacySection(enabled=True, noise_multiplier=0.0, clipping_norm=math.inf, clipping="server")
    private, norms = private_aggregate(method, updates, start, 2, 7, cfg)
    assert len(norms) == 3 and min(norms) > 0
    for layer in SHAPES:  # the same global update (products compared: factorizations may rotate)
        for state in (plain, private):
            assert state.lora[layer].A.dtype == torch.float32
        got = S * private.lora[layer].B @ private.lora[layer].A + private.base.get(layer, 0)
        want = S * plain.lora[layer].B @ plain.lora[layer].A + plain.base.get(layer, 0)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # float32 sums in another order
    torch.testing.assert_close(private.head["h"], plain.head["h"], rtol=0, atol=1e-6)


def test_noise_is_seeded_by_seed_and_round():
    start = adapter(0)
    updates = [adapter(k + 1, base=start) for k in range(3)]
    method = build_method(MethodConfig(name="fedavg"), rank=R, scaling=S, family_clip_tau=15.0)
    cfg = PrivacySection(enabled=True, noise_multiplier=1.0, clipping_norm=1.0, clipping="server")
    a, b = (private_aggregate(method, updates, start, 2, 7, cfg)[0] for _ in range(2))
    c = private_aggregate(method, updates, start, 3, 7, cfg)[0]
    assert torch.equal(a.lora["l0"].A, b.lora["l0"].A) and not torch.equal(a.lora["l0"].A, c.lora["l0"].A)
