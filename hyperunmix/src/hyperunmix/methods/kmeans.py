"""k-means centroids (scikit-learn) as endmembers, followed by FCLSU."""
from __future__ import annotations

from sklearn.cluster import KMeans

from hyperunmix.fcls import fcls
from hyperunmix.methods.base import POSITIVE_INT, SAMPLE_SIZE, Unmixer


class KMeansFCLS(Unmixer):
    """Cluster the pixels into p groups; centroids are the endmembers, FCLSU the abundances.

    `labels_`: each pixel's cluster, (H, W); on a scene fitted on a sample (more than
    `sample_size` pixels) the clusters of the sampled pixels, (n, 1), in the order of
    `sample_indices_`."""

    _parameter_constraints = {**Unmixer._parameter_constraints, "n_init": [POSITIVE_INT], "max_iter": [POSITIVE_INT]}

    def __init__(self, n_endmembers: int, random_state: int | None = None, n_init: int = 10,
                 max_iter: int = 300, sample_size: int = SAMPLE_SIZE):
        super().__init__(n_endmembers, random_state, sample_size)
        self.n_init = n_init
        self.max_iter = max_iter

    def _fit(self, Y, H, W):
        model = KMeans(self.n_endmembers, n_init=self.n_init, max_iter=self.max_iter,
                       random_state=self.random_state).fit(Y.T)
        self.labels_ = model.labels_.reshape(H, W)
        E = model.cluster_centers_.T
        return E, fcls(Y, E)
