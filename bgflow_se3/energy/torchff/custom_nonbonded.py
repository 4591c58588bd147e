"""OpenMM's ``CustomNonbondedForce`` and ``CustomGBForce`` (no cutoff) as batched torch terms.

Pair semantics follow OpenMM's Reference platform (``ReferenceCustomNonbondedIxn``, ``ReferenceCustomGBIxn``):

- ``CustomNonbondedForce``: every pair i < j that is not excluded, with i as particle 1 (parameters ``name1``) and
  j as particle 2. With interaction groups, every group contributes its pairs (a in set1, b in set2, a != b, not
  excluded; a pair whose two atoms lie in both sets is counted once per group, with the lower index as particle
  1), and a pair listed by several groups is counted once per group. Computed values are per-particle functions
  of the parameters and globals, evaluated once when the term is built. Switching functions and the long-range
  correction only act with a cutoff, so OpenMM ignores them with ``NoCutoff`` and so does this term.
- ``CustomGBForce``: computed values in order; ``SingleParticle`` ones see the particle's parameters, the earlier
  values and its coordinates ``x, y, z``; ``ParticlePair`` ones sum over every j != i (``NoExclusions``: also the
  excluded j) of the expression with i as particle 1. Energy terms: ``SingleParticle`` summed over particles,
  ``ParticlePair`` / ``ParticlePairNoExclusions`` summed over pairs i < j with i as particle 1. OpenMM's Reference
  platform accepts only one pair-type computed value and requires it first; this module evaluates any order.

Forces come from autograd. Everything is vectorised over (pairs, batch) in the batch-last layout of
``fused`` (pair parameters of shape (n_pairs, 1) broadcast along the batch), and the distances of all pairs
are computed once per call and shared by every computed value and energy term. Memory per configuration:
O(n_pairs) per intermediate of the expressions, all kept for the backward pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import UnsupportedSystemError
from .base import ForceTerm, plain
from .expressions import CompiledExpression, compile_expression, tabulated_functions

__all__ = ["CustomGBTerm", "CustomNonbondedTerm", "interaction_group_pairs"]

_KIND_NAMES = {0: "SingleParticle", 1: "ParticlePair", 2: "ParticlePairNoExclusions"}


def _globals(force: Any) -> dict[str, float]:
    """Global parameters of a custom force at their default values."""
    return {
        force.getGlobalParameterName(g): float(force.getGlobalParameterDefaultValue(g))
        for g in range(force.getNumGlobalParameters())
    }


def _particle_parameters(force: Any, n_parameters: int) -> np.ndarray:
    """Per-particle parameters, float64, shape (n_parameters, n_particles)."""
    n = force.getNumParticles()
    rows = [[plain(v) for v in force.getParticleParameters(p)] for p in range(n)]
    return np.asarray(rows, dtype=np.float64).reshape(n, n_parameters).T.copy()


def _exclusions(force: Any) -> set[tuple[int, int]]:
    """Excluded pairs as (min, max) index tuples."""
    out = set()
    for e in range(force.getNumExclusions()):
        i, j = force.getExclusionParticles(e)
        out.add((min(i, j), max(i, j)))
    return out


def _exclusion_matrix(exclusions: set[tuple[int, int]], n: int) -> np.ndarray:
    """Boolean (n, n) matrix, True at the excluded pairs (i, j), i < j."""
    excluded = np.zeros((n, n), dtype=bool)
    if exclusions:
        i, j = np.asarray(sorted(exclusions), dtype=np.int64).T
        excluded[i, j] = True
    return excluded


def _batch_last(x: Tensor) -> Tensor:
    """Positions (batch, n, 3) as a contiguous (n, 3, batch) tensor."""
    return x.permute(1, 2, 0).contiguous()


def _pair_distances(X: Tensor, first: Tensor, second: Tensor) -> Tensor:
    """Distances in nm, shape (n_pairs, batch), between atoms ``first`` and ``second`` (long, (n_pairs,)) of
    batch-last positions ``X`` (n, 3, batch)."""
    d = X.index_select(0, first) - X.index_select(0, second)
    return torch.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2])


def interaction_group_pairs(
    groups: Sequence[tuple[Sequence[int], Sequence[int]]], exclusions: set[tuple[int, int]]
) -> np.ndarray:
    """The (particle 1, particle 2) pairs that OpenMM evaluates for ``CustomNonbondedForce`` interaction groups.

    groups: (set1, set2) per interaction group; exclusions: excluded pairs as (min, max) tuples.
    Returns long, shape (2, n_pairs): per group, a in set1 and b in set2 (ascending), skipping a == b, excluded
    pairs, and the second copy (a > b) of a pair whose atoms are both in both sets.
    """
    pairs = []
    for set1, set2 in groups:
        s1, s2 = set(int(a) for a in set1), set(int(b) for b in set2)
        for a in sorted(s1):
            for b in sorted(s2):
                if a == b or (min(a, b), max(a, b)) in exclusions:
                    continue
                if a > b and b in s1 and a in s2:
                    continue
                pairs.append((a, b))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2).T.copy()


class CustomNonbondedTerm(ForceTerm):
    """``CustomNonbondedForce`` without cutoff: ``sum_pairs E(r, params1, params2, globals)``, kJ/mol.

    pairs: long, (2, n_pairs), particle 1 and particle 2 of each evaluated pair; parameters: float64,
    (n_parameters, n_particles), the per-particle parameters followed by the computed values; names: their names
    (without suffix); global_values: name -> value. Memory per configuration: O(n_pairs) per expression step.
    """

    per_particle = True

    def __init__(
        self,
        expression: CompiledExpression,
        pairs: Tensor,
        parameters: Tensor,
        names: Sequence[str],
        global_values: Mapping[str, float],
        force_index: int = -1,
        force_group: int = 0,
    ) -> None:
        super().__init__("CustomNonbondedForce", force_index, force_group)
        self.expression = expression
        self.names = tuple(names)
        self.global_values = dict(global_values)
        self.register_buffer("pairs", pairs)
        self.register_buffer("particle_parameters", parameters)
        # Only the parameters the expression reads, gathered per pair once: (n_used, n_pairs) per particle slot.
        used = [(k, f"{name}{slot}") for k, name in enumerate(self.names) for slot in (1, 2)]
        used = [(k, var) for k, var in used if var in expression.variables]
        self._used = tuple(var for _, var in used)
        rows = [parameters[k].index_select(0, pairs[int(var[-1]) - 1]) for k, var in used]
        self.register_buffer("pair_parameters", torch.stack(rows) if rows else parameters.new_zeros(0, pairs.shape[1]))

    @classmethod
    def from_force(cls, force: Any, force_index: int = -1) -> CustomNonbondedTerm:
        """Build from an ``openmm.CustomNonbondedForce``; cutoffs raise ``UnsupportedSystemError``."""
        import openmm

        name = f"force {force_index} (CustomNonbondedForce)"
        method = force.getNonbondedMethod()
        if method != openmm.CustomNonbondedForce.NoCutoff:
            kind = {1: "CutoffNonPeriodic", 2: "CutoffPeriodic"}.get(method, str(method))
            raise UnsupportedSystemError(
                f"{name} uses nonbondedMethod={kind}; TorchForceField supports only NoCutoff (with a cutoff, OpenMM "
                "also applies its switching function and long-range correction, which are not modelled): build the "
                "System with nonbondedMethod=app.NoCutoff, or use OpenMMEnergy"
            )
        functions = tabulated_functions(force)
        global_values = _globals(force)
        names = [force.getPerParticleParameterName(k) for k in range(force.getNumPerParticleParameters())]
        parameters = _particle_parameters(force, len(names))
        columns = {n: torch.as_tensor(parameters[k]) for k, n in enumerate(names)}
        n_computed = force.getNumComputedValues() if hasattr(force, "getNumComputedValues") else 0
        computed_rows = []
        for c in range(n_computed):
            value_name, text = force.getComputedValueParameters(c)
            value = compile_expression(text, functions)({**global_values, **columns})
            value = value.expand(force.getNumParticles()).to(torch.float64)
            columns[value_name] = value
            names.append(value_name)
            computed_rows.append(value.numpy())
        if computed_rows:
            parameters = np.concatenate([parameters, np.stack(computed_rows)])
        exclusions = _exclusions(force)
        n = force.getNumParticles()
        if force.getNumInteractionGroups():
            groups = []
            for g in range(force.getNumInteractionGroups()):
                set1, set2 = force.getInteractionGroupParameters(g)
                groups.append((list(set1), list(set2)))
            pairs = interaction_group_pairs(groups, exclusions)
        else:
            ii, jj = np.triu_indices(n, k=1)
            keep = ~_exclusion_matrix(exclusions, n)[ii, jj]
            pairs = np.stack([ii[keep], jj[keep]])
        return cls(
            compile_expression(force.getEnergyFunction(), functions),
            torch.as_tensor(pairs.astype(np.int64)),
            torch.as_tensor(parameters.reshape(len(names), n)),
            names,
            global_values,
            force_index,
            force.getForceGroup(),
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_pairs={self.pairs.shape[1]}, energy={self.expression.text!r}"

    def forward(self, x: Tensor) -> Tensor:
        """Energy in kJ/mol, shape (batch,), for positions ``x`` in nm, shape (batch, n_atoms, 3)."""
        if self.pairs.shape[1] == 0:
            return x.new_zeros(x.shape[0])
        X = _batch_last(x)
        values: dict[str, Tensor | float] = dict(self.global_values)
        values["r"] = _pair_distances(X, self.pairs[0], self.pairs[1])
        pair_parameters = self.pair_parameters.to(x.dtype)
        for k, var in enumerate(self._used):
            values[var] = pair_parameters[k].unsqueeze(1)
        return self.expression(values).sum(dim=0)  # (n_pairs, batch): the broadcast shape of r and the rest


class CustomGBTerm(ForceTerm):
    """``CustomGBForce`` without cutoff: computed values and energy terms of every kind, kJ/mol.

    parameters: float64, (n_parameters, n_particles); names: the per-particle parameter names; values and terms:
    (CompiledExpression, kind) with kind 0 SingleParticle, 1 ParticlePair, 2 ParticlePairNoExclusions, values
    with their names; pairs: long, (2, n_all_pairs), every pair i < j; kept: long, indices into ``pairs`` of the
    pairs that are not excluded. Memory per configuration: O(n_pairs) per expression step (the pair-type computed
    values run over both orderings of every pair).
    """

    per_particle = True

    def __init__(
        self,
        parameters: Tensor,
        names: Sequence[str],
        global_values: Mapping[str, float],
        values: Sequence[tuple[str, CompiledExpression, int]],
        terms: Sequence[tuple[CompiledExpression, int]],
        pairs: Tensor,
        kept: Tensor,
        force_index: int = -1,
        force_group: int = 0,
    ) -> None:
        super().__init__("CustomGBForce", force_index, force_group)
        self.names = tuple(names)
        self.global_values = dict(global_values)
        self.values = tuple(values)
        self.energy_terms = tuple(terms)
        self.register_buffer("particle_parameters", parameters)
        self.register_buffer("pairs", pairs)
        self.register_buffer("kept", kept)
        kept_pairs = pairs.index_select(1, kept)
        self.register_buffer("kept_pairs", kept_pairs)

    @classmethod
    def from_force(cls, force: Any, force_index: int = -1) -> CustomGBTerm:
        """Build from an ``openmm.CustomGBForce``; cutoffs raise ``UnsupportedSystemError``."""
        import openmm

        method = force.getNonbondedMethod()
        if method != openmm.CustomGBForce.NoCutoff:
            kind = {1: "CutoffNonPeriodic", 2: "CutoffPeriodic"}.get(method, str(method))
            raise UnsupportedSystemError(
                f"force {force_index} (CustomGBForce) uses nonbondedMethod={kind}; TorchForceField supports only "
                "NoCutoff: build the System with nonbondedMethod=app.NoCutoff (implicit solvent), or use OpenMMEnergy"
            )
        functions = tabulated_functions(force)
        names = [force.getPerParticleParameterName(k) for k in range(force.getNumPerParticleParameters())]
        parameters = _particle_parameters(force, len(names))
        values = []
        for v in range(force.getNumComputedValues()):
            value_name, text, kind = force.getComputedValueParameters(v)
            values.append((value_name, compile_expression(text, functions), int(kind)))
        terms = []
        for t in range(force.getNumEnergyTerms()):
            text, kind = force.getEnergyTermParameters(t)
            terms.append((compile_expression(text, functions), int(kind)))
        n = force.getNumParticles()
        ii, jj = np.triu_indices(n, k=1)
        exclusions = _exclusions(force)
        kept = np.flatnonzero(~_exclusion_matrix(exclusions, n)[ii, jj])
        return cls(
            torch.as_tensor(parameters.reshape(len(names), n)),
            names,
            _globals(force),
            values,
            terms,
            torch.as_tensor(np.stack([ii, jj]).astype(np.int64)),
            torch.as_tensor(np.asarray(kept, dtype=np.int64)),
            force_index,
            force.getForceGroup(),
        )

    def extra_repr(self) -> str:
        kinds = ", ".join(f"{name}: {_KIND_NAMES[kind]}" for name, _, kind in self.values)
        return f"{super().extra_repr()}, values=[{kinds}], n_energy_terms={len(self.energy_terms)}"

    def forward(self, x: Tensor) -> Tensor:
        """Energy in kJ/mol, shape (batch,), for positions ``x`` in nm, shape (batch, n_atoms, 3)."""
        batch, n = x.shape[0], x.shape[1]
        X = _batch_last(x)
        parameters = self.particle_parameters.to(x.dtype)  # (n_parameters, n)
        shared: dict[str, Tensor | float] = dict(self.global_values)
        r_all: Tensor | None = None
        pair_lists: dict[int, tuple[Tensor, Tensor]] = {}

        def pair_list(kind: int) -> tuple[Tensor, Tensor]:
            """(pairs (2, m), r (m, batch)) of the kind's pairs i < j: every pair, or the non-excluded ones."""
            nonlocal r_all
            if kind not in pair_lists:
                if r_all is None:
                    r_all = _pair_distances(X, self.pairs[0], self.pairs[1])
                if kind == 1 and self.kept.shape[0] != self.pairs.shape[1]:
                    pair_lists[kind] = (self.kept_pairs, r_all.index_select(0, self.kept))
                else:
                    pair_lists[kind] = (self.pairs, r_all)
            return pair_lists[kind]

        computed: dict[str, Tensor] = {}  # name -> (n, batch)

        def particle_values(expression: CompiledExpression) -> dict[str, Tensor | float]:
            out: dict[str, Tensor | float] = dict(shared)
            for k, name in enumerate(self.names):
                if name in expression.variables:
                    out[name] = parameters[k].unsqueeze(1)
            for name, value in computed.items():
                if name in expression.variables:
                    out[name] = value
            for axis, name in enumerate("xyz"):
                if name in expression.variables:
                    out[name] = X[:, axis]
            return out

        def pair_values(expression: CompiledExpression, first: Tensor, second: Tensor, r: Tensor):
            out: dict[str, Tensor | float] = dict(shared)
            out["r"] = r
            for slot, atoms in (("1", first), ("2", second)):
                for k, name in enumerate(self.names):
                    if name + slot in expression.variables:
                        out[name + slot] = parameters[k].index_select(0, atoms).unsqueeze(1)
                for name, value in computed.items():
                    if name + slot in expression.variables:
                        out[name + slot] = value.index_select(0, atoms)
            return out

        def full(result: Tensor, rows: int) -> Tensor:
            return result if result.shape == (rows, batch) else result.expand(rows, batch)

        for name, expression, kind in self.values:
            if kind == 0:
                computed[name] = full(expression(particle_values(expression)), n)
                continue
            pairs, r = pair_list(kind)
            first = torch.cat([pairs[0], pairs[1]])
            second = torch.cat([pairs[1], pairs[0]])
            contributions = full(expression(pair_values(expression, first, second, torch.cat([r, r]))), len(first))
            computed[name] = X.new_zeros(n, batch).index_add(0, first, contributions)

        energy = X.new_zeros(batch)
        for expression, kind in self.energy_terms:
            if kind == 0:
                energy = energy + full(expression(particle_values(expression)), n).sum(dim=0)
                continue
            pairs, r = pair_list(kind)
            if pairs.shape[1] == 0:
                continue
            term = expression(pair_values(expression, pairs[0], pairs[1], r))
            energy = energy + full(term, pairs.shape[1]).sum(dim=0)
        return energy
