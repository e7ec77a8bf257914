"""Loaders: every layout, pixel order (non-square scenes), normalisation, and bad input."""
from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.io

from hyperunmix.datasets import DATA_ENV, list_datasets, load_dataset
from hyperunmix.loaders import load_scene
from hyperunmix.scene import Scene, save_scene_npz
from hyperunmix.validation import SceneError

H, W, L, P = 7, 11, 9, 3  # non-square on purpose: a row/column mix-up changes the pixels


def truth(seed: int = 0):
    rng = np.random.default_rng(seed)
    E = rng.uniform(0.1, 0.9, (L, P))
    maps = rng.dirichlet(np.ones(P), size=(H, W))  # H x W x p, image-shaped
    cube = np.einsum("hwp,lp->hwl", maps, E)
    return E, maps, cube


def matlab_columns(array_hw_k: np.ndarray) -> np.ndarray:
    """(k, N) with pixels in MATLAB order (pixel = row + col * H)."""
    return np.stack([array_hw_k[:, :, k].flatten(order="F") for k in range(array_hw_k.shape[2])])


def row_major(array_hw_k: np.ndarray) -> np.ndarray:
    return array_hw_k.reshape(-1, array_hw_k.shape[2]).T


def check_against_truth(scene: Scene, E, maps, cube):
    assert (scene.H, scene.W, scene.n_bands) == (H, W, L)
    np.testing.assert_allclose(scene.cube, cube, atol=1e-12)
    np.testing.assert_allclose(scene.E, E, atol=1e-12)
    np.testing.assert_allclose(scene.A, row_major(maps), atol=1e-12)
    np.testing.assert_allclose(scene.abundance_maps[:, 3, 5], maps[3, 5], atol=1e-12)


@pytest.mark.parametrize("gt_as_rows", [True, False])
def test_matlab_gt_maps_layout_converts_column_major(tmp_path, gt_as_rows):
    E, maps, cube = truth()
    path = tmp_path / "scene.mat"
    scipy.io.savemat(path, {"Y": matlab_columns(cube), "GT": E.T if gt_as_rows else E,
                            "S_GT": maps, "lines": H, "cols": W})
    scene = load_scene(path)
    check_against_truth(scene, E, maps, cube)
    assert scene.meta["layout"] == "gt-maps"


def test_y_m_a_layout_with_matlab_abundance_columns(tmp_path):
    E, maps, cube = truth(1)
    path = tmp_path / "yma.mat"
    scipy.io.savemat(path, {"Y": matlab_columns(cube), "M": E, "A": matlab_columns(maps), "nRow": H, "nCol": W})
    check_against_truth(load_scene(path), E, maps, cube)


def test_original_release_with_separate_ground_truth_and_max_value(tmp_path):
    E, maps, cube = truth(2)
    counts = np.round(matlab_columns(cube) * 4000).astype(np.uint16)
    scipy.io.savemat(tmp_path / "release.mat", {"Y": counts, "nRow": H, "nCol": W, "maxValue": 4000})
    names = np.array([["soil"], ["tree"], ["water"]], dtype=object)
    scipy.io.savemat(tmp_path / "end3.mat", {"M": E, "A": matlab_columns(maps), "cood": names})
    scene = load_scene(tmp_path / "release.mat", gt_path=tmp_path / "end3.mat")
    np.testing.assert_allclose(scene.cube, np.round(cube * 4000) / 4000, atol=1e-12)
    np.testing.assert_allclose(scene.A, row_major(maps), atol=1e-12)
    assert scene.material_names == ["soil", "tree", "water"]
    assert scene.meta["scale"] == 4000


def test_integer_data_without_max_value_divided_by_data_max(tmp_path):
    _, _, cube = truth(3)
    counts = np.round(matlab_columns(cube) * 1000).astype(np.uint16)
    scipy.io.savemat(tmp_path / "v.mat", {"V": counts, "nRow": H, "nCol": W})
    scene = load_scene(tmp_path / "v.mat")
    assert scene.Y.max() == pytest.approx(1.0)
    np.testing.assert_allclose(scene.cube, np.round(cube * 1000) / counts.max(), atol=1e-12)


def test_hysupp_layout_is_row_major(tmp_path):
    E, maps, cube = truth(4)
    path = tmp_path / "hysupp.mat"
    scipy.io.savemat(path, {"Y": row_major(cube), "E": E, "A": row_major(maps), "H": H, "W": W, "p": P})
    check_against_truth(load_scene(path), E, maps, cube)


def test_npz_round_trip_and_npy_cube(tmp_path):
    E, maps, cube = truth(5)
    scene = Scene(Y=row_major(cube), H=H, W=W, E=E, A=row_major(maps))
    check_against_truth(load_scene(save_scene_npz(scene, tmp_path / "s.npz")), E, maps, cube)
    np.save(tmp_path / "cube.npy", cube)
    loaded = load_scene(tmp_path / "cube.npy")
    np.testing.assert_array_equal(loaded.cube, cube)
    assert loaded.E is None and loaded.A is None


def test_envi_header_memory_mapped(tmp_path):
    import spectral.io.envi as envi

    _, _, cube = truth(6)
    envi.save_image(str(tmp_path / "scene.hdr"), cube.astype(np.float32),
                    metadata={"wavelength": list(np.linspace(400, 900, L))}, force=True)
    scene = load_scene(tmp_path / "scene.hdr")
    np.testing.assert_allclose(scene.cube, cube, atol=1e-6)
    np.testing.assert_allclose(scene.wavelengths, np.linspace(400, 900, L))


def test_samson_pixel_order_and_original_release_agree(hsi_file):
    raw = scipy.io.loadmat(hsi_file("samson.mat"))
    scene = load_dataset("samson")
    assert (scene.H, scene.W, scene.n_bands, scene.p) == (95, 95, 156, 3)
    for k in range(3):  # the data README's check, in the package's row-major order
        np.testing.assert_array_equal(scene.A[k], raw["S_GT"][:, :, k].ravel())
    np.testing.assert_array_equal(scene.cube[10, 40], raw["Y"][:, 10 + 40 * 95])
    np.testing.assert_array_equal(scene.E, raw["GT"].T)  # kept max-scaled, as in the file
    release = load_scene(hsi_file("samson_1_original_release.mat"))
    np.testing.assert_array_equal(release.Y, scene.Y)


def test_samson_rescaled_gt_reaches_the_oracle_floor(hsi_file):
    from hyperunmix.fcls import fcls
    from hyperunmix.metrics import armse

    scene = load_dataset("samson", rescale_gt=True)
    assert armse(fcls(scene.Y, scene.E), scene.A) == pytest.approx(0.168, abs=0.001)


def test_jasper_scaled_by_5000_matches_original_release(hsi_file):
    raw = scipy.io.loadmat(hsi_file("jasper_ridge.mat"))
    scene = load_dataset("jasper-ridge")
    np.testing.assert_allclose(scene.cube[3, 70], raw["Y"][:, 3 + 70 * 100] / 5000.0)
    np.testing.assert_array_equal(scene.A, raw["S_GT"].reshape(-1, 4).T)
    release = load_scene(hsi_file("jasperRidge2_R198_original_release.mat"))  # maxValue from the file
    np.testing.assert_allclose(release.Y, scene.Y)


def test_urban_subimage_non_square_cube(hsi_file):
    raw = scipy.io.loadmat(hsi_file("urban_subimage_R162_noGT.mat"))["im"]
    scene = load_dataset("urban-subimage")
    assert (scene.H, scene.W, scene.n_bands) == (34, 78, 162)
    assert scene.E is None and scene.A is None
    np.testing.assert_array_equal(scene.cube, raw)
    np.testing.assert_array_equal(scene.Y[:, 5 * 78 + 60], raw[5, 60])


def test_list_datasets_reports_availability(hsi_file):
    hsi_file("samson.mat")
    rows = {row["name"]: row for row in list_datasets()}
    assert rows["samson"]["available"] and rows["samson"]["shape"] == (95, 95, 156)
    assert rows["urban-subimage"]["shape"] == (34, 78, 162)
    assert rows["synthetic"]["available"]


# ----------------------------------------------------------------------------- bad input


def write_mat(tmp_path, **arrays):
    path = tmp_path / "bad.mat"
    scipy.io.savemat(path, arrays)
    return path


def good_arrays():
    E, maps, cube = truth(7)
    return {"Y": matlab_columns(cube), "GT": E.T, "S_GT": maps, "lines": H, "cols": W}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("Y"), "cannot recognise the layout"),
        (lambda a: a.update(lines=H + 1), "does not match"),
        (lambda a: a.update(GT=np.ones((P, L + 2))), "neither dimension equals"),
        (lambda a: a.update(S_GT=np.ones((W, H, P)) / P), "maps have shape"),
        (lambda a: a["Y"].__setitem__((2, 5), np.nan), "NaN"),
        (lambda a: a["Y"].__setitem__((4, 6), -0.5), "negative value"),
        (lambda a: a["Y"].__setitem__(3, 0.0), "band(s) [3] are all zero"),
        (lambda a: a.update(Y=np.ones((L, 10))), "not a square"),
    ],
)
def test_bad_inputs_name_the_problem(tmp_path, change, message):
    arrays = good_arrays()
    if "not a square" in message:
        arrays = {"Y": arrays["Y"][:, :10]}
    change(arrays)
    with pytest.raises(SceneError, match=re.escape(message)):
        load_scene(write_mat(tmp_path, **arrays))


def test_negative_values_can_be_clipped(tmp_path):
    arrays = good_arrays()
    arrays["Y"][4, 6] = -0.5
    assert load_scene(write_mat(tmp_path, **arrays), clip_negative=True).Y.min() == 0.0


def test_missing_file_and_unknown_formats(tmp_path, monkeypatch):
    with pytest.raises(SceneError, match="not found"):
        load_scene(tmp_path / "absent.mat")
    (tmp_path / "scene.tif").write_bytes(b"\0")
    with pytest.raises(SceneError, match="GDAL cannot read it as a raster"):
        load_scene(tmp_path / "scene.tif")
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    with pytest.raises(SceneError, match=r"needs the file Urban_R162.mat"):
        load_dataset("urban")
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        load_dataset("nope")


def test_ground_truth_file_without_abundances(tmp_path):
    E, maps, cube = truth(8)
    scipy.io.savemat(tmp_path / "y.mat", {"Y": matlab_columns(cube), "nRow": H, "nCol": W})
    scipy.io.savemat(tmp_path / "gt.mat", {"M": E})
    with pytest.raises(SceneError, match="no abundance key"):
        load_scene(tmp_path / "y.mat", gt_path=tmp_path / "gt.mat")
    with pytest.raises(SceneError, match="p=3 endmembers but n_endmembers=4"):
        load_scene(write_mat(tmp_path, **good_arrays()), n_endmembers=4)
