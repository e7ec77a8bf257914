"""`load_scene`: any supported file in, a validated `Scene` out.

Matrix files (.mat, .npz, .npy) go through `readers`, ENVI and GeoTIFF / other rasters through
`rasters`; bad bands (the header's `bbl`, the user's `drop_bands`) are dropped before the
checks, since bands of water absorption are often all zero or noise.
"""
from __future__ import annotations

import logging
from numbers import Integral
from pathlib import Path

import numpy as np
from sklearn.utils import check_scalar

from hyperunmix.bands import describe, drop_mask
from hyperunmix.blocks import is_memory_mapped
from hyperunmix.rasters import envi_header, read_envi, read_raster
from hyperunmix.readers import ground_truth_from_file, normalise, parse_arrays, read_arrays
from hyperunmix.scene import Scene
from hyperunmix.validation import SceneError, check_cube

log = logging.getLogger("hyperunmix")
MATRIX_SUFFIXES = (".mat", ".npz", ".npy")


def read_file(path: Path) -> tuple[dict, object | None]:
    """The file's arrays (for `parse_arrays`) and, for an image file, its `Raster`."""
    if path.suffix.lower() in MATRIX_SUFFIXES:
        return read_arrays(path), None
    header = envi_header(path)
    raster = read_envi(header) if header is not None else read_raster(path)
    return {"cube": raster.cube}, raster


def kept_bands(path: Path, n_bands: int, wavelengths, bad_bands, drop_bands: str | None) -> np.ndarray | None:
    """Mask of the bands to keep (None: all), logging what is dropped and why."""
    drop = np.zeros(n_bands, dtype=bool)
    if bad_bands is not None and bad_bands.any():
        log.info("%s: dropping %d bad band(s) marked in the header's bbl: %s", path, int(bad_bands.sum()),
                 describe(np.flatnonzero(bad_bands)))
        drop |= bad_bands
    if drop_bands:
        requested = drop_mask(drop_bands, wavelengths, n_bands, str(path))
        log.info("%s: dropping %d band(s) for --drop-bands %s: %s", path, int(requested.sum()), drop_bands,
                 describe(np.flatnonzero(requested)))
        drop |= requested
    if drop.all():
        raise SceneError(f"{path}: every one of its {n_bands} bands would be dropped")
    return ~drop if drop.any() else None


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
    drop_bands: str | None = None,
) -> Scene:
    """Load a scene from .mat (every common layout), .npy / .npz, ENVI or GeoTIFF.

    Layouts: (a) Y, GT, S_GT, lines, cols; (b) original releases Y or V + nRow/nCol (+maxValue),
    ground truth in `gt_path`; (c) HySUPP Y/E/A/H/W/p; (d) Y/M/A; (e) ENVI header (+ raw data;
    the data file itself is accepted when its header lies beside it); (f) NumPy .npy (an
    H x W x L cube) or .npz (any of the above keys); plus an H x W x L cube under 'im'; and
    GeoTIFF or any multi-band raster GDAL reads. MATLAB pixel columns (column-major) become
    row-major. Integer data are divided by `max_value` (or the file's maxValue, or the data
    maximum). `drop_bands` ('1350-1450nm,1800-1950nm' or '0-5,100-110') removes bands, as do
    the bad bands an ENVI header lists. `rescale_gt` scales each ground-truth endmember by
    least squares (useful when a release stores them max-scaled).

    A memory-mapped floating-point cube (ENVI) stays mapped, in its own dtype: a scene of any size
    is then read block by block by the checks, the fingerprint, the estimators and the scores,
    never copied whole. Integer data, dropped bands and every other format are read into memory
    as float64.
    """
    path = Path(path)
    if not path.exists():
        raise SceneError(f"scene file not found: {path}")
    if n_endmembers is not None:
        check_scalar(n_endmembers, "n_endmembers", Integral, min_val=2)
    arrays, raster = read_file(path)
    parsed = parse_arrays(arrays, str(path), pixel_order=pixel_order, shape=shape)
    H, W = parsed["H"], parsed["W"]
    raw, E, A = np.asanyarray(parsed["Y"]), parsed.get("E"), parsed.get("A")
    wavelengths = raster.wavelengths if raster is not None else parsed.get("wavelengths")
    keep = kept_bands(path, raw.shape[0], wavelengths, None if raster is None else raster.bad_bands, drop_bands)
    if keep is not None:
        raw = raw[keep]
        E = None if E is None else E[keep]
        wavelengths = None if wavelengths is None else wavelengths[keep]
    # Before normalising: the conversion to float would drop imaginary parts and parse text.
    check_cube(raw.T.reshape(H, W, raw.shape[0]), str(path), allow_negative=clip_negative)
    Y, scale = normalise(raw, max_value, arrays)
    if clip_negative:
        Y = np.clip(Y, 0.0, None)
    names = material_names
    if gt_path is not None:
        gt = ground_truth_from_file(Path(gt_path), parsed["Y"].shape[0], H, W, pixel_order)
        E, A = gt["E"] if keep is None else gt["E"][keep], gt["A"]
        names = names or gt.get("material_names")
    if (E is None) != (A is None):
        raise SceneError(f"{path}: ground truth is incomplete: found {'E' if E is not None else 'A'} only")
    if n_endmembers is not None and E is not None and E.shape[1] != n_endmembers:
        raise SceneError(f"{path}: ground truth has p={E.shape[1]} endmembers but n_endmembers={n_endmembers}")
    scene = Scene(
        Y=Y if is_memory_mapped(Y) else np.ascontiguousarray(Y, dtype=np.float64),
        H=H,
        W=W,
        E=None if E is None else np.asarray(E, dtype=np.float64),
        A=None if A is None else np.asarray(A, dtype=np.float64),
        material_names=names,
        name=name or path.stem,
        wavelengths=wavelengths,
        georeference=None if raster is None else raster.georeference,
        meta={"path": str(path), "layout": parsed["layout"], "scale": scale, "gt_rescaled": rescale_gt,
              "bands_kept": None if keep is None else np.flatnonzero(keep).tolist()},
    )
    if n_endmembers is not None:
        scene.meta["n_endmembers"] = n_endmembers
    if rescale_gt:
        scene.E = scene.rescaled_endmembers()
    return scene
