"""The standard OpenMM forces as torch terms: ``HarmonicBondForce``, ``HarmonicAngleForce``, ``PeriodicTorsionForce``,
``NonbondedForce`` and ``GBSAOBCForce`` (no cutoff), and their parameters for the fused analytic pass (``fused``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import UnsupportedSystemError
from .base import ForceTerm, f64, long_rows, plain
from .fused import AngleParameters, BondParameters, FusedParameters, TorsionParameters, make_pair_parameters
from .kernels import (
    ace_surface_energy,
    gbsa_obc_energy_and_gradient,
    generalized_born_energy,
    harmonic_angle_energy,
    harmonic_bond_energy,
    lennard_jones_coulomb_energy,
    obc_born_radii,
    periodic_torsion_energy,
    squared_distance_matrix,
)

__all__ = [
    "FUSED_TERMS",
    "GBSAOBCTerm",
    "HarmonicAngleTerm",
    "HarmonicBondTerm",
    "NonbondedTerm",
    "PeriodicTorsionTerm",
    "build_fused_parameters",
]


class HarmonicBondTerm(ForceTerm):
    """``HarmonicBondForce``: ``sum 0.5 k (r - r0)^2``, kJ/mol."""

    def __init__(self, atoms: Tensor, length: Tensor, k: Tensor, force_index: int = -1, force_group: int = 0):
        super().__init__("HarmonicBondForce", force_index, force_group)
        self.register_buffer("atoms", atoms)
        self.register_buffer("length", length)
        self.register_buffer("k", k)

    @classmethod
    def from_force(cls, force: Any, force_index: int = -1) -> HarmonicBondTerm:
        rows = [force.getBondParameters(b) for b in range(force.getNumBonds())]
        atoms = long_rows([(r[0], r[1]) for r in rows], 2)
        length = f64([plain(r[2]) for r in rows])
        k = f64([plain(r[3]) for r in rows])
        return cls(atoms, length, k, force_index, force.getForceGroup())

    def forward(self, x: Tensor) -> Tensor:
        return harmonic_bond_energy(x, self.atoms, self.length.to(x.dtype), self.k.to(x.dtype))


class HarmonicAngleTerm(ForceTerm):
    """``HarmonicAngleForce``: ``sum 0.5 k (theta - theta0)^2``, kJ/mol."""

    def __init__(self, atoms: Tensor, theta0: Tensor, k: Tensor, force_index: int = -1, force_group: int = 0):
        super().__init__("HarmonicAngleForce", force_index, force_group)
        self.register_buffer("atoms", atoms)
        self.register_buffer("theta0", theta0)
        self.register_buffer("k", k)

    @classmethod
    def from_force(cls, force: Any, force_index: int = -1) -> HarmonicAngleTerm:
        rows = [force.getAngleParameters(a) for a in range(force.getNumAngles())]
        atoms = long_rows([r[:3] for r in rows], 3)
        theta0 = f64([plain(r[3]) for r in rows])
        k = f64([plain(r[4]) for r in rows])
        return cls(atoms, theta0, k, force_index, force.getForceGroup())

    def forward(self, x: Tensor) -> Tensor:
        return harmonic_angle_energy(x, self.atoms, self.theta0.to(x.dtype), self.k.to(x.dtype))


class PeriodicTorsionTerm(ForceTerm):
    """``PeriodicTorsionForce``: ``sum k (1 + cos(n phi - phase))``, kJ/mol; each dihedral is computed once."""

    def __init__(
        self,
        atoms: Tensor,
        periodicity: Tensor,
        phase: Tensor,
        k: Tensor,
        force_index: int = -1,
        force_group: int = 0,
    ):
        super().__init__("PeriodicTorsionForce", force_index, force_group)
        unique, dihedral_index = torch.unique(atoms.reshape(-1, 4), dim=0, return_inverse=True)
        self.register_buffer("atoms", unique)
        self.register_buffer("dihedral_index", dihedral_index.reshape(-1))
        self.register_buffer("periodicity", periodicity)
        self.register_buffer("phase", phase)
        self.register_buffer("k", k)

    @classmethod
    def from_force(cls, force: Any, force_index: int = -1) -> PeriodicTorsionTerm:
        rows = [force.getTorsionParameters(t) for t in range(force.getNumTorsions())]
        atoms = long_rows([r[:4] for r in rows], 4)
        periodicity = f64([r[4] for r in rows])
        phase = f64([plain(r[5]) for r in rows])
        k = f64([plain(r[6]) for r in rows])
        return cls(atoms, periodicity, phase, k, force_index, force.getForceGroup())

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        return periodic_torsion_energy(
            x, self.atoms, self.periodicity.to(dtype), self.phase.to(dtype), self.k.to(dtype), self.dihedral_index
        )


class NonbondedTerm(ForceTerm):
    """``NonbondedForce`` without cutoff: Lennard-Jones plus Coulomb over one precomputed pair list, kJ/mol.

    The pair list holds every pair i < j that is not an exception, with Lorentz-Berthelot parameters
    (``sigma = (s_i + s_j)/2``, ``eps = sqrt(e_i e_j)``, ``qq = q_i q_j``), followed by the exceptions with
    their own parameters (scaled 1-4 pairs); exclusions (exceptions with zero charge product and epsilon) and
    pairs whose parameters are all zero are dropped. Memory per configuration: O(n_pairs) = O(n_atoms^2).
    """

    per_particle = True

    def __init__(
        self,
        pairs: Tensor,
        charge_prod: Tensor,
        sigma: Tensor,
        epsilon: Tensor,
        force_index: int = -1,
        force_group: int = 0,
    ):
        super().__init__("NonbondedForce", force_index, force_group)
        self.register_buffer("pairs", pairs)
        self.register_buffer("charge_prod", charge_prod)
        self.register_buffer("sigma", sigma)
        self.register_buffer("epsilon", epsilon)

    @classmethod
    def from_force(cls, force: Any, force_index: int = -1) -> NonbondedTerm:
        import openmm

        name = f"force {force_index} (NonbondedForce)"
        if force.getNonbondedMethod() != openmm.NonbondedForce.NoCutoff:
            raise UnsupportedSystemError(
                f"{name} uses a cutoff or periodic method (nonbondedMethod={force.getNonbondedMethod()}); "
                "TorchForceField supports only NoCutoff: build the System with nonbondedMethod=app.NoCutoff, "
                "or use OpenMMEnergy"
            )
        if force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets():
            raise UnsupportedSystemError(
                f"{name} has parameter offsets (global-parameter dependent charges or LJ parameters), which "
                "TorchForceField does not model; remove them or use OpenMMEnergy"
            )
        if not force.getIncludeDirectSpace():
            raise UnsupportedSystemError(f"{name} excludes direct space (includeDirectSpace=False); unsupported")
        n = force.getNumParticles()
        params = np.array([[plain(v) for v in force.getParticleParameters(p)] for p in range(n)], dtype=np.float64)
        charge, sig, eps = params.reshape(n, 3).T if n else (np.zeros(0),) * 3
        excluded = np.zeros((n, n), dtype=bool)
        exc_pairs, exc_params = [], []
        for e in range(force.getNumExceptions()):
            i, j, qq, s, ep = force.getExceptionParameters(e)
            i, j = min(i, j), max(i, j)
            excluded[i, j] = True
            qq, s, ep = plain(qq), plain(s), plain(ep)
            if qq != 0.0 or ep != 0.0:
                exc_pairs.append((i, j))
                exc_params.append((qq, s, ep))
        ii, jj = np.triu_indices(n, k=1)
        keep = ~excluded[ii, jj]
        ii, jj = ii[keep], jj[keep]
        qq = charge[ii] * charge[jj]
        sigma = 0.5 * (sig[ii] + sig[jj])
        epsilon = np.sqrt(eps[ii] * eps[jj])
        nonzero = (qq != 0.0) | (epsilon != 0.0)
        exc_pairs_arr = np.asarray(exc_pairs, dtype=np.int64).reshape(-1, 2)
        exc_params_arr = np.asarray(exc_params, dtype=np.float64).reshape(-1, 3)
        pairs = np.concatenate([np.stack([ii[nonzero], jj[nonzero]]), exc_pairs_arr.T], axis=1)
        return cls(
            torch.as_tensor(pairs, dtype=torch.long),
            f64(np.concatenate([qq[nonzero], exc_params_arr[:, 0]])),
            f64(np.concatenate([sigma[nonzero], exc_params_arr[:, 1]])),
            f64(np.concatenate([epsilon[nonzero], exc_params_arr[:, 2]])),
            force_index,
            force.getForceGroup(),
        )

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        return lennard_jones_coulomb_energy(
            x, self.pairs, self.charge_prod.to(dtype), self.sigma.to(dtype), self.epsilon.to(dtype)
        )


class GBSAOBCTerm(ForceTerm):
    """``GBSAOBCForce`` without cutoff: OBC-II Born radii, GB polar energy (self terms included) and the ACE
    surface-area term, exactly as OpenMM's Reference platform, kJ/mol.

    Dense over all atom pairs: peak memory per configuration is about 20 float tensors of n_atoms^2 entries
    (22 atoms: about 0.1 MB in float64).
    """

    per_particle = True

    def __init__(
        self,
        charge: Tensor,
        radius: Tensor,
        scale: Tensor,
        solute_dielectric: float,
        solvent_dielectric: float,
        surface_area_energy: float,
        force_index: int = -1,
        force_group: int = 0,
        analytic_gradient: bool = True,
    ):
        super().__init__("GBSAOBCForce", force_index, force_group)
        self.analytic_gradient = bool(analytic_gradient)
        self.register_buffer("charge", charge)
        self.register_buffer("radius", radius)
        self.register_buffer("scale", scale)
        self.solute_dielectric = float(solute_dielectric)
        self.solvent_dielectric = float(solvent_dielectric)
        self.surface_area_energy = float(surface_area_energy)

    @classmethod
    def from_force(cls, force: Any, force_index: int = -1) -> GBSAOBCTerm:
        import openmm

        if force.getNonbondedMethod() != openmm.GBSAOBCForce.NoCutoff:
            raise UnsupportedSystemError(
                f"force {force_index} (GBSAOBCForce) uses a cutoff (nonbondedMethod={force.getNonbondedMethod()}); "
                "TorchForceField supports only NoCutoff: build the System with nonbondedMethod=app.NoCutoff"
            )
        n = force.getNumParticles()
        params = np.array([[plain(v) for v in force.getParticleParameters(p)] for p in range(n)], dtype=np.float64)
        charge, radius, scale = params.reshape(n, 3).T
        if np.any(radius <= 0.009):
            raise UnsupportedSystemError(
                f"force {force_index} (GBSAOBCForce) has atomic radii <= the 0.009 nm dielectric offset; "
                "the OBC Born radii are undefined for them"
            )
        return cls(
            f64(charge),
            f64(radius),
            f64(scale),
            plain(force.getSoluteDielectric()),
            plain(force.getSolventDielectric()),
            plain(force.getSurfaceAreaEnergy()),
            force_index,
            force.getForceGroup(),
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, solute_dielectric={self.solute_dielectric}, "
            f"solvent_dielectric={self.solvent_dielectric}, surface_area_energy={self.surface_area_energy}"
        )

    def born_radii(self, x: Tensor, r2: Tensor | None = None) -> Tensor:
        """OBC Born radii in nm, shape (batch, n_atoms), for positions ``x`` in nm, shape (batch, n_atoms, 3)."""
        if r2 is None:
            r2 = squared_distance_matrix(x)
        # a 1 nm stand-in where the distance is 0 (the diagonal, coincident atoms) keeps 1/r and the gradient of
        # sqrt finite; obc_born_radii masks those entries
        zero = r2 == 0
        r = torch.sqrt(r2.masked_fill(zero, 1.0))
        return obc_born_radii(r, self.radius.to(x.dtype), self.scale.to(x.dtype), zero=zero)

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        charge, radius, scale = self.charge.to(dtype), self.radius.to(dtype), self.scale.to(dtype)
        if self.analytic_gradient:
            constants = (self.solute_dielectric, self.solvent_dielectric, self.surface_area_energy)
            return _GBSAOBCEnergy.apply(x, charge, radius, scale, *constants)
        r2 = squared_distance_matrix(x)
        born = self.born_radii(x, r2)
        polar = generalized_born_energy(r2, charge, born, self.solute_dielectric, self.solvent_dielectric)
        return polar + ace_surface_energy(born, radius, self.surface_area_energy)


class _GBSAOBCEnergy(torch.autograd.Function):
    """GBSA-OBC energy whose backward uses the analytic gradient computed alongside the energy.

    Differentiable once with respect to the positions (not the parameters); use ``analytic_gradient=False``
    for double backward.
    """

    @staticmethod
    def forward(ctx, x, charge, radius, scale, solute_dielectric, solvent_dielectric, surface_area_energy):
        energy, grad = gbsa_obc_energy_and_gradient(
            x,
            charge,
            radius,
            scale,
            solute_dielectric,
            solvent_dielectric,
            surface_area_energy,
            with_gradient=ctx.needs_input_grad[0],
        )
        ctx.save_for_backward(grad)
        return energy

    @staticmethod
    def backward(ctx, grad_energy):
        if torch.is_grad_enabled():  # create_graph=True: a second derivative would silently miss this term
            raise RuntimeError(
                "the GBSAOBCForce analytic gradient is differentiable once only; build the TorchForceField with "
                "analytic_gradient=False to differentiate forces (create_graph=True)"
            )
        (grad,) = ctx.saved_tensors
        return grad_energy.view(-1, 1, 1) * grad, None, None, None, None, None, None


#: Terms with a form in the fused analytic pass; every other term is evaluated through autograd.
FUSED_TERMS = (HarmonicBondTerm, HarmonicAngleTerm, PeriodicTorsionTerm, NonbondedTerm, GBSAOBCTerm)


def build_fused_parameters(
    terms: Sequence[ForceTerm], n_atoms: int, dtype: torch.dtype, device: torch.device
) -> FusedParameters:
    """The given terms as one ``FusedParameters`` (bonded terms per force, one shared nonbonded pair list)."""

    def column(values: Tensor) -> Tensor:
        return values.reshape(-1, 1).to(dtype=dtype, device=device)

    def rows(atoms: Tensor) -> Tensor:
        return atoms.T.contiguous().to(device)

    bonds, angles, torsions, nonbonded, obc = [], [], [], [], []
    for t in terms:
        if isinstance(t, HarmonicBondTerm):
            bonds.append(BondParameters(rows(t.atoms), column(t.length), column(t.k)))
        elif isinstance(t, HarmonicAngleTerm):
            angles.append(AngleParameters(rows(t.atoms), column(t.theta0), column(t.k)))
        elif isinstance(t, PeriodicTorsionTerm):
            torsions.append(
                TorsionParameters(
                    rows(t.atoms), column(t.periodicity), column(t.phase), column(t.k), t.dihedral_index.to(device)
                )
            )
        elif isinstance(t, NonbondedTerm):
            nonbonded.append((t.pairs, t.charge_prod, t.sigma, t.epsilon))
        elif isinstance(t, GBSAOBCTerm):
            obc.append((t.charge, t.radius, t.scale, t.solute_dielectric, t.solvent_dielectric, t.surface_area_energy))
        else:  # pragma: no cover - TorchForceField.fused_parameters passes only FUSED_TERMS
            raise TypeError(f"no fused form for {type(t).__name__}")
    pairs = make_pair_parameters(n_atoms, nonbonded, obc, dtype, device)
    return FusedParameters(tuple(bonds), tuple(angles), tuple(torsions), pairs)
