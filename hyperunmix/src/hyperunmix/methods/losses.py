"""The losses the deep methods share (GAUSS, CNNAEU, the autoencoder)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def spectral_angle(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean spectral angle (radians) between matching rows; clamped so acos stays differentiable."""
    cosine = F.cosine_similarity(estimate, target, dim=1, eps=1e-8)
    return torch.acos(cosine.clamp(-1 + 1e-6, 1 - 1e-6)).mean()


def pixel_spectral_angle(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`spectral_angle` over every pixel of image batches (B, L, h, w)."""
    bands = target.shape[1]
    return spectral_angle(estimate.permute(0, 2, 3, 1).reshape(-1, bands),
                          target.permute(0, 2, 3, 1).reshape(-1, bands))


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a target distribution per row (one-hot or soft)."""
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def reconstruction_loss(estimate: torch.Tensor, target: torch.Tensor, mse_weight: float, sad_weight: float,
                        energy: float) -> torch.Tensor:
    """`mse_weight` x MSE relative to the scene's mean energy (scale-free) + `sad_weight` x SAD."""
    loss = mse_weight * F.mse_loss(estimate, target) / energy if mse_weight else 0.0
    if sad_weight:
        loss = loss + sad_weight * spectral_angle(estimate, target)
    return loss


def guide_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Loss of abundance logits against (pseudo or soft) targets: "ce" cross-entropy or "mse"."""
    if kind == "ce":
        return soft_cross_entropy(logits, targets)
    return F.mse_loss(torch.softmax(logits, dim=1), targets)
