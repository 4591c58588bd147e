"""Reweighting: importance weights, effective sample sizes and free energies through pymbar."""

from .fes import FreeEnergySurface, free_energy_surface, histogram_fes
from .free_energy import FreeEnergy, TargetSamples, free_energy_difference
from .state_pair import StatePairFreeEnergy, state_effective_samples, state_pair_free_energy, state_pareto_k
from .tail import PARETO_K_LIMIT, pareto_k, pareto_k_threshold
from .umbrella import UmbrellaResult, periodic_harmonic_bias, umbrella_free_energy, wrap_angle
from .weights import (
    EffectiveSampleSize,
    Estimate,
    effective_sample_size,
    expectation,
    forward_effective_sample_size,
    log_importance_weights,
    log_partition_ratio,
)

__all__ = [
    "PARETO_K_LIMIT",
    "EffectiveSampleSize",
    "Estimate",
    "FreeEnergy",
    "FreeEnergySurface",
    "StatePairFreeEnergy",
    "TargetSamples",
    "UmbrellaResult",
    "effective_sample_size",
    "expectation",
    "forward_effective_sample_size",
    "free_energy_difference",
    "free_energy_surface",
    "histogram_fes",
    "log_importance_weights",
    "log_partition_ratio",
    "pareto_k",
    "pareto_k_threshold",
    "periodic_harmonic_bias",
    "state_effective_samples",
    "state_pair_free_energy",
    "state_pareto_k",
    "umbrella_free_energy",
    "wrap_angle",
]
