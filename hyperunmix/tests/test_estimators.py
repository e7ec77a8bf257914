"""The scikit-learn contract: get_params / set_params / clone, grid search, and `transform`
(abundances of a new cube) for every method."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold

from hyperunmix import METHODS, make_method
from hyperunmix.methods.gauss import GAUSS
from hyperunmix.metrics import reconstruction_rmse, reconstruction_scorer
from hyperunmix.synthetic import make_synthetic

FAST = {  # epochs small enough for a unit test; the numbers checked do not depend on quality
    "gauss": dict(an_epochs=2, un_epochs=2, mn_epochs=2, stage2_epochs=2, kmeans_n_init=2, batch_size=64),
    "cnnaeu": dict(epochs=2, patch_size=8),
    "autoencoder": dict(epochs=2),
    "misicnet": dict(iterations=2),
    "edaa": dict(n_restarts=2, outer_iterations=3),
}


def fast_params(name: str, scene=None) -> dict:
    if name.startswith("gauss"):
        return dict(FAST["gauss"])
    if name == "oracle-fcls":
        return {} if scene is None else {"endmembers": scene.E}
    return dict(FAST.get(name, {}))


@pytest.fixture(scope="module")
def scene():
    return make_synthetic(H=12, W=14, p=3, n_bands=40, seed=3)  # non-square, SNR 30 dB


@pytest.mark.parametrize("name", list(METHODS))
def test_clone_get_and_set_params(name):
    model = make_method(name, n_endmembers=3, random_state=7, **fast_params(name))
    copy = clone(model)
    assert copy is not model and type(copy) is type(model)
    assert copy.get_params(deep=True) == model.get_params(deep=True)
    assert copy.set_params(random_state=8) is copy and copy.random_state == 8 and model.random_state == 7
    with pytest.raises(ValueError, match="Invalid parameter 'no_such'"):
        copy.set_params(no_such=1)


def test_gauss_variant_parameter_is_the_registry_name():
    for variant, name in [("stage1", "gauss"), ("blind", "gauss-blind"), ("prime", "gauss-prime")]:
        assert make_method(name, 3).get_params() == GAUSS(n_endmembers=3, variant=variant).get_params()
    with pytest.raises(ValueError, match="'gauss-prime' means variant='prime'; got variant='blind'"):
        make_method("gauss-prime", 3, variant="blind")


def test_gauss_prime_as_the_spec_writes_it(scene):
    model = GAUSS(n_endmembers=3, variant="prime", random_state=0, **FAST["gauss"]).fit(scene.cube)
    assert model.prime_targets_.shape == (scene.n_pixels, 3)
    assert len(model.history_["stage2_reconstruction"]) == 2


def test_grid_search_over_a_gauss_parameter(scene):
    # Folds are image rows: each fit sees 6 of the 12 rows and is scored on the other 6.
    search = GridSearchCV(GAUSS(3, random_state=0, **FAST["gauss"]), {"sad_weight": [0.0, 3.0]},
                          scoring=reconstruction_scorer, cv=KFold(2), refit=True).fit(scene.cube)
    scores = search.cv_results_["mean_test_score"]
    assert len(scores) == 2 and np.all(np.isfinite(scores)) and np.all(scores < 0)
    assert search.best_params_["sad_weight"] in (0.0, 3.0)
    assert search.best_estimator_.abundances_.shape == (3, 12, 14)


@pytest.mark.parametrize("name", ["vca-fcls", "nfindr-fcls", "kmeans-fcls", "oracle-fcls"])
def test_transform_of_the_training_cube_is_the_fit(scene, name):
    model = make_method(name, 3, 0, **fast_params(name, scene))
    A = model.fit_transform(scene.cube)
    assert A is model.abundances_
    # The same FCLSU on the same pixels: only the row tiling differs, which changes matrix
    # products at rounding level (1e-16); 1e-12 leaves room for that and nothing else.
    np.testing.assert_allclose(model.transform(scene.cube), A, rtol=0, atol=1e-12)


def test_nmf_transform_is_fclsu_with_its_endmembers(scene):
    model = make_method("nmf", 3, 0).fit(scene.cube)
    A = model.transform(scene.cube)
    np.testing.assert_allclose(A.sum(axis=0), 1.0, atol=1e-10)
    assert A.min() >= 0
    # FCLSU is the constrained optimum, and NMF's renormalised abundances are feasible points.
    Y = scene.Y
    assert reconstruction_rmse(Y, model.endmembers_, A) <= reconstruction_rmse(Y, model.endmembers_,
                                                                              model.abundances_) + 1e-12


@pytest.mark.parametrize("name", ["cnnaeu", "autoencoder", "gauss-blind"])
def test_network_transform_tiled_matches_the_fit(scene, name, monkeypatch):
    import hyperunmix.methods.base as base

    params = dict(fast_params(name), **({"tile_pixels": 30} if name.startswith("gauss") else {}))
    model = make_method(name, 3, 0, **params).fit(scene.cube)
    monkeypatch.setattr(base, "TILE_PIXELS", 30)  # several row tiles on a 12 x 14 scene
    for module in ("cnnaeu", "autoencoder"):
        monkeypatch.setattr(f"hyperunmix.methods.{module}.TILE_PIXELS", 30)
    # float32 networks, one pass against several tiles: agreement to float32 rounding.
    np.testing.assert_allclose(model.transform(scene.cube), model.abundances_, rtol=0, atol=1e-5)


def test_transform_of_a_new_cube_and_bad_input(scene):
    model = make_method("vca-fcls", 3, 0).fit(scene.cube)
    other = make_synthetic(H=5, W=9, p=3, n_bands=40, seed=3).cube  # same library (same seed)
    A = model.transform(other)
    assert A.shape == (3, 5, 9)
    np.testing.assert_allclose(A.sum(axis=0), 1.0, atol=1e-10)
    with pytest.raises(ValueError, match="cube has 39 bands, the model was fitted on 40"):
        model.transform(other[:, :, 1:])
    with pytest.raises(RuntimeError, match="not fitted"):
        make_method("nfindr-fcls", 3).transform(other)
