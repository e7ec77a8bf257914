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

from hyperunmix.methods.base import NON_NEGATIVE_INT, POSITIVE_INT, POSITIVE_REAL, SAMPLE_SIZE, TILE_PIXELS, Unmixer
from hyperunmix.methods.losses import spectral_angle
from hyperunmix.methods.patches import predict_tiled
from hyperunmix.methods.training import seeded, shuffled, train


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
    """DAEU-style autoencoder; `history_["sad"]` holds the per-epoch loss. A scene of more than
    `sample_size` pixels trains on a seeded sample of that many pixels (minibatches of single
    pixels need no neighbours, so the sample is all the training set needs)."""

    _parameter_constraints = {
        **Unmixer._parameter_constraints,
        "epochs": [NON_NEGATIVE_INT],
        "batch_size": [POSITIVE_INT],
        "lr": [POSITIVE_REAL],
        "init": [StrOptions({"vca", "random"})],
        "softmax_scale": [POSITIVE_REAL],
    }

    def __init__(self, n_endmembers: int, random_state: int | None = None, epochs: int = 30,
                 batch_size: int = 128, lr: float = 1e-3, init: str = "vca", softmax_scale: float = 1.0,
                 sample_size: int = SAMPLE_SIZE):
        super().__init__(n_endmembers, random_state, sample_size)
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
        seed, gen = seeded(self.random_state)
        pixels = torch.as_tensor(Y.T, dtype=torch.float32)
        self.model_ = DenseAutoencoder(Y.shape[0], self.n_endmembers, self.softmax_scale)
        initial = self._initial_endmembers(Y, seed)
        if initial is not None:
            with torch.no_grad():
                self.model_.decoder.copy_(torch.as_tensor(initial, dtype=torch.float32))

        @torch.no_grad()
        def non_negative_decoder() -> None:
            self.model_.decoder.clamp_(min=0.0)

        self.model_.train()
        train(torch.optim.Adam(self.model_.parameters(), lr=self.lr),
              lambda index, _: spectral_angle(self.model_(pixels[index]), pixels[index]),
              shuffled(len(pixels), self.batch_size, gen), self.epochs, self.history_.setdefault("sad", []),
              after_step=non_negative_decoder, stage="autoencoder")
        self.model_.eval()
        with torch.no_grad():
            A = self.model_.abundances(pixels).T
            E = self.model_.decoder.detach().clone()
        return E.numpy().astype(np.float64), A.numpy().astype(np.float64)

    def _transform(self, cube: np.ndarray) -> np.ndarray:
        """(p, N) abundances from the encoder, pixel by pixel (window 1) in row tiles."""
        model = self.model_.eval()
        return predict_tiled(model.abundances, cube, 1, self.n_endmembers, TILE_PIXELS).T
