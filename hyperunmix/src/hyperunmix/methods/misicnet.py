"""MiSiCNet: minimum simplex convolutional network (Rasti, Koirala, Scheunders, Ghamisi, "MiSiCNet:
Minimum Simplex Convolutional Network for Deep Hyperspectral Unmixing", IEEE TGRS 2022).

A deep-image-prior network: a fixed input image goes through a convolutional encoder with a skip
connection, whose softmax output is the abundance map A (p, H, W); a linear decoder without bias,
its weight the endmembers E (L, p), rebuilds the image. The loss is

    1/2 ||Y_p - E A||_F^2 + lambda ||E - ybar 1^T||_F^2

with Y_p the pixels projected onto their p-dimensional signal subspace (rank-p SVD) and ybar
their mean: the second term pulls the endmembers towards the data centroid, i.e. towards the
simplex of minimum volume that still holds the data, while the fit term pushes them out.

As in the authors' released code (github.com/BehnoodRasti/MiSiCNet, the Samson script):
- input: uniform noise U(0, 1) x 0.1 of the image's size (L channels), drawn once (`network_input`
  "image" feeds the projected image instead);
- encoder: [3x3 conv L -> 256, BN, LeakyReLU 0.1] concatenated with the skip [1x1 conv L -> 4, BN,
  LeakyReLU 0.1], then 3x3 conv 260 -> 256, BN, LeakyReLU 0.1, then 3x3 conv 256 -> p, BN, softmax;
  reflection padding, convolutions with bias;
- decoder initialised with SiVM (simplex volume maximisation, Cayley-Menger form) endmembers of the
  projected pixels clipped to [0, 1]; after every step the decoder is clipped to [0, 1];
- Adam, lr 1e-3, 8000 iterations on the whole image, lambda = 100; the abundances returned are
  an exponential moving average (weight 0.99) of the network's output over the iterations.

The network maps its fixed input to this scene's abundances only, so `transform` of another cube
is FCLSU with the fitted endmembers. A scene of more than `sample_size` pixels is fitted on a
seeded random window of at most `sample_size` pixels (the network needs an image, not a pixel
sample); `sample_indices_` lists the window's pixels.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.utils._param_validation import StrOptions
from torch import nn

from hyperunmix.methods.base import (
    NON_NEGATIVE_INT,
    NON_NEGATIVE_REAL,
    POSITIVE_REAL,
    SAMPLE_SIZE,
    UNIT_INTERVAL,
    Unmixer,
)
from hyperunmix.methods.training import seeded, train


def signal_subspace_projection(Y: np.ndarray, p: int) -> np.ndarray:
    """Y (L, N) projected onto its p leading left singular vectors (rank-p denoising)."""
    U = np.linalg.svd(Y, full_matrices=False)[0][:, :p]
    return U @ (U.T @ Y)


def sivm(Y: np.ndarray, p: int) -> np.ndarray:
    """Indices of p pixels by simplex volume maximisation (as the authors' `Endmember_extract`):
    the pixel farthest from the origin, then each time the pixel that maximises the Cayley-Menger
    form of the simplex with the pixels chosen so far (squared Euclidean distances)."""
    norms = np.sum(Y**2, axis=0)

    def squared_distances(index: int) -> np.ndarray:
        return norms + norms[index] - 2 * (Y[:, index] @ Y)

    chosen = [int(np.argmax(norms))]
    D = squared_distances(chosen[0])[None, :]  # (v, N): distance of every pixel to each choice
    for v in range(1, p):
        bordered = np.ones((v + 1, v + 1))
        bordered[:v, :v] = D[:, chosen]
        bordered[v, v] = 0.0
        inverse = np.linalg.inv(bordered)
        augmented = np.vstack([D, np.ones((1, D.shape[1]))])
        volume = np.einsum("in,ij,jn->n", augmented, inverse, augmented)
        chosen.append(int(np.argmax(volume)))
        D = np.vstack([D, squared_distances(chosen[-1])])
    return np.sort(chosen)


class MiSiCNetwork(nn.Module):
    def __init__(self, n_bands: int, n_endmembers: int, width: int = 256, skip: int = 4):
        super().__init__()

        def block(n_in: int, n_out: int, kernel: int) -> list[nn.Module]:
            return [nn.ReflectionPad2d(kernel // 2), nn.Conv2d(n_in, n_out, kernel), nn.BatchNorm2d(n_out)]

        self.main = nn.Sequential(*block(n_bands, width, 3), nn.LeakyReLU(0.1))
        self.skip = nn.Sequential(*block(n_bands, skip, 1), nn.LeakyReLU(0.1))
        self.head = nn.Sequential(*block(width + skip, width, 3), nn.LeakyReLU(0.1),
                                  *block(width, n_endmembers, 3), nn.Softmax(dim=1))
        self.decoder = nn.Parameter(torch.rand(n_bands, n_endmembers))  # E (L, p), set by the fit

    def abundances(self, image: torch.Tensor) -> torch.Tensor:  # (1, L, H, W) -> (p, H * W)
        features = torch.cat([self.main(image), self.skip(image)], dim=1)
        return self.head(features)[0].flatten(1)


class MiSiCNet(Unmixer):
    """MiSiCNet; `history_["loss"]` holds the loss of every iteration (one iteration = one epoch of
    the shared training loop: the whole image is the batch)."""

    _parameter_constraints = {
        **Unmixer._parameter_constraints,
        "iterations": [NON_NEGATIVE_INT],
        "lr": [POSITIVE_REAL],
        "volume_weight": [NON_NEGATIVE_REAL],
        "average_weight": [UNIT_INTERVAL],
        "network_input": [StrOptions({"noise", "image"})],
    }

    def __init__(self, n_endmembers: int, random_state: int | None = None, iterations: int = 8000,
                 lr: float = 1e-3, volume_weight: float = 100.0, average_weight: float = 0.99,
                 network_input: str = "noise", sample_size: int = SAMPLE_SIZE):
        super().__init__(n_endmembers, random_state, sample_size)
        self.iterations = iterations
        self.lr = lr
        self.volume_weight = volume_weight
        self.average_weight = average_weight
        self.network_input = network_input

    def _fit(self, Y: np.ndarray, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
        _, gen = seeded(self.random_state)
        L, p = Y.shape[0], self.n_endmembers
        projected = signal_subspace_projection(Y, p)
        initial = np.clip(projected, 0.0, 1.0)[:, sivm(np.clip(projected, 0.0, 1.0), p)]
        target = torch.as_tensor(projected, dtype=torch.float32)  # (L, N)
        centroid = target.mean(dim=1, keepdim=True)
        if self.network_input == "noise":
            image = 0.1 * torch.rand((1, L, H, W), generator=gen)
        else:
            image = target.reshape(1, L, H, W)
        self.model_ = model = MiSiCNetwork(L, p)
        with torch.no_grad():
            model.decoder.copy_(torch.as_tensor(initial, dtype=torch.float32))
        average: list[torch.Tensor] = []

        def loss(_, iteration: int) -> torch.Tensor:
            A = model.abundances(image)
            with torch.no_grad():  # the returned abundances: a running average of the output
                smoothed = A if iteration == 0 else self.average_weight * average[0] + (1 - self.average_weight) * A
                average[:] = [smoothed]
            fit = 0.5 * (target - model.decoder @ A).pow(2).sum()
            return fit + self.volume_weight * (model.decoder - centroid).pow(2).sum()

        @torch.no_grad()
        def clip_decoder() -> None:
            model.decoder.clamp_(0.0, 1.0)

        model.train()  # batch norm on the image's own statistics throughout, as in the paper's code
        train(torch.optim.Adam(model.parameters(), lr=self.lr), loss, lambda _: [image], self.iterations,
              self.history_.setdefault("loss", []), after_step=clip_decoder, stage="misicnet")
        E = model.decoder.detach().numpy().astype(np.float64)
        if not average:  # iterations=0: the untrained network's output
            with torch.no_grad():
                average = [model.abundances(image)]
        return E, average[0].numpy().astype(np.float64)

    def _fit_large(self, cube: np.ndarray) -> np.ndarray:
        """Fit on a seeded random window of at most `sample_size` pixels (as square as the scene
        allows); the abundances of every pixel come from `transform`."""
        H, W, L = cube.shape
        rows = min(H, max(1, int(np.sqrt(self.sample_size))))
        cols = min(W, self.sample_size // rows)
        rng = np.random.default_rng(self.random_state)
        top, left = int(rng.integers(H - rows + 1)), int(rng.integers(W - cols + 1))
        window = np.asarray(cube[top:top + rows, left:left + cols], dtype=np.float64)
        self.sample_indices_ = ((top + np.arange(rows))[:, None] * W + left + np.arange(cols)).ravel()
        return self._fit(window.reshape(-1, L).T, rows, cols)[0]
