"""Scenes and the loader that reads every common hyperspectral file layout.

Inside the package a scene is `Y` (L x N) with pixels in row-major order (pixel = row * W + col).
MATLAB files store pixels column-major (pixel = row + col * H); the loader converts them.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path

import numpy as np
import scipy.io
from sklearn.utils import check_scalar

from hyperunmix.files import atomic_write
from hyperunmix.validation import SceneError, SceneWarning, check_cube, check_real, validate_scene

PIXEL_ORDERS = ("auto", "row-major", "column-major")


@dataclass
class Scene:
    """A hyperspectral scene with optional ground truth.

    Y: (L, N) float64, pixels in row-major order; E: (L, p) endmembers as columns;
    A: (p, N) abundances in the same pixel order as Y.
    """

    Y: np.ndarray
    H: int
    W: int
    E: np.ndarray | None = None
    A: np.ndarray | None = None
    material_names: list[str] | None = None
    name: str = "scene"
    wavelengths: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

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
        scene it was fitted on, not for one whose file has changed since."""
        digest = hashlib.sha256()
        for array in (self.Y, self.E, self.A):
            digest.update(b"none" if array is None else repr(array.shape).encode())
            if array is not None:
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


# ----------------------------------------------------------------------------- reading files


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
    raise SceneError(f"{path}: unsupported file type {suffix!r} (expected .mat, .npz, .npy or .hdr)")


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
        cube = np.asarray(arrays[key])
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
        return out
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
    return out


def read_envi(path: Path) -> tuple[dict, np.ndarray | None]:
    """Read an ENVI header + raw cube through `spectral`, memory-mapped (H x W x L)."""
    import spectral.io.envi as envi

    try:
        image = envi.open(str(path))
    except Exception as err:
        raise SceneError(f"{path}: cannot open ENVI header/data pair ({err})") from err
    data_file = Path(image.filename)
    rows, cols, bands = image.shape
    needed = image.offset + rows * cols * bands * image.sample_size
    if data_file.stat().st_size < needed:
        raise SceneError(
            f"{data_file}: ENVI data file has {data_file.stat().st_size} bytes, but its header {path} "
            f"describes {rows} x {cols} x {bands} values of {np.dtype(image.dtype)} "
            f"({image.sample_size} bytes each, after a {image.offset}-byte offset) = {needed} bytes"
        )
    cube = image.open_memmap(writable=False)
    wavelengths = np.asarray(image.bands.centers, dtype=np.float64) if image.bands.centers else None
    return {"cube": cube}, wavelengths


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


def load_scene(
    path: str | Path,
    gt_path: str | Path | None = None,
    n_endmembers: int | None = None,
    name: str | None = None,
    *,
    max_value: float | None = None,
    pixel_order: str = "auto",
    shape: tuple[int, int] | None = None,
    material_names: list[str] | None = None,
    rescale_gt: bool = False,
    clip_negative: bool = False,
) -> Scene:
    """Load a scene from .mat (every common layout), ENVI .hdr, .npy or .npz.

    Layouts: (a) Y, GT, S_GT, lines, cols; (b) original releases Y or V + nRow/nCol (+maxValue),
    ground truth in `gt_path`; (c) HySUPP Y/E/A/H/W/p; (d) Y/M/A; (e) ENVI header (+ raw data);
    (f) NumPy .npy (an H x W x L cube) or .npz (any of the above keys); plus an H x W x L cube
    under 'im'. MATLAB pixel columns (column-major) become row-major. Integer data are divided
    by `max_value` (or the file's maxValue, or the data maximum). `rescale_gt` scales each
    ground-truth endmember by least squares (useful when a release stores them max-scaled).
    """
    path = Path(path)
    if not path.exists():
        raise SceneError(f"scene file not found: {path}")
    if n_endmembers is not None:
        check_scalar(n_endmembers, "n_endmembers", Integral, min_val=2)
    wavelengths = None
    if path.suffix.lower() == ".hdr":
        arrays, wavelengths = read_envi(path)
    else:
        arrays = read_arrays(path)
    parsed = parse_arrays(arrays, str(path), pixel_order=pixel_order, shape=shape)
    H, W = parsed["H"], parsed["W"]
    raw = np.asarray(parsed["Y"])
    # Before normalising: the conversion to float would drop imaginary parts and parse text.
    check_cube(raw.T.reshape(H, W, raw.shape[0]), str(path), allow_negative=clip_negative)
    Y, scale = normalise(raw, max_value, arrays)
    if clip_negative:
        Y = np.clip(Y, 0.0, None)
    E, A = parsed.get("E"), parsed.get("A")
    names = material_names
    if gt_path is not None:
        gt = ground_truth_from_file(Path(gt_path), Y.shape[0], H, W, pixel_order)
        E, A = gt["E"], gt["A"]
        names = names or gt.get("material_names")
    if (E is None) != (A is None):
        raise SceneError(f"{path}: ground truth is incomplete: found {'E' if E is not None else 'A'} only")
    if n_endmembers is not None and E is not None and E.shape[1] != n_endmembers:
        raise SceneError(f"{path}: ground truth has p={E.shape[1]} endmembers but n_endmembers={n_endmembers}")
    scene = Scene(
        Y=np.ascontiguousarray(Y, dtype=np.float64),
        H=H,
        W=W,
        E=None if E is None else np.asarray(E, dtype=np.float64),
        A=None if A is None else np.asarray(A, dtype=np.float64),
        material_names=names,
        name=name or path.stem,
        wavelengths=wavelengths,
        meta={"path": str(path), "layout": parsed["layout"], "scale": scale, "gt_rescaled": rescale_gt},
    )
    if n_endmembers is not None:
        scene.meta["n_endmembers"] = n_endmembers
    if rescale_gt:
        scene.E = scene.rescaled_endmembers()
    return scene


def save_scene_npz(scene: Scene, path: str | Path) -> Path:
    """Write a scene as .npz in the HySUPP key layout (row-major pixels), atomically."""
    arrays = {"Y": scene.Y, "H": np.array(scene.H), "W": np.array(scene.W)}
    if scene.has_ground_truth:
        arrays.update(E=scene.E, A=scene.A, p=np.array(scene.p))
    return atomic_write(Path(path), lambda handle: np.savez(handle, **arrays))
