import math

import pytest
import torch

from bgflow_se3.flow.baselines.noneq import helmert_basis
from bgflow_se3.flow.frames import random_rotation, remove_com
from bgflow_se3.flow.internal_coordinates import (
    InternalCoordinateFlow,
    internal_coordinates,
    place_atoms,
    zmatrix_from_bonds,
)
from tests.flow.test_couplings import randomise

# a branched 6-atom molecule (a carbon with three substituents, one of them carrying two more atoms)
BONDS = [(0, 1), (0, 2), (0, 3), (3, 4), (3, 5)]


def small_flow(width: float = 1.0, seed: int = 0) -> InternalCoordinateFlow:
    torch.manual_seed(seed)
    flow = InternalCoordinateFlow(zmatrix_from_bonds(6, BONDS), n_layers=4, hidden=16, n_bins=6).double()
    with torch.no_grad():  # bonds 0.15 +- 0.02 width, angles 1.9 +- 0.2 width (broad: the statistical tests need it)
        flow.shift[:5] = 0.15
        flow.log_scale[:5] = math.log(0.02 * width)
        flow.shift[5:] = 1.9
        flow.log_scale[5:] = math.log(0.2 * width)
    randomise(flow.layers, 0.1, seed)
    return flow


def test_zmatrix_places_every_atom_after_its_references():
    z = zmatrix_from_bonds(6, BONDS)
    assert sorted(z[:, 0].tolist()) == list(range(6))
    placed = set()
    for row, (i, j, k, l) in enumerate(z.tolist()):
        refs = [j, k, l][: min(row, 3)]
        assert all(r in placed for r in refs) and len(set(refs + [i])) == len(refs) + 1
        assert (torch.tensor([j, k, l][min(row, 3) :]) == -1).all()
        placed.add(i)
    with pytest.raises(ValueError, match="disconnected"):
        zmatrix_from_bonds(5, [(0, 1), (1, 2), (3, 4)])
    with pytest.raises(ValueError, match="distinct"):
        zmatrix_from_bonds(3, [(0, 0)])


def test_internal_coordinates_round_trip_up_to_a_rigid_motion(generator):
    z = zmatrix_from_bonds(6, BONDS)
    x = torch.randn(8, 6, 3, generator=generator, dtype=torch.float64)
    y = place_atoms(*internal_coordinates(x, z), z)
    torch.testing.assert_close(torch.cdist(y, y), torch.cdist(x, x), atol=1e-12, rtol=0)
    det = lambda p: torch.linalg.det(p[:, 1:4] - p[:, :1])  # noqa: E731 - handedness of four atoms
    assert (torch.sign(det(x)) == torch.sign(det(y))).all()  # a rotation, not a mirror image


def test_sample_and_log_prob_agree_and_are_se3_invariant(generator):
    flow = small_flow()
    x, log_q = flow.sample(64, generator)
    assert torch.isfinite(x).all() and x.mean(1).abs().max() < 1e-12  # CoM-free
    torch.testing.assert_close(flow.log_prob(x), log_q, atol=1e-9, rtol=0)
    rot = random_rotation(3, generator)
    shifted = x @ rot.T + torch.randn(3, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(flow.log_prob(shifted), log_q, atol=1e-9, rtol=0)
    mirror = flow.log_prob(-x)  # chiral: the mirror image has another density
    assert (mirror - log_q).abs().max() > 1e-2


def test_log_density_jacobian_matches_autograd():
    """(internal coordinates, Euler angles) -> orthonormal CoM-free coordinates: log |det| must equal the flow's
    change-of-variables term plus the Haar density sin(beta) / (8 pi^2) of ZYZ Euler angles."""
    flow = small_flow()
    n = flow.n_atoms
    basis = helmert_basis(n, torch.float64)  # (n, n - 1), orthonormal columns orthogonal to ones
    x0, _ = flow.sample(1, torch.Generator().manual_seed(3))
    ic0 = torch.cat(internal_coordinates(x0, flow.zmatrix), dim=-1)[0]

    def rot(axis: int, t: torch.Tensor) -> torch.Tensor:
        c, s = torch.cos(t), torch.sin(t)
        one, zero = torch.ones_like(t), torch.zeros_like(t)
        if axis == 2:
            return torch.stack([torch.stack([c, -s, zero]), torch.stack([s, c, zero]), torch.stack([zero, zero, one])])
        return torch.stack([torch.stack([c, zero, s]), torch.stack([zero, one, zero]), torch.stack([-s, zero, c])])

    def f(v: torch.Tensor) -> torch.Tensor:
        b, a, t = v[: n - 1], v[n - 1 : 2 * n - 3], v[2 * n - 3 : 3 * n - 6]
        alpha, beta, gamma = v[-3], v[-2], v[-1]
        x = place_atoms(b[None], a[None], t[None], flow.zmatrix)[0]
        x = x @ (rot(2, alpha) @ rot(1, beta) @ rot(2, gamma)).T
        return (basis.T @ remove_com(x)).reshape(-1)  # orthonormal coordinates of the CoM-free subspace

    euler = torch.tensor([0.3, 1.1, -0.7], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(f, torch.cat([ic0, euler]))
    log_det = torch.linalg.slogdet(jac)[1]
    b, a = ic0[: n - 1], ic0[n - 1 : 2 * n - 3]
    # density on the subspace = q_ic * haar / |det|, haar = sin(beta) / (8 pi^2); the flow divides by exp(log_jac)
    expected = flow._log_jacobian(b[None], a[None])[0] - math.log(8 * math.pi**2) + math.log(math.sin(1.1))
    torch.testing.assert_close(log_det, expected, atol=1e-9, rtol=0)


def test_spline_flow_inverts_and_its_log_det_matches_autograd(generator):
    """The flow on internal coordinates (standardisation, torsion offsets, mixed spline couplings): with the base
    normalised and this log-det exact, q_ic is normalised; with the Jacobian test above, so is q(x)."""
    flow = small_flow()
    with torch.no_grad():
        flow.torsion_offset.uniform_(-3.0, 3.0, generator=generator)
    x, _ = flow.sample(3, generator)
    ic = torch.cat(internal_coordinates(x, flow.zmatrix), dim=-1)
    z, log_det = flow._to_latent(ic)
    back, log_det_inv = flow._from_latent(z)
    torch.testing.assert_close(back, ic, atol=1e-10, rtol=0)
    torch.testing.assert_close(log_det_inv, -log_det, atol=1e-10, rtol=0)
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: flow._to_latent(v[None])[0][0], ic[b])
        torch.testing.assert_close(torch.linalg.slogdet(jac)[1], log_det[b], atol=1e-9, rtol=0)


def test_bad_input_is_refused():
    flow = small_flow()
    with pytest.raises(ValueError, match="shape"):
        flow.log_prob(torch.zeros(2, 5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="data"):
        InternalCoordinateFlow(zmatrix_from_bonds(6, BONDS), data=torch.zeros(3, 5, 3))


def test_for_topology_on_alanine_dipeptide():
    from bgflow_se3.systems import load_aldp

    aldp = load_aldp("vacuum")
    x = torch.tensor(aldp.positions_nm)[None]
    flow = InternalCoordinateFlow.for_topology(aldp.topology, data=x.expand(4, -1, -1), n_layers=2, hidden=8).double()
    assert flow.n_atoms == 22 and sorted(flow.zmatrix[:, 0].tolist()) == list(range(22))
    ic = torch.cat(internal_coordinates(x, flow.zmatrix), dim=-1)
    assert ic.shape == (1, 60) and torch.isfinite(flow.log_prob(x)).all()
