import numpy as np
import openmm
import openmm.unit as unit

from bgflow_se3.energy import kT_in_kJ_per_mol
from bgflow_se3.simulate.openmm_langevin import reduced_energies
from bgflow_se3.systems import load_aldp


def test_reduced_energies_match_a_context_and_mark_failures_inf():
    aldp = load_aldp("implicit")
    rng = np.random.default_rng(0)
    x = aldp.positions_nm + 0.01 * rng.standard_normal((4, 22, 3))
    x[2, 5, 1] = np.nan
    u = reduced_energies(aldp.system, x, temperature=300.0)
    context = openmm.Context(
        aldp.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    for i in (0, 1, 3):
        context.setPositions(x[i])
        energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        np.testing.assert_allclose(u[i], energy / kT_in_kJ_per_mol(300.0), rtol=1e-10)
    assert u[2] == np.inf
