"""Readers for matrix files (.mat, .npz, .npy) in every common hyperspectral layout.

Layouts (see `detect_layout`): (a) Y, GT, S_GT, lines, cols; (b) original releases Y or V +
nRow/nCol (+maxValue), ground truth in a separate file; (c) HySUPP Y/E/A/H/W/p; (d) Y/M/A;
an H x W x L cube under 'im' or 'cube'. MATLAB files store pixels column-major
(pixel = row + col * H); the readers return them row-major (pixel = row * W + col).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import scipy.io

from hyperunmix.blocks import is_memory_mapped
from hyperunmix.validation import SceneError, SceneWarning, check_real

PIXEL_ORDERS = ("auto", "row-major", "column-major")
WAVELENGTH_KEYS = ("wavelengths", "wavelength")


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read a .mat / .npz / .npy file into a dict of arrays (keys as stored)."""
    suffix = path.suffix.lower()
    if suffix == ".mat":
        try:
            raw = scipy.io.loadmat(path)
        except NotImplementedError:  # MATLAB v7.3 files are HDF5
            raise SceneError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; save with -v7") from None
        except Exception as err:
            raise SceneError(f"{path}: cannot read as a MATLAB file ({err})") from err
        return {k: v for k, v in raw.items() if not k.startswith("__")}
    if suffix in (".npz", ".npy"):
        try:
            if suffix == ".npy":
                return {"cube": np.load(path, allow_pickle=False)}
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except Exception as err:  # object arrays (pickles) are refused, as are damaged files
            raise SceneError(f"{path}: cannot read as a NumPy {suffix} file ({err})") from err
    raise SceneError(f"{path}: not a matrix file (expected .mat, .npz or .npy), got {suffix!r}")


def scalar(arrays: dict, *keys: str) -> int | None:
    for key in keys:
        if key in arrays:
            value = np.asarray(arrays[key]).ravel()
            if value.size != 1:
                raise SceneError(f"key {key!r} must be a scalar, got shape {np.shape(arrays[key])}")
            if value.dtype.kind not in "iuf" or not float(value[0]).is_integer():
                raise SceneError(f"key {key!r} must be a whole number, got {value[0]!r}")
            return int(value[0])
    return None


def detect_layout(arrays: dict) -> str:
    """Name the layout of a dict of arrays (see `load_scene`)."""
    keys = set(arrays)
    if "im" in keys or "cube" in keys:
        return "cube"
    if {"Y", "H", "W"} <= keys and "p" in keys:
        return "hysupp"
    if "Y" in keys and ({"GT", "S_GT"} & keys or {"lines", "cols"} <= keys):
        return "gt-maps"
    if ({"Y", "V"} & keys) and {"nRow", "nCol"} <= keys:
        return "original-release"
    if {"Y", "M", "A"} <= keys:
        return "y-m-a"
    if "Y" in keys:
        return "y-only"
    raise SceneError(
        f"cannot recognise the layout: keys {sorted(keys)}; expected a pixel matrix 'Y' (or 'V'), "
        "a cube 'im'/'cube', or HySUPP keys Y/E/A/H/W/p"
    )


def to_row_major(M: np.ndarray, H: int, W: int) -> np.ndarray:
    """Reorder the pixel columns of a (k, N) matrix from column-major to row-major."""
    k = M.shape[0]
    return M.reshape(k, W, H).transpose(0, 2, 1).reshape(k, H * W)


def scene_shape(arrays: dict, n_pixels: int, shape: tuple[int, int] | None, source: str) -> tuple[int, int]:
    if shape is not None:
        H, W = shape
    else:
        H = scalar(arrays, "H", "lines", "nRow", "rows")
        W = scalar(arrays, "W", "cols", "nCol", "columns")
        if H is None or W is None:
            side = int(round(np.sqrt(n_pixels)))
            if side * side != n_pixels:
                raise SceneError(
                    f"{source}: no image size keys (H/W, lines/cols, nRow/nCol) and {n_pixels} pixels "
                    "is not a square; pass shape=(H, W)"
                )
            H = W = side
    if H * W != n_pixels:
        raise SceneError(f"{source}: image size {H} x {W} = {H * W} does not match {n_pixels} pixels in Y")
    return H, W


def endmembers_from(M: np.ndarray, n_bands: int, key: str, source: str) -> np.ndarray:
    """Accept endmembers stored as columns (L, p) or rows (p, L)."""
    M = np.asarray(M)
    if M.ndim != 2:
        raise SceneError(f"{source}: {key!r} must be 2-D (L, p) or (p, L), got shape {M.shape}")
    check_real(M, f"{source}: {key!r}")
    M = M.astype(np.float64)
    if M.shape == (n_bands, n_bands):
        warnings.warn(f"{source}: {key!r} is {n_bands} x {n_bands}, as many endmembers as bands: read as "
                      "endmembers in columns (L, p)", SceneWarning, stacklevel=3)
    if M.shape[0] == n_bands:
        return M
    if M.shape[1] == n_bands:
        return M.T
    raise SceneError(f"{source}: {key!r} has shape {M.shape}; neither dimension equals the {n_bands} bands of Y")


def abundances_from(arrays: dict, H: int, W: int, p: int | None, column_major: bool, source: str):
    """Abundances as (p, N) row-major from `S_GT`/`A` (maps H x W x p) or `A` (p, N)."""
    N = H * W
    for key in ("S_GT", "A"):
        if key not in arrays:
            continue
        A = np.asarray(arrays[key])
        check_real(A, f"{source}: {key!r}")
        A = A.astype(np.float64)
        if A.ndim == 3:
            if A.shape[:2] != (H, W):
                raise SceneError(f"{source}: {key!r} maps have shape {A.shape}, expected ({H}, {W}, p)")
            return A.reshape(N, -1).T.copy()  # maps are stored image-shaped: already row-major
        if A.ndim == 2:
            if A.shape[1] != N and A.shape[0] == N:
                A = A.T
            if A.shape[1] != N or (p is not None and A.shape[0] != p):
                raise SceneError(f"{source}: {key!r} has shape {A.shape}, expected (p={p}, N={N})")
            return to_row_major(A, H, W) if column_major else A
        raise SceneError(f"{source}: {key!r} must be 2-D or 3-D, got shape {A.shape}")
    return None


def normalise(Y: np.ndarray, max_value: float | None, arrays: dict) -> tuple[np.ndarray, float | None]:
    """Integer data are divided by `maxValue` (argument, then file key) or else the data maximum."""
    if max_value is None and "maxValue" in arrays:
        max_value = float(np.asarray(arrays["maxValue"]).ravel()[0])
    if np.issubdtype(Y.dtype, np.integer):
        scale = float(max_value) if max_value is not None else float(Y.max())
        return Y.astype(np.float64) / scale, scale
    if is_memory_mapped(Y) and max_value is None:
        return Y, None  # kept mapped: a large file is never copied whole (see load_scene)
    Y = Y.astype(np.float64)
    if max_value is not None:
        return Y / float(max_value), float(max_value)
    return Y, None


def parse_arrays(
    arrays: dict,
    source: str,
    pixel_order: str = "auto",
    shape: tuple[int, int] | None = None,
) -> dict:
    """Turn a dict of arrays into Y (L, N) row-major, H, W and whatever ground truth is present."""
    layout = detect_layout(arrays)
    if layout == "cube":
        key = "im" if "im" in arrays else "cube"
        cube = np.asanyarray(arrays[key])  # a memory map stays one
        if cube.ndim != 3:
            raise SceneError(f"{source}: {key!r} must be an H x W x L cube, got shape {cube.shape}")
        H, W, L = cube.shape
        out = {"Y": cube.reshape(H * W, L).T, "H": H, "W": W, "layout": layout}
        E = arrays.get("E", arrays.get("M"))
        if E is not None:
            out["E"] = endmembers_from(E, L, "E", source)
        A = abundances_from(arrays, H, W, None, False, source)
        if A is not None:
            out["A"] = A
        return with_wavelengths(out, arrays, L, source)
    Y = np.asarray(arrays["Y"] if "Y" in arrays else arrays["V"])
    if Y.ndim != 2:
        raise SceneError(f"{source}: 'Y' must be 2-D (L, N), got shape {Y.shape}")
    if Y.shape[0] > Y.shape[1] > 0:
        raise SceneError(f"{source}: 'Y' has shape {Y.shape}: more bands than pixels; expected (L, N)")
    if Y.shape[0] == Y.shape[1] > 0:
        warnings.warn(f"{source}: 'Y' is {Y.shape[0]} x {Y.shape[1]}, as many bands as pixels, so its "
                      "orientation cannot be told from its shape: read as (bands, pixels); transpose it "
                      "if the file stores (pixels, bands)", SceneWarning, stacklevel=3)
    if pixel_order not in PIXEL_ORDERS:
        raise SceneError(f"pixel_order must be one of {PIXEL_ORDERS}, got {pixel_order!r}")
    # HySUPP and NumPy files are written from Python (row-major); other .mat files come from MATLAB.
    column_major = pixel_order == "column-major" or (
        pixel_order == "auto" and layout != "hysupp" and source.lower().endswith(".mat")
    )
    H, W = scene_shape(arrays, Y.shape[1], shape, source)
    out = {"Y": to_row_major(Y, H, W) if column_major else Y, "H": H, "W": W, "layout": layout}
    for key in ("E", "M", "GT"):
        if key in arrays:
            out["E"] = endmembers_from(arrays[key], Y.shape[0], key, source)
            break
    A = abundances_from(arrays, H, W, out["E"].shape[1] if "E" in out else None, column_major, source)
    if A is not None:
        out["A"] = A
    return with_wavelengths(out, arrays, Y.shape[0], source)


def with_wavelengths(out: dict, arrays: dict, n_bands: int, source: str) -> dict:
    """Add the band centres (nm) a file stores under 'wavelengths' or 'wavelength', if any."""
    key = next((k for k in WAVELENGTH_KEYS if k in arrays), None)
    if key is not None:
        values = np.asarray(arrays[key]).ravel()
        check_real(values, f"{source}: {key!r}")
        if values.size != n_bands:
            raise SceneError(f"{source}: {key!r} holds {values.size} values for {n_bands} bands")
        out["wavelengths"] = values.astype(np.float64)
    return out


def ground_truth_from_file(gt_path: Path, n_bands: int, H: int, W: int, pixel_order: str) -> dict:
    """Endmembers / abundances / names from a separate ground-truth file (e.g. 'end4.mat')."""
    arrays = read_arrays(gt_path)
    source = str(gt_path)
    out: dict = {}
    for key in ("E", "M", "GT"):
        if key in arrays:
            out["E"] = endmembers_from(arrays[key], n_bands, key, source)
            break
    else:
        raise SceneError(f"{source}: no endmember key; expected one of 'M', 'E', 'GT' (keys: {sorted(arrays)})")
    column_major = pixel_order != "row-major" and gt_path.suffix.lower() == ".mat"
    A = abundances_from(arrays, H, W, out["E"].shape[1], column_major, source)
    if A is None:
        raise SceneError(f"{source}: no abundance key; expected 'A' (p x N) or 'S_GT' (H x W x p)")
    out["A"] = A
    if "cood" in arrays:  # material names in the original releases
        out["material_names"] = [str(np.asarray(c).ravel()[0]) for c in np.asarray(arrays["cood"]).ravel()]
    return out
