"""An analytic reweighting problem: a Gaussian "flow" with known density against a harmonic target."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm


class GaussianProblem:
    """Flow q = N(0, diag(scale^2)) in 3D; target u(x) = sum_d k_d x_d^2 / 2, so Z = prod_d sqrt(2 pi / k_d).

    State A: x_0 > threshold, state B: the rest; F_A - F_B = -log(P(A) / P(B)) with P(A) = sf(threshold sqrt(k_0)).
    """

    def __init__(self, scale=(1.2, 0.9, 1.5), stiffness=(1.0, 2.0, 0.5), threshold=0.5) -> None:
        self.scale = np.asarray(scale, dtype=np.float64)
        self.k = np.asarray(stiffness, dtype=np.float64)
        self.threshold = threshold

    @property
    def log_z(self) -> float:
        return float(np.sum(0.5 * np.log(2 * np.pi / self.k)))

    @property
    def delta_f(self) -> float:
        p_a = norm.sf(self.threshold * np.sqrt(self.k[0]))
        return float(-np.log(p_a / (1.0 - p_a)))

    def log_q(self, x: np.ndarray) -> np.ndarray:
        return np.sum(norm.logpdf(x, scale=self.scale), axis=1)

    def u(self, x: np.ndarray) -> np.ndarray:
        return 0.5 * np.sum(self.k * x**2, axis=1)

    def in_a(self, x: np.ndarray) -> np.ndarray:
        return x[:, 0] > self.threshold

    def flow_samples(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.normal(size=(n, 3)) * self.scale

    def target_samples(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.normal(size=(n, 3)) / np.sqrt(self.k)


@pytest.fixture
def problem() -> GaussianProblem:
    return GaussianProblem()
