"""factorize: exactness, orthogonality per mode, norm restore, clipping, factored == dense."""
import math

import pytest
import torch

from fedlora.factorize import FACTOR_MODES, factorize, factorize_product, svd_of_product

S = 2.0  # lora_alpha / r = 16 / 8


def low_rank(d_out, d_in, rank, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d_out, rank, generator=g, dtype=dtype) @ torch.randn(rank, d_in, generator=g, dtype=dtype)


def product(f):
    return S * f.B @ f.A


@pytest.mark.parametrize("mode", FACTOR_MODES)
@pytest.mark.parametrize("norm_restore", [True, False])
def test_exact_when_rank_at_most_r(mode, norm_restore):
    D = low_rank(20, 30, 5)
    f = factorize(D, mode, rank=8, scaling=S, norm_restore=norm_restore)
    assert f.A.shape == (8, 30) and f.B.shape == (20, 8)
    torch.testing.assert_close(product(f), D, rtol=0, atol=1e-10)


def test_orthogonal_b_has_orthonormal_columns_before_restore():
    D = low_rank(25, 40, 12)
    f = factorize(D, "orthogonal_b", rank=8, scaling=S, norm_restore=False)
    torch.testing.assert_close(f.B.T @ f.B, torch.eye(8, dtype=D.dtype), rtol=0, atol=1e-12)
    # After restore the columns stay orthogonal with common norm rho.
    g = factorize(D, "orthogonal_b", rank=8, scaling=S)
    gram = g.B.T @ g.B
    rho2 = gram[0, 0]
    assert rho2 > 1.0
    torch.testing.assert_close(gram, rho2 * torch.eye(8, dtype=D.dtype), rtol=0, atol=1e-12)


def test_orthogonal_a_has_orthonormal_rows():
    D = low_rank(25, 40, 12)
    f = factorize(D, "orthogonal_a", rank=8, scaling=S, norm_restore=False)
    torch.testing.assert_close(f.A @ f.A.T, torch.eye(8, dtype=D.dtype), rtol=0, atol=1e-12)


def test_symmetric_is_balanced_with_singular_values():
    D = low_rank(25, 40, 12)
    f = factorize(D, "symmetric", rank=8, scaling=S, norm_restore=False)
    sv = torch.linalg.svdvals(D / S)[:8]
    torch.testing.assert_close(f.B.T @ f.B, torch.diag(sv), rtol=0, atol=1e-10)
    torch.testing.assert_close(f.A @ f.A.T, torch.diag(sv), rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", FACTOR_MODES)
def test_truncation_is_best_rank_r_and_restore_matches_norm(mode):
    D = low_rank(30, 35, 20, seed=3)
    U, sv, Vh = torch.linalg.svd(D)
    best = U[:, :8] @ torch.diag(sv[:8]) @ Vh[:8]
    f = factorize(D, mode, rank=8, scaling=S, norm_restore=False)
    torch.testing.assert_close(product(f), best, rtol=0, atol=1e-10)
    g = factorize(D, mode, rank=8, scaling=S, norm_restore=True)
    assert torch.linalg.norm(product(g)).item() == pytest.approx(torch.linalg.norm(D).item(), rel=1e-12)
    rho2 = torch.linalg.norm(D) / torch.linalg.norm(best)
    torch.testing.assert_close(product(g), rho2 * best, rtol=0, atol=1e-10)


def test_clipping_scales_to_tau():
    D = low_rank(20, 30, 4)
    norm = torch.linalg.norm(D).item()
    tau = norm / 3
    f = factorize(D, "orthogonal_b", rank=8, scaling=S, clip_tau=tau)
    assert torch.linalg.norm(product(f)).item() == pytest.approx(tau, rel=1e-12)
    torch.testing.assert_close(product(f), D * (tau / norm), rtol=0, atol=1e-10)
    # Below the threshold nothing changes.
    g = factorize(D, "orthogonal_b", rank=8, scaling=S, clip_tau=2 * norm)
    torch.testing.assert_close(product(g), D, rtol=0, atol=1e-10)


def test_clip_then_restore_to_clipped_norm_for_high_rank():
    D = low_rank(20, 30, 15, seed=5)
    tau = torch.linalg.norm(D).item() / 2
    f = factorize(D, "symmetric", rank=4, scaling=S, clip_tau=tau)
    assert torch.linalg.norm(product(f)).item() == pytest.approx(tau, rel=1e-12)


@pytest.mark.parametrize("mode", FACTOR_MODES)
@pytest.mark.parametrize("clip_tau", [math.inf, 3.0])
def test_factored_path_equals_dense(mode, clip_tau):
    g = torch.Generator().manual_seed(7)
    K, r = 3, 8
    Bs = [torch.randn(48, r, generator=g, dtype=torch.float64) for _ in range(K)]
    As = [torch.randn(r, 64, generator=g, dtype=torch.float64) for _ in range(K)]
    p = [0.5, 0.3, 0.2]
    D = sum(pk * S * B @ A for pk, B, A in zip(p, Bs, As))
    dense = factorize(D, mode, rank=r, scaling=S, clip_tau=clip_tau)
    fast = factorize_product(torch.cat([pk * B for pk, B in zip(p, Bs)], 1), torch.cat(As, 0), mode,
                             rank=r, scaling=S, clip_tau=clip_tau)
    torch.testing.assert_close(product(fast), product(dense), rtol=0, atol=1e-10)
    # Factors agree up to the sign of each singular pair.
    signs = torch.sign((fast.B * dense.B).sum(0))
    torch.testing.assert_close(fast.B * signs, dense.B, rtol=0, atol=1e-10)
    torch.testing.assert_close(fast.A * signs[:, None], dense.A, rtol=0, atol=1e-10)


def test_svd_of_product_matches_dense_svd():
    g = torch.Generator().manual_seed(1)
    B = torch.randn(40, 6, generator=g, dtype=torch.float64)
    A = torch.randn(6, 50, generator=g, dtype=torch.float64)
    U, sv, Vh = svd_of_product(B, A)
    torch.testing.assert_close(sv, torch.linalg.svdvals(B @ A)[:6], rtol=0, atol=1e-10)
    torch.testing.assert_close(U @ torch.diag(sv) @ Vh, B @ A, rtol=0, atol=1e-10)
    torch.testing.assert_close(U.T @ U, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-12)


def test_dtype_kept_and_zero_update_gives_zero_factors():
    f = factorize(low_rank(10, 12, 3, dtype=torch.float32), "symmetric", rank=4, scaling=S)
    assert f.A.dtype == torch.float32 and f.B.dtype == torch.float32
    z = factorize(torch.zeros(10, 12), "orthogonal_b", rank=4, scaling=S, clip_tau=1.0)
    assert torch.isfinite(z.B).all() and (z.B @ z.A).abs().max().item() == 0.0


def test_rank_larger_than_layer_is_zero_padded():
    D = low_rank(3, 5, 3)
    f = factorize(D, "orthogonal_a", rank=8, scaling=S)
    assert f.A.shape == (8, 5) and f.B.shape == (3, 8)
    torch.testing.assert_close(product(f), D, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "diagonal"}, "mode"),
        ({"rank": 0}, "rank"),
        ({"scaling": 0.0}, "scaling"),
        ({"clip_tau": -1.0}, "clip_tau"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    args = {"mode": "symmetric", "rank": 2, "scaling": S} | kwargs
    with pytest.raises(ValueError, match=message):
        factorize(torch.ones(3, 3), **args)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"\(d_out, d_in\)"):
        factorize(torch.ones(3), "symmetric", rank=2, scaling=S)
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(2, 5\)"):
        factorize_product(torch.ones(4, 3), torch.ones(2, 5), "symmetric", rank=2, scaling=S)
