"""Batched pure-torch energy terms of the Amber/OpenMM functional forms, in kJ/mol and nm.

Every function takes positions ``x`` of shape ``(batch, n_atoms, 3)`` in nm (or a precomputed distance matrix)
and parameter tensors in OpenMM's units (nm, radians, kJ/mol, elementary charges), already in ``x.dtype`` and
on ``x.device``, and returns one energy per configuration, shape ``(batch,)``, in kJ/mol. They are
differentiable with respect to ``x``; forces come from autograd. The formulas follow OpenMM's Reference platform
(``ReferenceObc.cpp``, ``ReferenceLJCoulombIxn.cpp``, ``ReferenceLJCoulomb14.cpp``); the constants below are
OpenMM's. ``gather_atoms`` is shared with the custom terms; the geometry (``cross``, ``vector_angle``,
``points_dihedral``: OpenMM's definitions) is ``bgflow_se3.geometry``'s, re-exported here under its old names.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...geometry import cross, openmm_dihedral, openmm_vector_angle

#: the old names of ``bgflow_se3.geometry``'s OpenMM forms
vector_angle = openmm_vector_angle
points_dihedral = openmm_dihedral

__all__ = [
    "OBC_ALPHA",
    "OBC_BETA",
    "OBC_DIELECTRIC_OFFSET",
    "OBC_GAMMA",
    "OBC_PROBE_RADIUS",
    "ONE_4PI_EPS0",
    "ace_surface_energy",
    "cross",
    "dihedral_angle",
    "gather_atoms",
    "gbsa_obc_energy_and_gradient",
    "generalized_born_energy",
    "harmonic_angle_energy",
    "harmonic_bond_energy",
    "lennard_jones_coulomb_energy",
    "obc_born_radii",
    "periodic_torsion_energy",
    "points_dihedral",
    "squared_distance_matrix",
    "vector_angle",
]

#: 1 / (4 pi eps0) in kJ nm / (mol e^2), from the CODATA 2018 constants exactly as OpenMM derives it
#: (``SimTKOpenMMRealType.h``).
ONE_4PI_EPS0 = 1.0 / (4.0 * math.pi * (1e-6 * 8.8541878128e-12 / (1.602176634e-19**2 * 6.02214076e23)))
#: OBC dielectric offset in nm (``ObcParameters``).
OBC_DIELECTRIC_OFFSET = 0.009
#: OBC type II (Onufriev, Bashford and Case 2004, eq. 8) alpha, beta, gamma, as in OpenMM's GBSAOBCForce.
OBC_ALPHA, OBC_BETA, OBC_GAMMA = 1.0, 0.8, 4.85
#: Solvent probe radius of the ACE surface-area term, nm.
OBC_PROBE_RADIUS = 0.14


def gather_atoms(x: Tensor, atoms: Tensor) -> tuple[Tensor, ...]:
    """Positions of the atoms of each tuple: ``atoms`` (n, k) -> k tensors of shape (batch, n, 3).

    One ``index_select`` (several times faster than advanced indexing on CPU, backward by ``index_add``).
    """
    n, k = atoms.shape
    return x.index_select(1, atoms.reshape(-1)).view(x.shape[0], n, k, 3).unbind(dim=2)


def squared_distance_matrix(x: Tensor) -> Tensor:
    """All squared distances ``|x_i - x_j|^2``, shape ``(batch, n_atoms, n_atoms)``, nm^2; zero on the diagonal.

    Squared distances have a finite gradient everywhere (also at coincident atoms), unlike distances.
    """
    # Coordinate by coordinate: a reduction over a trailing axis of size 3 is several times slower on CPU.
    xt = x.transpose(1, 2)
    r2 = x.new_zeros(())
    for c in range(x.shape[-1]):
        coordinate = xt[:, c]
        d = coordinate.unsqueeze(2) - coordinate.unsqueeze(1)
        r2 = r2 + d * d
    return r2


def harmonic_bond_energy(x: Tensor, atoms: Tensor, length: Tensor, k: Tensor) -> Tensor:
    """``sum 0.5 k (r - r0)^2`` over bonds (OpenMM ``HarmonicBondForce``).

    atoms: long, shape (n_bonds, 2); length: r0 in nm, shape (n_bonds,); k: kJ/mol/nm^2, shape (n_bonds,).
    Returns kJ/mol, shape (batch,).
    """
    a, b = gather_atoms(x, atoms)
    r = (a - b).norm(dim=-1)
    return (0.5 * k * (r - length).square()).sum(dim=-1)


def harmonic_angle_energy(x: Tensor, atoms: Tensor, theta0: Tensor, k: Tensor) -> Tensor:
    """``sum 0.5 k (theta - theta0)^2`` over angles i-j-k with vertex j (OpenMM ``HarmonicAngleForce``).

    atoms: long, shape (n_angles, 3); theta0: radians, shape (n_angles,); k: kJ/mol/rad^2, shape (n_angles,).
    Returns kJ/mol, shape (batch,). Exactly collinear atoms get zero force (as in OpenMM); an arm of zero length
    (two coincident bonded atoms) leaves the angle undefined: NaN, as OpenMM's cosine 0/0.
    """
    a, vertex, c = gather_atoms(x, atoms)
    theta = openmm_vector_angle(a - vertex, c - vertex)
    return (0.5 * k * (theta - theta0).square()).sum(dim=-1)


def dihedral_angle(x: Tensor, atoms: Tensor) -> Tensor:
    """IUPAC dihedral angle of atoms (i, j, k, l) in radians, in (-pi, pi], shape (batch, n_torsions).

    atoms: long, shape (n_torsions, 4). The sign convention is OpenMM's (and mdtraj's).
    """
    return openmm_dihedral(*gather_atoms(x, atoms))


def periodic_torsion_energy(
    x: Tensor, atoms: Tensor, periodicity: Tensor, phase: Tensor, k: Tensor, dihedral_index: Tensor | None = None
) -> Tensor:
    """``sum k (1 + cos(n phi - phase))`` over torsion terms (OpenMM ``PeriodicTorsionForce``).

    atoms: long, shape (n_dihedrals, 4); periodicity n (integers stored as floats), phase (radians) and
    k (kJ/mol): shape (n_terms,); dihedral_index: long, shape (n_terms,), the dihedral of each term (None: one
    term per row of ``atoms``). Sharing dihedrals between terms of several periodicities saves work.
    Returns kJ/mol, shape (batch,).
    """
    phi = dihedral_angle(x, atoms)
    if dihedral_index is not None:
        phi = phi.index_select(1, dihedral_index)
    return (k * (1.0 + torch.cos(periodicity * phi - phase))).sum(dim=-1)


def lennard_jones_coulomb_energy(
    x: Tensor, pairs: Tensor, charge_prod: Tensor, sigma: Tensor, epsilon: Tensor
) -> Tensor:
    """Lennard-Jones plus Coulomb over an explicit pair list, no cutoff (OpenMM ``NonbondedForce``, NoCutoff).

    ``E = sum_pairs 4 eps ((sigma/r)^12 - (sigma/r)^6) + ONE_4PI_EPS0 q_i q_j / r``.

    pairs: long, shape (2, n_pairs); charge_prod: e^2, sigma: nm, epsilon: kJ/mol, each shape (n_pairs,), the
    combined per-pair parameters (Lorentz-Berthelot for ordinary pairs, the exception's own for exceptions).
    Returns kJ/mol, shape (batch,). Memory: a few tensors of shape (batch, n_pairs, 3).
    """
    r2 = (x.index_select(1, pairs[0]) - x.index_select(1, pairs[1])).square().sum(dim=-1)
    inv_r2 = r2.reciprocal()
    s2 = sigma.square() * inv_r2
    s6 = s2 * s2 * s2
    return (4.0 * epsilon * (s6.square() - s6) + ONE_4PI_EPS0 * charge_prod * torch.sqrt(inv_r2)).sum(dim=-1)


def obc_born_radii(
    r: Tensor,
    radius: Tensor,
    scale: Tensor,
    dielectric_offset: float = OBC_DIELECTRIC_OFFSET,
    alpha: float = OBC_ALPHA,
    beta: float = OBC_BETA,
    gamma: float = OBC_GAMMA,
    zero: Tensor | None = None,
) -> Tensor:
    """OBC (type II) effective Born radii, as OpenMM's ``ReferenceObc::computeBornRadii``, nm.

    r: distance matrix in nm, shape (batch, n, n), with any **positive** stand-in where the distance is 0 (it is
    masked); radius: intrinsic radii in nm, shape (n,); scale: overlap scale factors, shape (n,); zero: bool,
    (batch, n, n), where the distance is 0 (the diagonal and coincident atoms), None: the diagonal only.
    Returns Born radii in nm, shape (batch, n). Coincident atoms as in OpenMM: a pair whose scaled sphere does
    not reach the other atom (rho_i >= s_j) adds nothing; one that does makes the Born radius NaN (0 * inf).

    With rho_i = radius_i - offset and s_j = scale_j * rho_j, the HCT pair integral of atom j seen from i is
    ``L - U + r/4 (U^2 - L^2) + ln(U/L) / (2r) + s_j^2 / (4r) (L^2 - U^2)`` with ``U = 1/(r + s_j)``,
    ``L = 1/max(rho_i, |r - s_j|)``, counted when ``rho_i < r + s_j``, plus ``2 (1/rho_i - L)`` when atom i lies
    inside the scaled sphere of j (``rho_i < s_j - r``). With psi = rho_i/2 * sum_j, the Born radius is
    ``1 / (1/rho_i - tanh(alpha psi - beta psi^2 + gamma psi^3) / radius_i)``.
    """
    n = radius.shape[0]
    rho = radius - dielectric_offset
    rho_i = rho.view(1, n, 1)
    s_j = (scale * rho).view(1, 1, n)
    upper = 1.0 / (r + s_j)
    lower = 1.0 / torch.maximum(rho_i, (r - s_j).abs())
    inv_r = 1.0 / r
    term = (
        lower
        - upper
        + 0.25 * r * (upper.square() - lower.square())
        + 0.5 * inv_r * torch.log(upper / lower)
        + 0.25 * s_j.square() * inv_r * (lower.square() - upper.square())
    )
    term = term + torch.where(rho_i < s_j - r, 2.0 * (1.0 / rho_i - lower), torch.zeros_like(term))
    diagonal = torch.eye(n, dtype=torch.bool, device=r.device)
    zero = diagonal if zero is None else zero
    term = torch.where(~zero & (rho_i < r + s_j), term, torch.zeros_like(term))
    psi = 0.5 * rho * term.sum(dim=-1)
    reached = (zero & ~diagonal & (rho_i < s_j)).any(dim=-1)  # coincident, and j's scaled sphere reaches i
    psi = psi.masked_fill(reached, math.nan)
    tanh_sum = torch.tanh(alpha * psi - beta * psi.square() + gamma * psi.pow(3))
    return 1.0 / (1.0 / rho - tanh_sum / radius)


def generalized_born_energy(
    r2: Tensor, charge: Tensor, born_radii: Tensor, solute_dielectric: float, solvent_dielectric: float
) -> Tensor:
    """Polar generalized-Born energy with Still's f_GB, self terms included, as OpenMM's ``ReferenceObc``.

    ``E = -ONE_4PI_EPS0 (1/eps_solute - 1/eps_solvent) sum_{i<=j} w_ij q_i q_j / f_ij``, w_ii = 1/2, w_ij = 1,
    ``f_ij = sqrt(r_ij^2 + B_i B_j exp(-r_ij^2 / (4 B_i B_j)))``; the diagonal (r = 0, f = B_i) is the Born self
    energy. r2: squared distances in nm^2, shape (batch, n, n), zero on the diagonal; charge: e, shape (n,);
    born_radii: nm, shape (batch, n). Returns kJ/mol, shape (batch,).
    """
    if solute_dielectric == 0.0 or solvent_dielectric == 0.0:
        return r2.new_zeros(r2.shape[0])
    prefactor = -ONE_4PI_EPS0 * (1.0 / solute_dielectric - 1.0 / solvent_dielectric)
    b2 = born_radii.unsqueeze(2) * born_radii.unsqueeze(1)
    f = torch.sqrt(r2 + b2 * torch.exp(-0.25 * r2 / b2))
    qq = charge.unsqueeze(1) * charge.unsqueeze(0)
    # The full symmetric sum is 2 x (i < j) + diagonal, so half of it is exactly the OpenMM weighting.
    return 0.5 * prefactor * (qq / f).sum(dim=(1, 2))


def ace_surface_energy(
    born_radii: Tensor, radius: Tensor, surface_area_energy: float, probe_radius: float = OBC_PROBE_RADIUS
) -> Tensor:
    """Non-polar ACE surface-area energy as OpenMM computes it (Schaefer et al. 1998 with Ponder's 6th power).

    ``E = sum_i 4 pi gamma_sa (radius_i + probe)^2 (radius_i / B_i)^6``. born_radii: nm, shape (batch, n);
    radius: nm, shape (n,); surface_area_energy gamma_sa: kJ/mol/nm^2. Returns kJ/mol, shape (batch,).
    """
    factor = 4.0 * math.pi * surface_area_energy * (radius + probe_radius).square()
    return (factor * (radius / born_radii).pow(6)).sum(dim=-1)


def gbsa_obc_energy_and_gradient(
    x: Tensor,
    charge: Tensor,
    radius: Tensor,
    scale: Tensor,
    solute_dielectric: float,
    solvent_dielectric: float,
    surface_area_energy: float,
    with_gradient: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """The whole ``GBSAOBCForce`` energy (GB polar + self terms + ACE) and its analytic gradient in one pass.

    The same energy as ``generalized_born_energy(r2, q, obc_born_radii(r, ...)) + ace_surface_energy(...)``, with
    ``dE/dx`` from the chain rule written out (as OpenMM's ``ReferenceObc`` does), which takes about half the
    tensor operations of autograd. The HCT integral's limits L and U contribute no derivative (they cancel
    analytically), so only its explicit r-dependence enters.

    x: positions in nm, shape (batch, n, 3); charge (e), radius (nm), scale: shape (n,), in ``x.dtype``.
    Returns (energy in kJ/mol, shape (batch,); gradient dE/dx in kJ/mol/nm, shape (batch, n, 3) or None).
    Memory: about 20 float tensors of shape (batch, n, n) live at once.
    """
    n = x.shape[1]
    dtype = x.dtype
    r2 = squared_distance_matrix(x)
    # Elementwise work on (batch, n, n) dominates; masks are multiplied in (torch.where is several times slower
    # on CPU), so every entry must stay finite: where the distance is 0 (the diagonal, coincident atoms) r := 1.
    eye = torch.eye(n, dtype=dtype, device=x.device)
    zero = (r2 == 0).to(dtype)
    inv_r = torch.rsqrt(r2 + zero)
    r = r2 * inv_r + zero
    rho = radius - OBC_DIELECTRIC_OFFSET
    rho_i = rho.view(1, n, 1)
    s_j = (scale * rho).view(1, 1, n)
    r_plus_s = r + s_j
    upper = r_plus_s.reciprocal()
    lower = torch.maximum(rho_i, (r - s_j).abs()).reciprocal()
    l2_minus_u2 = lower.square() - upper.square()
    log_ratio = torch.log(upper * lower.reciprocal())
    inv_r2 = inv_r.square()
    s2_inv_r2 = s_j.square() * inv_r2
    term = lower - upper + 0.25 * r * (s2_inv_r2 - 1.0) * l2_minus_u2 + 0.5 * inv_r * log_ratio
    inside = (s_j - r > rho_i).to(dtype)  # atom i inside the scaled sphere of j
    term = term + inside * (2.0 * (rho_i.reciprocal() - lower))
    active = (r_plus_s > rho_i).to(dtype) * (1.0 - zero)
    psi = 0.5 * rho * (term * active).sum(dim=-1)
    # coincident atoms where j's scaled sphere reaches i: OpenMM's HCT integral is 0 * inf there
    psi = psi.masked_fill(((zero - eye) * (s_j > rho_i)).sum(dim=-1) > 0, math.nan)
    tanh_sum = torch.tanh(psi * (OBC_ALPHA + psi * (-OBC_BETA + OBC_GAMMA * psi)))
    born = (rho.reciprocal() - tanh_sum / radius).reciprocal()

    a = born.unsqueeze(2) * born.unsqueeze(1)
    d = 0.25 * r2 * a.reciprocal()
    e = torch.exp(-d)
    inv_f = torch.rsqrt(r2 + a * e)
    if solute_dielectric == 0.0 or solvent_dielectric == 0.0:
        prefactor = 0.0
    else:
        prefactor = -ONE_4PI_EPS0 * (1.0 / solute_dielectric - 1.0 / solvent_dielectric)
    pqq = prefactor * (charge.unsqueeze(1) * charge.unsqueeze(0))
    pq_over_f = pqq * inv_f
    ace_factor = 4.0 * math.pi * surface_area_energy * (radius + OBC_PROBE_RADIUS).square()
    ratio2 = (radius / born).square()
    ace = ace_factor * (ratio2 * ratio2 * ratio2)
    energy = 0.5 * pq_over_f.sum(dim=(1, 2)) + ace.sum(dim=-1)
    if not with_gradient:
        return energy, None

    pq_over_f3 = pq_over_f * inv_f.square()
    de_dr2 = pq_over_f3 * (0.0625 * e - 0.25)
    de_da = -0.5 * pq_over_f3 * e * (1.0 + d)
    de_dborn = torch.bmm(de_da, born.unsqueeze(2)).squeeze(2) - 6.0 * ace / born
    dpsi = OBC_ALPHA + psi * (-2.0 * OBC_BETA + 3.0 * OBC_GAMMA * psi)
    chain = de_dborn * born.square() / radius * (1.0 - tanh_sum.square()) * dpsi * 0.5 * rho
    di_dr = -0.25 * (1.0 + s2_inv_r2) * l2_minus_u2 - 0.5 * log_ratio * inv_r2
    w = (chain.unsqueeze(2) * active) * di_dr
    m = 4.0 * de_dr2 + (w + w.transpose(1, 2)) * inv_r
    grad = x * m.sum(dim=-1, keepdim=True) - torch.bmm(m, x)
    return energy, grad
