"""Where GAUSS's training neighbourhoods come from.

`Unfolded`: every pixel of a scene that fits in memory, unfolded at once (the exact path of the
standard scenes). `Streamed`: a seeded sample of the pixels of a scene of any size, their centre
spectra read once (block by block) and their neighbourhoods read from the cube per minibatch,
so memory is set by the sample and the minibatch, not by the scene. Both index the training
pixels by position 0..n-1.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from hyperunmix.blocks import sample_pixels
from hyperunmix.methods.patches import extract_patches, gather_patches

CHUNK = 16384  # neighbourhoods per chunk when a network runs over every training pixel


class Unfolded:
    """Every pixel of the cube, neighbourhoods unfolded in memory: (N, L*w*w)."""

    holds_every_pixel = True

    def __init__(self, cube: np.ndarray, window: int, device: str):
        self.all_patches = extract_patches(cube, window).to(device)
        self.centre = torch.as_tensor(cube.reshape(-1, cube.shape[2]), dtype=torch.float32, device=device)
        self.n = len(self.centre)
        self.energy = float(self.centre.pow(2).mean()) + 1e-12

    def patches(self, index: torch.Tensor) -> torch.Tensor:
        return self.all_patches[index]

    def scene_pixels(self, index: torch.Tensor) -> torch.Tensor:
        return index

    def map(self, network: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """`network` over every training neighbourhood, in one pass."""
        return network(self.all_patches)


class Streamed:
    """`size` pixels drawn with `rng` (row-major scene indices `pixels`, sorted), their centre
    spectra (n, L) in memory and their neighbourhoods read from the cube when asked for."""

    holds_every_pixel = False

    def __init__(self, cube: np.ndarray, window: int, size: int, rng: np.random.Generator, device: str):
        self.cube, self.window, self.device = cube, window, device
        self.pixels, spectra = sample_pixels(cube, size, rng, dtype=np.float32)
        self.centre = torch.as_tensor(spectra.T.copy(), device=device)
        self.n = len(self.pixels)
        self.energy = float(self.centre.double().pow(2).mean()) + 1e-12

    def patches_at(self, scene_pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        return gather_patches(self.cube, np.asarray(scene_pixels), self.window).to(self.device)

    def patches(self, index: torch.Tensor) -> torch.Tensor:
        return self.patches_at(self.pixels[index.cpu().numpy()])

    def scene_pixels(self, index: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.pixels[index.cpu().numpy()], device=index.device)

    def map(self, network: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """`network` over every training neighbourhood, chunk by chunk."""
        return torch.cat([network(self.patches(chunk)) for chunk in torch.arange(self.n).split(CHUNK)])
