"""GAUSS: guided encoder-decoder unmixing with spatial smoothness (arXiv 2204.07713).

Stage 1 (`GAUSS`): the approximation network AN denoises every pixel from its neighbourhood;
k-means on its output gives pseudo ground truth for the unmixing network UN (one-hot on p
clusters in the paper; by default here, the extreme clusters of 24 and soft targets for mixed
ones, `pseudo_gt="extreme"`); the mixing network MN learns to rebuild the AN output from the
UN abundances, detached, so reconstruction gradients never reach the UN. Stage 2 trains UN and
MN end to end on the reconstruction error, guided either by the pseudo-GT term
(`variant="blind"`) or by the abundances of a signal-processing method as soft targets
(`variant="prime"`).
"""
from __future__ import annotations

from collections.abc import Callable
from itertools import combinations
from math import comb

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.utils._param_validation import StrOptions

from hyperunmix.fcls import fcls
from hyperunmix.methods import METHODS
from hyperunmix.methods.base import (
    NON_NEGATIVE_INT,
    NON_NEGATIVE_REAL,
    POSITIVE_INT,
    POSITIVE_REAL,
    SAMPLE_SIZE,
    UNIT_INTERVAL,
    Unmixer,
)
from hyperunmix.methods.losses import guide_loss, reconstruction_loss
from hyperunmix.methods.neighbourhoods import Streamed, Unfolded
from hyperunmix.methods.networks import ApproximationNetwork, MixingNetwork, UnmixingNetwork
from hyperunmix.methods.nfindr import max_volume_swaps
from hyperunmix.methods.patches import gather_patches, predict_tiled
from hyperunmix.methods.training import seeded, shuffled, train
from hyperunmix.scene import least_squares_scales


def scaled_endmembers(Y: np.ndarray, E: np.ndarray, A: np.ndarray) -> np.ndarray:
    """E diag(s) with s the least-squares scales of Y ~ E diag(s) A; a column whose scale is not
    positive (it explains nothing the others do not) keeps its own scale."""
    scales = least_squares_scales(Y, E, A)
    return E * np.where(scales > 0, scales, 1.0)[None, :]


REFINE_EPOCHS = 10  # the default of `refine_epochs` for variant "blind"
KMEANS_CLUSTERS = 24  # the default of `kmeans_clusters` (twice n_endmembers when that is more)
EXHAUSTIVE_SUBSETS = 20000  # above this many p-subsets of the centroids, N-FINDR-style swaps


def extreme_centroids(centroids: np.ndarray, p: int, data: np.ndarray) -> np.ndarray:
    """Indices of the p rows of `centroids` (K, L) spanning the simplex of largest volume in the
    (p-1)-dimensional principal subspace of `data` (n, L): every p-subset when there are at most
    `EXHAUSTIVE_SUBSETS`, else N-FINDR's swaps from the first p (sorted)."""
    K = centroids.shape[0]
    mean = data.mean(axis=0)
    _, _, Vt = np.linalg.svd(data - mean, full_matrices=False)
    points = np.vstack([np.ones(K), ((centroids - mean) @ Vt[:p - 1].T).T])  # (p, K)
    if comb(K, p) <= EXHAUSTIVE_SUBSETS:
        subsets = list(combinations(range(K), p))
        volumes = np.abs(np.linalg.det(np.stack([points[:, list(s)] for s in subsets])))
        return np.array(subsets[int(np.argmax(volumes))])
    return np.sort(max_volume_swaps(points, np.arange(p)))


class GAUSS(Unmixer):
    """GAUSS. `fit(cube)` sets `endmembers_` (L, p) = MN(e_k) and `abundances_` (p, H, W) =
    UN(AN(patch)); `transform(cube)` applies AN and UN tile by tile.

    variant: "stage1" (AN, UN guided by k-means pseudo-GT, MN on the detached UN output), or
    stage 1 followed by stage 2, UN + MN trained end to end on the reconstruction error:
    "blind" (GAUSS_blind) keeps the pseudo-GT term with weight
    `pseudo_gt_weight * pseudo_gt_decay**epoch` (3, no decay: see below); "prime" (GAUSS_prime)
    uses the abundances of `prime_method` (default VCA + FCLSU) as soft targets, weight
    `prime_weight * prime_decay**epoch`. Stage-2 parameters are ignored by "stage1".

    The stage-2 reconstruction loss defaults to the spectral angle alone (`stage2_mse_weight`
    0): it ignores each pixel's brightness (illumination, topography), which otherwise leaks
    into the abundances; with lr 3e-3 this took Samson from 0.24 to 0.11 aRMSE and Jasper
    Ridge from 0.125 to 0.11 (docs/ablation.md). `smooth_weight` adds the squared abundance
    difference to the right and lower neighbours (off by default: it hurt both scenes). The
    prime targets fade (`prime_decay` 0.8) so that the prime method's own errors do not cap the
    result; with no decay, Jasper Ridge's VCA abundances held GAUSS_prime at ~16 deg.

    A scene of more than `sample_size` pixels trains on a seeded sample of that many pixels, their
    neighbourhoods read from the cube per minibatch (`neighbourhoods.Streamed`); the pseudo-GT is
    scikit-learn's `KMeans` on the sample's AN output: the same exact Lloyd with restarts as on
    a whole scene, on a set that is bounded anyway, where `MiniBatchKMeans` would add a second
    approximation. The abundances of every pixel then come from `transform`.

    pseudo_gt: "kmeans" (the paper's: k-means with `n_endmembers` clusters, one-hot targets) or
    "extreme" (None: "extreme", but "kmeans" for "prime", see below): k-means with
    `kmeans_clusters` clusters (None: 24, or twice `n_endmembers` when that is more); the
    `n_endmembers` centroids spanning the largest simplex (in the data's principal subspace)
    become the pseudo endmembers (`pseudo_endmembers_`), every cluster whose FCLSU abundance on
    one of them is at least `pure_threshold` counts as pure for it (one-hot target), and every
    other cluster's target is its FCLSU abundance on them, so clusters of mixed pixels give soft
    targets instead of claiming an endmember of their own. With k-means on p clusters, a rare
    material (Jasper Ridge's road, 2% of its pixels) gets no cluster of its own while the common
    ones split; with more clusters it gets one, and the extreme clusters find it. With the blind
    guide kept at weight 3 without decay, the endmembers stay near the pure clusters (5 seeds,
    gauss-blind, mean SAD deg / aRMSE): Jasper Ridge 6.68 / 0.109 -> 2.96 / 0.059, Samson 2.03 /
    0.041 -> 1.99 / 0.044, but the synthetic scenes, whose pure pixels are 1.25% of the scene
    per material, 1.02 / 0.041 -> 1.53 / 0.036 and bilinear 1.47 / 0.062 -> 1.99 / 0.060
    (docs/ablation.md). Every pure cluster counts (`pure_threshold` 0.9), not the chosen one
    alone (1): Samson 2.25 -> 1.99 deg, Jasper Ridge 3.14 -> 2.96; 0.8 took the synthetic scene
    to 2.64 deg. Stage 1 alone gains on every scene (Samson 5.53 -> 2.81 deg, Jasper Ridge 6.50
    -> 3.54), but GAUSS_prime, whose stage 1 only aligns the prime targets with the UN's
    outputs, loses (Samson 2.18 -> 2.47, Jasper Ridge 9.37 -> 13.14 deg, seeds 0-1), hence
    "kmeans" there. Starting the linear MN at the chosen centroids was tried and dropped (within
    seed noise).

    After stage 2 ("blind", "prime"): `unit_endmembers` scales the linear MN's columns to unit
    norm (no effect on a deep MN), and `refine_epochs` trains the UN alone (MN, AN fixed, no
    guide term) on the stage-2 reconstruction loss. The spectral angle leaves every column's
    scale free, yet with a free brightness per pixel those scales decide the abundances of mixed
    pixels; unit columns fix them by convention (the SAD-optimal abundances for equal-norm
    endmembers), and the refine epochs make the UN's abundances match the rescaled endmembers,
    so use the two together. Both default to None: on (10 epochs) for "blind", off for "prime".
    The endmember directions and so the SAD are unchanged; the 5-seed mean aRMSE of gauss-blind
    (with the paper's pseudo-GT, guide weight 1 decaying by 0.8 per epoch, as then the default)
    went from 0.113 to 0.041 on Samson, 0.114 to 0.109 on Jasper Ridge and 0.051 to 0.041 on the
    synthetic scene, fit time +10-15% (1 thread). For gauss-prime it went from 0.108 to 0.050 on
    Samson and 0.056 to 0.043 on the synthetic scene but from 0.101 to 0.118 on Jasper Ridge,
    hence off there. Samson's and Jasper Ridge's reference abundances are both closer to the
    SAD-optimal ones for unit-norm reference endmembers than for their stored scales.

    abundances_from: "network" (UN(AN(patch)), the paper's), "fcls" (FCLSU of each pixel with the
    MN's endmembers) or "scaled-fcls" (the same after scaling each endmember by least squares,
    Y ~ E diag(s) A_network, so `endmembers_` is E diag(s)), in `fit` and `transform` alike. The
    spectral-angle loss of stage 2 leaves the scale of each MN column free, and FCLSU's
    sum-to-one constraint is not scale-free: the scales tie the MN's endmembers to the data.
    The SAD is the same for all three. docs/ablation-abundances.md compares them.
    """

    _parameter_constraints = {
        **Unmixer._parameter_constraints,
        "variant": [StrOptions({"stage1", "blind", "prime"})],
        "window": [POSITIVE_INT],  # odd and smaller than the scene: checked by extract_patches
        "an_hidden": [POSITIVE_INT],
        "mn": [StrOptions({"deep", "linear"})],
        "un_loss": [StrOptions({"ce", "mse"})],
        "kmeans_on": [StrOptions({"approx", "raw"})],
        "an_epochs": [NON_NEGATIVE_INT],
        "un_epochs": [NON_NEGATIVE_INT],
        "mn_epochs": [NON_NEGATIVE_INT],
        "lr": [POSITIVE_REAL],
        "batch_size": [POSITIVE_INT],
        "sad_weight": [NON_NEGATIVE_REAL],
        "kmeans_n_init": [POSITIVE_INT],
        "pseudo_gt": [StrOptions({"kmeans", "extreme"}), None],
        "kmeans_clusters": [POSITIVE_INT, None],  # at least n_endmembers: checked in _pseudo_ground_truth
        "pure_threshold": [UNIT_INTERVAL],
        "tile_pixels": [POSITIVE_INT],
        "device": [str],  # whether it exists is checked in _check_device
        "stage2_epochs": [NON_NEGATIVE_INT],
        "stage2_lr": [POSITIVE_REAL],
        "train_an": ["boolean"],
        "stage2_mse_weight": [NON_NEGATIVE_REAL],
        "smooth_weight": [NON_NEGATIVE_REAL],
        "refine_epochs": [NON_NEGATIVE_INT, None],
        "unit_endmembers": ["boolean", None],
        "pseudo_gt_weight": [NON_NEGATIVE_REAL],
        "pseudo_gt_decay": [UNIT_INTERVAL],
        "prime_method": [StrOptions(set(METHODS))],
        "prime_params": [dict, None],
        "prime_weight": [NON_NEGATIVE_REAL],
        "prime_decay": [UNIT_INTERVAL],
        "abundances_from": [StrOptions({"network", "fcls", "scaled-fcls"})],
    }

    def __init__(
        self,
        n_endmembers: int,
        random_state: int | None = None,
        variant: str = "stage1",
        window: int = 3,
        an_hidden: int = 256,
        mn: str = "linear",
        un_loss: str = "ce",
        kmeans_on: str = "approx",
        an_epochs: int = 20,
        un_epochs: int = 20,
        mn_epochs: int = 40,
        lr: float = 1e-3,
        batch_size: int = 256,
        sad_weight: float = 3.0,
        kmeans_n_init: int = 10,
        pseudo_gt: str | None = None,
        kmeans_clusters: int | None = None,
        pure_threshold: float = 0.9,
        tile_pixels: int = 16384,
        device: str = "cpu",
        stage2_epochs: int = 40,
        stage2_lr: float = 3e-3,
        train_an: bool = False,
        stage2_mse_weight: float = 0.0,
        smooth_weight: float = 0.0,
        refine_epochs: int | None = None,
        unit_endmembers: bool | None = None,
        pseudo_gt_weight: float = 3.0,
        pseudo_gt_decay: float = 1.0,
        prime_method: str = "vca-fcls",
        prime_params: dict | None = None,
        prime_weight: float = 1.0,
        prime_decay: float = 0.8,
        abundances_from: str = "network",
        sample_size: int = SAMPLE_SIZE,
    ):
        super().__init__(n_endmembers, random_state, sample_size)
        self.variant = variant
        self.window = window
        self.an_hidden = an_hidden
        self.mn = mn
        self.un_loss = un_loss
        self.kmeans_on = kmeans_on
        self.an_epochs = an_epochs
        self.un_epochs = un_epochs
        self.mn_epochs = mn_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.sad_weight = sad_weight
        self.kmeans_n_init = kmeans_n_init
        self.pseudo_gt = pseudo_gt
        self.kmeans_clusters = kmeans_clusters
        self.pure_threshold = pure_threshold
        self.tile_pixels = tile_pixels
        self.device = device
        self.stage2_epochs = stage2_epochs
        self.stage2_lr = stage2_lr
        self.train_an = train_an
        self.stage2_mse_weight = stage2_mse_weight
        self.smooth_weight = smooth_weight
        self.refine_epochs = refine_epochs
        self.unit_endmembers = unit_endmembers
        self.pseudo_gt_weight = pseudo_gt_weight
        self.pseudo_gt_decay = pseudo_gt_decay
        self.prime_method = prime_method
        self.prime_params = prime_params
        self.prime_weight = prime_weight
        self.prime_decay = prime_decay
        self.abundances_from = abundances_from

    # ---- shared pieces -------------------------------------------------------------------
    def _check_device(self) -> None:
        if self.device != "cpu" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} requested but CUDA is not available")

    def reconstruction_loss(self, estimate: torch.Tensor, target: torch.Tensor,
                            mse_weight: float = 1.0) -> torch.Tensor:
        return reconstruction_loss(estimate, target, mse_weight, self.sad_weight, self.energy_)

    def mixing_loss(self, spectra: torch.Tensor) -> torch.Tensor:
        """Stage-1 MN loss: rebuild the AN output from the UN abundances, detached so that the
        reconstruction error trains the MN only."""
        abundances = self.un_(spectra).detach()
        return self.reconstruction_loss(self.mn_(abundances), spectra)

    def _train(self, modules: list[torch.nn.Module], batch_loss: Callable[[torch.Tensor, int], torch.Tensor],
               epochs: int, lr: float, gen: torch.Generator, curve: str,
               after_step: Callable[[], None] | None = None) -> None:
        """Adam on `modules` over shuffled minibatches of the training pixels."""
        parameters = [q for m in modules for q in m.parameters()]
        train(torch.optim.Adam(parameters, lr=lr), batch_loss, shuffled(self._source.n, self.batch_size, gen),
              epochs, self.history_.setdefault(curve, []), after_step, stage=curve)

    # ---- stage 1 -------------------------------------------------------------------------
    def _pseudo_ground_truth(self, approx: torch.Tensor, seed: int) -> torch.Tensor:
        """(n, p) pseudo-GT of the training pixels; sets `pseudo_endmembers_` (L, p)."""
        p = self.n_endmembers
        pseudo_gt = self.pseudo_gt or ("kmeans" if self.variant == "prime" else "extreme")
        if pseudo_gt == "kmeans":
            K = p
        else:
            K = max(KMEANS_CLUSTERS, 2 * p) if self.kmeans_clusters is None else self.kmeans_clusters
        if K < p:
            raise ValueError(f"kmeans_clusters={K} must be at least n_endmembers={p}")
        data = (approx if self.kmeans_on == "approx" else self._source.centre).cpu().numpy()
        kmeans = KMeans(K, n_init=self.kmeans_n_init, random_state=seed).fit(data)
        labels, centroids = kmeans.labels_, kmeans.cluster_centers_.astype(np.float64)
        if K == p:
            self.pseudo_endmembers_ = centroids.T
            return F.one_hot(torch.as_tensor(labels, dtype=torch.long), p).float().to(approx)
        chosen = extreme_centroids(centroids, p, data.astype(np.float64))
        self.pseudo_endmembers_ = centroids[chosen].T
        soft = fcls(centroids.T, self.pseudo_endmembers_).T  # (K, p): each centroid on the chosen ones
        soft = np.clip(soft, 0.0, None)
        soft /= soft.sum(axis=1, keepdims=True)
        soft[chosen] = np.eye(p)
        pure = soft.max(axis=1) >= self.pure_threshold
        soft[pure] = np.eye(p)[soft[pure].argmax(axis=1)]
        return torch.as_tensor(soft[labels], dtype=torch.float32, device=approx.device)

    def _fit_stage1(self, seed: int, gen: torch.Generator) -> torch.Tensor:
        """AN, then UN on the k-means pseudo-GT, then MN; returns the AN output (n, L)."""
        source = self._source
        L, p = source.centre.shape[1], self.n_endmembers
        self.an_ = ApproximationNetwork(L, self.window, self.an_hidden).to(self.device)
        self.un_ = UnmixingNetwork(L, p).to(self.device)
        self.mn_ = MixingNetwork(p, L, self.mn).to(self.device)
        self._train([self.an_], lambda i, _: F.mse_loss(self.an_(source.patches(i)), source.centre[i]),
                    self.an_epochs, self.lr, gen, "an_mse")
        with torch.no_grad():
            approx = source.map(self.an_)
        self.pseudo_gt_ = self._pseudo_ground_truth(approx, seed)
        self._train([self.un_], lambda i, _: guide_loss(self.un_.logits(approx[i]), self.pseudo_gt_[i], self.un_loss),
                    self.un_epochs, self.lr, gen, "un_guide")
        self._train([self.mn_], lambda i, _: self.mixing_loss(approx[i]), self.mn_epochs, self.lr, gen,
                    "mn_reconstruction", after_step=self.mn_.project)
        return approx

    def _fit_stage2(self, cube: np.ndarray, approx: torch.Tensor, seed: int, gen: torch.Generator) -> None:
        """End-to-end training guided by the pseudo-GT ("blind") or a method's abundances ("prime")."""
        if self.variant == "stage1":
            return
        if self.variant == "blind":
            targets, weight, decay = self.pseudo_gt_, self.pseudo_gt_weight, self.pseudo_gt_decay
        else:
            self.prime_targets_ = targets = self._prime_targets(cube, approx, seed)
            weight, decay = self.prime_weight, self.prime_decay
        self._end_to_end(approx, targets, lambda epoch: weight * decay**epoch, gen)
        self._refine(approx, gen)

    def _refine(self, approx: torch.Tensor, gen: torch.Generator) -> None:
        """With `unit_endmembers`, scale the linear MN's columns to unit norm. Then
        `refine_epochs` of the UN alone on the stage-2 reconstruction loss, MN and AN fixed, no
        guide term: the abundances that best explain each pixel with the endmembers stage 2
        found, free of the guide's pull toward the targets. The SAD loss leaves each column's
        scale free, and with a free brightness per pixel the scales set the abundances of mixed
        pixels: unit columns are the convention that makes them those of equal-norm endmembers."""
        blind = self.variant == "blind"  # None: on for "blind", off for "prime" (see the class docstring)
        unit = blind if self.unit_endmembers is None else self.unit_endmembers
        epochs = (REFINE_EPOCHS if blind else 0) if self.refine_epochs is None else self.refine_epochs
        if unit and self.mn == "linear":  # the deep MN has no columns to scale
            with torch.no_grad():
                self.mn_.weight.div_(self.mn_.weight.norm(dim=0, keepdim=True).clamp(min=1e-12))
        if not epochs:
            return
        source = self._source
        if self.train_an:  # the AN changed in stage 2: its current output, with the raw pixel as reference
            with torch.no_grad():
                approx = source.map(self.an_)
        reference = source.centre if self.train_an else approx
        for q in self.mn_.parameters():
            q.requires_grad_(False)
        try:
            self._train([self.un_], lambda i, _: self.reconstruction_loss(
                self.mn_(self.un_(approx[i])), reference[i], self.stage2_mse_weight),
                epochs, self.stage2_lr, gen, "refine_reconstruction")
        finally:
            for q in self.mn_.parameters():
                q.requires_grad_(True)

    def _fit_networks(self, cube: np.ndarray, source: Unfolded | Streamed, seed: int, gen: torch.Generator) -> None:
        self._source = source  # the training pixels, for the stages; not part of the fitted model
        self.energy_ = source.energy
        self.shape_ = cube.shape[:2]
        try:
            approx = self._fit_stage1(seed, gen)
            self._fit_stage2(cube, approx, seed, gen)
        finally:
            del self._source
        self.an_.eval(), self.un_.eval(), self.mn_.eval()

    def _fit(self, Y: np.ndarray, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
        self._check_device()
        seed, gen = seeded(self.random_state)
        cube = Y.T.reshape(H, W, -1)
        source = Unfolded(cube, self.window, self.device)
        self._fit_networks(cube, source, seed, gen)
        with torch.no_grad():
            E = self.mn_.endmembers().cpu().numpy().astype(np.float64)
            A = self.un_(self.an_(source.all_patches)).T.cpu().numpy().astype(np.float64)
        if self.abundances_from == "network":
            return E, A
        E = scaled_endmembers(Y, E, A) if self.abundances_from == "scaled-fcls" else E
        return E, fcls(Y, E)

    def _fit_large(self, cube: np.ndarray) -> np.ndarray:
        self._check_device()
        seed, gen = seeded(self.random_state)
        source = Streamed(cube, self.window, self.sample_size, np.random.default_rng(seed), self.device)
        self.sample_indices_ = source.pixels
        self._fit_networks(cube, source, seed, gen)
        with torch.no_grad():
            E = self.mn_.endmembers().cpu().numpy().astype(np.float64)
        if self.abundances_from != "scaled-fcls":
            return E
        # The scales from the sampled pixels and their network abundances, read in chunks.
        chunks = np.array_split(self.sample_indices_, -(-len(self.sample_indices_) // 4096))
        Y = np.hstack([gather_patches(cube, chunk, 1, torch.float64).numpy().T for chunk in chunks])
        with torch.no_grad():
            A = np.hstack([self.un_(self.an_(gather_patches(cube, chunk, self.window))).T.numpy()
                           for chunk in chunks]).astype(np.float64)
        return scaled_endmembers(Y, E, A)

    def _prime_targets(self, cube: np.ndarray, approx: torch.Tensor, seed: int) -> torch.Tensor:
        from hyperunmix.methods import make_method  # lazy: the registry imports this module

        params = {"sample_size": self.sample_size, **(self.prime_params or {})}
        prime = make_method(self.prime_method, self.n_endmembers, seed, **params)
        self.prime_ = prime.fit(cube)
        targets = prime.abundances_.reshape(self.n_endmembers, -1).T
        if not self._source.holds_every_pixel:
            targets = targets[self._source.pixels]
        # Prime components come in their own order: align them with the stage-1 UN outputs.
        with torch.no_grad():
            stage1 = self.un_(approx).cpu().numpy()
        _, order = linear_sum_assignment(-(stage1.T @ targets))
        self.prime_order_ = order
        targets = np.clip(targets[:, order], 0.0, None)
        targets /= targets.sum(axis=1, keepdims=True) + 1e-12
        return torch.as_tensor(targets, dtype=torch.float32, device=approx.device)

    # ---- inference -----------------------------------------------------------------------
    @property
    def neighbourhood_radius(self) -> int:
        return self.window // 2 if self.abundances_from == "network" else 0

    def _transform(self, cube: np.ndarray) -> np.ndarray:
        """(p, N) abundances: with `abundances_from="network"` UN(AN(patch)), the AN's first layer
        run as a convolution per row tile; else FCLSU with the fitted endmembers."""
        if self.abundances_from != "network":
            return super()._transform(cube)
        an, un = self.an_.cpu().eval(), self.un_.cpu().eval()
        A = predict_tiled(lambda image: un(an.forward_image(image)), cube, self.window,
                          self.n_endmembers, self.tile_pixels, image_input=True)
        return A.T

    # ---- stage 2 -------------------------------------------------------------------------
    def _neighbours(self, pixels: torch.Tensor) -> torch.Tensor:
        """Right and lower neighbour of each scene pixel (reflected at the last column / row)."""
        height, width = self.shape_
        row, col = pixels // width, pixels % width
        right = torch.where(col + 1 < width, col + 1, col - 1).clamp(min=0)
        down = torch.where(row + 1 < height, row + 1, row - 1).clamp(min=0)
        return torch.cat([row * width + right, down * width + col])

    def _neighbour_spectra(self, index: torch.Tensor, spectra_of: Callable[[torch.Tensor], torch.Tensor]):
        """Spectra (2B, L) of the right and lower neighbours of training pixels `index`: looked up
        when every pixel is a training pixel, else computed by the AN from the cube."""
        neighbours = self._neighbours(self._source.scene_pixels(index))
        if self._source.holds_every_pixel:
            return spectra_of(neighbours)
        with torch.set_grad_enabled(self.train_an and torch.is_grad_enabled()):
            return self.an_(self._source.patches_at(neighbours.cpu().numpy()))

    def _end_to_end(self, approx: torch.Tensor, targets: torch.Tensor, weight: Callable[[int], float],
                    gen: torch.Generator) -> None:
        """Stage 2: UN -> MN trained on reconstruction + weight(epoch) * guide term
        + `smooth_weight` x squared abundance difference to the right and lower neighbours."""
        if not (self.stage2_mse_weight or self.sad_weight):
            raise ValueError("stage2_mse_weight and sad_weight are both 0: stage 2 would have no "
                             "reconstruction loss; set one of them above 0")
        source, train_an = self._source, self.train_an
        modules = [self.un_, self.mn_] + ([self.an_] if train_an else [])
        names = ("stage2_reconstruction", "stage2_guide", "stage2_smoothness")
        curves = {k: self.history_.setdefault(k, []) for k in names}
        parts: dict[str, float] = dict.fromkeys(names, 0.0)
        spectra_of = (lambda i: self.an_(source.patches(i))) if train_an else (lambda i: approx[i])

        def batch_loss(index: torch.Tensor, epoch: int) -> torch.Tensor:
            # Trained AN: rebuild the raw pixel (a moving reference would let both collapse).
            spectra, reference = spectra_of(index), (source.centre[index] if train_an else approx[index])
            logits = self.un_.logits(spectra)
            abundances = torch.softmax(logits, dim=1)
            recon = self.reconstruction_loss(self.mn_(abundances), reference, self.stage2_mse_weight)
            guide = guide_loss(logits, targets[index], self.un_loss)
            loss = recon + weight(epoch) * guide
            if self.smooth_weight:
                neighbours = self.un_(self._neighbour_spectra(index, spectra_of))
                smooth = (neighbours - abundances.repeat(2, 1)).pow(2).sum(dim=1).mean()
                loss = loss + self.smooth_weight * smooth
                parts["stage2_smoothness"] += smooth.item() * len(index)
            parts["stage2_reconstruction"] += recon.item() * len(index)
            parts["stage2_guide"] += guide.item() * len(index)
            return loss

        # One Adam run per epoch: the guide weight changes each epoch, and restarting the moment
        # estimates with it is the setting all reported numbers were measured with.
        for epoch in range(self.stage2_epochs):
            self._train(modules, lambda i, _: batch_loss(i, epoch), 1, self.stage2_lr, gen, "stage2_total",
                        after_step=self.mn_.project)
            for key in parts:
                curves[key].append(parts[key] / source.n)
                parts[key] = 0.0
