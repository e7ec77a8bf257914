"""Per-round geometry of client updates: subspace overlap, principal angles, cancellation.

Every metric is computed per LoRA layer and then averaged over layers with equal weight
(layers where a metric is undefined, e.g. a cosine with a zero update, are left out of that
average). Client averages inside a layer are unweighted (1/K), as in the paper's overlap.

Nothing of size d_out x d_in is formed. An update s B A is kept as factors; inner products are
<B1 A1, B2 A2>_F = tr((B1^T B2)(A2 A1^T)), so the K clients, the new global and the round's start
give one (K+2) x (K+2) Gram matrix from which norms, cosines, cancellation, and (by linear
combination) the same quantities on deltas dW_k - dW_start are read. Work is in float64 because
delta norms are differences of nearly equal Gram entries.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from fedlora.methods.base import check_same_layout, check_weights
from fedlora.state import AdapterState, LoraFactors

SUBSPACE_KEYS = ("basis_overlap", "basis_overlap_code", "principal_angle_mean_deg", "principal_angle_max_deg")
GEOMETRY_KEYS = (
    "basis_overlap", "basis_overlap_code", "principal_angle_mean_deg", "principal_angle_max_deg",
    "cancellation_ratio", "client_global_cosine", "pairwise_client_cosine",
    "cancellation_ratio_delta", "client_global_cosine_delta", "pairwise_client_cosine_delta",
)


def orthonormal_basis(B: Tensor) -> Tensor:
    """Q of the reduced QR of B (..., d, k): orthonormal columns spanning B's columns."""
    return torch.linalg.qr(B)[0]


def _overlap_orthonormal(Qu: Tensor, Qv: Tensor) -> Tensor:
    r = min(Qu.shape[-1], Qv.shape[-1])
    return (Qu.transpose(-1, -2) @ Qv).square().sum((-2, -1)) / r


def basis_overlap(U: Tensor, V: Tensor) -> Tensor:
    """||Q(U)^T Q(V)||_F^2 / r, r = the smaller column count: mean squared cosine of the principal
    angles, in [0, 1], 1 iff one span contains the other; unchanged by U -> U R (R invertible)."""
    return _overlap_orthonormal(orthonormal_basis(U), orthonormal_basis(V))


def _angles_orthonormal(Qu: Tensor, Qv: Tensor) -> Tensor:
    M = Qu.transpose(-1, -2) @ Qv
    cos = torch.linalg.svdvals(M).clamp(0.0, 1.0)  # descending -> angles ascending
    # Small angles are ill-conditioned through arccos; take them from the sines instead
    # (the residual of the narrower basis off the other span), as scipy.linalg.subspace_angles.
    if Qu.shape[-1] >= Qv.shape[-1]:
        residual = Qv - Qu @ M
    else:
        residual = Qu - Qv @ M.transpose(-1, -2)
    sin = torch.linalg.svdvals(residual).clamp(0.0, 1.0).flip(-1)  # ascending
    return torch.where(cos.square() >= 0.5, torch.arcsin(sin), torch.arccos(cos))


def principal_angles(U: Tensor, V: Tensor) -> Tensor:
    """Principal angles (radians, ascending) between span(U) and span(V), U (..., d, k_u)."""
    return _angles_orthonormal(orthonormal_basis(U), orthonormal_basis(V))


def factored_gram(Bs: list[Tensor], As: list[Tensor]) -> Tensor:
    """G_ij = <B_i A_i, B_j A_j>_F for factors of equal rank r, without forming B_i A_i.

    With B = [B_1 ... B_n] and A = [A_1; ...; A_n], entry (i, j) is the sum of the (i, j) r x r
    block of (B^T B) * (A A^T) elementwise, since tr((B_i^T B_j)(A_j A_i^T)) = sum((B_i^T B_j) * (A_i A_j^T)).
    """
    n, r = len(Bs), Bs[0].shape[1]
    B = torch.cat(Bs, dim=1)
    A = torch.cat(As, dim=0)
    return ((B.T @ B) * (A @ A.T)).view(n, r, n, r).sum((1, 3))


def _cosine(gram: Tensor, i: Tensor | int, j: Tensor | int) -> Tensor:
    norms = gram.diagonal().clamp_min(0).sqrt()
    return gram[i, j] / (norms[i] * norms[j])  # 0/0 -> nan: undefined for a zero update


def _flow_metrics(gram: Tensor, p: Tensor, suffix: str) -> dict[str, float]:
    """Cancellation and cosines from the Gram of [clients..., global] (last row: global)."""
    K = p.shape[0]
    clients = gram[:K, :K]
    norms = clients.diagonal().clamp_min(0).sqrt()
    mean_norm = (p * norms).sum()
    combined = (p @ clients @ p).clamp_min(0).sqrt()
    idx = torch.arange(K)
    pairs = torch.triu_indices(K, K, offset=1)
    pairwise = _cosine(gram, pairs[0], pairs[1]).mean() if K > 1 else torch.tensor(math.nan)
    return {
        f"cancellation_ratio{suffix}": (combined / mean_norm).item(),
        f"client_global_cosine{suffix}": _cosine(gram, idx, K).mean().item(),
        f"pairwise_client_cosine{suffix}": pairwise.item(),
    }


def _subspace_metrics(B_clients: list[Tensor], B_g: Tensor) -> dict[str, float]:
    """Overlaps and principal angles of span(B_k) (d_out, r_k) against the new global's span."""
    if not B_g.any():  # a global restarted at B = 0 (FLoRA) spans nothing: undefined
        return dict.fromkeys(SUBSPACE_KEYS, math.nan)
    r = B_g.shape[1]
    # The top-r left singular vectors of B_g A_g = Q_g (R_g A_g) are Q_g times an r x r rotation
    # whenever dW_g has rank r, and the overlap depends on the span only: U_g = Q(B_g) is exact
    # (and one valid choice of the non-unique top-r vectors when the rank is lower).
    Q_g = orthonormal_basis(B_g)
    if {B.shape[1] for B in B_clients} == {r}:  # every client at the global rank: batched
        Q_k = orthonormal_basis(torch.stack(B_clients))
        cos_sq = (Q_k.transpose(-1, -2) @ Q_g).square().sum((-2, -1))  # (K,) = ||Q_k^T Q_g||_F^2
        columns = torch.full_like(cos_sq, r)
        angles = torch.rad2deg(_angles_orthonormal(Q_k, Q_g.expand_as(Q_k)))  # (K, r)
        angle_mean, angle_max = angles.mean(), angles.amax(-1).mean()
    else:  # heterogeneous ranks: per client, normalized by the smaller column count
        per_client = []
        for B in B_clients:
            Q = orthonormal_basis(B)
            theta = torch.rad2deg(_angles_orthonormal(Q, Q_g))
            per_client.append(((Q.T @ Q_g).square().sum(), Q.new_tensor(min(B.shape[1], r)), theta.mean(), theta.max()))
        cos_sq, columns, angle_mean, angle_max = (torch.stack(column) for column in zip(*per_client))
        angle_mean, angle_max = angle_mean.mean(), angle_max.mean()  # means of per-client values
    return {
        "basis_overlap": (cos_sq / columns).mean().item(),
        "basis_overlap_code": (cos_sq.sqrt() / columns.sqrt()).clamp(0, 1).mean().item(),
        "principal_angle_mean_deg": angle_mean.item(),
        "principal_angle_max_deg": angle_max.item(),
    }


def _layer_geometry(clients: list[LoraFactors], p: Tensor, start: LoraFactors, new: LoraFactors,
                    scaling: float, ranks: list[int]) -> dict[str, float]:
    f64 = torch.float64
    Bs = [f.B.to(f64) * scaling for f in clients] + [new.B.to(f64) * scaling, start.B.to(f64) * scaling]
    As = [f.A.to(f64) for f in clients] + [new.A.to(f64), start.A.to(f64)]
    gram = factored_gram(Bs, As)  # order: clients, global, start
    K = p.shape[0]
    # Deltas as linear combinations: delta_k = dW_k - dW_start, delta_g = dW_g - dW_start.
    C = torch.eye(K + 2, dtype=f64)[: K + 1]
    C[:, K + 1] = -1.0
    out = _flow_metrics(gram[: K + 1, : K + 1], p, "")
    out |= _flow_metrics(C @ gram @ C.T, p, "_delta")
    out |= _subspace_metrics([f.B[:, :rank].to(f64) for f, rank in zip(clients, ranks)], new.B.to(f64))
    return out


def update_norms(updates: list[AdapterState], starts: list[AdapterState], scaling: float) -> list[float]:
    """How far each client drifted in its round: ||dW_k - dW_start_k||_F over all LoRA layers
    (the root of the sum over layers of the squared Frobenius norms), dW = s B A, start_k the
    adapter client k started from."""
    norms = []
    for u, start in zip(updates, starts, strict=True):
        check_same_layout([u], start)
        sq = torch.zeros((), dtype=torch.float64)
        for name, ref in start.lora.items():
            f = u.lora[name]
            # ||B_k A_k - B A||^2 = G_kk - 2 G_k0 + G_00 from the factored Gram of (update, start)
            gram = factored_gram([f.B.double() * scaling, ref.B.double() * scaling], [f.A.double(), ref.A.double()])
            sq += gram[0, 0] - 2 * gram[0, 1] + gram[1, 1]
        norms.append(sq.clamp_min(0).sqrt().item())
    return norms


def round_geometry(updates: list[AdapterState], weights: Tensor, start: AdapterState,
                   new: AdapterState, scaling: float, ranks: list[int] | None = None) -> dict[str, float]:
    """Geometry of one round, per layer then averaged over layers with equal weight.

    Keys (`GEOMETRY_KEYS`):
    - basis_overlap: paper definition (1/K) sum_k ||U_g^T Q(B_k)||_F^2 / r, U_g the top-r left
      singular vectors of dW_g = s B_g A_g of the NEW global (span(U_g) = span(B_g) when dW_g has
      rank r). The paper writes B_k; its orthonormal basis Q(B_k) (reduced QR) is used so the
      value is in [0, 1] and independent of B_k's basis.
    - basis_overlap_code: reference-code definition, mean_k clip_[0,1](||Q(B_k)^T Q(B_g)||_F / sqrt(r)).
    - principal_angle_mean_deg / principal_angle_max_deg: angles between span(B_k) and span(B_g);
      per client the mean / the largest angle, then the mean over clients.
    - cancellation_ratio ||sum p_k dW_k|| / sum p_k ||dW_k||, client_global_cosine mean_k
      cos(dW_k, dW_g), pairwise_client_cosine mean over client pairs (nan for one client);
      the same three with suffix _delta on dW_k - dW_start, dW_g - dW_start.

    `ranks`: each client's LoRA rank when they differ (its first r_k columns of B span its
    subspace; its overlap is normalized by min(r_k, r)). A global restarted at B = 0 (FLoRA) has no
    subspace: the four subspace metrics are nan.
    """
    p = check_weights(weights, len(updates))
    if not start.lora:
        raise ValueError("round_geometry needs at least one LoRA layer")
    check_same_layout(updates, start)
    check_same_layout([new], start)
    if not scaling > 0:
        raise ValueError(f"round_geometry scaling must be > 0, got {scaling!r}")
    full = next(iter(start.lora.values())).A.shape[0]
    ranks = ranks or [full] * len(updates)
    per_layer = [
        _layer_geometry([u.lora[name] for u in updates], p, start.lora[name], new.lora[name], scaling, ranks)
        for name in start.lora
    ]
    table = torch.tensor([[row[k] for k in GEOMETRY_KEYS] for row in per_layer], dtype=torch.float64)
    return dict(zip(GEOMETRY_KEYS, torch.nanmean(table, dim=0).tolist()))
