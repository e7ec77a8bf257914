"""Maps out: abundances.tif with the input's georeference, endmembers.csv against wavelength,
from a CLI round trip on an ENVI cube and on a GeoTIFF, and a .mat scene without georeference."""
from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
import rasterio
import scipy.io
from affine import Affine
from typer.testing import CliRunner

from hyperunmix.cli import app
from hyperunmix.datasets import load_dataset
from hyperunmix.outputs import endmember_labels
from hyperunmix.run import run_method
from hyperunmix.synthetic import make_synthetic

H, W, L = 14, 18, 30
WAVELENGTHS = np.linspace(420.0, 2480.0, L)
runner = CliRunner()


@pytest.fixture(scope="module")
def scene():
    return make_synthetic(H=H, W=W, p=3, n_bands=L, seed=11)


def read_csv(path):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], np.array(rows[1:], dtype=float)


def check_run(out, georeference):
    """The maps hold estimates.mat's abundances, with the given (transform, EPSG) or none."""
    saved = scipy.io.loadmat(out / "estimates.mat")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(out / "abundances.tif") as maps:
            assert (maps.count, maps.height, maps.width) == (3, H, W)
            assert maps.descriptions == ("endmember_0", "endmember_1", "endmember_2")
            # float32 maps of float64 abundances in [0, 1]: equal to float32 rounding.
            np.testing.assert_allclose(maps.read().reshape(3, -1), saved["A"], rtol=0, atol=1e-7)
            if georeference is None:
                assert maps.crs is None and maps.transform == Affine.identity()
            else:
                assert (maps.transform, maps.crs.to_epsg()) == georeference
    header, table = read_csv(out / "endmembers.csv")
    np.testing.assert_allclose(table[:, 1:], saved["E"], rtol=1e-8)  # 9 significant digits
    return header, table


def test_envi_round_trip_keeps_map_info_and_wavelengths(tmp_path, scene):
    import spectral.io.envi as envi

    cube = scene.cube.astype(np.float32)
    cube[:, :, 5] = 0.0  # a dead band the header marks bad
    envi.save_image(str(tmp_path / "scene.hdr"), cube, force=True, metadata={
        "wavelength": list(WAVELENGTHS), "wavelength units": "Nanometers",
        "bbl": [0 if b == 5 else 1 for b in range(L)],
        "map info": "{UTM, 1.0, 1.0, 500000.0, 4100000.0, 30.0, 30.0, 11, North, WGS-84}"})
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--input", str(tmp_path / "scene.hdr"), "--method", "nfindr-fcls",
                                 "--endmembers", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    header, table = check_run(out, (Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4100000.0), 32611))
    assert header[0] == "wavelength_nm"
    np.testing.assert_allclose(table[:, 0], np.delete(WAVELENGTHS, 5), rtol=1e-9)  # 10 significant digits


def test_geotiff_round_trip_keeps_transform_and_crs(tmp_path, scene):
    transform = Affine(5.0, 0.0, 300000.0, 0.0, -5.0, 6000000.0)
    with rasterio.open(tmp_path / "scene.tif", "w", driver="GTiff", count=L, height=H, width=W,
                       dtype="float32", crs="EPSG:32632", transform=transform) as dst:
        dst.write(np.moveaxis(scene.cube.astype(np.float32), -1, 0))
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--input", str(tmp_path / "scene.tif"), "--method", "vca-fcls",
                                 "--endmembers", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    header, table = check_run(out, (transform, 32632))
    assert header[0] == "band"  # no wavelengths in this file: 0-based band indices
    np.testing.assert_array_equal(table[:, 0], np.arange(L))


def test_scene_without_georeference_writes_plain_maps_without_warnings(tmp_path):
    scene = load_dataset("synthetic")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = run_method(scene, "vca-fcls", seed=0, out_dir=tmp_path, figures=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "abundances.tif") as maps:
            assert maps.crs is None and maps.transform == Affine.identity()
            names = maps.descriptions
    # Bands follow estimates.mat; each is named after the true material matched to it.
    for true_index, estimate_index in enumerate(metrics["matching"]):
        assert names[estimate_index] == scene.material_names[true_index]
    header, _ = read_csv(tmp_path / "endmembers.csv")
    assert header == ["wavelength_nm", *names]


def test_endmember_labels():
    assert endmember_labels(3) == ["endmember_0", "endmember_1", "endmember_2"]
    assert endmember_labels(3, ["soil", "tree", "water"], [2, 0, 1]) == ["tree", "water", "soil"]
    assert endmember_labels(2, ["soil", "tree"], None) == ["endmember_0", "endmember_1"]


def test_figures_without_the_truth_when_the_count_differs_from_it(scene, tmp_path):
    # An estimated endmember count (--endmembers auto) can differ from the ground truth's p: the
    # run is then not scored, and its figures must not try to pair estimates with true maps.
    import dataclasses

    from hyperunmix.run import write_run_figures

    scene = dataclasses.replace(scene, material_names=None)  # as a file without material names
    p_hat = scene.p + 2
    A_hat = np.full((p_hat, H, W), 1.0 / p_hat)
    metrics = {"method": "vca-fcls", "seed": 0, "reconstruction_rmse": 0.1}
    write_run_figures(tmp_path, scene, np.ones((L, p_hat)), A_hat, metrics)
    assert (tmp_path / "abundances.png").stat().st_size > 0
    assert (tmp_path / "endmembers.png").stat().st_size > 0
