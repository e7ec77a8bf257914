"""The scene object: pixels, optional ground truth, wavelengths and georeference.

Inside the package a scene is `Y` (L x N) with pixels in row-major order (pixel = row * W + col).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hyperunmix.blocks import is_memory_mapped, iter_row_blocks
from hyperunmix.files import atomic_write
from hyperunmix.validation import SceneError, validate_scene


@dataclass(frozen=True)
class Georeference:
    """Where the image lies on the ground: an affine pixel-to-map transform (GDAL order
    a, b, c, d, e, f: x = a * col + b * row + c, y = d * col + e * row + f) and the coordinate
    reference system as WKT (None when the file names none)."""

    transform: tuple[float, ...]
    crs: str | None = None


@dataclass
class Scene:
    """A hyperspectral scene with optional ground truth.

    Y: (L, N) float64, pixels in row-major order (or, for a memory-mapped file, the mapped
    floating-point pixels, never copied whole); E: (L, p) endmembers as columns;
    A: (p, N) abundances in the same pixel order as Y; wavelengths: (L,) band centres in nm.
    """

    Y: np.ndarray
    H: int
    W: int
    E: np.ndarray | None = None
    A: np.ndarray | None = None
    material_names: list[str] | None = None
    name: str = "scene"
    wavelengths: np.ndarray | None = None
    georeference: Georeference | None = None
    meta: dict = field(default_factory=dict)
    _fingerprint: dict | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_scene(self)

    @property
    def cube(self) -> np.ndarray:
        """The scene as an H x W x L array (a view, no copy)."""
        return self.Y.T.reshape(self.H, self.W, self.n_bands)

    @property
    def n_bands(self) -> int:
        return self.Y.shape[0]

    @property
    def n_pixels(self) -> int:
        return self.Y.shape[1]

    @property
    def p(self) -> int | None:
        if self.E is not None:
            return self.E.shape[1]
        return None if self.A is None else self.A.shape[0]

    @property
    def abundance_maps(self) -> np.ndarray | None:
        return None if self.A is None else self.A.reshape(-1, self.H, self.W)

    @property
    def has_ground_truth(self) -> bool:
        return self.E is not None and self.A is not None

    def fingerprint(self) -> dict:
        """Shape and SHA-256 of the pixels and ground truth: a finished run is reused only for the
        scene it was fitted on, not for one whose file has changed since. Computed once per scene:
        a benchmark asks for it at every run, and a large file takes a pass over the disk."""
        if self._fingerprint is None:
            self._fingerprint = self._hash()
        return dict(self._fingerprint)

    def _hash(self) -> dict:
        digest = hashlib.sha256()
        for array in (self.Y, self.E, self.A):
            digest.update(b"none" if array is None else repr(array.shape).encode())
            if array is None:
                continue
            if array is self.Y and is_memory_mapped(array):
                # A mapped file is hashed pixel by pixel, block by block (reading it band by band
                # would sweep the whole file once per band).
                for _, block in iter_row_blocks(self.cube, dtype="<f8"):
                    digest.update(block)
            else:
                digest.update(np.ascontiguousarray(array, dtype="<f8"))
        return {"shape": [self.H, self.W, self.n_bands], "sha256": digest.hexdigest()}

    def rescaled_endmembers(self) -> np.ndarray:
        """Endmembers with each column scaled by least squares so that Y ~ E diag(s) A.

        Some releases (Samson) store each endmember max-scaled to 1; these scales recover the
        reflectance level the abundances imply.
        """
        if not self.has_ground_truth:
            raise SceneError(f"scene {self.name!r} has no ground truth to rescale")
        return self.E * least_squares_scales(self.Y, self.E, self.A)[None, :]


def least_squares_scales(Y: np.ndarray, E: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Scales s (p,) minimising ||Y - E diag(s) A||_F."""
    # <E_k A_k, E_j A_j>_F = (E_k.E_j)(A_k.A_j), so the normal equations are p x p.
    gram = (E.T @ E) * (A @ A.T)
    rhs = np.einsum("lk,ln,kn->k", E, Y, A)
    return np.linalg.lstsq(gram, rhs, rcond=None)[0]


def save_scene_npz(scene: Scene, path: str | Path) -> Path:
    """Write a scene as .npz in the HySUPP key layout (row-major pixels), atomically."""
    arrays = {"Y": scene.Y, "H": np.array(scene.H), "W": np.array(scene.W)}
    if scene.has_ground_truth:
        arrays.update(E=scene.E, A=scene.A, p=np.array(scene.p))
    if scene.wavelengths is not None:
        arrays["wavelengths"] = scene.wavelengths
    return atomic_write(Path(path), lambda handle: np.savez(handle, **arrays))
