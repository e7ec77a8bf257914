"""EDAA: entropic descent archetypal analysis (Zouaoui, Muti, Rasti, Chanussot, "Entropic Descent
Archetypal Analysis for Blind Hyperspectral Unmixing", IEEE TIP 2023).

Archetypal analysis writes the endmembers as convex combinations of the pixels, E = Y B, and
the pixels as convex combinations of the endmembers:

    min_{A, B}  1/2 ||Y - Y B A||_F^2   with the columns of A (p, N) and of B (N, p) on the
                                         probability simplex

Each block is updated by entropic (exponentiated, mirror) gradient descent, which stays on the
simplex without a projection: X <- X * exp(-eta grad) renormalised per column, with
the gradients grad_A = -(YB)^T (Y - YBA) and grad_B = -Y^T (Y - YBA) A^T. The step sizes follow
the Lipschitz constant of grad_A, eta_A = kappa / ||Y B||_2^2 at the initial B, with eta_B =
eta_A sqrt(p / N); kappa is drawn from {2^-3, ..., 2^3} per run. Initialisation: A uniform (1/p),
B = softmax over pixels of 0.1 x uniform noise (nearly uniform). T outer iterations of K1 steps
on A then K2 steps on B.

Model selection: M runs with random kappa and initial B; among the runs whose
l1 residual ||Y - YBA||_1 lies within 5% of the smallest, the one whose endmembers have the
smallest maximum pairwise correlation wins (distinct, least redundant archetypes).

Defaults T = 100, K1 = K2 = 5, M = 50 restarts: the authors' reference implementation in HySUPP
(Rasti et al., `src/model/blind/AA.py`, class EDAA), without data normalisation as there.
`abundances_` is EDAA's A; `transform` of another cube is FCLSU with the fitted endmembers (the
exact minimiser of the A sub-problem EDAA's A-steps descend), which is also how a scene larger
than `sample_size` pixels gets the abundances of every pixel (EDAA runs on the sample).
"""
from __future__ import annotations

import numpy as np

from hyperunmix.methods.base import POSITIVE_INT, SAMPLE_SIZE, Unmixer

# Candidate runs: l1 residual within this relative share of the best run's (HySUPP's tolerance).
FIT_TOLERANCE = 0.05


def entropic_step(X: np.ndarray, gradient: np.ndarray, step: float) -> np.ndarray:
    """X * exp(-step * gradient), each column renormalised to sum to one (a softmax of
    log X - step * gradient, shifted by the column maximum so that exp never overflows)."""
    with np.errstate(divide="ignore"):  # an entry that underflowed to 0 stays 0 (log 0 = -inf)
        logits = np.log(X) - step * gradient
    logits -= logits.max(axis=0, keepdims=True)
    X = np.exp(logits)
    return X / X.sum(axis=0, keepdims=True)


def edaa_run(Y: np.ndarray, p: int, rng: np.random.Generator, outer: int, a_steps: int,
             b_steps: int) -> tuple[np.ndarray, np.ndarray, float]:
    """One EDAA run from a random start: A (p, N), B (N, p) and the step factor kappa."""
    N = Y.shape[1]
    noise = 0.1 * rng.random((N, p))
    B = np.exp(noise - noise.max(axis=0))
    B /= B.sum(axis=0)
    A = np.full((p, N), 1.0 / p)
    kappa = 2.0 ** int(rng.integers(-3, 4))
    eta_a = kappa / np.linalg.norm(Y @ B, 2) ** 2
    eta_b = eta_a * np.sqrt(p / N)
    for _ in range(outer):
        # A-steps with B fixed: grad_A = G A - C with G = (YB)^T YB (p, p), C = (YB)^T Y (p, N),
        # so each step costs p x p x N instead of a pass over Y.
        E = Y @ B
        G, C = E.T @ E, E.T @ Y
        for _ in range(a_steps):
            A = entropic_step(A, G @ A - C, eta_a)
        # B-steps with A fixed: grad_B = Y^T (Y B) (A A^T) - Y^T (Y A^T).
        YtYAt, AAt = Y.T @ (Y @ A.T), A @ A.T
        for _ in range(b_steps):
            B = entropic_step(B, Y.T @ (Y @ B) @ AAt - YtYAt, eta_b)
    return A, B, kappa


def max_correlation(E: np.ndarray) -> float:
    """Largest correlation between two different endmembers (columns of E)."""
    R = np.corrcoef(E.T)
    return float(np.max(R - np.eye(E.shape[1])))


class EDAA(Unmixer):
    """Entropic descent archetypal analysis; `B_` (N, p) holds the archetype weights of the selected
    run (E = Y B), `runs_` one dict per restart (kappa, l1 residual, max correlation) and
    `selected_run_` the winner's index."""

    _parameter_constraints = {
        **Unmixer._parameter_constraints,
        "n_restarts": [POSITIVE_INT],
        "outer_iterations": [POSITIVE_INT],
        "a_steps": [POSITIVE_INT],
        "b_steps": [POSITIVE_INT],
    }

    def __init__(self, n_endmembers: int, random_state: int | None = None, n_restarts: int = 50,
                 outer_iterations: int = 100, a_steps: int = 5, b_steps: int = 5,
                 sample_size: int = SAMPLE_SIZE):
        super().__init__(n_endmembers, random_state, sample_size)
        self.n_restarts = n_restarts
        self.outer_iterations = outer_iterations
        self.a_steps = a_steps
        self.b_steps = b_steps

    def _fit(self, Y: np.ndarray, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.random_state)
        results = []
        self.runs_ = []
        for _ in range(self.n_restarts):
            A, B, kappa = edaa_run(Y, self.n_endmembers, rng, self.outer_iterations, self.a_steps, self.b_steps)
            E = Y @ B
            run = {"kappa": kappa, "l1_residual": float(np.abs(Y - E @ A).sum()),
                   "max_correlation": max_correlation(E)}
            self.runs_.append(run)
            results.append((A, B))
        best_fit = min(run["l1_residual"] for run in self.runs_)
        candidates = [i for i, run in enumerate(self.runs_)
                      if run["l1_residual"] - best_fit < FIT_TOLERANCE * run["l1_residual"]]
        self.selected_run_ = min(candidates, key=lambda i: self.runs_[i]["max_correlation"])
        A, self.B_ = results[self.selected_run_]
        return Y @ self.B_, A
