"""MiSiCNet: SiVM initialisation, the rank-p target, the network's constraints, seeding, and the
loss it descends."""
import numpy as np
import pytest
import torch

from hyperunmix import make_method
from hyperunmix.methods.misicnet import MiSiCNetwork, signal_subspace_projection, sivm
from hyperunmix.metrics import score
from hyperunmix.synthetic import make_synthetic


@pytest.fixture(scope="module")
def scene():
    return make_synthetic(H=16, W=16, p=3, n_bands=30, seed=1, snr_db=30.0, purity=0.05)


def test_sivm_finds_the_planted_pure_pixels(planted):
    # A noiseless scene with one pure pixel per endmember: the simplex of largest volume is theirs.
    assert sivm(planted.Y, planted.p).tolist() == sorted(planted.meta["pure"].tolist())


def test_projection_keeps_a_rank_p_scene_and_removes_the_rest(planted):
    np.testing.assert_allclose(signal_subspace_projection(planted.Y, planted.p), planted.Y, rtol=0, atol=1e-12)
    noise = np.random.default_rng(0).normal(scale=0.01, size=planted.Y.shape)
    projected = signal_subspace_projection(planted.Y + noise, planted.p)
    assert np.linalg.matrix_rank(projected, tol=1e-8) == planted.p


def test_initial_decoder_is_sivm_on_the_projected_pixels(scene):
    """Before training the endmembers are SiVM's pixels of the projected, clipped scene: measured
    1.13 deg on this 5%-pure scene (random spectra of the library sit above 10 deg)."""
    model = make_method("misicnet", 3, 0, iterations=0).fit(scene.cube)
    projected = np.clip(signal_subspace_projection(scene.Y, 3), 0.0, 1.0)
    np.testing.assert_allclose(model.endmembers_, projected[:, sivm(projected, 3)], rtol=1e-6)  # float32 decoder
    assert score(model.endmembers_, model.abundances_, scene.E, scene.A)["mean_sad_deg"] < 2.0


def test_constraints_shapes_and_descent(scene):
    model = make_method("misicnet", 3, 0, iterations=30).fit(scene.cube)
    A, E = model.abundances_, model.endmembers_
    assert A.shape == (3, 16, 16) and E.shape == (30, 3)
    assert (A >= 0).all() and (E >= 0).all() and (E <= 1).all()  # softmax; decoder clipped to [0, 1]
    np.testing.assert_allclose(A.sum(axis=0), 1.0, atol=1e-5)  # float32 softmax, averaged
    loss = model.history_["loss"]
    assert len(loss) == 30 and loss[-1] < 0.85 * loss[0]  # measured 0.75 (526 -> 393)
    # transform: FCLSU with the fitted endmembers (the network has no encoder for another cube).
    from hyperunmix.fcls import fcls

    np.testing.assert_allclose(model.transform(scene.cube).reshape(3, -1), fcls(scene.Y, E), rtol=0, atol=1e-12)


def test_average_weight_zero_returns_the_last_output(scene):
    """With weight 0 the running average is the output of the last iteration's forward pass."""
    model = make_method("misicnet", 3, 0, iterations=3, average_weight=0.0).fit(scene.cube)
    seeded = make_method("misicnet", 3, 0, iterations=3, average_weight=0.5).fit(scene.cube)
    np.testing.assert_array_equal(model.endmembers_, seeded.endmembers_)  # the weight only changes A
    assert not np.allclose(model.abundances_, seeded.abundances_)


def test_same_seed_same_numbers_and_input_choice(scene):
    fit = lambda seed, **kw: make_method("misicnet", 3, seed, iterations=3, **kw).fit(scene.cube)
    a, b, c = fit(1), fit(1), fit(2)
    np.testing.assert_array_equal(a.abundances_, b.abundances_)
    assert not np.allclose(a.abundances_, c.abundances_)
    assert not np.allclose(fit(1, network_input="image").abundances_, a.abundances_)


def test_network_is_the_papers():
    net = MiSiCNetwork(n_bands=30, n_endmembers=3)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    shapes = [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs]
    # main 3x3 L -> 256, skip 1x1 L -> 4, then 3x3 260 -> 256 and 3x3 256 -> p.
    assert shapes == [(30, 256, 3), (30, 4, 1), (260, 256, 3), (256, 3, 3)]
    A = net.abundances(torch.rand(1, 30, 5, 7))
    assert A.shape == (3, 35)
    torch.testing.assert_close(A.sum(dim=0), torch.ones(35))
