"""The umbrella bias OpenMM applies is the one the analysis divides out: same kappa (kJ/mol -> kT), same wrap."""

import copy

import numpy as np
import pytest

from bgflow_se3.energy.base import kT_in_kJ_per_mol
from bgflow_se3.reweight.umbrella import periodic_harmonic_bias
from bgflow_se3.simulate.umbrella_windows import UmbrellaConfig, add_torsion_bias, window_centers

# not the defaults (200 kJ/mol/rad^2, 300 K): a kappa that forgets the temperature, or uses 300 K, is caught
CONFIG = UmbrellaConfig(force_constant=137.0, temperature=351.0, n_windows=12)
# phi values on both sides of +-pi and of 0, against centres that include -pi (the first window) and 5 pi / 6
PHIS = np.array([-np.pi + 0.02, -3.0, -2.0, -0.1, 0.0, 0.4, 2.5, 3.05, np.pi - 0.01])
CENTERS = window_centers(CONFIG.n_windows)[[0, 1, 5, 6, 9, 11]]


def _energy_kj(context, groups=-1) -> float:
    import openmm.unit as unit

    state = context.getState(getEnergy=True, groups=groups)
    return state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def _four_atoms(phi: float) -> np.ndarray:
    """Positions (4, 3) in nm whose dihedral 0-1-2-3 is phi (IUPAC sign: clockwise looking down 1 -> 2 is +)."""
    b = 0.15
    return np.array(
        [[b, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, b], [b * np.cos(phi), b * np.sin(phi), b]], dtype=np.float64
    )


def test_openmm_bias_is_the_analysis_bias_times_kT():
    import openmm

    from bgflow_se3.simulate.umbrella_windows import _dihedral  # the convention the windows record phi with

    system = openmm.System()
    for _ in range(4):
        system.addParticle(1.0)
    add_torsion_bias(system, [0, 1, 2, 3], CONFIG.force_constant, 0.0)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    expected = periodic_harmonic_bias(PHIS, CENTERS, CONFIG.kappa) * kT_in_kJ_per_mol(CONFIG.temperature)  # (K, N)
    energies = np.empty_like(expected)
    for n, phi in enumerate(PHIS):
        x = _four_atoms(phi)
        assert _dihedral(x) == pytest.approx(phi, abs=1e-12)
        context.setPositions(x)
        for k, center in enumerate(CENTERS):
            context.setParameter("phi0", float(center))
            energies[k, n] = _energy_kj(context)
    np.testing.assert_allclose(energies, expected, rtol=1e-6, atol=1e-9)
    # the wrap matters: phi = pi - 0.01 sits 0.01 rad (not 2 pi - 0.01) from the window at -pi
    assert expected[0, -1] == pytest.approx(0.5 * CONFIG.force_constant * 0.01**2, rel=1e-9)


def test_biased_aldp_system_matches_the_analysis_on_its_phi():
    """The biased aldp System: its energy minus the unbiased one, at phi measured by the analysis (``phi_psi``)."""
    import openmm
    import torch

    from bgflow_se3.analysis.dihedrals import phi_psi
    from bgflow_se3.sampling.torsion_setting import set_torsion
    from bgflow_se3.simulate.umbrella_windows import phi_atom_indices
    from bgflow_se3.systems import load_aldp

    aldp = load_aldp("vacuum")
    atoms = phi_atom_indices(aldp.topology)
    bonds = [(a.index, b.index) for a, b in aldp.topology.bonds()]
    x0 = torch.as_tensor(aldp.positions_nm, dtype=torch.float64)[None]
    x = torch.cat([set_torsion(x0, bonds, atoms, float(phi)) for phi in PHIS]).numpy()
    phi = phi_psi(aldp.topology, x)[0]
    np.testing.assert_allclose(phi, PHIS, atol=1e-5)  # mdtraj works in float32

    platform = openmm.Platform.getPlatformByName("Reference")
    plain = openmm.Context(aldp.system, openmm.VerletIntegrator(0.001), platform)
    system = copy.deepcopy(aldp.system)
    add_torsion_bias(system, atoms, CONFIG.force_constant, 0.0)
    biased = openmm.Context(system, openmm.VerletIntegrator(0.001), platform)
    bias_kj = np.empty((len(CENTERS), len(PHIS)))
    for n in range(len(PHIS)):
        plain.setPositions(x[n])
        biased.setPositions(x[n])
        unbiased = _energy_kj(plain)
        for k, center in enumerate(CENTERS):
            biased.setParameter("phi0", float(center))
            bias_kj[k, n] = _energy_kj(biased) - unbiased
    expected = periodic_harmonic_bias(phi, CENTERS, CONFIG.kappa) * kT_in_kJ_per_mol(CONFIG.temperature)
    # energies of ~1e2 kJ/mol subtract to the bias: absolute 1e-6 kJ/mol, plus the float32 phi (1e-5 rad)
    np.testing.assert_allclose(bias_kj, expected, rtol=2e-4, atol=1e-3)
    assert expected.max() > 100.0 and expected.min() < 0.1  # far and near windows are both checked
