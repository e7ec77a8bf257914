"""The checks every scene passes, whether it comes from a file (the loader) or straight from the
caller (an estimator's `fit`): one function, `check_cube`, so the two cannot disagree.

Positions of bad values are given as image row, column and band (0-based), which do not depend on
the order in which a file stored its pixels (MATLAB files store them column by column).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hyperunmix.blocks import iter_row_blocks

if TYPE_CHECKING:
    from hyperunmix.scene import Scene

CUBE_AXES = ("row", "column", "band")
NEGATIVE_HINT = "clip them to zero first (load_scene(..., clip_negative=True) or np.clip(cube, 0, None))"


class SceneError(ValueError):
    """A scene file or array is malformed; the message says what and where."""


class SceneWarning(UserWarning):
    """A scene was read, but with a guess the user should know about."""


def check_cube(cube, what: str = "cube", *, allow_negative: bool = False) -> None:
    """Raise SceneError naming the first problem of an H x W x L cube: wrong shape, values that are
    not real numbers (text, complex), no pixels, NaN/inf, negative values (unless
    `allow_negative`), all-zero bands, or every pixel the same spectrum (nothing to unmix).

    The cube is read in blocks of image rows (`hyperunmix.blocks`), so checking a memory-mapped
    scene of any size holds one block at a time; blocks come in row-major order, so the first
    bad value found is the first in the scene."""
    cube = cube if isinstance(cube, np.ndarray) else np.asarray(cube)
    if cube.ndim != 3:
        raise SceneError(f"{what} must have shape (H, W, L), got an array of shape {cube.shape}")
    check_real(cube, what)
    H, W, L = cube.shape
    if cube.size == 0:
        raise SceneError(f"{what} is empty: {H} x {W} pixels x {L} bands")
    counts = BadValues()
    nonzero_bands = np.zeros(L, dtype=bool)
    first_pixel, all_same = cube[0, 0], True
    for start, block in iter_row_blocks(cube):
        counts.add(block, start, allow_negative)
        nonzero_bands |= np.any(block != 0, axis=(0, 1))
        all_same = all_same and bool(np.all(block == first_pixel))
    counts.raise_first(what, CUBE_AXES, allow_negative)
    zero_bands = np.flatnonzero(~nonzero_bands)
    if zero_bands.size:
        raise SceneError(f"{what}: band(s) {zero_bands[:10].tolist()} are all zero (0-based band index)")
    if all_same:
        raise SceneError(f"{what}: all {H * W} pixels have the same spectrum; there is nothing to unmix")


class BadValues:
    """Counts of NaN/inf and negative entries over row blocks, with the first of each."""

    def __init__(self) -> None:
        self.bad = self.negative = 0
        self.first_bad = self.first_negative = None  # (position, value)

    def add(self, block: np.ndarray, row_start: int, allow_negative: bool) -> None:
        offset = np.array([row_start] + [0] * (block.ndim - 1))
        bad = ~np.isfinite(block)
        self.bad += int(bad.sum())
        if self.first_bad is None and bad.any():
            self.first_bad = (np.argwhere(bad)[0] + offset, None)
        if allow_negative:
            return
        negative = block < 0  # NaN compares False: never counted twice
        self.negative += int(negative.sum())
        if self.first_negative is None and negative.any():
            first = np.argwhere(negative)[0]
            self.first_negative = (first + offset, block[tuple(first)])

    def raise_first(self, what: str, axes: tuple[str, ...], allow_negative: bool) -> None:
        if self.bad:
            raise SceneError(f"{what} contains {self.bad} NaN/infinite value(s), first at "
                             f"{describe_position(self.first_bad[0], axes)}")
        if self.negative and not allow_negative:
            where, value = self.first_negative
            raise SceneError(
                f"{what} contains {self.negative} negative value(s), first at {describe_position(where, axes)} "
                f"(value {value:.4g}); {NEGATIVE_HINT}"
            )


def check_real(array: np.ndarray, what: str) -> None:
    """Refuse arrays whose conversion to float would lose or invent information: complex values
    (the imaginary part would be dropped), text (numeric strings would be parsed), objects."""
    if array.dtype.kind == "c":
        raise SceneError(f"{what} has complex values (dtype {array.dtype}); the imaginary part would be "
                         "lost: pass real values (e.g. np.real(cube) if that is what is meant)")
    if array.dtype.kind not in "iuf":
        kind = {"U": "text", "S": "text", "O": "Python objects", "b": "booleans"}.get(array.dtype.kind, "not numbers")
        raise SceneError(f"{what} has values of dtype {array.dtype} ({kind}); expected real numbers")


def check_values(array: np.ndarray, what: str, axes: tuple[str, ...], allow_negative: bool = False) -> None:
    """Reject NaN/inf (and negative) entries, naming the first one by its position along `axes`."""
    counts = BadValues()
    counts.add(array, 0, allow_negative)
    counts.raise_first(what, axes, allow_negative)


def describe_position(index, axes: tuple[str, ...]) -> str:
    return ", ".join(f"{axis} {int(i)}" for axis, i in zip(axes, index))


def validate_scene(scene: Scene) -> None:
    """Raise SceneError naming the first problem found in a scene (Y through `check_cube`)."""
    Y, where = scene.Y, f"scene {scene.name!r}"
    if not isinstance(Y, np.ndarray) or Y.ndim != 2:
        raise SceneError(f"{where}: Y must be a 2-D (bands, pixels) array, got shape {np.shape(Y)}")
    if Y.shape[1] != scene.H * scene.W:
        raise SceneError(
            f"{where}: Y has {Y.shape[1]} pixels but H x W = {scene.H} x {scene.W} = {scene.H * scene.W}"
        )
    check_cube(Y.T.reshape(scene.H, scene.W, Y.shape[0]), f"{where}: Y")
    if scene.E is not None:
        if scene.E.ndim != 2 or scene.E.shape[0] != Y.shape[0]:
            raise SceneError(f"{where}: E must have shape (L={Y.shape[0]}, p), got {scene.E.shape}")
        check_values(scene.E, f"{where}: E", ("band", "endmember"))
    if scene.A is not None:
        p = scene.A.shape[0] if scene.E is None else scene.E.shape[1]
        if scene.A.shape != (p, Y.shape[1]):
            raise SceneError(f"{where}: A must have shape (p={p}, N={Y.shape[1]}), got {scene.A.shape}")
        check_values(scene.A.reshape(p, scene.H, scene.W), f"{where}: A", ("endmember", "row", "column"))
    if scene.wavelengths is not None and np.shape(scene.wavelengths) != (Y.shape[0],):
        raise SceneError(f"{where}: {np.size(scene.wavelengths)} wavelengths for {Y.shape[0]} bands")
    if scene.material_names is not None and scene.p is not None and len(scene.material_names) != scene.p:
        raise SceneError(f"{where}: {len(scene.material_names)} material names for p={scene.p} endmembers")
