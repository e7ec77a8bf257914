"""CNNAEU (Palsson, Ulfarsson & Sveinsson, IEEE TGRS 2021): convolutional autoencoder with a
3x3 conv encoder, softmax abundances, a conv decoder and the spectral angle as loss, trained
on random image patches. Layer sizes and optimiser follow the paper's released settings
(48 filters, LeakyReLU 0.02, batch norm, spatial dropout 0.2, softmax scale 3.5, 11x11
decoder, RMSprop 3e-4); the decoder is kept non-negative by projection, and the endmembers
are the decoder kernels averaged over space.

Training budget as in the paper and its HySUPP implementation (`src/model/blind/CNNAEU.py`):
320 epochs, batches of 15 patches of 40 x 40, and 250 patches for Urban (307 x 307 x 162),
scaled by the scene's volume (pixels x bands): `patches_for_scene`; 23 patches on Samson. A
scene fitted on a sample counts `sample_size` pixels, so the budget stays bounded. Unlike HySUPP,
which cuts its patches once, fresh random crops are drawn every epoch."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from hyperunmix.blocks import release
from hyperunmix.methods.base import NON_NEGATIVE_INT, POSITIVE_INT, POSITIVE_REAL, SAMPLE_SIZE, TILE_PIXELS, Unmixer
from hyperunmix.methods.losses import pixel_spectral_angle
from hyperunmix.methods.patches import predict_tiled
from hyperunmix.methods.training import seeded, train

# The paper's patch count: 250 patches for Urban, 307 x 307 pixels x 162 bands.
PAPER_PATCHES, PAPER_VOLUME = 250, 307 * 307 * 162


def patches_for_scene(pixels: int, bands: int) -> int:
    """Patches per epoch by the paper's rule (HySUPP: int(250 * H * W * L / (307 * 307 * 162))),
    at least one."""
    return max(1, int(PAPER_PATCHES * pixels * bands / PAPER_VOLUME))


class ConvAutoencoder(nn.Module):
    def __init__(self, n_bands: int, n_endmembers: int, filters: int = 48, decoder_kernel: int = 11,
                 dropout: float = 0.2, softmax_scale: float = 3.5):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(n_bands, filters, 3, padding=1, padding_mode="reflect", bias=False),
            nn.LeakyReLU(0.02), nn.BatchNorm2d(filters), nn.Dropout2d(dropout),
            nn.Conv2d(filters, n_endmembers, 1, bias=False),
            nn.LeakyReLU(0.02), nn.BatchNorm2d(n_endmembers), nn.Dropout2d(dropout),
        )
        self.softmax_scale = softmax_scale
        self.decoder = nn.Conv2d(n_endmembers, n_bands, decoder_kernel, padding=decoder_kernel // 2,
                                 padding_mode="reflect", bias=False)
        with torch.no_grad():
            self.decoder.weight.uniform_(0.0, 1.0 / decoder_kernel**2)

    def abundances(self, image: torch.Tensor) -> torch.Tensor:  # (B, L, H, W) -> (B, p, H, W)
        return torch.softmax(self.softmax_scale * self.encoder(image), dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.abundances(image))


def crop_corners(height: int, width: int, size: int, count: int, generator: torch.Generator):
    """Top-left corners of `count` random crops of (at most) size x size, and the crop's shape."""
    size_h, size_w = min(size, height), min(size, width)
    rows = torch.randint(0, height - size_h + 1, (count,), generator=generator)
    cols = torch.randint(0, width - size_w + 1, (count,), generator=generator)
    return zip(rows.tolist(), cols.tolist()), size_h, size_w


def random_crops(image: torch.Tensor, size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` random size x size crops of a (L, H, W) image -> (count, L, size, size)."""
    corners, size_h, size_w = crop_corners(image.shape[1], image.shape[2], size, count, generator)
    return torch.stack([image[:, r:r + size_h, c:c + size_w] for r, c in corners])


def cube_crops(cube: np.ndarray, size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """The same crops as `random_crops`, read from an (H, W, L) cube (a memory map is read only
    where the crops lie) -> (count, L, size, size) float32."""
    corners, size_h, size_w = crop_corners(cube.shape[0], cube.shape[1], size, count, generator)
    crops = np.stack([np.asarray(cube[r:r + size_h, c:c + size_w], dtype=np.float32) for r, c in corners])
    release(cube)
    return torch.from_numpy(crops).permute(0, 3, 1, 2)


class CNNAEU(Unmixer):
    """Convolutional autoencoder unmixing; `history_["sad"]` holds the per-epoch loss. It trains on
    random crops; a scene of more than `sample_size` pixels is never loaded whole: the crops are
    read from the cube and the abundances come from `transform`."""

    _parameter_constraints = {
        **Unmixer._parameter_constraints,
        "epochs": [NON_NEGATIVE_INT],
        "patch_size": [POSITIVE_INT],
        "patches_per_epoch": [POSITIVE_INT, None],
        "batch_size": [POSITIVE_INT],
        "lr": [POSITIVE_REAL],
        "filters": [POSITIVE_INT],
        "decoder_kernel": [POSITIVE_INT],  # odd: checked in _fit (a constraint cannot say it)
    }

    def __init__(self, n_endmembers: int, random_state: int | None = None, epochs: int = 320,
                 patch_size: int = 40, patches_per_epoch: int | None = None, batch_size: int = 15,
                 lr: float = 3e-4, filters: int = 48, decoder_kernel: int = 11,
                 sample_size: int = SAMPLE_SIZE):
        super().__init__(n_endmembers, random_state, sample_size)
        self.epochs = epochs
        self.patch_size = patch_size
        self.patches_per_epoch = patches_per_epoch
        self.batch_size = batch_size
        self.lr = lr
        self.filters = filters
        self.decoder_kernel = decoder_kernel

    def _train_model(self, bands: int, height: int, width: int,
                     crops: Callable[[torch.Generator, int], torch.Tensor]) -> None:
        """Train on `crops(generator, count)` (`patches_per_epoch_` crops, drawn afresh every epoch)."""
        _, gen = seeded(self.random_state)
        if self.decoder_kernel % 2 == 0:  # 'same' padding needs an odd kernel
            raise ValueError(f"decoder_kernel must be odd, got {self.decoder_kernel}")
        kernel = min(self.decoder_kernel, 2 * (min(height, width) // 2) - 1)  # reflect pad must fit
        self.model_ = ConvAutoencoder(bands, self.n_endmembers, self.filters, kernel)
        self.patches_per_epoch_ = self.patches_per_epoch or patches_for_scene(
            min(height * width, self.sample_size), bands)

        @torch.no_grad()
        def non_negative_decoder() -> None:
            self.model_.decoder.weight.clamp_(min=0.0)

        self.model_.train()
        train(torch.optim.RMSprop(self.model_.parameters(), lr=self.lr),
              lambda batch, _: pixel_spectral_angle(self.model_(batch), batch),
              lambda epoch: crops(gen, self.patches_per_epoch_).split(self.batch_size), self.epochs,
              self.history_.setdefault("sad", []), after_step=non_negative_decoder, stage="cnnaeu")
        self.model_.eval()

    def _endmembers(self) -> np.ndarray:
        with torch.no_grad():  # the decoder kernels averaged over space: (L, p)
            return self.model_.decoder.weight.mean(dim=(2, 3)).numpy().astype(np.float64)

    def _fit(self, Y: np.ndarray, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
        L = Y.shape[0]
        image = torch.as_tensor(Y, dtype=torch.float32).reshape(L, H, W)
        self._train_model(L, H, W, lambda gen, count: random_crops(image, self.patch_size, count, gen))
        with torch.no_grad():
            A = self.model_.abundances(image.unsqueeze(0))[0].reshape(self.n_endmembers, -1)
        return self._endmembers(), A.numpy().astype(np.float64)

    def _fit_large(self, cube: np.ndarray) -> np.ndarray:
        H, W, L = cube.shape
        self._train_model(L, H, W, lambda gen, count: cube_crops(cube, self.patch_size, count, gen))
        return self._endmembers()

    neighbourhood_radius = 1  # the encoder's one 3 x 3 convolution

    def _transform(self, cube: np.ndarray) -> np.ndarray:
        """(p, N) abundances from the encoder in row tiles. Each tile comes with a reflected
        one-pixel margin, which is exactly what the encoder's 3 x 3 reflect padding reads at the
        image border; the encoder's own padding then only touches the margin, which is cut off."""
        model = self.model_.eval()

        def encode(image: torch.Tensor) -> torch.Tensor:  # (1, L, rows + 2, W + 2) -> (rows * W, p)
            return model.abundances(image)[0, :, 1:-1, 1:-1].reshape(self.n_endmembers, -1).T

        return predict_tiled(encode, cube, 3, self.n_endmembers, TILE_PIXELS, image_input=True).T
