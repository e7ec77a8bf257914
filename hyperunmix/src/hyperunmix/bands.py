"""Band centres and band selection: wavelength units, `--drop-bands` ranges, bad-band lists.

Wavelengths inside the package are band centres in nanometres. Files state them in nm or in
micrometres (ENVI's `wavelength units`, GDAL's CENTRAL_WAVELENGTH_UM); a file that does not
say is read by magnitude: the optical range of imaging spectrometers is 0.35-2.5 um, i.e.
350-2500 nm, so centres below 30 can only be micrometres.
"""
from __future__ import annotations

import logging
import re

import numpy as np

from hyperunmix.validation import SceneError

log = logging.getLogger("hyperunmix")

NANOMETRE_UNITS = {"nanometers", "nanometer", "nanometres", "nanometre", "nm"}
MICROMETRE_UNITS = {"micrometers", "micrometer", "micrometres", "micrometre", "microns", "micron", "um", "µm"}
UNSTATED_UNITS = {"", "unknown"}
MICROMETRE_LIMIT = 30.0
RANGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:-\s*(\d+(?:\.\d+)?))?\s*(nm)?\s*$", re.IGNORECASE)


def to_nanometres(values, unit: str | None, source: str) -> np.ndarray | None:
    """Band centres in nm from values in `unit`; None (with a log line) for a unit that is not a
    wavelength (e.g. wavenumbers or band indices), since plotting them as nm would mislead."""
    values = np.asarray(values, dtype=np.float64)
    unit = (unit or "").strip().lower()
    if unit in MICROMETRE_UNITS or (unit in UNSTATED_UNITS and values.max() < MICROMETRE_LIMIT):
        return values * 1000.0
    if unit in NANOMETRE_UNITS or unit in UNSTATED_UNITS:
        return values
    log.info("%s: wavelength unit %r is not nm or micrometres; wavelengths ignored", source, unit)
    return None


def describe(indices) -> str:
    """[0, 1, 2, 7, 9, 10] -> '0-2, 7, 9-10' (0-based band indices)."""
    indices = sorted(int(i) for i in indices)
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def drop_mask(spec: str, wavelengths: np.ndarray | None, n_bands: int, source: str) -> np.ndarray:
    """Bands named by `spec` as a boolean mask (True = drop). `spec` is a comma-separated list of
    inclusive ranges, each in nm ('1350-1450nm', centres inside the range) or 0-based band
    indices ('0-5', '100')."""
    drop = np.zeros(n_bands, dtype=bool)
    for item in spec.split(","):
        match = RANGE.match(item)
        if not match:
            raise SceneError(f"--drop-bands: cannot read {item.strip()!r}; expected ranges such as "
                             "'1350-1450nm' (wavelengths) or '0-5' (0-based band indices)")
        low = float(match.group(1))
        high = float(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise SceneError(f"--drop-bands: range {item.strip()!r} ends before it starts")
        if match.group(3):
            if wavelengths is None:
                raise SceneError(f"--drop-bands {item.strip()!r} is in nm, but {source} states no wavelengths; "
                                 "give 0-based band indices instead (e.g. '100-110')")
            hit = (wavelengths >= low) & (wavelengths <= high)
            if not hit.any():
                log.info("%s: --drop-bands %s matches no band (centres %.1f-%.1f nm)", source,
                         item.strip(), wavelengths.min(), wavelengths.max())
            drop |= hit
        else:
            if not (low.is_integer() and high.is_integer()):
                raise SceneError(f"--drop-bands: band indices must be whole numbers, got {item.strip()!r} "
                                 "(add 'nm' for wavelengths)")
            if high >= n_bands:
                raise SceneError(f"--drop-bands: band range {item.strip()!r} goes past the last band: "
                                 f"{source} has {n_bands} bands (indices 0-{n_bands - 1})")
            drop[int(low):int(high) + 1] = True
    return drop
