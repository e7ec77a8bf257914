"""Deep baselines: CNNAEU and the fully connected autoencoder."""
import numpy as np
import pytest
import torch

from hyperunmix import make_method
from hyperunmix.datasets import load_dataset
from hyperunmix.methods.cnnaeu import random_crops
from hyperunmix.metrics import score
from hyperunmix.synthetic import make_synthetic

torch.set_num_threads(1)
SMALL = {"cnnaeu": dict(epochs=4, patch_size=8, patches_per_epoch=4, batch_size=2, decoder_kernel=3),
         "autoencoder": dict(epochs=4, batch_size=32)}


@pytest.fixture(scope="module")
def tiny_scene():
    return make_synthetic(H=12, W=10, p=3, snr_db=30.0, seed=2)


@pytest.mark.parametrize("name", ["cnnaeu", "autoencoder"])
def test_constraints_shapes_history(tiny_scene, name):
    model = make_method(name, n_endmembers=3, random_state=0, **SMALL[name]).fit(tiny_scene.cube)
    assert model.endmembers_.shape == (tiny_scene.n_bands, 3) and model.abundances_.shape == (3, 12, 10)
    assert (model.abundances_ >= 0).all() and (model.endmembers_ >= 0).all()
    np.testing.assert_allclose(model.abundances_.sum(axis=0), 1.0, atol=1e-5)
    assert len(model.history_["sad"]) == 4 and np.isfinite(model.history_["sad"]).all()


@pytest.mark.parametrize("name", ["cnnaeu", "autoencoder"])
def test_same_seed_same_numbers(tiny_scene, name):
    fit = lambda seed: make_method(name, 3, seed, **SMALL[name]).fit(tiny_scene.cube)
    a, b, c = fit(3), fit(3), fit(4)
    np.testing.assert_array_equal(a.endmembers_, b.endmembers_)
    np.testing.assert_array_equal(a.abundances_, b.abundances_)
    assert not np.allclose(a.abundances_, c.abundances_)


def test_random_crops_are_image_windows():
    image = torch.arange(2 * 6 * 7, dtype=torch.float32).reshape(2, 6, 7)
    crops = random_crops(image, 4, 5, torch.Generator().manual_seed(0))
    assert crops.shape == (5, 2, 4, 4)
    for crop in crops:
        r, c = divmod(int(crop[0, 0, 0]), 7)
        torch.testing.assert_close(crop, image[:, r:r + 4, c:c + 4])


def test_autoencoder_bad_init_is_named(tiny_scene):
    with pytest.raises(ValueError, match="init"):
        make_method("autoencoder", 3, 0, init="pca").fit(tiny_scene.cube)


# Measured (seed 0): autoencoder 2.77 deg / 0.107, CNNAEU 4.60 deg / 0.177; random spectra of
# the procedural library sit well above 10 deg.
@pytest.mark.parametrize("name,params,max_sad,max_armse", [
    ("autoencoder", {"epochs": 12}, 4.5, 0.15),
    ("cnnaeu", {"epochs": 40, "patch_size": 32}, 6.5, 0.23),
])
def test_deep_baselines_on_synthetic(name, params, max_sad, max_armse):
    scene = load_dataset("synthetic")  # 64 x 80, p = 4, SNR 30 dB
    model = make_method(name, scene.p, 0, **params).fit(scene.cube)
    result = score(model.endmembers_, model.abundances_, scene.E, scene.A)
    assert result["mean_sad_deg"] < max_sad
    assert result["armse"] < max_armse
    assert model.history_["sad"][-1] < model.history_["sad"][0]


def test_unset_seed_draws_a_fresh_one(tiny_scene):
    """random_state=None means a new seed per fit (scikit-learn's rule), for every deep method."""
    fits = [make_method("autoencoder", 3, None, **SMALL["autoencoder"]).fit(tiny_scene.cube) for _ in range(2)]
    assert not np.array_equal(fits[0].endmembers_, fits[1].endmembers_)


def test_training_loop_reports_every_epoch_and_weights_the_mean(tiny_scene):
    from hyperunmix.methods.training import report_progress, train

    seen = []
    with report_progress(lambda stage, done, total: seen.append((stage, done, total))):
        make_method("gauss", 3, 0, an_epochs=2, un_epochs=1, mn_epochs=1).fit(tiny_scene.cube)
    assert seen == [("an_mse", 1, 2), ("an_mse", 2, 2), ("un_guide", 1, 1), ("mn_reconstruction", 1, 1)]
    # Batches of 3 and 1 samples with losses 1 and 5: the epoch mean is (3 * 1 + 1 * 5) / 4 = 2.
    weight = torch.nn.Parameter(torch.zeros(1))
    curve: list[float] = []
    losses = iter([1.0, 5.0])
    train(torch.optim.SGD([weight], lr=0.0), lambda batch, _: weight.sum() + next(losses),
          lambda epoch: [torch.arange(3), torch.arange(1)], 1, curve)
    assert curve == [2.0]


def test_cnnaeu_budget_is_the_papers():
    from hyperunmix.methods.cnnaeu import CNNAEU, patches_for_scene

    # 250 patches on Urban (307 x 307 x 162), scaled by volume: int(250 * 95 * 95 * 156 / ...) = 23
    # on Samson, 32 on Jasper Ridge (100 x 100 x 198), as HySUPP computes them.
    assert patches_for_scene(307 * 307, 162) == 250
    assert patches_for_scene(95 * 95, 156) == 23 and patches_for_scene(100 * 100, 198) == 32
    assert patches_for_scene(4, 3) == 1
    params = CNNAEU(3).get_params()
    assert (params["epochs"], params["batch_size"], params["patch_size"], params["lr"]) == (320, 15, 40, 3e-4)
    scene = make_synthetic(H=64, W=80, p=3, n_bands=120, snr_db=30.0, seed=2)
    small = dict(epochs=1, patch_size=8, decoder_kernel=3)
    assert make_method("cnnaeu", 3, 0, **small).fit(scene.cube).patches_per_epoch_ == 10  # 64 * 80 * 120 px*bands
    # A scene fitted on a sample counts sample_size pixels, not the scene's: 2000 * 120 -> 3 patches.
    assert make_method("cnnaeu", 3, 0, sample_size=2000, **small).fit(scene.cube).patches_per_epoch_ == 3
    assert make_method("cnnaeu", 3, 0, patches_per_epoch=5, **small).fit(scene.cube).patches_per_epoch_ == 5
