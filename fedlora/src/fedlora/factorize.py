"""Split a full weight update D (d_out x d_in) back into LoRA factors (B, A) of rank r.

Steps, for scaling s = alpha / r and clip threshold tau:
1. clip: D <- D * min(1, tau / ||D||_F)
2. T = D / s; U, S, V^T = SVD(T); keep the top r
3. `symmetric`:    B = U sqrt(S), A = sqrt(S) V^T
   `orthogonal_a`: B = U S,       A = V^T
   `orthogonal_b`: B = U,         A = S V^T
4. norm restore (optional): rho = sqrt(||D||_F / ||s B A||_F); A <- rho A, B <- rho B

`factorize` takes a dense D. `factorize_product` takes D = s * B_cat @ A_cat in factored form
(the server's sum_k p_k s B_k A_k is s [p_1 B_1 ... p_K B_K][A_1; ...; A_K], rank <= K r) and
gets the same SVD from two thin QRs and the SVD of a small core, never forming d_out x d_in.
Both work in float64 and return the input dtype.
"""
from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from fedlora.state import LoraFactors

FactorMode = Literal["symmetric", "orthogonal_a", "orthogonal_b"]
FACTOR_MODES: tuple[str, ...] = get_args(FactorMode)


def _check_args(mode: str, rank: int, scaling: float, clip_tau: float) -> None:
    if mode not in FACTOR_MODES:
        raise ValueError(f"factorize mode must be one of {FACTOR_MODES}, got {mode!r}")
    if not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"factorize rank must be a positive int, got {rank!r}")
    if not scaling > 0:
        raise ValueError(f"factorize scaling must be > 0, got {scaling!r}")
    if not clip_tau > 0:
        raise ValueError(f"factorize clip_tau must be > 0 (inf turns clipping off), got {clip_tau!r}")


def _pad_rank(U: Tensor, S: Tensor, Vh: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the top `rank` triplets; zero-pad when the SVD has fewer (tiny layers)."""
    U, S, Vh = U[:, :rank], S[:rank], Vh[:rank]
    missing = rank - S.shape[0]
    if missing > 0:
        U = torch.cat([U, U.new_zeros(U.shape[0], missing)], dim=1)
        S = torch.cat([S, S.new_zeros(missing)])
        Vh = torch.cat([Vh, Vh.new_zeros(missing, Vh.shape[1])], dim=0)
    return U, S, Vh


def _split_svd(U: Tensor, S: Tensor, Vh: Tensor, mode: str, rank: int, scaling: float,
               clip_tau: float, norm_restore: bool, dtype: torch.dtype) -> LoraFactors:
    """Steps 1-4 given the full thin SVD of B_cat @ A_cat = D / s (before clipping)."""
    d_norm = scaling * torch.linalg.vector_norm(S).item()  # ||D||_F from all singular values
    clip = min(1.0, clip_tau / d_norm) if d_norm > 0 else 1.0
    S = S * clip  # T = clip * D / s has the same singular vectors
    U, S, Vh = _pad_rank(U, S, Vh, rank)
    if mode == "symmetric":
        root = S.sqrt()
        B, A = U * root, root[:, None] * Vh
    elif mode == "orthogonal_a":
        B, A = U * S, Vh
    else:  # orthogonal_b
        B, A = U, S[:, None] * Vh
    if norm_restore:
        # ||s B A||_F = s ||S_top||; ||D_clipped||_F = clip * d_norm.
        kept = scaling * torch.linalg.vector_norm(S).item()
        if kept > 0:
            rho = math.sqrt(clip * d_norm / kept)
            A, B = A * rho, B * rho
    return LoraFactors(A=A.to(dtype).contiguous(), B=B.to(dtype).contiguous())


def factorize(D: Tensor, mode: FactorMode, rank: int, scaling: float,
              clip_tau: float = math.inf, norm_restore: bool = True) -> LoraFactors:
    """LoRA factors (A (rank, d_in), B (d_out, rank)) of the full update D (d_out, d_in)."""
    _check_args(mode, rank, scaling, clip_tau)
    if D.ndim != 2:
        raise ValueError(f"factorize expects D of shape (d_out, d_in), got {tuple(D.shape)}")
    U, S, Vh = torch.linalg.svd(D.to(torch.float64) / scaling, full_matrices=False)
    return _split_svd(U, S, Vh, mode, rank, scaling, clip_tau, norm_restore, D.dtype)


def svd_of_product(B: Tensor, A: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD of B @ A (B (d_out, m), A (m, d_in)) through QR of each factor, in float64.

    B = Q_b R_b, A^T = Q_a R_a, so B A = Q_b (R_b R_a^T) Q_a^T and the SVD of the small core
    gives U = Q_b U_c, V = Q_a V_c. Cost O((d_out + d_in) m^2) instead of O(d_out d_in m).
    """
    Q_b, R_b = torch.linalg.qr(B.to(torch.float64))
    Q_a, R_a = torch.linalg.qr(A.to(torch.float64).T)
    U_c, S, Vh_c = torch.linalg.svd(R_b @ R_a.T, full_matrices=False)
    return Q_b @ U_c, S, Vh_c @ Q_a.T


def factorize_product(B: Tensor, A: Tensor, mode: FactorMode, rank: int, scaling: float,
                      clip_tau: float = math.inf, norm_restore: bool = True) -> LoraFactors:
    """`factorize(scaling * B @ A, ...)` without forming the d_out x d_in product."""
    _check_args(mode, rank, scaling, clip_tau)
    if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(
            f"factorize_product expects B (d_out, m) and A (m, d_in), got {tuple(B.shape)} and {tuple(A.shape)}"
        )
    U, S, Vh = svd_of_product(B, A)
    return _split_svd(U, S, Vh, mode, rank, scaling, clip_tau, norm_restore, B.dtype)
