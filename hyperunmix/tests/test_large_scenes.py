"""Scenes of any size: block-wise reading, pixel samples, neighbourhoods read from the cube, every
method on a memory-mapped cube larger than its `sample_size`, and fitting on a window."""
from __future__ import annotations

import mmap

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hyperunmix import METHODS, make_method
from hyperunmix.blocks import BLOCK_PIXELS, is_memory_mapped, iter_row_blocks, release, sample_pixels
from hyperunmix.cli import app
from hyperunmix.loaders import load_scene
from hyperunmix.methods.patches import extract_patches, gather_patches
from hyperunmix.metrics import reconstruction_rmse, score
from hyperunmix.run import run_method
from hyperunmix.synthetic import make_synthetic
from hyperunmix.validation import SceneError, check_cube
from hyperunmix.window import parse_window

SAMPLE = 300  # below the 24 x 30 = 720 pixels of the scene: every method takes its sampled path
TINY = {"gauss": dict(an_epochs=2, un_epochs=2, mn_epochs=2, stage2_epochs=2, batch_size=64),
        "cnnaeu": dict(epochs=2, patch_size=8, patches_per_epoch=4, batch_size=2, decoder_kernel=3),
        "autoencoder": dict(epochs=2, batch_size=64),
        "misicnet": dict(iterations=2),
        "edaa": dict(n_restarts=2, outer_iterations=3)}


def tiny_params(name: str) -> dict:
    return TINY.get("gauss" if name.startswith("gauss") else name, {})


@pytest.fixture(scope="module")
def truth():
    return make_synthetic(H=24, W=30, p=3, n_bands=40, seed=3)


@pytest.fixture(scope="module")
def mapped(truth, tmp_path_factory):
    """The scene as a read-only float32 memory map, as an ENVI file is opened."""
    path = tmp_path_factory.mktemp("cube") / "cube.npy"
    np.save(path, truth.cube.astype(np.float32))
    return np.load(path, mmap_mode="r")


@pytest.mark.parametrize("window", [3, 5])
def test_gathered_neighbourhoods_equal_unfolded_ones(window):
    cube = np.random.default_rng(0).random((7, 9, 4))
    pixels = np.array([0, 8, 9, 30, 62, 53, 54])  # corners, edges, inside
    expected = extract_patches(cube, window)[pixels]
    torch.testing.assert_close(gather_patches(cube, pixels, window), expected, rtol=0, atol=0)


def test_pixel_sample_is_distinct_sorted_and_read_right(mapped):
    index, spectra = sample_pixels(mapped, 50, np.random.default_rng(0))
    assert len(np.unique(index)) == 50 and np.all(np.diff(index) > 0)
    np.testing.assert_array_equal(spectra, mapped.reshape(-1, mapped.shape[2])[index].T)
    everything, _ = sample_pixels(mapped, 10**6, np.random.default_rng(0))
    np.testing.assert_array_equal(everything, np.arange(24 * 30))


def test_row_blocks_cover_the_cube_once():
    cube = np.arange(5 * 7 * 2, dtype=np.float32).reshape(5, 7, 2)
    blocks = [(start, block.copy()) for start, block in iter_row_blocks(cube, max_pixels=14)]  # two rows each
    assert [start for start, _ in blocks] == [0, 2, 4]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), cube)


def test_release_keeps_the_edits_of_a_copy_on_write_map(tmp_path):
    """Dropping pages is only safe on read-only maps: on a copy-on-write map it would undo edits."""
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((4, 1024), dtype=np.float32))
    edited = np.load(path, mmap_mode="c")
    edited[0, 0] = 7.0
    release(edited)
    assert edited[0, 0] == 7.0
    read_only = np.load(path, mmap_mode="r")
    assert is_memory_mapped(read_only) and isinstance(read_only._mmap, mmap.mmap)
    release(read_only)  # dropped pages come back from the file on the next read
    assert read_only[0, 0] == 0.0 and not is_memory_mapped(np.zeros(3))


def test_block_wise_check_names_the_first_bad_value_across_blocks():
    width = BLOCK_PIXELS + 10  # one row per block
    cube = np.ones((3, width, 2))
    cube[2, 0, 0] = np.nan
    cube[1, 5, 1] = np.inf
    cube[1, 7, 0] = -1.0
    with pytest.raises(SceneError, match=r"2 NaN/infinite value\(s\), first at row 1, column 5, band 1"):
        check_cube(cube)
    cube[2, 0, 0] = cube[1, 5, 1] = 1.0
    with pytest.raises(SceneError, match=r"1 negative value\(s\), first at row 1, column 7, band 0 \(value -1\)"):
        check_cube(cube)
    cube[1, 7, 0] = 1.0
    with pytest.raises(SceneError, match="same spectrum"):
        check_cube(cube)
    cube[2, -1, 1] = 2.0  # a difference in the last block is found
    check_cube(cube)


def test_block_wise_reconstruction_rmse_equals_the_formula():
    rng = np.random.default_rng(1)
    Y, E, A = rng.random((3, BLOCK_PIXELS + 123)), rng.random((3, 2)), rng.random((2, BLOCK_PIXELS + 123))
    # Sums in two blocks instead of one: equal up to rounding of ~1e5 terms (relative 1e-12).
    np.testing.assert_allclose(reconstruction_rmse(Y, E, A), np.sqrt(np.mean((Y - E @ A) ** 2)), rtol=1e-12)


@pytest.mark.parametrize("name", [m for m in METHODS if m != "oracle-fcls"])
def test_every_method_fits_a_mapped_scene_on_a_sample(name, mapped):
    model = make_method(name, 3, 0, sample_size=SAMPLE, **tiny_params(name)).fit(mapped)
    A = model.abundances_
    assert A.shape == (3, 24, 30) and model.endmembers_.shape == (40, 3)
    assert (A >= -1e-12).all()
    np.testing.assert_allclose(A.sum(axis=0), 1.0, atol=1e-5)  # float32 softmax for the networks
    np.testing.assert_allclose(model.transform(mapped), A, atol=1e-6)  # one tiled pass, same model
    if name == "misicnet":  # a window of the image (the network needs one) of at most SAMPLE pixels
        indices = model.sample_indices_
        assert 0 < len(indices) <= SAMPLE and len(set(indices)) == len(indices)
    elif name != "cnnaeu":  # CNNAEU trains on crops, not on a pixel sample
        assert len(model.sample_indices_) == SAMPLE
    again = make_method(name, 3, 0, sample_size=SAMPLE, **tiny_params(name)).fit(mapped)
    np.testing.assert_array_equal(again.endmembers_, model.endmembers_)


def test_oracle_on_a_sample_uses_the_sampled_true_abundances():
    noiseless = make_synthetic(H=24, W=30, p=3, n_bands=40, seed=3, snr_db=None)
    model = make_method("oracle-fcls", 3, 0, sample_size=SAMPLE, endmembers=noiseless.E * 2.0, rescale=True,
                        abundances=noiseless.A).fit(noiseless.cube)
    # Noiseless pixels: the least-squares scales undo the factor 2 exactly, up to rounding, only
    # if the sampled pixels are paired with their own true abundances.
    np.testing.assert_allclose(model.endmembers_, noiseless.E, rtol=1e-10)


def test_sampled_fit_is_close_to_the_whole_fit(truth):
    """VCA on 300 of 720 pixels still finds the simplex: within 1.5 deg of the whole-scene fit
    (measured: 0.48 vs 0.38 deg on this scene)."""
    whole = make_method("vca-fcls", 3, 0).fit(truth.cube)
    sampled = make_method("vca-fcls", 3, 0, sample_size=SAMPLE).fit(truth.cube)
    assert not hasattr(whole, "sample_indices_")
    sad = [score(m.endmembers_, m.abundances_, truth.E, truth.A)["mean_sad_deg"] for m in (whole, sampled)]
    assert sad[1] < sad[0] + 1.5


def test_sample_smaller_than_the_endmembers_is_refused(truth):
    with pytest.raises(ValueError, match="sample_size=2 must be at least n_endmembers=3"):
        make_method("vca-fcls", 3, 0, sample_size=2).fit(truth.cube)


def test_envi_float_cube_stays_mapped(tmp_path, truth):
    import spectral.io.envi as envi

    envi.save_image(str(tmp_path / "s.hdr"), truth.cube.astype(np.float32), force=True)
    scene = load_scene(tmp_path / "s.hdr")
    assert is_memory_mapped(scene.Y) and scene.Y.dtype == np.float32
    first = scene.fingerprint()
    assert load_scene(tmp_path / "s.hdr").fingerprint() == first
    changed = truth.cube.astype(np.float32)
    changed[3, 4, 5] += 0.01
    envi.save_image(str(tmp_path / "s.hdr"), changed, force=True)
    assert load_scene(tmp_path / "s.hdr").fingerprint() != first


@pytest.mark.parametrize("text,message", [
    ("0:10", "expected 'row0:row1,col0:col1'"),
    ("0:10,a:5", "column bounds 'a:5' must be whole numbers"),
    ("5:5,0:3", r"rows 5:5 must satisfy 0 <= start < end <= 24"),
    ("0:10,0:31", r"columns 0:31 must satisfy 0 <= start < end <= 30"),
])
def test_bad_windows_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_window(text, 24, 30)


def test_fit_on_a_window_then_unmix_the_whole_scene(tmp_path, truth):
    assert parse_window("2:,:12", 24, 30) == (slice(2, 24), slice(0, 12))
    metrics = run_method(truth, "vca-fcls", 0, out_dir=tmp_path / "run", figures=False, window="0:12,0:30")
    model = make_method("vca-fcls", 3, 0).fit(truth.cube[:12])
    expected = score(model.endmembers_, model.transform(truth.cube), truth.E, truth.A, Y=truth.Y)
    assert metrics["armse"] == expected["armse"] and metrics["mean_sad_deg"] == expected["mean_sad_deg"]
    import scipy.io
    import yaml

    saved = scipy.io.loadmat(tmp_path / "run" / "estimates.mat")
    assert saved["A"].shape == (3, 24 * 30)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["window"] == "0:12,0:30"


def test_cli_window_error_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["run", "--dataset", "synthetic", "--method", "vca-fcls", "--window", "0:5",
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "error: window '0:5': expected 'row0:row1,col0:col1'" in result.output
    assert not (tmp_path / "r").exists()


def test_streamed_gauss_smoothness_reads_neighbours_from_the_cube(mapped):
    """Neighbours of sampled pixels are mostly not in the sample: their spectra come from the AN
    applied to neighbourhoods read from the cube, with gradients when the AN trains."""
    model = make_method("gauss-blind", 3, 0, sample_size=SAMPLE, smooth_weight=0.5, train_an=True,
                        **TINY["gauss"]).fit(mapped)
    smooth = model.history_["stage2_smoothness"]
    assert len(smooth) == 2 and all(np.isfinite(smooth)) and smooth[0] > 0


def test_crops_read_from_the_cube_equal_crops_of_the_image(mapped):
    from hyperunmix.methods.cnnaeu import cube_crops, random_crops

    image = torch.as_tensor(np.array(mapped)).permute(2, 0, 1)  # (L, H, W)
    expected = random_crops(image, 8, 5, torch.Generator().manual_seed(4))
    torch.testing.assert_close(cube_crops(mapped, 8, 5, torch.Generator().manual_seed(4)), expected, rtol=0, atol=0)


def test_gauss_scaled_fcls_on_a_sample(mapped):
    """The scales come from the sampled pixels; every pixel's abundances are FCLSU (float64)."""
    model = make_method("gauss-blind", 3, 0, sample_size=SAMPLE, abundances_from="scaled-fcls",
                        **tiny_params("gauss")).fit(mapped)
    plain = make_method("gauss-blind", 3, 0, sample_size=SAMPLE, **tiny_params("gauss")).fit(mapped)
    cosine = np.sum(model.endmembers_ * plain.endmembers_, axis=0) / (
        np.linalg.norm(model.endmembers_, axis=0) * np.linalg.norm(plain.endmembers_, axis=0))
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-12)  # scaled columns: same directions
    assert not np.allclose(model.endmembers_, plain.endmembers_)
    np.testing.assert_allclose(model.abundances_.sum(axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(model.transform(mapped), model.abundances_, rtol=0, atol=1e-12)
