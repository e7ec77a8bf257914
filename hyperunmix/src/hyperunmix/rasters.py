"""Readers for image files: ENVI (header + raw data, memory-mapped through `spectral`) and
GeoTIFF or any other multi-band raster GDAL reads (through `rasterio`).

Both return the cube (H x W x L), the band centres in nm when the file states them, the bands
its header marks bad (ENVI `bbl`), and the georeference when the file has one.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hyperunmix.bands import to_nanometres
from hyperunmix.scene import Georeference
from hyperunmix.validation import SceneError


@dataclass
class Raster:
    cube: np.ndarray  # (H, W, L), possibly memory-mapped
    wavelengths: np.ndarray | None = None  # (L,) nm
    bad_bands: np.ndarray | None = None  # (L,) bool, True = marked bad by the file
    georeference: Georeference | None = None


GEOTIFF_SUFFIXES = (".tif", ".tiff")


def envi_header(path: Path) -> Path | None:
    """The ENVI header of `path`: itself if it is one, else 'scene.hdr' or 'scene.img.hdr' beside
    a data file (GeoTIFFs are never read as ENVI, even with a header of the same stem beside them)."""
    if path.suffix.lower() == ".hdr":
        return path
    if path.suffix.lower() in GEOTIFF_SUFFIXES:
        return None
    for candidate in (path.with_suffix(".hdr"), path.with_name(path.name + ".hdr")):
        if candidate.is_file():
            return candidate
    return None


def read_envi(header: Path) -> Raster:
    """Read an ENVI header + raw cube through `spectral`, memory-mapped (H x W x L)."""
    import spectral.io.envi as envi

    try:
        image = envi.open(str(header))
    except Exception as err:
        raise SceneError(f"{header}: cannot open ENVI header/data pair ({err})") from err
    data_file = Path(image.filename)
    rows, cols, bands = image.shape
    needed = image.offset + rows * cols * bands * image.sample_size
    if data_file.stat().st_size < needed:
        raise SceneError(
            f"{data_file}: ENVI data file has {data_file.stat().st_size} bytes, but its header {header} "
            f"describes {rows} x {cols} x {bands} values of {np.dtype(image.dtype)} "
            f"({image.sample_size} bytes each, after a {image.offset}-byte offset) = {needed} bytes"
        )
    metadata = image.metadata
    wavelengths = None
    if image.bands.centers:
        wavelengths = to_nanometres(image.bands.centers, metadata.get("wavelength units"), str(header))
    bad_bands = None
    if "bbl" in metadata:
        bbl = np.asarray(metadata["bbl"], dtype=np.float64).ravel()
        if bbl.size != bands:
            raise SceneError(f"{header}: 'bbl' lists {bbl.size} values for {bands} bands")
        bad_bands = bbl == 0  # ENVI: 1 = good band, 0 = bad band
    return Raster(image.open_memmap(writable=False), wavelengths, bad_bands, georeference_of(data_file))


def georeference_of(path: Path) -> Georeference | None:
    """The file's transform and CRS as GDAL reads them (for ENVI, from 'map info'); None for an
    image without one, whose transform GDAL reports as the identity."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return georeference_from(src)
    except RasterioError:  # GDAL cannot read this header variant: the cube is still usable
        return None


def georeference_from(src) -> Georeference | None:
    from affine import Affine

    if src.crs is None and src.transform == Affine.identity():
        return None
    return Georeference(tuple(src.transform)[:6], None if src.crs is None else src.crs.to_wkt())


def read_raster(path: Path) -> Raster:
    """Read a GeoTIFF (or any multi-band raster GDAL opens) whole, as an H x W x L cube."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                data = src.read()  # (L, H, W)
                nodata = src.nodata
                wavelengths = raster_wavelengths(src, str(path))
                georeference = georeference_from(src)
    except RasterioError as err:
        raise SceneError(f"{path}: unsupported file: not .mat/.npz/.npy, no ENVI header beside it, and GDAL "
                         f"cannot read it as a raster ({' '.join(str(err).split())})") from None
    if nodata is not None:
        hits = np.isnan(data) if np.isnan(nodata) else data == nodata
        empty = hits.any(axis=0)
        if empty.any():
            row, col = np.argwhere(empty)[0]
            raise SceneError(f"{path}: {int(empty.sum())} pixel(s) hold the nodata value {nodata:g} (first at row "
                             f"{row}, column {col}), e.g. outside the scene's footprint; every pixel is unmixed, "
                             "so crop the scene to valid pixels first")
    return Raster(np.moveaxis(data, 0, -1), wavelengths, None, georeference)


def raster_wavelengths(src, source: str) -> np.ndarray | None:
    """Band centres from GDAL band metadata: the IMAGERY domain's CENTRAL_WAVELENGTH_UM (GDAL
    3.10 and later) or the ENVI-style 'wavelength' + 'wavelength_units' items; None unless
    every band has one."""
    values, units = [], set()
    for band in range(1, src.count + 1):
        imagery = src.tags(band, ns="IMAGERY")
        tags = {key.lower(): value for key, value in src.tags(band).items()}
        if "CENTRAL_WAVELENGTH_UM" in imagery:
            values.append(float(imagery["CENTRAL_WAVELENGTH_UM"]))
            units.add("micrometers")
        elif "wavelength" in tags:
            values.append(float(tags["wavelength"]))
            units.add(tags.get("wavelength_units", ""))
        else:
            return None
    if len(units) != 1:
        raise SceneError(f"{source}: bands state their wavelengths in different units {sorted(units)}")
    return to_nanometres(values, units.pop(), source)
