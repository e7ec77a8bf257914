"""A cube (H x W x L) read in blocks of whole image rows, so that a pass over a scene of any size
holds one block at a time: the checks, pixel samples, tiled inference and streamed training.

A memory-mapped cube (an ENVI file, `np.load(..., mmap_mode="r")`) is read through the mapping;
every page a pass touches would stay counted in the process's resident memory until the map is
closed, so a pass over a large file would look as large as the file. `release` drops the
mapping's pages from the process after each block (the operating system keeps them cached, so
a second pass does not go back to disk).
"""
from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np

# Pixels per block: 64k pixels x 200 bands in float64 is 100 MiB.
BLOCK_PIXELS = 65536


def block_rows(width: int, max_pixels: int = BLOCK_PIXELS) -> int:
    """Whole rows per block: at most about `max_pixels` pixels, at least one row."""
    return max(1, max_pixels // width)


def is_memory_mapped(array) -> bool:
    """Whether `array` (or the array it views) is a numpy memory map of a file."""
    return isinstance(array, np.memmap) and isinstance(getattr(array, "_mmap", None), mmap.mmap)


def release(cube) -> None:
    """Drop the pages of a read-only memory-mapped cube from this process (no-op otherwise).
    Only read-only maps: on a copy-on-write map this would discard the caller's edits."""
    if is_memory_mapped(cube) and cube.mode == "r" and hasattr(mmap, "MADV_DONTNEED"):
        cube._mmap.madvise(mmap.MADV_DONTNEED)


def iter_row_blocks(cube, max_pixels: int = BLOCK_PIXELS, dtype=None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first_row, block) over the cube, each block (rows, W, L) an in-memory array (of
    `dtype` when given), releasing the mapped pages of each block once it is copied.

    Every block is read into the same buffer, valid until the next block: two blocks alive at
    once (the caller's and the next) would double the pass's memory."""
    height, width = cube.shape[0], cube.shape[1]
    rows = min(height, block_rows(width, max_pixels))
    buffer = np.empty((rows, *cube.shape[1:]), dtype=cube.dtype if dtype is None else dtype)
    for start in range(0, height, rows):
        block = buffer[:min(rows, height - start)]
        block[...] = cube[start:start + rows]
        release(cube)
        yield start, block


def sample_pixels(cube, size: int, rng: np.random.Generator, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """`size` distinct pixels drawn at random (row-major indices, sorted) and their spectra (L, size),
    read block by block. Every pixel when the scene has no more than `size`."""
    height, width, bands = cube.shape
    n_pixels = height * width
    index = np.arange(n_pixels) if size >= n_pixels else np.sort(rng.choice(n_pixels, size=size, replace=False))
    out = np.empty((bands, len(index)), dtype=dtype)
    done = 0
    for start, block in iter_row_blocks(cube):
        first = start * width
        end = np.searchsorted(index, first + block.shape[0] * width)
        out[:, done:end] = block.reshape(-1, bands)[index[done:end] - first].T
        done = end
    return index, out
