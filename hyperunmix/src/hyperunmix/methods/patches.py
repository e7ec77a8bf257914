"""Pixel neighbourhoods with tensor ops (reflect pad + unfold) and bounded-memory tiling."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from hyperunmix.blocks import release


def _check_window(window: int, height: int, width: int) -> int:
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd positive integer, got {window}")
    pad = window // 2
    if pad >= height or pad >= width:
        raise ValueError(
            f"window={window} needs reflect padding of {pad}, which must be smaller than the "
            f"scene's height ({height}) and width ({width})"
        )
    return pad


def _to_tensor(cube: np.ndarray | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    tensor = torch.as_tensor(cube, dtype=dtype)
    if tensor.ndim != 3:
        raise ValueError(f"cube must have shape (H, W, L), got {tuple(tensor.shape)}")
    return tensor


def extract_patches(
    cube: np.ndarray | torch.Tensor,
    window: int = 3,
    flatten: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Every pixel's w x w neighbourhood, reflect-padded at the borders.

    cube: (H, W, L). Returns (N, L*w*w) when `flatten` (feature order: band, row, col), else
    (N, L, w, w); N = H*W in row-major pixel order (pixel = row * W + col).
    """
    tensor = _to_tensor(cube, dtype)
    height, width, bands = tensor.shape
    pad = _check_window(window, height, width)
    image = tensor.permute(2, 0, 1).unsqueeze(0)  # (1, L, H, W)
    if pad:
        image = F.pad(image, (pad, pad, pad, pad), mode="reflect")
    columns = F.unfold(image, kernel_size=window)[0].T  # (N, L*w*w)
    if flatten:
        return columns.contiguous()
    return columns.reshape(height * width, bands, window, window)


def _reflect_index(index: np.ndarray, size: int) -> np.ndarray:
    """Reflect out-of-range indices the way `F.pad(mode="reflect")` does (edge not repeated)."""
    index = np.abs(index)
    return np.where(index >= size, 2 * (size - 1) - index, index)


def gather_patches(cube: np.ndarray, pixels: np.ndarray, window: int = 3,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The reflect-padded w x w neighbourhoods of some pixels (row-major indices), read straight
    from the cube, so a memory-mapped scene is read only where they lie: (n, L*w*w), equal to
    `extract_patches(cube, window)[pixels]` without unfolding the whole scene."""
    height, width, bands = cube.shape
    pad = _check_window(window, height, width)
    offsets = np.arange(-pad, pad + 1)
    rows = _reflect_index(pixels[:, None] // width + offsets, height)  # (n, w)
    cols = _reflect_index(pixels[:, None] % width + offsets, width)
    values = np.asarray(cube[rows[:, :, None], cols[:, None, :]], dtype=np.float32)  # (n, w, w, L)
    release(cube)
    # unfold's feature order is (band, row, col)
    return torch.as_tensor(values.transpose(0, 3, 1, 2).reshape(len(pixels), -1), dtype=dtype)


def iter_image_tiles(
    cube: np.ndarray | torch.Tensor,
    window: int = 3,
    max_pixels: int = 16384,
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (first_pixel, end_pixel, image) over row bands of the scene; `image` is the band's
    reflect-padded (1, L, rows + w - 1, W + w - 1) block, ready for unfold or a convolution.

    Each tile holds whole image rows and at most about `max_pixels` pixels (at least one row),
    so memory stays bounded on scenes too large to unfold at once.
    """
    height, width = cube.shape[0], cube.shape[1]
    pad = _check_window(window, height, width)
    rows_per_tile = max(1, max_pixels // width)
    for row_start in range(0, height, rows_per_tile):
        row_end = min(height, row_start + rows_per_tile)
        rows = _reflect_index(np.arange(row_start - pad, row_end + pad), height)
        block = _to_tensor(np.asarray(cube[rows]) if isinstance(cube, np.ndarray) else cube[rows], dtype)
        release(cube)
        image = block.permute(2, 0, 1).unsqueeze(0)  # (1, L, rows + 2 pad, W)
        if pad:
            image = F.pad(image, (pad, pad, 0, 0), mode="reflect")
        yield row_start * width, row_end * width, image
        del block, image  # before the next tile is read: two tiles at once would double the peak


def iter_patch_tiles(
    cube: np.ndarray | torch.Tensor,
    window: int = 3,
    max_pixels: int = 16384,
    flatten: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (first_pixel, end_pixel, patches) over row bands of the scene (see
    `iter_image_tiles`). Concatenating the tiles equals `extract_patches(cube, window)`."""
    for start, end, image in iter_image_tiles(cube, window, max_pixels, dtype):
        columns = F.unfold(image, kernel_size=window)[0].T
        if not flatten:
            columns = columns.reshape(-1, image.shape[1], window, window)
        yield start, end, columns


@torch.inference_mode()
def predict_tiled(
    model: Callable[[torch.Tensor], torch.Tensor],
    cube: np.ndarray | torch.Tensor,
    window: int,
    out_features: int,
    max_pixels: int = 16384,
    flatten: bool = True,
    image_input: bool = False,
) -> np.ndarray:
    """Apply `model` to every pixel neighbourhood tile by tile; returns (N, out_features).

    `model` gets the tile's patches (see `iter_patch_tiles`), or with `image_input` the padded
    image block itself (see `iter_image_tiles`) and must return one row per pixel.
    """
    height, width = cube.shape[0], cube.shape[1]
    output = np.empty((height * width, out_features), dtype=np.float32)
    for start, end, image in iter_image_tiles(cube, window, max_pixels):
        # Checked on the block, not on the w*w times larger patch matrix.
        if not torch.isfinite(image).all():
            raise ValueError(f"cube contains NaN or infinite values in pixels near {start}..{end - 1}")
        if not image_input:
            image = F.unfold(image, kernel_size=window)[0].T
            if not flatten:
                image = image.reshape(-1, cube.shape[2], window, window)
        output[start:end] = model(image).numpy()
        del image  # see iter_image_tiles
    return output
