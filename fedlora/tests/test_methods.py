"""Server rules of every method, head averaging, the registry and build_method switches."""
import math

import pytest
import torch

from fedlora.config import MethodConfig
from fedlora.methods import METHODS, Method, PenaltyWeights, build_method
from fedlora.state import AdapterState, LoraFactors

S = 2.0
R = 4
SHAPES = {"layer.q": (12, 10), "layer.up": (16, 10)}  # name -> (d_out, d_in)


def random_adapter(seed, dtype=torch.float64, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    lora = {
        name: LoraFactors(A=scale * torch.randn(R, d_in, generator=g, dtype=dtype),
                          B=scale * torch.randn(d_out, R, generator=g, dtype=dtype))
        for name, (d_out, d_in) in SHAPES.items()
    }
    head = {"classifier.weight": torch.randn(1, 10, generator=g, dtype=dtype),
            "classifier.bias": torch.randn(1, generator=g, dtype=dtype)}
    return AdapterState(lora=lora, head=head)


@pytest.fixture
def round_inputs():
    start = random_adapter(0)
    updates = [random_adapter(k + 1) for k in range(3)]
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    return updates, weights, start


def method(server, **kw):
    return Method(name="test", server=server, rank=R, scaling=S, **kw)


def dense_mean_update(updates, weights, name):
    return sum(p * S * u.lora[name].B @ u.lora[name].A for p, u in zip(weights.tolist(), updates))


def test_fedavg_averages_factors_separately(round_inputs):
    updates, weights, start = round_inputs
    new = build_method(MethodConfig(name="fedavg"), rank=R, scaling=S, family_clip_tau=15.0).aggregate(
        updates, weights, start)
    for name in SHAPES:
        A = sum(p * u.lora[name].A for p, u in zip(weights.tolist(), updates))
        B = sum(p * u.lora[name].B for p, u in zip(weights.tolist(), updates))
        torch.testing.assert_close(new.lora[name].A, A, rtol=0, atol=1e-14)
        torch.testing.assert_close(new.lora[name].B, B, rtol=0, atol=1e-14)
        # Separate averages are not the averaged product: that is FedAvg's known bias.
        assert (S * B @ A - dense_mean_update(updates, weights, name)).abs().max() > 1e-3


@pytest.mark.parametrize("server", ["average", "symmetric", "orthogonal_a", "orthogonal_b", "fedsvd"])
def test_head_is_plain_weighted_average(round_inputs, server):
    updates, weights, start = round_inputs
    new = method(server).aggregate(updates, weights, start)
    for name in start.head:
        expected = sum(p * u.head[name] for p, u in zip(weights.tolist(), updates))
        torch.testing.assert_close(new.head[name], expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("server", ["symmetric", "orthogonal_a", "orthogonal_b"])
def test_redistribution_is_best_rank_r_of_mean_update(round_inputs, server):
    updates, weights, start = round_inputs
    new = method(server, norm_restore=False).aggregate(updates, weights, start)
    for name in SHAPES:
        D = dense_mean_update(updates, weights, name)
        U, sv, Vh = torch.linalg.svd(D)
        best = U[:, :R] @ torch.diag(sv[:R]) @ Vh[:R]
        got = S * new.lora[name].B @ new.lora[name].A
        torch.testing.assert_close(got, best, rtol=0, atol=1e-10)


def test_subspace_server_gives_orthogonal_b_and_restored_norm(round_inputs):
    updates, weights, start = round_inputs
    m = build_method(MethodConfig(name="subspace", clip=False), rank=R, scaling=S, family_clip_tau=15.0)
    new = m.aggregate(updates, weights, start)
    for name in SHAPES:
        B = new.lora[name].B
        gram = B.T @ B
        torch.testing.assert_close(gram, gram[0, 0] * torch.eye(R, dtype=B.dtype), rtol=0, atol=1e-12)
        D = dense_mean_update(updates, weights, name)
        got = torch.linalg.norm(S * B @ new.lora[name].A).item()
        assert got == pytest.approx(torch.linalg.norm(D).item(), rel=1e-10)


def test_server_clipping_bounds_each_layer(round_inputs):
    updates, weights, start = round_inputs
    tau = 0.1
    new = method("orthogonal_b", clip_tau=tau).aggregate(updates, weights, start)
    for name in SHAPES:
        assert dense_mean_update(updates, weights, name).norm().item() > tau
        got = (S * new.lora[name].B @ new.lora[name].A).norm().item()
        assert got == pytest.approx(tau, rel=1e-10)


def test_fedsvd_is_exact_and_a_orthonormal(round_inputs):
    updates, weights, start = round_inputs
    m = build_method(MethodConfig(name="fedsvd", clip=False), rank=R, scaling=S, family_clip_tau=15.0)
    assert m.trains == ("B",) and m.server == "fedsvd"
    new = m.aggregate(updates, weights, start)
    for name in SHAPES:
        B_bar = sum(p * u.lora[name].B for p, u in zip(weights.tolist(), updates))
        expected = S * B_bar @ start.lora[name].A  # A_prev: the start adapter's A, not the clients'
        got = S * new.lora[name].B @ new.lora[name].A
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
        A = new.lora[name].A
        torch.testing.assert_close(A @ A.T, torch.eye(R, dtype=A.dtype), rtol=0, atol=1e-12)


def test_float32_state_stays_float32():
    start = random_adapter(0, dtype=torch.float32)
    updates = [random_adapter(k, dtype=torch.float32) for k in (1, 2)]
    for server in ("average", "symmetric", "fedsvd"):
        new = method(server).aggregate(updates, torch.tensor([0.6, 0.4]), start)
        assert all(f.A.dtype == torch.float32 and f.B.dtype == torch.float32 for f in new.lora.values())


def test_registry_and_presets():
    expected = {
        "fedavg": ("average", ("AB",), False),
        "svd": ("symmetric", ("AB",), False),
        "fedsvd": ("fedsvd", ("B",), False),
        "subspace": ("orthogonal_b", ("AB",), True),
        "subspace-server-only": ("orthogonal_b", ("AB",), False),
        "fedavg-penalty": ("average", ("AB",), True),
        "ffa-lora": ("average", ("B",), False),
        "rolora": ("average", ("B", "A"), False),
    }
    assert list(METHODS)[:6] == list(expected)[:6]  # the reference study's order first
    assert set(expected) <= set(METHODS)
    for name, (server, trains, active) in expected.items():
        m = build_method(MethodConfig(name=name), rank=8, scaling=2.0, family_clip_tau=15.0)
        assert (m.server, m.trains, m.penalty.active) == (server, trains, active), name
        assert m.label == name and m.spec()["name"] == name
    sub = build_method(MethodConfig(name="subspace"), rank=8, scaling=2.0, family_clip_tau=15.0)
    assert sub.penalty == PenaltyWeights(mu=0.05, a_b=0.01, lam=1e-5)
    assert sub.clip_tau == 15.0 and sub.norm_restore and sub.rank == 8 and sub.scaling == 2.0


def test_build_method_applies_switches():
    cfg = MethodConfig(name="subspace", server="symmetric", mu=0.0, lam=0.0, freeze_a=True,
                       norm_restore=False, clip_tau=3.0)
    m = build_method(cfg, rank=4, scaling=4.0, family_clip_tau=25.0)
    assert m.server == "symmetric" and m.trains == ("B",) and not m.norm_restore
    # The label names every switch that differs from the preset, in the config's field order.
    assert m.label == "subspace:server=symmetric:mu=0.0:lam=0.0:freeze_a=True:norm_restore=False:clip_tau=3.0"
    assert m.penalty == PenaltyWeights(mu=0.0, a_b=0.01, lam=0.0)
    assert m.clip_tau == 3.0
    assert build_method(MethodConfig(name="svd", clip=False), rank=4, scaling=4.0,
                        family_clip_tau=25.0).clip_tau == math.inf
    assert build_method(MethodConfig(name="svd"), rank=4, scaling=4.0, family_clip_tau=25.0).clip_tau == 25.0


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match="unknown method 'fedprox'.*fedavg, svd, fedsvd, subspace"):
        build_method(MethodConfig(name="fedprox"), rank=8, scaling=2.0, family_clip_tau=15.0)


def test_bad_penalty_weight_is_named():
    with pytest.raises(ValueError, match="a_b"):
        PenaltyWeights(mu=0.1, a_b=-1.0)
    assert not PenaltyWeights().active and PenaltyWeights(lam=1e-9).active


def test_aggregate_rejects_bad_inputs(round_inputs):
    updates, weights, start = round_inputs
    m = method("orthogonal_b")
    with pytest.raises(ValueError, match="sum to 1"):
        m.aggregate(updates, torch.tensor([0.5, 0.5, 0.5]), start)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        m.aggregate(updates, torch.tensor([0.5, 0.5]), start)
    with pytest.raises(ValueError, match="at least one"):
        m.aggregate([], torch.tensor([]), start)
    broken = random_adapter(9)
    del broken.lora["layer.up"]
    with pytest.raises(ValueError, match="update 1: LoRA layers differ.*layer.up"):
        m.aggregate([updates[0], broken], torch.tensor([0.5, 0.5]), start)
    wrong = random_adapter(9)
    wrong.lora["layer.q"] = LoraFactors(A=torch.zeros(R, 11, dtype=torch.float64), B=wrong.lora["layer.q"].B)
    with pytest.raises(ValueError, match=r"layer 'layer.q'.*A \(4, 11\)"):
        m.aggregate([wrong], torch.tensor([1.0]), start)
    with pytest.raises(ValueError, match="server rule"):
        method("median")


def clients_sharing(start, factor, seeds=(1, 2, 3)):
    """Client adapters that trained only the other factor: `factor` is the start's, bit for bit."""
    out = []
    for seed in seeds:
        u = random_adapter(seed)
        lora = {n: f._replace(**{factor: getattr(start.lora[n], factor)}) for n, f in u.lora.items()}
        out.append(AdapterState(lora=lora, head=u.head))
    return out


@pytest.mark.parametrize(("name", "round_idx", "frozen"), [("ffa-lora", 1, "A"), ("ffa-lora", 2, "A"),
                                                           ("rolora", 1, "A"), ("rolora", 2, "B"),
                                                           ("rolora", 3, "A")])
def test_frozen_factor_methods_average_exactly(round_inputs, name, round_idx, frozen):
    _, weights, start = round_inputs
    m = build_method(MethodConfig(name=name), rank=R, scaling=S, family_clip_tau=15.0)
    trained = "B" if frozen == "A" else "A"
    assert m.trained(round_idx) == trained
    updates = clients_sharing(start, frozen)
    new = m.aggregate(updates, weights, start, round_idx)
    for layer in SHAPES:
        assert torch.equal(getattr(new.lora[layer], frozen), getattr(start.lora[layer], frozen))
        # The frozen factor is shared, so the averaged factor gives exactly the averaged update.
        got = S * new.lora[layer].B @ new.lora[layer].A
        torch.testing.assert_close(got, dense_mean_update(updates, weights, layer), rtol=0, atol=1e-13)


def test_unknown_server_rule_is_named_with_the_valid_ones():
    with pytest.raises(ValueError, match="unknown server rule 'mean'.*average"):
        MethodConfig(name="fedavg", server="mean")


def with_base(state, seed):
    g = torch.Generator().manual_seed(seed)
    base = {n: 0.1 * torch.randn(d_out, d_in, generator=g, dtype=torch.float64) for n, (d_out, d_in) in SHAPES.items()}
    return AdapterState(lora=state.lora, head=state.head, base=base)


@pytest.mark.parametrize(("name", "ranks"), [("fedex-lora", (4, 4, 4)), ("flora", (4, 4, 4)), ("flora", (4, 2, 1))])
def test_merging_methods_make_the_global_model_the_exact_client_average(round_inputs, name, ranks):
    updates, weights, start = round_inputs
    start = with_base(start, 9)
    updates = [u.truncated(r) for u, r in zip(updates, ranks)]
    m = build_method(MethodConfig(name=name), rank=R, scaling=S, family_clip_tau=15.0)
    new = m.aggregate(updates, weights, start, round_idx=2, seed=5)
    for layer in SHAPES:
        # Effective weights (beyond W0): base + s B A. The clients' models share the start's base.
        clients = sum(p * (start.base[layer] + S * u.lora[layer].B @ u.lora[layer].A)
                      for p, u in zip(weights.tolist(), updates))
        got = new.base[layer] + S * new.lora[layer].B @ new.lora[layer].A
        torch.testing.assert_close(got, clients, rtol=0, atol=1e-10)  # float64 throughout
    if name == "fedex-lora":  # the factors are FedAvg's
        A = sum(p * u.lora["layer.q"].A for p, u in zip(weights.tolist(), updates))
        torch.testing.assert_close(new.lora["layer.q"].A, A, rtol=0, atol=1e-14)


def test_flora_restarts_from_fresh_seeded_lora(round_inputs):
    updates, weights, start = round_inputs
    m = build_method(MethodConfig(name="flora"), rank=R, scaling=S, family_clip_tau=15.0)
    a = m.aggregate(updates, weights, start, round_idx=2, seed=5)
    b = m.aggregate(updates, weights, start, round_idx=2, seed=5)
    c = m.aggregate(updates, weights, start, round_idx=3, seed=5)
    for layer in SHAPES:
        assert not a.lora[layer].B.any() and a.lora[layer].A.abs().max() > 0
        assert torch.equal(a.lora[layer].A, b.lora[layer].A) and not torch.equal(a.lora[layer].A, c.lora[layer].A)
    assert not torch.equal(a.lora["layer.q"].A[:, :4], a.lora["layer.up"].A[:, :4])  # one draw per layer


def test_truncation_keeps_the_first_components_and_zeroes_the_rest(round_inputs):
    _, _, start = round_inputs
    cut = start.truncated(2)
    for name, f in cut.lora.items():
        assert torch.equal(f.A[:2], start.lora[name].A[:2]) and not f.A[2:].any()
        assert torch.equal(f.B[:, :2], start.lora[name].B[:, :2]) and not f.B[:, 2:].any()
    assert cut.head is start.head


def test_flexlora_clients_start_from_the_best_approximation_at_their_rank(round_inputs):
    updates, weights, start = round_inputs
    m = build_method(MethodConfig(name="flexlora", clip=False, norm_restore=False), rank=R, scaling=S,
                     family_clip_tau=15.0)
    new = m.aggregate([u.truncated(r) for u, r in zip(updates, (4, 2, 1))], weights, start)
    for layer in SHAPES:
        D = S * new.lora[layer].B @ new.lora[layer].A
        U, sv, Vh = torch.linalg.svd(D)
        for rank in (1, 2, 3):
            f = new.truncated(rank).lora[layer]
            best = U[:, :rank] @ torch.diag(sv[:rank]) @ Vh[:rank]  # Eckart-Young
            torch.testing.assert_close(S * f.B @ f.A, best, rtol=0, atol=1e-12)


def test_self_pruning_keeps_floor_gamma_r_components_and_never_drops_to_zero():
    from fedlora.methods.hetlora import kept_rank

    assert [kept_rank(r, 0.7) for r in (10, 4, 2, 1)] == [7, 2, 1, 1]
    assert kept_rank(8, 0.99) == 7 and kept_rank(3, 0.5) == 1


def test_self_pruning_regulariser_is_the_tail_norm_product_and_prunes_only_a_shrunk_tail():
    from fedlora.methods.hetlora import RankSelfPruning, tail_norm_product

    start = random_adapter(0).truncated(3).lora  # a client of rank 3: components 3.. are zero
    t = 1  # kept_rank(3, 0.5)
    expected = sum(torch.linalg.vector_norm(f.A[t:3]) * torch.linalg.vector_norm(f.B[:, t:3]) for f in start.values())
    torch.testing.assert_close(tail_norm_product(start, 3, 0.5), expected, rtol=1e-15, atol=0)
    pruning = RankSelfPruning(start, rank=3, gamma=0.5, lam=0.1)
    torch.testing.assert_close(pruning(start), 0.1 * expected, rtol=1e-15, atol=0)

    def scaled_tail(c):
        return {n: LoraFactors(A=torch.cat([f.A[:t], c * f.A[t:]]), B=torch.cat([f.B[:, :t], c * f.B[:, t:]], 1))
                for n, f in start.items()}

    assert pruning.pruned_rank(scaled_tail(0.9)) == 1  # the tail shrank: keep floor(0.5 * 3) = 1
    assert pruning.pruned_rank(scaled_tail(1.0)) == 3  # unchanged (not strictly smaller): keep 3
    assert pruning.pruned_rank(scaled_tail(1.1)) == 3


def test_self_pruning_regulariser_has_finite_gradients_where_the_tail_is_zero():
    # Round 1 starts from B = 0: the norm of a zero tail must not turn the gradient into nan.
    from fedlora.methods.hetlora import RankSelfPruning

    start = {n: LoraFactors(A=f.A.clone().requires_grad_(), B=torch.zeros_like(f.B).requires_grad_())
             for n, f in random_adapter(1).lora.items()}
    RankSelfPruning(start, rank=R, gamma=0.5, lam=1.0)(start).backward()
    for f in start.values():
        assert torch.isfinite(f.A.grad).all() and torch.isfinite(f.B.grad).all()
        assert not f.A.grad.any() and not f.B.grad.any()  # ||B_tail|| = 0: neither factor is pushed yet


def test_hetlora_weighs_clients_by_their_update_norm(round_inputs):
    updates, weights, start = round_inputs
    m = build_method(MethodConfig(name="hetlora"), rank=R, scaling=S, family_clip_tau=15.0)
    padded = [u.truncated(r) for u, r in zip(updates, (4, 2, 1))]
    new = m.aggregate(padded, weights, start)
    for layer in SHAPES:
        norms = torch.stack([torch.linalg.matrix_norm(S * u.lora[layer].B @ u.lora[layer].A) for u in padded])
        w = norms / norms.sum()
        torch.testing.assert_close(new.lora[layer].A, sum(wk * u.lora[layer].A for wk, u in zip(w, padded)),
                                   rtol=0, atol=1e-13)
        torch.testing.assert_close(new.lora[layer].B, sum(wk * u.lora[layer].B for wk, u in zip(w, padded)),
                                   rtol=0, atol=1e-13)
