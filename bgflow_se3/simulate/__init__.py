"""Drivers that make reference data: MD, seeded MD, MCMC particle data, umbrella windows (independent or replica
exchange), the shipped pretrained-model files and the rebuild of the shipped alanine dipeptide files.

Imports run one way: ``simulate`` imports the catalogue (``bgflow_se3.systems``), the energies, flows, samplers and
analysis; nothing in ``bgflow_se3.systems`` imports ``simulate`` (its old paths reach these modules lazily).
"""

from .aldp_files import write_aldp_files
from .aldp_md import default_md_dir, load_aldp_md, run_aldp_md
from .openmm_langevin import heavy_hydrogen_masses, langevin_context, reduced_energies, repartition_hydrogen_mass
from .particle_mcmc import (
    PARTICLE_SYSTEMS,
    ParticleDataConfig,
    load_particle_data,
    make_particle_data,
    metropolis_chains,
    remove_com,
)
from .pretrained import PretrainedModelMismatch, load_pretrained_aldp_flow, pretrained_path, save_pretrained_aldp_flow
from .replica_exchange import ExchangeStatistics, exchange_statistics, run_replica_exchange
from .seeded_md import seeded_aldp_md
from .umbrella_sampling import UmbrellaConfig, default_umbrella_dir, load_window_angles, load_windows, run_umbrella

__all__ = [
    "PARTICLE_SYSTEMS",
    "ExchangeStatistics",
    "ParticleDataConfig",
    "PretrainedModelMismatch",
    "UmbrellaConfig",
    "default_md_dir",
    "default_umbrella_dir",
    "exchange_statistics",
    "heavy_hydrogen_masses",
    "langevin_context",
    "load_aldp_md",
    "load_particle_data",
    "load_pretrained_aldp_flow",
    "load_window_angles",
    "load_windows",
    "make_particle_data",
    "metropolis_chains",
    "pretrained_path",
    "reduced_energies",
    "remove_com",
    "repartition_hydrogen_mass",
    "run_aldp_md",
    "run_replica_exchange",
    "run_umbrella",
    "save_pretrained_aldp_flow",
    "seeded_aldp_md",
    "write_aldp_files",
]
