"""Force-field energies with analytic gradients in one fused pass, batch-last layout, no autograd graph.

Every function works on positions ``X`` in the *batch-last* layout ``(n_atoms, 3, batch)`` (nm): gathers of atoms
are contiguous rows, each coordinate is a contiguous ``(n_terms, batch)`` slab, and per-term parameters of shape
``(n_terms, 1)`` broadcast along the long batch axis, which is what makes elementwise CPU kernels fast. Each
``*_energy_and_gradient`` returns the energy in kJ/mol, shape ``(batch,)``, and, when ``grad`` (shape
``(n_atoms, 3, batch)``, kJ/mol/nm) is given, adds ``dE/dX`` into it in place. The formulas are those of
``kernels`` (OpenMM's Reference platform), differentiated by hand; tests check them against autograd.

The nonbonded part runs over one pair list shared by Lennard-Jones, Coulomb and every GBSA-OBC force: distances
are computed once, exclusions and exceptions are folded into per-pair coefficients, and the whole pair gradient
reduces to one scalar ``dE/dr^2`` per pair. Memory per configuration: O(n_pairs) = O(n_atoms^2), about 30
float tensors of ``n_pairs`` entries for OBC (alanine dipeptide, 231 pairs: measured peak 0.10 MB per
configuration in float64 with energy + gradient, 0.05 MB in float32); ``chunk`` bounds it on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .kernels import (
    OBC_ALPHA,
    OBC_BETA,
    OBC_DIELECTRIC_OFFSET,
    OBC_GAMMA,
    OBC_PROBE_RADIUS,
    ONE_4PI_EPS0,
)

__all__ = [
    "AngleParameters",
    "BondParameters",
    "FusedParameters",
    "OBCParameters",
    "PairParameters",
    "TorsionParameters",
    "angle_energy_and_gradient",
    "bond_energy_and_gradient",
    "fused_energy_and_gradient",
    "make_pair_parameters",
    "pair_energy_and_gradient",
    "torsion_energy_and_gradient",
]


class BondParameters(NamedTuple):
    """``HarmonicBondForce``: atoms (long, (2, n_bonds)), r0 (nm) and k (kJ/mol/nm^2), each (n_bonds, 1)."""

    atoms: Tensor
    length: Tensor
    k: Tensor


class AngleParameters(NamedTuple):
    """``HarmonicAngleForce``: atoms (long, (3, n_angles), vertex second), theta0 (rad), k (kJ/mol/rad^2)."""

    atoms: Tensor
    theta0: Tensor
    k: Tensor


class TorsionParameters(NamedTuple):
    """``PeriodicTorsionForce``: atoms (long, (4, n_dihedrals)), one row per distinct dihedral; per term
    (n_terms, 1): periodicity, phase (rad), k (kJ/mol); dihedral_index (long, (n_terms,)) names each term's
    dihedral."""

    atoms: Tensor
    periodicity: Tensor
    phase: Tensor
    k: Tensor
    dihedral_index: Tensor


class OBCParameters(NamedTuple):
    """One ``GBSAOBCForce`` on the shared pair list.

    Per atom (n_atoms, 1): rho = radius - offset (nm), radius (nm), half_self = prefactor q_i^2 / 2 (kJ nm/mol),
    ace = 4 pi gamma_sa (radius + probe)^2 (kJ/mol). Per directed pair (2, n_pairs, 1): rho of the atom that
    sees, scaled radius s of the atom it sees (direction 0: pair (i, j) seen from i; direction 1: from j).
    Per pair (n_pairs, 1): pqq = prefactor q_i q_j. prefactor = -ONE_4PI_EPS0 (1/eps_solute - 1/eps_solvent).
    """

    rho: Tensor
    radius: Tensor
    half_self: Tensor
    ace: Tensor
    rho_seeing: Tensor
    s_seen: Tensor
    pqq: Tensor
    # derived, same shapes: 1/rho, 1/radius, rho/2, rho/(2 radius); per directed pair: 1/rho, s^2/4, and the
    # distances below which the seeing atom is inside the other's scaled sphere (s - rho) and beyond which the
    # scaled sphere reaches it (rho - s)
    inv_rho: Tensor
    inv_radius: Tensor
    half_rho: Tensor
    half_rho_over_radius: Tensor
    inv_rho_seeing: Tensor
    quarter_s2: Tensor
    inside_below: Tensor
    active_above: Tensor


class PairParameters(NamedTuple):
    """The shared pair list: atoms (long, (2, n_pairs), i < j) and ``ij`` (long, (2 n_pairs,), i's then j's);
    per pair (n_pairs, 1): c12 = 4 eps sigma^12, c6 = 4 eps sigma^6 (kJ/mol nm^12, nm^6), cq = ONE_4PI_EPS0 q_i q_j
    (kJ nm/mol), zero for excluded pairs, the exception's own values for exceptions; ``obc``: the GBSA-OBC
    forces on the same pairs (the list then holds every pair); ``lennard_jones``: whether c12/c6/cq are used;
    ``no_lj``: (bool, (n_pairs, 1)) the pairs whose c12, c6 and cq are all zero when the list holds them (with
    OBC), else None."""

    atoms: Tensor
    ij: Tensor
    c12: Tensor
    c6: Tensor
    cq: Tensor
    lennard_jones: bool
    obc: tuple[OBCParameters, ...]
    no_lj: Tensor | None = None


class FusedParameters(NamedTuple):
    """Everything one fused evaluation needs, in the evaluation's dtype and on its device."""

    bonds: tuple[BondParameters, ...]
    angles: tuple[AngleParameters, ...]
    torsions: tuple[TorsionParameters, ...]
    pairs: PairParameters | None


#: the least |u x w| (nm^2) that divides an angle's force, as OpenMM's Reference platform clamps it
_MIN_ANGLE_NORMAL = 1e-6


def _cross(a: Sequence[Tensor], b: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Cross product of vectors given as their three components (several times faster than linalg.cross)."""
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _gather(X: Tensor, atoms: Tensor) -> Tensor:
    """Positions of the atoms of each term: atoms (slots, m) -> (slots, m, 3, batch), one index_select."""
    return X.index_select(0, atoms.reshape(-1)).view(*atoms.shape, *X.shape[1:])


def _atan2_degenerate_half_pi(y: Tensor, x: Tensor) -> Tensor:
    """``atan2(y, x)``, but pi/2 where y = x = 0: OpenMM's dihedral angle when a cross product vanishes (its
    normalised dot product of the two normals is then 0, and acos(0) = pi/2)."""
    return torch.atan2(y, x).masked_fill_((x == 0) & (y == 0), 0.5 * math.pi)


def bond_energy_and_gradient(X: Tensor, p: BondParameters, grad: Tensor | None) -> Tensor:
    """``sum 0.5 k (r - r0)^2``, kJ/mol, shape (batch,); adds dE/dX into ``grad`` (see the module docstring).

    Two coincident bonded atoms (r = 0) get the energy 0.5 k r0^2 and no force, as in OpenMM.
    """
    xs = _gather(X, p.atoms)
    d = xs[0] - xs[1]  # (m, 3, batch)
    r = d.square().sum(dim=1).sqrt_()
    stretch = r - p.length
    energy = (0.5 * p.k * stretch.square()).sum(dim=0)
    if grad is not None:
        g = d * (p.k * stretch / r).masked_fill_(r == 0, 0.0).unsqueeze(1)  # OpenMM: dE/dr / r := 0 at r = 0
        grad.index_add_(0, p.atoms[0], g).index_add_(0, p.atoms[1], g, alpha=-1)
    return energy


def angle_energy_and_gradient(X: Tensor, p: AngleParameters, grad: Tensor | None) -> Tensor:
    """``sum 0.5 k (theta - theta0)^2``, kJ/mol, shape (batch,); adds dE/dX into ``grad``.

    theta = atan2(|u x w|, u . w) with u, w the bond vectors from the vertex. With c = dE/dtheta / |u x w|:
    dE/du = c ((u . w) / |u|^2 u - w), dE/dw = c ((u . w) / |w|^2 w - u) (from u x (u x w) = u (u . w) - w |u|^2).
    As OpenMM's Reference platform: |u x w| in c is at least 1e-6 nm^2, so collinear atoms (theta = 0 or pi, e.g.
    two coincident atoms 1-3) get a finite force, zero when exactly collinear; an arm of zero length (two
    coincident bonded atoms) leaves theta undefined: NaN energy (OpenMM's cosine is 0/0 there).
    """
    xs = _gather(X, p.atoms)
    uw = xs[0::2] - xs[1]  # (2, m, 3, batch): u, w
    u, w = uw
    normal = _cross(u.unbind(1), w.unbind(1))
    normal_norm = (normal[0].square() + normal[1].square() + normal[2].square()).sqrt_()
    squares = uw.square().sum(dim=2)  # (2, m, batch): |u|^2, |w|^2
    dot = (u * w).sum(dim=1)
    theta = torch.atan2(normal_norm, dot).masked_fill_(squares[0] * squares[1] == 0, math.nan)
    bend = theta - p.theta0
    energy = (0.5 * p.k * bend.square()).sum(dim=0)
    if grad is not None:
        c = (p.k * bend).div_(normal_norm.clamp_min_(_MIN_ANGLE_NORMAL))
        along = (c * dot / squares).unsqueeze(2)  # (2, m, 1, batch)
        c = c.unsqueeze(1)
        g_u = u * along[0] - w * c
        g_w = w * along[1] - u * c
        grad.index_add_(0, p.atoms[0], g_u).index_add_(0, p.atoms[2], g_w)
        grad.index_add_(0, p.atoms[1], g_u.add_(g_w), alpha=-1)
    return energy


def torsion_energy_and_gradient(X: Tensor, p: TorsionParameters, grad: Tensor | None) -> Tensor:
    """``sum k (1 + cos(n phi - phase))``, kJ/mol, shape (batch,); adds dE/dX into ``grad``.

    phi = atan2(|b2| b1 . n2, n1 . n2) with b1, b2, b3 the bond vectors and n1 = b1 x b2, n2 = b2 x b3 (IUPAC,
    as OpenMM). Gradient of Blondel and Karplus (J. Comput. Chem. 17, 1132, 1996): dphi/dx0 = -|b2| n1 / |n1|^2,
    dphi/dx3 = |b2| n2 / |n2|^2, the middle atoms by translation and rotation invariance. A degenerate dihedral
    (n1 or n2 zero, e.g. two of its atoms coincident) has phi = pi/2 as in OpenMM, and, as there, no finite force.
    """
    xs = _gather(X, p.atoms)
    b = xs[1:] - xs[:-1]  # (3, m, 3, batch): b1, b2, b3
    components = b.unbind(2)  # 3 x (3, m, batch)
    n = _cross([c[:2] for c in components], [c[1:] for c in components])  # 3 x (2, m, batch): n1, n2
    dots_b2 = (b * b[1]).sum(dim=2)  # (3, m, batch): b1.b2, b2.b2, b3.b2
    b2_norm = dots_b2[1].sqrt()
    n1_dot_n2 = n[0][0] * n[0][1] + n[1][0] * n[1][1] + n[2][0] * n[2][1]
    b1_dot_n2 = components[0][0] * n[0][1] + components[1][0] * n[1][1] + components[2][0] * n[2][1]
    phi = _atan2_degenerate_half_pi(b2_norm * b1_dot_n2, n1_dot_n2)
    angle = p.periodicity * phi.index_select(0, p.dihedral_index) - p.phase
    energy = (p.k * torch.cos(angle)).sum(dim=0) + p.k.sum()
    if grad is not None:
        de_dphi_terms = p.k * p.periodicity * torch.sin(angle)  # -dE/dphi per term
        de_dphi = phi.new_zeros(phi.shape).index_add_(0, p.dihedral_index, de_dphi_terms, alpha=-1)
        normals = torch.stack(n, dim=2)  # (2, m, 3, batch)
        factor = (de_dphi * b2_norm) / normals.square().sum(dim=2)  # (2, m, batch)
        g = normals * factor.unsqueeze(2)  # -dE/dx0, dE/dx3
        g0, g3 = -g[0], g[1]
        c = (dots_b2[0::2] / dots_b2[1]).unsqueeze(2)  # (2, m, 1, batch): b1.b2 / |b2|^2, b3.b2 / |b2|^2
        g1 = c[1] * g3 - (1.0 + c[0]) * g0
        g2 = c[0] * g0 - (1.0 + c[1]) * g3
        for index, g_atom in zip(p.atoms, (g0, g1, g2, g3), strict=True):
            grad.index_add_(0, index, g_atom)
    return energy


def pair_energy_and_gradient(X: Tensor, p: PairParameters, grad: Tensor | None) -> Tensor:
    """Lennard-Jones + Coulomb (no cutoff) and the GBSA-OBC forces over one pair list, kJ/mol, shape (batch,);
    adds dE/dX into ``grad``.

    Per pair ``c12 / r^12 - c6 / r^6 + cq / r``; each OBC force as ``kernels.gbsa_obc_energy_and_gradient``:
    HCT integrals in both directions of every pair, OBC-II Born radii, Still's GB pair and self energies, ACE.
    Every pair contribution to the gradient is ``dE/dr^2`` times ``2 (x_i - x_j)``; Born radii enter through
    ``dE/dB``, chained to the HCT integrals (whose limits L and U contribute no derivative).

    Coincident atoms (r = 0) as in OpenMM: an excluded pair adds nothing (its zero coefficients are not multiplied
    by 1/r = inf), a pair that interacts gives inf or NaN; an OBC direction whose scaled sphere does not reach the
    other atom at r = 0 adds nothing, one that does gives NaN (OpenMM's HCT integral is 0 * inf there).
    """
    xs = _gather(X, p.atoms)
    d = xs[0] - xs[1]  # (n_pairs, 3, batch)
    r2 = d.square().sum(dim=1)
    inv_r = torch.rsqrt(r2)
    inv_r2 = inv_r.square()
    r = r_min = None
    if p.obc:
        r = r2 * inv_r
        # Closest approach of each pair over the batch, for the rare cases (coincident atoms give r = 0 * inf: NaN,
        # which must count as 0 so as not to hide them).
        r_min = r.amin(dim=-1, keepdim=True).nan_to_num_(nan=0.0)
    energy = r2.new_zeros(r2.shape[1])
    de_dr2 = None
    if p.lennard_jones:
        lj_inv_r, lj_inv_r2 = inv_r, inv_r2
        if p.no_lj is not None and _any(p.no_lj & (r_min < _lj_overflow_distance(r2.dtype))):
            # Pairs without LJ or Coulomb (exclusions, in the list for OBC) so close that 1/r^6 overflows: their
            # zero coefficients times inf would be NaN, and OpenMM skips them.
            lj_inv_r = inv_r.masked_fill(p.no_lj, 0.0)
            lj_inv_r2 = lj_inv_r.square()
        inv_r6 = lj_inv_r2 * lj_inv_r2 * lj_inv_r2
        repulsion = p.c12 * inv_r6
        coulomb = p.cq * lj_inv_r
        energy = energy + ((repulsion - p.c6).mul_(inv_r6).add_(coulomb)).sum(dim=0)
        if grad is not None:
            de_dr2 = (3.0 * p.c6 - 6.0 * repulsion).mul_(inv_r6).sub_(0.5 * coulomb).mul_(lj_inv_r2)
    if p.obc and _any(r_min == 0):
        r = r.masked_fill(r2 == 0, 0.0)  # coincident atoms: r = 0, not 0 * inf
    for obc in p.obc:
        e_obc, de_dr2_obc = _obc_pairs(r2, r, inv_r, inv_r2, r_min, p, obc, grad is not None)
        energy = energy + e_obc
        if de_dr2_obc is not None:
            de_dr2 = de_dr2_obc if de_dr2 is None else de_dr2.add_(de_dr2_obc)
    if grad is not None and de_dr2 is not None:
        g = d * (2.0 * de_dr2).unsqueeze(1)
        grad.index_add_(0, p.atoms[0], g).index_add_(0, p.atoms[1], g, alpha=-1)
    return energy


def _any(mask: Tensor) -> bool:
    """Whether a rare branch must be evaluated: ``mask.any()`` on CPU (cheap there); always True on other devices
    and under torch.compile, where the check would synchronise or break the graph."""
    if mask.device.type != "cpu" or torch.compiler.is_compiling():
        return True
    return bool(mask.any())


def _lj_overflow_distance(dtype: torch.dtype) -> float:
    """Distances (nm) below which 1/r^6 may overflow in ``dtype`` (with a factor 10 of margin)."""
    return 10.0 * torch.finfo(dtype).max ** (-1.0 / 6.0)


def _obc_pairs(
    r2: Tensor,
    r: Tensor,
    inv_r: Tensor,
    inv_r2: Tensor,
    r_min: Tensor,
    p: PairParameters,
    obc: OBCParameters,
    with_gradient: bool,
) -> tuple[Tensor, Tensor | None]:
    """One GBSA-OBC force on the pair list: energy (batch,) and dE/dr^2 per pair (n_pairs, batch) or None.

    r2, r, inv_r, inv_r2: squared distances, distances and their inverses, (n_pairs, batch); r_min: the least
    distance of each pair over the batch, (n_pairs, 1).
    """
    i, j = p.atoms
    n_pairs, batch = r2.shape
    # Directed pairs (2, n_pairs, batch): HCT integral of the atom seen, from the atom that sees.
    upper = (r + obc.s_seen).reciprocal_()
    lower_dist = torch.maximum((r - obc.s_seen).abs_(), obc.rho_seeing)
    lower = lower_dist.reciprocal()
    log_ratio = lower_dist.mul_(upper).log_()
    l_minus_u = lower - upper
    l2_minus_u2 = (lower + upper).mul_(l_minus_u)
    quarter_s2_inv_r2 = obc.quarter_s2 * inv_r2
    half_inv_r = 0.5 * inv_r
    term = (quarter_s2_inv_r2 - 0.25).mul_(r).mul_(l2_minus_u2).add_(l_minus_u).addcmul_(half_inv_r, log_ratio)
    # Two rare cases, checked on the closest approach of each pair over the batch before any full-size mask:
    # the atom that sees lies inside the scaled sphere of the other (r < s - rho), or that sphere does not
    # reach it (r <= rho - s, the pair then adds nothing: masked_fill also clears the 0 * inf of r = 0).
    if _any(r_min < obc.inside_below):
        outside = r >= obc.inside_below
        term += (obc.inv_rho_seeing - lower).mul_(2.0).masked_fill_(outside, 0.0)
    inactive = r <= obc.active_above if _any(r_min <= obc.active_above) else None
    if inactive is not None:
        term.masked_fill_(inactive, 0.0)
    psi = r.new_zeros(obc.rho.shape[0], batch).index_add_(0, p.ij, term.view(2 * n_pairs, batch))
    psi = psi.mul_(obc.half_rho)
    tanh_sum = torch.tanh(psi * (OBC_ALPHA + psi * (-OBC_BETA + OBC_GAMMA * psi)))
    inv_born = obc.inv_rho - tanh_sum * obc.inv_radius
    born = inv_born.reciprocal()  # (n_atoms, batch)

    born_i, born_j = born.index_select(0, i), born.index_select(0, j)
    a = born_i * born_j
    quarter_d = (0.25 * r2).div_(a)
    e = torch.exp(-quarter_d)
    inv_f = torch.rsqrt(a * e + r2)
    pq_over_f = obc.pqq * inv_f
    self_energy = obc.half_self * inv_born
    ratio2 = (obc.radius * inv_born).square_()
    ace = obc.ace * ratio2 * ratio2 * ratio2
    energy = pq_over_f.sum(dim=0) + (self_energy + ace).sum(dim=0)
    if not with_gradient:
        return energy, None

    pq_over_f3 = pq_over_f.mul_(inv_f.square_())
    de_dr2 = (0.125 * e - 0.5).mul_(pq_over_f3)  # at fixed Born radii
    de_da = (1.0 + quarter_d).mul_(e).mul_(pq_over_f3).mul_(-0.5)
    de_dborn = (self_energy + 6.0 * ace).mul_(-inv_born)
    de_dborn = de_dborn.index_add_(0, i, de_da * born_j).index_add_(0, j, de_da.mul_(born_i))
    dpsi = OBC_ALPHA + psi * (-2.0 * OBC_BETA + 3.0 * OBC_GAMMA * psi)
    chain = de_dborn.mul_(born.square()).mul_(obc.half_rho_over_radius).mul_(1.0 - tanh_sum.square()).mul_(dpsi)
    # dI/dr = -(1/4 + s^2/(4 r^2)) (L^2 - U^2) - log(U/L) / (2 r^2), times the chain of the atom that sees.
    di_dr = (quarter_s2_inv_r2 + 0.25).mul_(l2_minus_u2).addcmul_(0.5 * inv_r2, log_ratio)
    w = chain.index_select(0, p.ij).view(2, n_pairs, batch).mul_(di_dr)
    if inactive is not None:
        w.masked_fill_(inactive, 0.0)
        if _any(r_min == 0):  # a coincident pair that neither sphere reaches: w = 0, and 0 / r must be 0, not NaN
            half_inv_r = half_inv_r.masked_fill(inactive[0] & inactive[1], 0.0)
    return energy, de_dr2.sub_((w[0] + w[1]).mul_(half_inv_r))


def fused_energy_and_gradient(
    x: Tensor, p: FusedParameters, with_gradient: bool = True, chunk: int | None = None
) -> tuple[Tensor, Tensor]:
    """Total energy of every term in ``p`` and its gradient, from one pass without autograd.

    x: positions in nm, shape (batch, n_atoms, 3). chunk: evaluate this many configurations at a time (None: all
    at once), which keeps the intermediates in cache on CPU. Returns (energy in kJ/mol, shape (batch,); dE/dx in
    kJ/mol/nm, shape (batch, n_atoms, 3), or an empty tensor when ``with_gradient`` is False).
    """
    step = x.shape[0] if chunk is None else chunk
    energies, grads = [], []
    for part in x.split(step) if step < x.shape[0] else (x,):
        # Each chunk in its own contiguous batch-last copy: gathers and index_add_ on strided views are far slower.
        X = part.permute(1, 2, 0).contiguous()
        grad = torch.zeros_like(X) if with_gradient else None
        energy = X.new_zeros(X.shape[2])
        for bonds in p.bonds:
            energy = energy + bond_energy_and_gradient(X, bonds, grad)
        for angles in p.angles:
            energy = energy + angle_energy_and_gradient(X, angles, grad)
        for torsions in p.torsions:
            energy = energy + torsion_energy_and_gradient(X, torsions, grad)
        if p.pairs is not None:
            energy = energy + pair_energy_and_gradient(X, p.pairs, grad)
        energies.append(energy)
        if grad is not None:
            grads.append(grad.permute(2, 0, 1))
    if len(energies) == 1:
        return energies[0], grads[0] if grads else x.new_zeros(0)
    return torch.cat(energies), torch.cat(grads) if grads else x.new_zeros(0)


def make_pair_parameters(
    n_atoms: int,
    nonbonded: list[tuple[Tensor, Tensor, Tensor, Tensor]],
    obc: list[tuple[Tensor, Tensor, Tensor, float, float, float]],
    dtype: torch.dtype,
    device: torch.device,
) -> PairParameters | None:
    """The shared pair list of the given nonbonded and OBC forces (None if there are none).

    nonbonded: per ``NonbondedForce``, (pairs (long, (2, n)), charge_prod (e^2), sigma (nm), epsilon (kJ/mol)),
    float64, as ``NonbondedTerm`` stores them; their coefficients add up pair by pair. obc: per ``GBSAOBCForce``,
    (charge (e), radius (nm), scale, solute dielectric, solvent dielectric, surface-area energy (kJ/mol/nm^2)).
    With an OBC force the list holds every pair i < j; otherwise only pairs with a nonzero coefficient. The
    combination is done in float64 on the CPU, then cast to ``dtype`` and moved to ``device``.
    """
    if not nonbonded and not obc:
        return None
    f64 = dict(dtype=torch.float64, device="cpu")
    c12 = torch.zeros(n_atoms, n_atoms, **f64)
    c6 = torch.zeros(n_atoms, n_atoms, **f64)
    cq = torch.zeros(n_atoms, n_atoms, **f64)
    for pairs, charge_prod, sigma, epsilon in nonbonded:
        i, j = pairs.cpu()
        sigma6 = sigma.cpu().pow(6)
        four_eps = 4.0 * epsilon.cpu()
        c12.index_put_((i, j), four_eps * sigma6.square(), accumulate=True)
        c6.index_put_((i, j), four_eps * sigma6, accumulate=True)
        cq.index_put_((i, j), ONE_4PI_EPS0 * charge_prod.cpu(), accumulate=True)
    upper = torch.ones(n_atoms, n_atoms, dtype=torch.bool).triu(1)
    if not obc:
        upper &= (c12 != 0) | (c6 != 0) | (cq != 0)
    i, j = upper.nonzero().T
    cast = dict(dtype=dtype, device=device)

    def per_pair(values: Tensor) -> Tensor:
        return values[i, j].reshape(-1, 1).to(**cast)

    obc_parameters = []
    for charge, radius, scale, solute, solvent, surface in obc:
        charge, radius, scale = charge.cpu(), radius.cpu(), scale.cpu()
        prefactor = 0.0 if solute == 0.0 or solvent == 0.0 else -ONE_4PI_EPS0 * (1.0 / solute - 1.0 / solvent)
        rho = radius - OBC_DIELECTRIC_OFFSET
        scaled = scale * rho
        rho_seeing = torch.stack([rho[i], rho[j]]).unsqueeze(-1)
        s_seen = torch.stack([scaled[j], scaled[i]]).unsqueeze(-1)

        def atom(values: Tensor) -> Tensor:
            return values.reshape(-1, 1).to(**cast)

        obc_parameters.append(
            OBCParameters(
                rho=atom(rho),
                radius=atom(radius),
                half_self=atom(0.5 * prefactor * charge.square()),
                ace=atom(4.0 * math.pi * surface * (radius + OBC_PROBE_RADIUS).square()),
                rho_seeing=rho_seeing.to(**cast),
                s_seen=s_seen.to(**cast),
                pqq=(prefactor * charge[i] * charge[j]).reshape(-1, 1).to(**cast),
                inv_rho=atom(1.0 / rho),
                inv_radius=atom(1.0 / radius),
                half_rho=atom(0.5 * rho),
                half_rho_over_radius=atom(0.5 * rho / radius),
                inv_rho_seeing=(1.0 / rho_seeing).to(**cast),
                quarter_s2=(0.25 * s_seen.square()).to(**cast),
                inside_below=(s_seen - rho_seeing).to(**cast),
                active_above=(rho_seeing - s_seen).to(**cast),
            )
        )
    no_lj = ((c12 == 0) & (c6 == 0) & (cq == 0))[i, j].reshape(-1, 1)
    return PairParameters(
        atoms=torch.stack([i, j]).to(device),
        ij=torch.cat([i, j]).to(device),
        c12=per_pair(c12),
        c6=per_pair(c6),
        cq=per_pair(cq),
        lennard_jones=bool(nonbonded),
        obc=tuple(obc_parameters),
        no_lj=no_lj.to(device) if obc and bool(no_lj.any()) else None,
    )
