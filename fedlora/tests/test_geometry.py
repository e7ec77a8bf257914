"""Geometry: planted angles, basis invariance, factored == dense, and round_geometry end to end."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from fedlora.geometry import GEOMETRY_KEYS, basis_overlap, factored_gram, principal_angles, round_geometry, update_norms
from fedlora.state import AdapterState, LoraFactors

S = 2.0
R = 3
SHAPES = {"l0.q": (14, 9), "l0.up": (18, 9), "l1.q": (14, 9)}


def planted_pair(thetas, d=12):
    """U = [e_1..e_k], V = [cos t_i e_i + sin t_i e_{k+i}]: principal angles exactly thetas."""
    k = len(thetas)
    U = torch.zeros(d, k, dtype=torch.float64)
    V = torch.zeros(d, k, dtype=torch.float64)
    for i, t in enumerate(thetas):
        U[i, i] = 1.0
        V[i, i], V[k + i, i] = math.cos(t), math.sin(t)
    return U, V


def test_identical_subspaces():
    B = torch.randn(20, 4, dtype=torch.float64)
    assert basis_overlap(B, B).item() == pytest.approx(1.0, abs=1e-14)
    assert principal_angles(B, B).abs().max().item() < 1e-7


def test_planted_principal_angles_and_overlap():
    thetas = [1e-6, 0.3, 0.9, math.pi / 2]
    U, V = planted_pair(thetas)
    got = principal_angles(U, V)
    torch.testing.assert_close(got, torch.tensor(thetas, dtype=torch.float64), rtol=1e-8, atol=1e-12)
    expected_overlap = sum(math.cos(t) ** 2 for t in thetas) / len(thetas)
    assert basis_overlap(U, V).item() == pytest.approx(expected_overlap, abs=1e-14)


def test_tiny_angle_is_resolved_unlike_arccos():
    # arccos(cos(1e-9)) is 0 in double precision; the sine branch recovers the angle.
    U, V = planted_pair([1e-9, 0.5])
    assert principal_angles(U, V)[0].item() == pytest.approx(1e-9, rel=1e-5)


def test_invariant_to_basis_choice():
    g = torch.Generator().manual_seed(0)
    U = torch.randn(30, 5, generator=g, dtype=torch.float64)
    V = torch.randn(30, 5, generator=g, dtype=torch.float64)
    R_u = torch.randn(5, 5, generator=g, dtype=torch.float64) + 3 * torch.eye(5, dtype=torch.float64)
    R_v = torch.randn(5, 5, generator=g, dtype=torch.float64) + 3 * torch.eye(5, dtype=torch.float64)
    torch.testing.assert_close(basis_overlap(U @ R_u, V @ R_v), basis_overlap(U, V), rtol=0, atol=1e-12)
    torch.testing.assert_close(principal_angles(U @ R_u, V @ R_v), principal_angles(U, V), rtol=0, atol=1e-10)
    angles = scipy.linalg.subspace_angles(U.numpy(), V.numpy())[::-1].copy()
    torch.testing.assert_close(principal_angles(U, V), torch.from_numpy(angles), rtol=0, atol=1e-10)


def test_unequal_column_counts():
    U, V = planted_pair([0.2, 0.7], d=10)
    wide = torch.cat([U, torch.zeros(10, 1, dtype=torch.float64)], 1)
    wide[9, 2] = 1.0  # a third direction orthogonal to V
    torch.testing.assert_close(principal_angles(wide, V), torch.tensor([0.2, 0.7], dtype=torch.float64))
    torch.testing.assert_close(principal_angles(V, wide), torch.tensor([0.2, 0.7], dtype=torch.float64))


def test_factored_gram_equals_dense_inner_products():
    g = torch.Generator().manual_seed(1)
    Bs = [torch.randn(15, R, generator=g, dtype=torch.float64) for _ in range(4)]
    As = [torch.randn(R, 11, generator=g, dtype=torch.float64) for _ in range(4)]
    dense = torch.stack([(B @ A).flatten() for B, A in zip(Bs, As)])
    torch.testing.assert_close(factored_gram(Bs, As), dense @ dense.T, rtol=1e-12, atol=1e-12)


def random_adapter(seed, base=None, step=1.0):
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for name, (d_out, d_in) in SHAPES.items():
        A = torch.randn(R, d_in, generator=g, dtype=torch.float64)
        B = torch.randn(d_out, R, generator=g, dtype=torch.float64)
        if base is not None:
            A, B = base.lora[name].A + step * A, base.lora[name].B + step * B
        lora[name] = LoraFactors(A, B)
    return AdapterState(lora=lora)


def dense_geometry(updates, p, start, new):
    """Reference: explicit d_out x d_in updates, numpy SVD/QR and scipy's subspace angles."""
    rows = []
    for name in start.lora:
        dense = lambda f: S * (f.B @ f.A).numpy()  # noqa: E731
        W = [dense(u.lora[name]) for u in updates]
        W_g, W_0 = dense(new.lora[name]), dense(start.lora[name])
        U_g = np.linalg.svd(W_g)[0][:, :R]
        Q_g = np.linalg.qr(new.lora[name].B.numpy())[0]
        Qs = [np.linalg.qr(u.lora[name].B.numpy())[0] for u in updates]
        angles = [np.degrees(scipy.linalg.subspace_angles(Q, Q_g)) for Q in Qs]
        row = {
            "basis_overlap": np.mean([np.linalg.norm(U_g.T @ Q) ** 2 / R for Q in Qs]),
            "basis_overlap_code": np.mean([min(1.0, np.linalg.norm(Q.T @ Q_g) / math.sqrt(R)) for Q in Qs]),
            "principal_angle_mean_deg": np.mean([a.mean() for a in angles]),
            "principal_angle_max_deg": np.mean([a.max() for a in angles]),
        }
        for suffix, mats, glob in (("", W, W_g), ("_delta", [w - W_0 for w in W], W_g - W_0)):
            cos = lambda a, b: (a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b))  # noqa: E731
            row["cancellation_ratio" + suffix] = np.linalg.norm(sum(pk * m for pk, m in zip(p, mats))) / sum(
                pk * np.linalg.norm(m) for pk, m in zip(p, mats))
            row["client_global_cosine" + suffix] = np.mean([cos(m, glob) for m in mats])
            row["pairwise_client_cosine" + suffix] = np.mean(
                [cos(mats[i], mats[j]) for i in range(len(mats)) for j in range(i + 1, len(mats))])
        rows.append(row)
    return {k: float(np.mean([row[k] for row in rows])) for k in GEOMETRY_KEYS}


def test_round_geometry_matches_dense_reference():
    start = random_adapter(0)
    updates = [random_adapter(k, base=start, step=0.4) for k in (1, 2, 3)]
    new = random_adapter(7, base=start, step=0.2)
    p = [0.5, 0.3, 0.2]
    got = round_geometry(updates, torch.tensor(p, dtype=torch.float64), start, new, S)
    want = dense_geometry(updates, p, start, new)
    assert set(got) == set(GEOMETRY_KEYS)
    for key in GEOMETRY_KEYS:
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-9), key


def test_identical_clients_agree_perfectly():
    start = random_adapter(0)
    client = random_adapter(1, base=start, step=0.5)
    geo = round_geometry([client, client.clone()], torch.tensor([0.5, 0.5]), start, client, S)
    for key in ("basis_overlap", "basis_overlap_code", "cancellation_ratio", "client_global_cosine",
                "pairwise_client_cosine", "cancellation_ratio_delta", "client_global_cosine_delta",
                "pairwise_client_cosine_delta"):
        assert geo[key] == pytest.approx(1.0, abs=1e-9), key
    assert geo["principal_angle_max_deg"] < 1e-5


def test_opposite_deltas_cancel():
    start = random_adapter(0)
    plus = random_adapter(1, base=start, step=0.3)
    # With A frozen at A_0 (as in FedSVD), B_minus = 2 B_0 - B_plus gives the opposite delta.
    plus = AdapterState(lora={n: LoraFactors(start.lora[n].A, f.B) for n, f in plus.lora.items()})
    minus = AdapterState(lora={n: LoraFactors(start.lora[n].A, 2 * start.lora[n].B - f.B)
                               for n, f in plus.lora.items()})
    geo = round_geometry([plus, minus], torch.tensor([0.5, 0.5]), start, start, S)
    assert geo["cancellation_ratio_delta"] == pytest.approx(0.0, abs=1e-7)
    assert geo["pairwise_client_cosine_delta"] == pytest.approx(-1.0, abs=1e-9)


def test_basis_change_of_client_b_leaves_subspace_metrics_unchanged():
    start = random_adapter(0)
    updates = [random_adapter(k, base=start, step=0.4) for k in (1, 2)]
    new = random_adapter(5, base=start, step=0.2)
    mix = torch.tensor([[2.0, 0.3, 0.0], [0.1, 1.5, 0.4], [0.0, -0.2, 0.8]], dtype=torch.float64)
    # B -> B M, A -> M^-1 A: same update dW_k, different basis of span(B_k).
    rebased = [AdapterState(lora={n: LoraFactors(torch.linalg.solve(mix, f.A), f.B @ mix) for n, f in u.lora.items()})
               for u in updates]
    w = torch.tensor([0.6, 0.4])
    a, b = round_geometry(updates, w, start, new, S), round_geometry(rebased, w, start, new, S)
    for key in GEOMETRY_KEYS:
        assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-9), key


def test_single_client_has_no_pairs_and_bad_input_is_named():
    start = random_adapter(0)
    client = random_adapter(1, base=start)
    geo = round_geometry([client], torch.tensor([1.0]), start, client, S)
    assert math.isnan(geo["pairwise_client_cosine"]) and geo["cancellation_ratio"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="sum to 1"):
        round_geometry([client], torch.tensor([0.7]), start, client, S)
    broken = random_adapter(2)
    del broken.lora["l1.q"]
    with pytest.raises(ValueError, match="l1.q"):
        round_geometry([client], torch.tensor([1.0]), start, broken, S)


def test_update_norms_equal_the_dense_drift():
    start = random_adapter(1)
    updates = [random_adapter(2 + k, base=start, step=0.1 * (k + 1)) for k in range(3)]
    dense = [
        math.sqrt(sum(((S * u.lora[n].B.double() @ u.lora[n].A.double())
                       - (S * start.lora[n].B.double() @ start.lora[n].A.double())).square().sum().item()
                      for n in start.lora))
        for u in updates
    ]
    # float64 Gram entries of O(1) norms: rounding ~1e-15 relative; 1e-10 leaves a wide margin.
    assert update_norms(updates, [start] * 3, S) == pytest.approx(dense, rel=1e-10)
    assert update_norms([start], [start], S) == pytest.approx([0.0], abs=1e-6)  # sqrt of ~1e-15 rounding
