"""Bad scenes and bad method parameters: refused with a message that names the problem, the same
way whether a scene comes from a file (the loader) or straight from the caller (an estimator)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.io
from sklearn.utils._param_validation import InvalidParameterError

from hyperunmix import make_method
from hyperunmix.loaders import load_scene
from hyperunmix.methods import METHODS
from hyperunmix.validation import SceneError, SceneWarning


def mixed_cube(H: int = 5, W: int = 6, L: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.einsum("hwp,lp->hwl", rng.dirichlet(np.ones(3), size=(H, W)), rng.uniform(0.1, 0.9, (L, 3)))


def with_value(cube: np.ndarray, index: tuple, value: float) -> np.ndarray:
    cube = cube.copy()
    cube[index] = value
    return cube


BAD_CUBES = [
    (mixed_cube() + 0.5j, "complex values"),
    (np.full((4, 5, 6), "0.5"), "dtype <U3 (text)"),
    (np.zeros((0, 0, 6)), "empty: 0 x 0 pixels"),
    (np.ones((4, 5, 6)), "all 20 pixels have the same spectrum"),
    (with_value(mixed_cube(), (3, 1, 4), -0.2), "negative value(s), first at row 3, column 1, band 4"),
    (with_value(mixed_cube(), (2, 5, 0), np.nan), "NaN/infinite value(s), first at row 2, column 5, band 0"),
    (with_value(mixed_cube(), (slice(None), slice(None), 2), 0.0), "band(s) [2] are all zero"),
]


@pytest.mark.parametrize("cube, message", BAD_CUBES, ids=lambda v: v if isinstance(v, str) else "")
def test_loader_and_estimators_refuse_the_same_bad_cubes(tmp_path, cube, message):
    np.save(tmp_path / "scene.npy", cube)
    with pytest.raises(SceneError, match=re.escape(message)) as from_file:
        load_scene(tmp_path / "scene.npy")
    assert "scene.npy" in str(from_file.value)
    for name in ("vca-fcls", "nmf"):
        with pytest.raises(SceneError, match=re.escape(message)):
            make_method(name, n_endmembers=2, random_state=0).fit(cube)


def test_negative_values_clipped_on_request_only(tmp_path):
    cube = with_value(mixed_cube(), (0, 0, 0), -0.1)
    np.save(tmp_path / "scene.npy", cube)
    assert load_scene(tmp_path / "scene.npy", clip_negative=True).Y.min() == 0.0
    with pytest.raises(SceneError, match="clip_negative=True"):
        load_scene(tmp_path / "scene.npy")


def test_bad_pixel_reported_at_its_image_position_in_a_column_major_file(tmp_path):
    H, W = 7, 11
    cube = mixed_cube(H, W)
    Y = np.stack([cube[:, :, band].flatten(order="F") for band in range(cube.shape[2])])  # MATLAB order
    Y[2, 17] = np.nan  # file column 17 is pixel row 17 % 7 = 3, column 17 // 7 = 2
    scipy.io.savemat(tmp_path / "scene.mat", {"Y": Y, "nRow": H, "nCol": W})
    with pytest.raises(SceneError, match="first at row 3, column 2, band 2"):
        load_scene(tmp_path / "scene.mat")


def test_complex_matlab_file_refused(tmp_path):
    cube = mixed_cube()
    Y = cube.reshape(-1, cube.shape[2]).T.astype(complex)
    Y[0, 0] += 1e-3j
    scipy.io.savemat(tmp_path / "scene.mat", {"Y": Y, "H": 5, "W": 6, "p": 3, "E": np.ones((8, 3)),
                                              "A": np.ones((3, 30)) / 3})
    with pytest.raises(SceneError, match="complex values"):
        load_scene(tmp_path / "scene.mat")


def test_as_many_bands_as_pixels_warns_how_it_was_read(tmp_path):
    cube = mixed_cube(3, 3, 9)
    scipy.io.savemat(tmp_path / "square.mat", {"Y": cube.reshape(9, 9).T, "H": 3, "W": 3, "p": 3,
                                               "E": np.full((9, 3), 0.5), "A": np.full((3, 9), 1 / 3)})
    with pytest.warns(SceneWarning, match=r"orientation cannot be told.*read as \(bands, pixels\)"):
        scene = load_scene(tmp_path / "square.mat")
    np.testing.assert_allclose(scene.cube, cube)


def test_short_envi_data_file_names_the_file_and_the_sizes(tmp_path):
    import spectral.io.envi as envi

    envi.save_image(str(tmp_path / "scene.hdr"), mixed_cube(4, 5, 6).astype(np.float32), force=True)
    data_file = next(p for p in tmp_path.iterdir() if p.suffix != ".hdr")
    with open(data_file, "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(SceneError, match=rf"{data_file.name}: ENVI data file has 100 bytes.*4 x 5 x 6 values "
                                         r"of float32.* = 480 bytes"):
        load_scene(tmp_path / "scene.hdr")


def test_npy_of_strings_and_of_objects_named(tmp_path):
    np.save(tmp_path / "text.npy", np.array([[["a", "bb"]]]))
    with pytest.raises(SceneError, match=r"text.npy has values of dtype <U2 \(text\)"):
        load_scene(tmp_path / "text.npy")
    np.save(tmp_path / "objects.npy", np.array([[[{"a": 1}]]], dtype=object), allow_pickle=True)
    with pytest.raises(SceneError, match=r"objects.npy: cannot read as a NumPy .npy file.*allow_pickle"):
        load_scene(tmp_path / "objects.npy")


@pytest.mark.parametrize("value, got", [("3", "str"), (3.0, "float")])
def test_n_endmembers_must_be_an_int(tmp_path, value, got):
    np.save(tmp_path / "scene.npy", mixed_cube())
    with pytest.raises(TypeError, match=f"n_endmembers must be an instance of int, not {got}"):
        load_scene(tmp_path / "scene.npy", n_endmembers=value)
    with pytest.raises(InvalidParameterError, match=rf"'n_endmembers' parameter of VCAFCLS must be an int .*"
                                                    rf"Got {value!r} instead"):
        make_method("vca-fcls", n_endmembers=value).fit(mixed_cube())


# ----------------------------------------------------------------------------- method parameters


@pytest.mark.parametrize("name", list(METHODS))
def test_every_parameter_of_every_method_has_a_constraint(name):
    model = make_method(name, n_endmembers=3, random_state=0)
    assert set(model.get_params()) == set(type(model)._parameter_constraints)


BAD_PARAMS = [
    ("autoencoder", "epochs", -3, "an int in the range [0, inf)"),
    ("cnnaeu", "epochs", -1, "an int in the range [0, inf)"),
    ("gauss", "an_epochs", -1, "an int in the range [0, inf)"),
    ("gauss-blind", "stage2_epochs", 2.5, "an int in the range [0, inf)"),
    ("gauss-blind", "train_an", "yes", "'bool'"),
    ("gauss-prime", "prime_method", "pca", "a str among"),
    ("gauss", "mn", "cubic", "a str among"),
    ("gauss", "lr", 0.0, "a float in the range (0.0, inf)"),
    ("vca-fcls", "use_projected", "maybe", "'bool'"),
    ("nfindr-fcls", "max_sweeps", 0, "an int in the range [1, inf)"),
    ("kmeans-fcls", "n_init", -2, "an int in the range [1, inf)"),
    ("nmf", "l1_ratio", 1.5, "a float in the range [0.0, 1.0]"),
    ("oracle-fcls", "rescale", "no", "'bool'"),
    ("vca-fcls", "random_state", -1, "an int in the range [0, 4294967295]"),
    ("misicnet", "network_input", "zeros", "a str among"),
    ("misicnet", "average_weight", 1.5, "a float in the range [0.0, 1.0]"),
    ("edaa", "n_restarts", 0, "an int in the range [1, inf)"),
    ("cnnaeu", "patches_per_epoch", 0, "an int in the range [1, inf) or None"),
    ("gauss-blind", "abundances_from", "nnls", "a str among"),
]


@pytest.mark.parametrize("name, key, value, expected", BAD_PARAMS)
def test_bad_parameter_named_with_expected_and_got(name, key, value, expected):
    model = make_method(name, n_endmembers=3, **{key: value})
    with pytest.raises(InvalidParameterError) as caught:
        model.fit(mixed_cube())
    text = str(caught.value)
    assert f"'{key}' parameter of {type(model).__name__} must be" in text and expected in text
    assert f"Got {value!r} instead" in text
    assert not hasattr(model, "endmembers_")


def test_cnnaeu_even_decoder_kernel_named():
    with pytest.raises(ValueError, match="decoder_kernel must be odd, got 4"):
        make_method("cnnaeu", 2, 0, decoder_kernel=4, epochs=1).fit(mixed_cube())
