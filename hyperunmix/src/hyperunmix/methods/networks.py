"""The three GAUSS networks: approximation (AN), unmixing (UN) and mixing (MN)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(sizes: list[int], slope: float = 0.1) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(slope))
    return layers


class ApproximationNetwork(nn.Module):
    """AN: flattened w x w x L neighbourhood -> hidden -> L, non-negative (softplus) output."""

    def __init__(self, n_bands: int, window: int = 3, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(*_mlp([n_bands * window * window, hidden, n_bands]), nn.Softplus(beta=20.0))

        self.window = window

    def forward(self, patches: torch.Tensor) -> torch.Tensor:  # (B, L*w*w) -> (B, L)
        return self.net(patches.flatten(1))

    def forward_image(self, image: torch.Tensor) -> torch.Tensor:
        """Same as `forward` on every neighbourhood of a padded image (1, L, h + w - 1, W + w - 1),
        returning (h*W, L) in row-major order. The first layer runs as a convolution (its
        weight viewed as (hidden, L, w, w), the unfold feature order), which skips building
        the w*w times larger patch matrix."""
        first = self.net[0]
        kernel = first.weight.view(first.out_features, -1, self.window, self.window)
        hidden = F.conv2d(image, kernel, first.bias)[0].flatten(1).T
        return self.net[1:](hidden)


class UnmixingNetwork(nn.Module):
    """UN: spectrum L -> 256 -> 128 -> 64 -> p, LeakyReLU, softmax abundances."""

    def __init__(self, n_bands: int, n_endmembers: int, hidden: tuple[int, ...] = (256, 128, 64)):
        super().__init__()
        self.net = nn.Sequential(*_mlp([n_bands, *hidden, n_endmembers]))

    def logits(self, spectra: torch.Tensor) -> torch.Tensor:
        return self.net(spectra)

    def forward(self, spectra: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, p)
        return torch.softmax(self.net(spectra), dim=1)


class MixingNetwork(nn.Module):
    """MN: abundances p -> 64 -> 128 -> 256 -> L with softplus output (`deep`), or the classic
    single non-negative linear layer (`linear`, columns of the weight are the endmembers)."""

    def __init__(self, n_endmembers: int, n_bands: int, kind: str = "deep",
                 hidden: tuple[int, ...] = (64, 128, 256)):
        super().__init__()
        if kind not in ("deep", "linear"):
            raise ValueError(f"MN kind must be 'deep' or 'linear', got {kind!r}")
        self.kind = kind
        if kind == "deep":
            self.net = nn.Sequential(*_mlp([n_endmembers, *hidden, n_bands]), nn.Softplus(beta=20.0))
        else:
            self.weight = nn.Parameter(torch.rand(n_bands, n_endmembers) * 0.5)

    def forward(self, abundances: torch.Tensor) -> torch.Tensor:  # (B, p) -> (B, L)
        if self.kind == "deep":
            return self.net(abundances)
        return abundances @ self.weight.T

    @torch.no_grad()
    def project(self) -> None:
        """Keep the linear decoder non-negative (projected gradient step)."""
        if self.kind == "linear":
            self.weight.clamp_(min=0.0)

    @torch.no_grad()
    def endmembers(self) -> torch.Tensor:
        """E[:, k] = MN(e_k) for the one-hot vectors e_k; returns (L, p)."""
        n_endmembers = self.weight.shape[1] if self.kind == "linear" else self.net[0].in_features
        return self.forward(torch.eye(n_endmembers)).T
