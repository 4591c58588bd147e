"""OpenMM's custom bonded forces as batched torch terms.

CustomBondForce, CustomAngleForce, CustomTorsionForce, CustomExternalForce, CustomCompoundBondForce and
CustomCentroidBondForce.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import UnsupportedForceError, UnsupportedSystemError
from ...geometry import openmm_dihedral, openmm_vector_angle
from .base import BuildContext, ForceTerm, f64, long_rows, plain
from .expressions import CompiledExpression, TabulatedFunction, compile_expression, tabulated_functions
from .kernels import gather_atoms

__all__ = [
    "CustomAngleTerm",
    "CustomBondTerm",
    "CustomCentroidBondTerm",
    "CustomCompoundBondTerm",
    "CustomExternalTerm",
    "CustomTorsionTerm",
    "CustomTerm",
]


class CustomTerm(ForceTerm):
    """A custom bonded force: ``sum over terms of E(geometry, per-term parameters, globals)``, kJ/mol.

    expression: the OpenMM energy expression (Lepton syntax). atoms: long, shape (n_terms, k), the particles of
    each term. parameters: float64, shape (n_terms, n_parameters), named by ``parameter_names``. Global
    parameters start at the force's default values; change them with :meth:`set_global_parameter`. Subclasses
    define the geometric variables (``_geometry``).
    """

    #: Variables the geometry provides (e.g. ``("r",)``).
    geometric_variables: tuple[str, ...] = ()
    _particle_functions = False
    _particle_prefix = "p"  # particle k of a term is f"{prefix}{k}" (CustomCentroidBondForce: groups g1, g2, ...)

    def __init__(
        self,
        name: str,
        expression: str,
        atoms: Tensor,
        parameters: Tensor,
        parameter_names: Sequence[str],
        global_parameters: Mapping[str, float] | None = None,
        functions: Mapping[str, TabulatedFunction] | None = None,
        force_index: int = -1,
        force_group: int = 0,
    ) -> None:
        super().__init__(name, force_index, force_group)
        self.expression = expression
        self.compiled: CompiledExpression = compile_expression(
            expression, functions, self._particle_functions, particle_prefix=self._particle_prefix
        )
        self.parameter_names = tuple(parameter_names)
        globals_ = dict(global_parameters or {})
        self.global_names = tuple(globals_)
        if parameters.shape != (atoms.shape[0], len(self.parameter_names)):
            raise ValueError(
                f"parameters have shape {tuple(parameters.shape)}, expected ({atoms.shape[0]}, {len(parameter_names)})"
            )
        known = set(self.geometric_variables) | set(self.parameter_names) | set(self.global_names)
        known |= set(self._particle_variables(atoms.shape[1]))
        unknown = sorted(self.compiled.variables - known)
        if unknown:
            raise UnsupportedForceError(
                f"force {force_index} ({name}): expression {expression!r} uses unknown variables {unknown}; "
                f"it may use {sorted(known)}"
            )
        self.register_buffer("atoms", atoms)
        self.register_buffer("term_parameters", parameters)
        self.register_buffer("global_values", f64([globals_[g] for g in self.global_names]))

    def _particle_variables(self, n_particles: int) -> list[str]:
        return []

    @property
    def global_parameters(self) -> dict[str, float]:
        """Current values of the global parameters by name."""
        return {name: float(v) for name, v in zip(self.global_names, self.global_values.tolist())}

    def set_global_parameter(self, name: str, value: float) -> None:
        """Set global parameter ``name`` (in OpenMM's default units) for later evaluations."""
        if name not in self.global_names:
            raise KeyError(f"{self.name} has no global parameter {name!r}; it has {list(self.global_names)}")
        with torch.no_grad():
            self.global_values[self.global_names.index(name)] = float(value)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_terms={self.atoms.shape[0]}, expression={self.expression!r}"

    def _geometry(self, x: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Energy in kJ/mol, shape (batch,), for positions x in nm, shape (batch, n_atoms, 3)."""
        if self.atoms.shape[0] == 0:
            return x.new_zeros(x.shape[0])
        values: dict[str, Tensor] = self._geometry(x)
        parameters = self.term_parameters.to(x.dtype)
        for j, name in enumerate(self.parameter_names):
            values[name] = parameters[:, j]
        global_values = self.global_values.to(x.dtype)
        for j, name in enumerate(self.global_names):
            values[name] = global_values[j]
        return self.compiled(values).sum(dim=-1)

    @classmethod
    def _common(cls, force: Any, force_index: int) -> dict[str, Any]:
        """Expression, globals, tabulated functions and force group of ``force``; refuses periodic forces."""
        name = type(force).__name__
        expression = force.getEnergyFunction()
        functions = tabulated_functions(force)
        # names unsupported functions first
        compile_expression(expression, functions, cls._particle_functions, particle_prefix=cls._particle_prefix)
        if force.usesPeriodicBoundaryConditions():
            raise UnsupportedSystemError(
                f"force {force_index} ({name}) uses periodic boundary conditions; TorchForceField supports only "
                "non-periodic Systems: disable them (setUsesPeriodicBoundaryConditions(False)) or use OpenMMEnergy"
            )
        globals_ = {
            force.getGlobalParameterName(i): plain(force.getGlobalParameterDefaultValue(i))
            for i in range(force.getNumGlobalParameters())
        }
        return {
            "name": name,
            "expression": expression,
            "global_parameters": globals_,
            "functions": functions,
            "force_index": force_index,
            "force_group": force.getForceGroup(),
        }


def _table(rows: list[Sequence[Any]], width: int, n_parameters: int) -> tuple[Tensor, Tensor]:
    """Atom indices (n, width) and float64 parameters (n, n_parameters) from OpenMM rows (atoms..., params)."""
    atoms = long_rows([r[:width] for r in rows], width)
    parameters = torch.as_tensor(
        np.asarray([[plain(v) for v in r[width]] for r in rows], dtype=np.float64).reshape(len(rows), n_parameters)
    )
    return atoms, parameters


class CustomBondTerm(CustomTerm):
    """``CustomBondForce``: E(r, parameters) per bond, r the distance in nm."""

    geometric_variables = ("r",)

    def _geometry(self, x: Tensor) -> dict[str, Tensor]:
        a, b = gather_atoms(x, self.atoms)
        # vector_norm's gradient at r = 0 is 0 (sqrt's is inf): coincident atoms get no force, as in OpenMM
        return {"r": torch.linalg.vector_norm(b - a, dim=-1)}

    @classmethod
    def from_force(cls, force: Any, force_index: int = -1) -> CustomBondTerm:
        common = cls._common(force, force_index)
        names = [force.getPerBondParameterName(i) for i in range(force.getNumPerBondParameters())]
        rows = [force.getBondParameters(b) for b in range(force.getNumBonds())]
        atoms, parameters = _table(rows, 2, len(names))
        return cls(atoms=atoms, parameters=parameters, parameter_names=names, **common)


class CustomAngleTerm(CustomTerm):
    """``CustomAngleForce``: E(theta, parameters) per angle, theta in radians at the middle particle, [0, pi];
    NaN for an arm of zero length, as in OpenMM."""

    geometric_variables = ("theta",)

    def _geometry(self, x: Tensor) -> dict[str, Tensor]:
        a, vertex, c = gather_atoms(x, self.atoms)
        return {"theta": openmm_vector_angle(a - vertex, c - vertex)}

    @classmethod
    def from_force(cls, force: Any, force_index: int = -1) -> CustomAngleTerm:
        common = cls._common(force, force_index)
        names = [force.getPerAngleParameterName(i) for i in range(force.getNumPerAngleParameters())]
        rows = [force.getAngleParameters(a) for a in range(force.getNumAngles())]
        atoms, parameters = _table(rows, 3, len(names))
        return cls(atoms=atoms, parameters=parameters, parameter_names=names, **common)


class CustomTorsionTerm(CustomTerm):
    """``CustomTorsionForce``: E(theta, parameters) per torsion, theta the dihedral in radians, (-pi, pi]."""

    geometric_variables = ("theta",)

    def _geometry(self, x: Tensor) -> dict[str, Tensor]:
        return {"theta": openmm_dihedral(*gather_atoms(x, self.atoms))}

    @classmethod
    def from_force(cls, force: Any, force_index: int = -1) -> CustomTorsionTerm:
        common = cls._common(force, force_index)
        names = [force.getPerTorsionParameterName(i) for i in range(force.getNumPerTorsionParameters())]
        rows = [force.getTorsionParameters(t) for t in range(force.getNumTorsions())]
        atoms, parameters = _table(rows, 4, len(names))
        return cls(atoms=atoms, parameters=parameters, parameter_names=names, **common)


class CustomExternalTerm(CustomTerm):
    """``CustomExternalForce``: E(x, y, z, parameters) per particle, coordinates in nm."""

    geometric_variables = ("x", "y", "z")

    def _geometry(self, x: Tensor) -> dict[str, Tensor]:
        (p,) = gather_atoms(x, self.atoms)
        return {"x": p[..., 0], "y": p[..., 1], "z": p[..., 2]}

    @classmethod
    def from_force(cls, force: Any, force_index: int = -1) -> CustomExternalTerm:
        common = cls._common(force, force_index)
        names = [force.getPerParticleParameterName(i) for i in range(force.getNumPerParticleParameters())]
        rows = [force.getParticleParameters(p) for p in range(force.getNumParticles())]
        atoms, parameters = _table(rows, 1, len(names))
        return cls(atoms=atoms, parameters=parameters, parameter_names=names, **common)


class CustomCompoundBondTerm(CustomTerm):
    """``CustomCompoundBondForce``: E(particles, parameters) per bond of ``n_particles`` particles.

    The expression may use ``distance(p1, p2)``, ``angle(p1, p2, p3)``, ``dihedral(p1, p2, p3, p4)``,
    ``pointdistance``/``pointangle``/``pointdihedral`` and the coordinates ``x1, y1, z1, ...`` (nm).
    """

    _particle_functions = True

    def _particle_variables(self, n_particles: int) -> list[str]:
        return [f"p{k + 1}" for k in range(n_particles)]

    def _geometry(self, x: Tensor) -> dict[str, Tensor]:
        return {f"p{k + 1}": p for k, p in enumerate(gather_atoms(x, self.atoms))}

    @classmethod
    def from_force(cls, force: Any, force_index: int = -1) -> CustomCompoundBondTerm:
        common = cls._common(force, force_index)
        names = [force.getPerBondParameterName(i) for i in range(force.getNumPerBondParameters())]
        width = force.getNumParticlesPerBond()
        rows = [force.getBondParameters(b) for b in range(force.getNumBonds())]
        atoms, parameters = _table([(*r[0], r[1]) for r in rows], width, len(names))
        return cls(atoms=atoms, parameters=parameters, parameter_names=names, **common)


class CustomCentroidBondTerm(CustomTerm):
    """``CustomCentroidBondForce``: E(groups, parameters) per bond of ``n_groups`` particle groups.

    Each group acts at its weighted centroid ``sum_i w_i x_i / sum_i w_i`` (weights given per group, or the
    particle masses where a group has none, as in OpenMM). The expression reads the centroids as ``g1, g2, ...``
    through ``distance(g1, g2)``, ``angle``, ``dihedral``, the ``point*`` functions and the coordinates
    ``x1, y1, z1, ...`` (nm). group_weights: float64, shape (n_groups_total, n_atoms), each row normalised to sum 1;
    ``atoms`` holds the group indices of each bond.
    """

    _particle_functions = True
    _particle_prefix = "g"

    def __init__(self, *args: Any, group_weights: Tensor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("group_weights", group_weights)

    def _particle_variables(self, n_particles: int) -> list[str]:
        return [f"g{k + 1}" for k in range(n_particles)]

    def _geometry(self, x: Tensor) -> dict[str, Tensor]:
        weights = self.group_weights.to(x.dtype)  # columns up to the last grouped particle
        centroids = torch.einsum("ga,bad->bgd", weights, x[:, : weights.shape[1]])  # (batch, groups, 3)
        return {f"g{k + 1}": g for k, g in enumerate(gather_atoms(centroids, self.atoms))}

    @classmethod
    def from_force(
        cls, force: Any, force_index: int = -1, masses: Sequence[float] | None = None
    ) -> CustomCentroidBondTerm:
        """masses: the System's particle masses (Da), used as the weights of groups given without weights."""
        common = cls._common(force, force_index)
        groups = [force.getGroupParameters(g) for g in range(force.getNumGroups())]
        n_atoms = 1 + max((max(particles, default=-1) for particles, _ in groups), default=-1)
        if masses is not None:
            n_atoms = max(n_atoms, len(masses))
        weights = torch.zeros(len(groups), n_atoms, dtype=torch.float64)
        for g, (particles, group_weights) in enumerate(groups):
            if len(group_weights) == 0:
                if masses is None:
                    raise UnsupportedForceError(
                        f"force {force_index} ({common['name']}): group {g} has no weights, so OpenMM weights it by "
                        "mass; build it through TorchForceField.from_system(system), which knows the masses"
                    )
                group_weights = [masses[i] for i in particles]
            w = torch.as_tensor([plain(v) for v in group_weights], dtype=torch.float64)
            if len(particles) == 0 or w.sum() <= 0:
                raise UnsupportedSystemError(
                    f"force {force_index} ({common['name']}): group {g} has no particles or weights summing to "
                    f"{float(w.sum())}; its centroid is undefined"
                )
            weights[g].index_add_(0, torch.as_tensor(list(particles), dtype=torch.long), w / w.sum())
        names = [force.getPerBondParameterName(i) for i in range(force.getNumPerBondParameters())]
        rows = [force.getBondParameters(b) for b in range(force.getNumBonds())]
        bonds, parameters = _table([(*r[0], r[1]) for r in rows], force.getNumGroupsPerBond(), len(names))
        return cls(atoms=bonds, parameters=parameters, parameter_names=names, group_weights=weights, **common)

    @classmethod
    def build(cls, force: Any, context: BuildContext) -> CustomCentroidBondTerm:
        """Groups without weights are weighted by the masses of the System in ``context``."""
        return cls.from_force(force, context.force_index, context.masses)
