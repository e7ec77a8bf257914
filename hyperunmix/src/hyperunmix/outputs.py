"""Result files a GIS or a spreadsheet opens: abundance maps as a multi-band GeoTIFF carrying
the input's georeference, endmember spectra as CSV against wavelength.

Both are written whole or not at all (`atomic_write`): the GeoTIFF is built in memory (it is as
large as the abundances already held) and its bytes are renamed into place.
"""
from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import numpy as np

from hyperunmix.files import atomic_write
from hyperunmix.scene import Georeference


def endmember_labels(p: int, names: list[str] | None = None, matching: list[int] | None = None) -> list[str]:
    """Label of each estimated endmember, in the estimates' order: the true material matched to
    it (matching[k] = the estimate matched to true endmember k), else endmember_k."""
    labels = [f"endmember_{k}" for k in range(p)]
    if names and matching is not None:
        for true_index, estimate_index in enumerate(matching):
            labels[estimate_index] = names[true_index]
    return labels


def write_abundance_geotiff(path: str | Path, A: np.ndarray, labels: list[str],
                            georeference: Georeference | None = None) -> Path:
    """Abundances (p, H, W) as a float32 GeoTIFF, one band per endmember described by its label;
    with the input's transform and CRS when it had them, else without any georeference."""
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    p, height, width = A.shape
    profile = {"driver": "GTiff", "count": p, "height": height, "width": width, "dtype": "float32"}
    if georeference is not None:
        profile["transform"] = Affine(*georeference.transform)
        profile["crs"] = None if georeference.crs is None else CRS.from_wkt(georeference.crs)
    # rasterio warns on opening a raster without a geotransform; an image without one is an
    # ordinary case here (a .mat scene), so the warning is silenced.
    with warnings.catch_warnings(), MemoryFile() as memory:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with memory.open(**profile) as dst:
            dst.write(A.astype(np.float32))
            for band, label in enumerate(labels, start=1):
                dst.set_band_description(band, label)
        data = memory.read()
    return atomic_write(Path(path), lambda handle: handle.write(data))


def write_endmembers_csv(path: str | Path, E: np.ndarray, labels: list[str],
                         wavelengths: np.ndarray | None = None) -> Path:
    """Endmembers (L, p) as CSV: a `wavelength_nm` column (or `band`, 0-based, without
    wavelengths), then one column per endmember."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["band" if wavelengths is None else "wavelength_nm", *labels])
    x = np.arange(E.shape[0]) if wavelengths is None else wavelengths
    for position, row in zip(x, E):
        writer.writerow([int(position) if wavelengths is None else f"{position:.10g}", *(f"{v:.9g}" for v in row)])
    return atomic_write(Path(path), lambda handle: handle.write(buffer.getvalue()), mode="w")
