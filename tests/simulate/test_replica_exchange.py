"""Replica exchange between umbrella windows: the swap rule keeps every window's biased ensemble, runs resume."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from bgflow_se3.errors import WorkerError
from bgflow_se3.simulate import replica_exchange as rx
from bgflow_se3.simulate.umbrella_sampling import UmbrellaConfig, load_window_angles, run_umbrella


def test_bias_energy_wraps_the_difference():
    kappa = 10.0
    assert rx.bias_energy(np.pi - 0.1, -np.pi + 0.1, kappa) == pytest.approx(0.5 * kappa * 0.2**2)
    assert rx.bias_energy(0.3, 0.0, kappa) == pytest.approx(0.5 * kappa * 0.09)


def _sample_biased(center: float, kappa: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Exact draws from exp(-kappa/2 wrap(phi - center)^2) on [-pi, pi) (flat energy), by rejection."""
    out = []
    while sum(len(o) for o in out) < n:
        phi = rng.uniform(-np.pi, np.pi, 4 * n)
        keep = rng.uniform(size=phi.shape) < np.exp(-rx.bias_energy(phi, center, kappa))
        out.append(phi[keep])
    return np.concatenate(out)[:n]


def test_swaps_keep_each_window_at_its_biased_distribution():
    # Two windows (a ring of two: the pair (0, 1) is tried on even parity). Start from exact samples of each
    # window; after one swap step the phi sitting in window 0 must still follow window 0's distribution. A
    # wrong sign or missing term in the acceptance moves its mean towards window 1.
    rng = np.random.default_rng(0)
    kappa, centers, n = 8.0, np.array([-0.4, 0.4]), 40_000
    phi0, phi1 = _sample_biased(centers[0], kappa, n, rng), _sample_biased(centers[1], kappa, n, rng)
    in_window0, accepted = np.empty(n), 0
    for i in range(n):
        state = {"window_of_replica": np.array([0, 1]), "attempted": np.zeros(2, int), "accepted": np.zeros(2, int)}
        rx._attempt_swaps(state, np.array([phi0[i], phi1[i]]), centers, kappa, rng, parity=0)
        replica_in_0 = int(np.flatnonzero(state["window_of_replica"] == 0)[0])
        in_window0[i] = (phi0[i], phi1[i])[replica_in_0]
        accepted += int(state["accepted"][0])
    reference = _sample_biased(centers[0], kappa, n, rng)
    assert 0.05 < accepted / n < 0.95  # the test exercises both outcomes
    stderr = reference.std() * np.sqrt(2 / n)
    assert abs(in_window0.mean() - reference.mean()) < 4 * stderr
    assert abs(in_window0.std() - reference.std()) < 0.02


def test_swap_pairs_are_disjoint_and_cover_the_ring():
    rng = np.random.default_rng(1)
    for n, parity, expected in [(6, 0, [0, 2, 4]), (6, 1, [1, 3, 5]), (5, 1, [1, 3]), (5, 0, [0, 2])]:
        state = {"window_of_replica": np.arange(n), "attempted": np.zeros(n, int), "accepted": np.zeros(n, int)}
        rx._attempt_swaps(state, np.zeros(n), np.zeros(n), 1.0, rng, parity)  # equal centres: every swap accepted
        assert np.flatnonzero(state["attempted"]).tolist() == expected
        assert sorted(state["window_of_replica"].tolist()) == list(range(n))  # still a permutation


SMOKE = dict(n_windows=6, force_constant=30.0, equilibration_ps=0.2, save_every=25, exchange_every_ps=0.1)


def test_run_writes_windows_and_resumes_where_it_stopped(tmp_path):
    config = UmbrellaConfig(**SMOKE)
    run_umbrella(config, 0.001, tmp_path, workers=1)
    _, phi_first, psi_first, ns_first = load_window_angles(tmp_path)
    stats = rx.exchange_statistics(tmp_path)
    assert ns_first == pytest.approx(0.001)
    assert stats.attempted.sum() == 10 * 3  # 10 cycles x 3 disjoint pairs of a 6-ring
    run_umbrella(config, 0.002, tmp_path, workers=1)
    _, phi, psi, ns = load_window_angles(tmp_path)
    assert ns == pytest.approx(0.002)
    for k in range(config.n_windows):
        assert len(phi[k]) == 2 * len(phi_first[k]) == 40
        np.testing.assert_array_equal(phi[k][:20], phi_first[k])  # the extension appends, it does not restart
        np.testing.assert_array_equal(psi[k][:20], psi_first[k])
    assert rx.exchange_statistics(tmp_path).attempted.sum() == 20 * 3


def test_exchange_interval_must_be_whole_saves(tmp_path):
    with pytest.raises(ValueError, match="save_every"):
        run_umbrella(UmbrellaConfig(**{**SMOKE, "exchange_every_ps": 0.07}), 0.001, tmp_path)


def test_a_dead_worker_raises_and_leaves_no_process():
    config = UmbrellaConfig(**SMOKE)
    remote = rx._Remote(asdict(config), [0, 1], rx._fresh_state(config), 0)
    try:
        remote.receive()  # built and equilibrated
        remote.process.kill()
        remote.process.join()
        with pytest.raises(WorkerError, match="died"):
            remote.send("run", {0: 0.0, 1: 0.5}, 1)
            remote.receive()
    finally:
        remote.stop()
    assert not remote.process.is_alive()
