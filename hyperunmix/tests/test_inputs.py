"""Any file in: ENVI with wavelengths and bad-band lists, GeoTIFF through rasterio, band
dropping by wavelength or index, and `hyperunmix run --input`."""
from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import rasterio
import scipy.io
from affine import Affine
from typer.testing import CliRunner

from hyperunmix.cli import app
from hyperunmix.loaders import load_scene
from hyperunmix.run import redraw_figures, run_method
from hyperunmix.synthetic import make_synthetic
from hyperunmix.validation import SceneError

H, W, L = 9, 13, 24  # non-square: a row / column mix-up changes the pixels
WAVELENGTHS = np.linspace(400.0, 2500.0, L)  # 91.3 nm apart


@pytest.fixture(scope="module")
def truth():
    return make_synthetic(H=H, W=W, p=3, n_bands=L, seed=5)


def write_envi(path, cube, **metadata):
    import spectral.io.envi as envi

    envi.save_image(str(path), cube.astype(np.float32), metadata=metadata, force=True)
    return path


TRANSFORM = Affine(10.0, 0.0, 400000.0, 0.0, -10.0, 5000000.0)  # 10 m pixels


def write_geotiff(path, cube, crs="EPSG:32633", band_tags=None, nodata=None):
    profile = dict(driver="GTiff", count=cube.shape[2], height=cube.shape[0], width=cube.shape[1],
                   dtype="float32", crs=crs, transform=TRANSFORM, nodata=nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(cube.astype(np.float32), -1, 0))
        for band, tags in enumerate(band_tags or [], start=1):
            for namespace, values in tags.items():
                dst.update_tags(band, ns=namespace, **values)
    return path


def test_envi_bad_bands_dropped_with_a_log_line_and_micrometres_converted(tmp_path, truth, caplog):
    cube = truth.cube.copy()
    cube[:, :, [3, 4]] = 0.0  # dead detector bands: all zero, which the checks would refuse
    bbl = [0 if b in (3, 4) else 1 for b in range(L)]
    header = write_envi(tmp_path / "scene.hdr", cube, wavelength=list(WAVELENGTHS / 1000),
                        **{"wavelength units": "Micrometers", "bbl": bbl})
    with caplog.at_level(logging.INFO, logger="hyperunmix"):
        scene = load_scene(header)
    assert "dropping 2 bad band(s) marked in the header's bbl: 3-4" in caplog.text
    keep = np.array(bbl, dtype=bool)
    np.testing.assert_allclose(scene.cube, truth.cube[:, :, keep], atol=1e-6)  # float32 file
    np.testing.assert_allclose(scene.wavelengths, WAVELENGTHS[keep], rtol=1e-12)
    assert scene.georeference is None and scene.meta["bands_kept"] == np.flatnonzero(keep).tolist()
    # The data file itself is accepted when its header lies beside it.
    data_file = next(p for p in tmp_path.iterdir() if p.suffix != ".hdr")
    np.testing.assert_array_equal(load_scene(data_file).Y, scene.Y)


def test_envi_map_info_becomes_the_georeference(tmp_path, truth):
    header = write_envi(tmp_path / "scene.hdr", truth.cube, wavelength=list(WAVELENGTHS),
                        **{"map info": "{UTM, 1.0, 1.0, 500000.0, 4100000.0, 30.0, 30.0, 11, North, WGS-84}"})
    scene = load_scene(header)
    assert scene.georeference.transform == (30.0, 0.0, 500000.0, 0.0, -30.0, 4100000.0)
    assert rasterio.crs.CRS.from_wkt(scene.georeference.crs).to_epsg() == 32611


@pytest.mark.parametrize("tags", [
    lambda wl: {"IMAGERY": {"CENTRAL_WAVELENGTH_UM": f"{wl / 1000:.6f}"}},  # GDAL >= 3.10 convention
    lambda wl: {None: {"wavelength": f"{wl:.6f}", "wavelength_units": "nanometers"}},  # ENVI-style items
])
def test_geotiff_cube_wavelengths_and_georeference(tmp_path, truth, tags):
    path = write_geotiff(tmp_path / "scene.tif", truth.cube, band_tags=[tags(w) for w in WAVELENGTHS])
    scene = load_scene(path)
    np.testing.assert_allclose(scene.cube, truth.cube, atol=1e-6)
    np.testing.assert_allclose(scene.wavelengths, WAVELENGTHS, rtol=1e-6)  # 6 decimals in the tags
    assert scene.georeference.transform == (10.0, 0.0, 400000.0, 0.0, -10.0, 5000000.0)
    assert rasterio.crs.CRS.from_wkt(scene.georeference.crs).to_epsg() == 32633


def test_geotiff_nodata_pixels_and_garbage_named(tmp_path, truth):
    cube = truth.cube.copy()
    cube[2, 7, :] = -9999.0
    with pytest.raises(SceneError, match=r"1 pixel\(s\) hold the nodata value -9999 \(first at row 2, column 7\)"):
        load_scene(write_geotiff(tmp_path / "nodata.tif", cube, nodata=-9999.0))
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(SceneError, match="bad.tif: unsupported file: .* GDAL cannot read it as a raster"):
        load_scene(tmp_path / "bad.tif")


def test_mat_wavelengths_key_read(tmp_path, truth):
    path = tmp_path / "scene.mat"
    scipy.io.savemat(path, {"im": truth.cube, "wavelengths": WAVELENGTHS})
    np.testing.assert_array_equal(load_scene(path).wavelengths, WAVELENGTHS)
    scipy.io.savemat(path, {"im": truth.cube, "wavelengths": WAVELENGTHS[:-1]})
    with pytest.raises(SceneError, match="'wavelengths' holds 23 values for 24 bands"):
        load_scene(path)


def test_drop_bands_by_nm_and_by_index(tmp_path, truth):
    header = write_envi(tmp_path / "scene.hdr", truth.cube, wavelength=list(WAVELENGTHS))
    # 1350-1500 nm holds the centres 1404.3 and 1495.7 (1313.0 lies outside); indices 0-1 and 23 are the ends.
    scene = load_scene(header, drop_bands="1350-1500nm, 0-1,23")
    dropped = sorted(set(range(L)) - set(scene.meta["bands_kept"]))
    assert dropped == [0, 1, 11, 12, 23]
    np.testing.assert_allclose(scene.cube, np.delete(truth.cube, dropped, axis=2), atol=1e-6)
    np.testing.assert_array_equal(scene.wavelengths, np.delete(WAVELENGTHS, dropped))


@pytest.mark.parametrize("spec, message", [
    ("1350-1450nm", "is in nm, but {path} states no wavelengths; give 0-based band indices"),
    ("20-30", "band range '20-30' goes past the last band: {path} has 24 bands (indices 0-23)"),
    ("0-23", "{path}: every one of its 24 bands would be dropped"),
    ("water", "cannot read 'water'"),
    ("9-3", "range '9-3' ends before it starts"),
    ("2.5-4", "band indices must be whole numbers"),
])
def test_bad_drop_bands_named(tmp_path, truth, spec, message):
    path = tmp_path / "cube.npy"  # a NumPy cube has no wavelengths
    np.save(path, truth.cube)
    with pytest.raises(SceneError, match=re.escape(message.format(path=path))):
        load_scene(path, drop_bands=spec)


runner = CliRunner()


def test_run_input_file_with_drop_bands_and_no_ground_truth(tmp_path, truth):
    header = write_envi(tmp_path / "my_scene.hdr", truth.cube, wavelength=list(WAVELENGTHS))
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--input", str(header), "--method", "vca-fcls", "--endmembers", "3",
                                 "--drop-bands", "1350-1500nm", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "dropping 2 band(s) for --drop-bands 1350-1500nm: 11-12" in result.stderr
    import yaml

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["input"] == str(header) and config["dataset"] == "my_scene"
    assert config["endmembers"] == {"given": 3, "used": 3} and config["scene"]["bands"] == L - 2
    np.testing.assert_allclose(config["scene"]["wavelengths_nm"], np.delete(WAVELENGTHS, [11, 12]), atol=1e-4)
    metrics = yaml.safe_load((out / "metrics.json").read_text())
    assert set(metrics) >= {"reconstruction_rmse", "n_endmembers"} and "mean_sad_deg" not in metrics
    assert metrics["reconstruction_rmse"] < 0.05  # 3 materials, SNR 30 dB: the fit is near the noise
    (out / "endmembers.png").unlink()
    redraw_figures(out)  # reloads the scene from the recorded input file and options
    assert (out / "endmembers.png").stat().st_size > 1000


def test_auto_endmembers_on_a_scene_with_other_ground_truth(tmp_path):
    scene = make_synthetic(H=32, W=32, p=3, snr_db=20.0, seed=8)
    scene.E, scene.A, scene.meta["n_endmembers"] = scene.E[:, :2], scene.A[:2], 2  # GT claims p = 2
    metrics = run_method(scene, "vca-fcls", 0, n_endmembers="auto")
    # HySime finds the 3 materials actually mixed; the 2-material truth cannot score 3 estimates.
    assert metrics["hysime_estimate"] == metrics["n_endmembers"] == 3
    assert "mean_sad_deg" not in metrics and metrics["reconstruction_rmse"] < 0.05


@pytest.mark.parametrize("args, message", [
    (["--input", "{cube}", "--method", "vca-fcls"], "has no ground truth: give the number of endmembers "
                                                    "(--endmembers N, or --endmembers auto"),
    (["--input", "{cube}", "--dataset", "samson"], "give a dataset name or an input file, not both"),
    (["--input", "{cube}", "--endmembers", "three"], "--endmembers expects a whole number or 'auto', got 'three'"),
    (["--dataset", "synthetic", "--endmembers", "3"], "--endmembers 3 contradicts the ground truth of "
                                                      "'synthetic', which has p=4 materials"),
    (["--dataset", "my_scene.mat"], "unknown dataset 'my_scene.mat'"),
])
def test_run_input_errors_named(tmp_path, truth, args, message):
    np.save(tmp_path / "cube.npy", truth.cube)
    args = [a.format(cube=tmp_path / "cube.npy") for a in args]
    result = runner.invoke(app, ["run", *args, "--out", str(tmp_path / "out")], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert not (tmp_path / "out").exists()
