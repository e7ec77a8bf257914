"""Fully connected unmixing autoencoder in the style of DAEU (Palsson et al., IEEE Access 2018):
per-pixel encoder L -> 9p -> 6p -> 3p -> p with LeakyReLU and batch norm, softmax abundances
(non-negative, sum-to-one), a single non-negative linear decoder whose weight columns are the
endmembers, and the spectral angle as loss. The decoder starts from VCA endmembers (as
deep unmixing methods commonly do) or at random (`init="random"`)."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.utils._param_validation import StrOptions
from torch import nn

from hyperunmix.methods.base import NON_NEGATIVE_INT, POSITIVE_INT, POSITIVE_REAL, TILE_PIXELS, Unmixer
from hyperunmix.methods.gauss import spectral_angle
from hyperunmix.methods.patches import predict_tiled


class DenseAutoencoder(nn.Module):
    def __init__(self, n_bands: int, n_endmembers: int, softmax_scale: float = 1.0):
        super().__init__()
        p = n_endmembers
        layers: list[nn.Module] = []
        for n_in, n_out in [(n_bands, 9 * p), (9 * p, 6 * p), (6 * p, 3 * p)]:
            layers += [nn.Linear(n_in, n_out), nn.LeakyReLU(0.1)]
        layers += [nn.Linear(3 * p, p), nn.BatchNorm1d(p)]
        self.encoder = nn.Sequential(*layers)
        self.softmax_scale = softmax_scale
        self.decoder = nn.Parameter(torch.rand(n_bands, p))

    def abundances(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, p)
        return torch.softmax(self.softmax_scale * self.encoder(pixels), dim=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.abundances(pixels) @ self.decoder.T


class Autoencoder(Unmixer):
    """DAEU-style autoencoder; `history_["sad"]` holds the per-epoch loss."""

    _parameter_constraints = {
        **Unmixer._parameter_constraints,
        "epochs": [NON_NEGATIVE_INT],
        "batch_size": [POSITIVE_INT],
        "lr": [POSITIVE_REAL],
        "init": [StrOptions({"vca", "random"})],
        "softmax_scale": [POSITIVE_REAL],
    }

    def __init__(self, n_endmembers: int, random_state: int | None = None, epochs: int = 30,
                 batch_size: int = 128, lr: float = 1e-3, init: str = "vca", softmax_scale: float = 1.0):
        super().__init__(n_endmembers, random_state)
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.init = init
        self.softmax_scale = softmax_scale

    def _initial_endmembers(self, Y: np.ndarray, seed: int) -> np.ndarray | None:
        if self.init == "random":
            return None
        from hyperunmix.methods.vca import vca

        E, _ = vca(Y, self.n_endmembers, seed)
        return np.clip(E, 0.0, None)

    def _fit(self, Y: np.ndarray, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
        seed = 0 if self.random_state is None else int(self.random_state)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        pixels = torch.as_tensor(Y.T, dtype=torch.float32)
        self.model_ = DenseAutoencoder(Y.shape[0], self.n_endmembers, self.softmax_scale)
        initial = self._initial_endmembers(Y, seed)
        if initial is not None:
            with torch.no_grad():
                self.model_.decoder.copy_(torch.as_tensor(initial, dtype=torch.float32))
        optimizer = torch.optim.Adam(self.model_.parameters(), lr=self.lr)
        curve = self.history_.setdefault("sad", [])
        for _ in range(self.epochs):
            self.model_.train()
            total = 0.0
            for index in torch.randperm(len(pixels), generator=gen).split(self.batch_size):
                loss = spectral_angle(self.model_(pixels[index]), pixels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    self.model_.decoder.clamp_(min=0.0)
                total += loss.item() * len(index)
            curve.append(total / len(pixels))
        self.model_.eval()
        with torch.no_grad():
            A = self.model_.abundances(pixels).T
            E = self.model_.decoder.detach().clone()
        return E.numpy().astype(np.float64), A.numpy().astype(np.float64)

    def _transform(self, cube: np.ndarray) -> np.ndarray:
        """(p, N) abundances from the encoder, pixel by pixel (window 1) in row tiles."""
        model = self.model_.eval()
        return predict_tiled(model.abundances, cube, 1, self.n_endmembers, TILE_PIXELS).T
