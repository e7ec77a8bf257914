"""The checks every scene passes, whether it comes from a file (the loader) or straight from the
caller (an estimator's `fit`): one function, `check_cube`, so the two cannot disagree.

Positions of bad values are given as image row, column and band (0-based), which do not depend on
the order in which a file stored its pixels (MATLAB files store them column by column).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

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
    `allow_negative`), all-zero bands, or every pixel the same spectrum (nothing to unmix)."""
    cube = np.asarray(cube)
    if cube.ndim != 3:
        raise SceneError(f"{what} must have shape (H, W, L), got an array of shape {cube.shape}")
    check_real(cube, what)
    H, W, L = cube.shape
    if cube.size == 0:
        raise SceneError(f"{what} is empty: {H} x {W} pixels x {L} bands")
    check_values(cube, what, CUBE_AXES, allow_negative=allow_negative)
    zero_bands = np.flatnonzero(~np.any(cube != 0, axis=(0, 1)))
    if zero_bands.size:
        raise SceneError(f"{what}: band(s) {zero_bands[:10].tolist()} are all zero (0-based band index)")
    pixels = cube.reshape(H * W, L)
    if np.all(pixels == pixels[:1]):
        raise SceneError(f"{what}: all {H * W} pixels have the same spectrum; there is nothing to unmix")


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
    bad = ~np.isfinite(array)
    if bad.any():
        raise SceneError(f"{what} contains {int(bad.sum())} NaN/infinite value(s), first at {position(bad, axes)}")
    if allow_negative:
        return
    negative = array < 0
    if negative.any():
        first = tuple(np.argwhere(negative)[0])
        raise SceneError(
            f"{what} contains {int(negative.sum())} negative value(s), first at {position(negative, axes)} "
            f"(value {array[first]:.4g}); {NEGATIVE_HINT}"
        )


def position(mask: np.ndarray, axes: tuple[str, ...]) -> str:
    """'row 5, column 0, band 2' for the first True entry of `mask`."""
    return ", ".join(f"{axis} {int(i)}" for axis, i in zip(axes, np.argwhere(mask)[0]))


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
