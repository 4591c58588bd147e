"""Umbrella simulations: the bias holds phi at the window centre, the cache extends runs, settings are checked."""

import numpy as np
import pytest

from bgflow_se3.reweight.umbrella import wrap_angle
from bgflow_se3.simulate.umbrella_sampling import (
    UmbrellaConfig,
    add_torsion_bias,
    load_windows,
    run_umbrella,
    window_centers,
)


def test_bias_energy_is_periodic_harmonic():
    import openmm
    import openmm.unit as unit

    from bgflow_se3.simulate.umbrella_windows import phi_atom_indices
    from bgflow_se3.systems import load_aldp

    aldp = load_aldp("vacuum")
    system = openmm.System()
    for _ in range(22):
        system.addParticle(1.0)
    add_torsion_bias(system, phi_atom_indices(aldp.topology), 100.0, 3.0)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(aldp.positions_nm)  # the shipped structure has phi = pi: 0.14 rad from 3.0
    energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert energy == pytest.approx(0.5 * 100.0 * (np.pi - 3.0) ** 2, rel=1e-5)
    context.setParameter("phi0", -3.0)  # the short way round crosses +-pi: |pi - (-3) - 2 pi| = 0.14 rad
    energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert energy == pytest.approx(0.5 * 100.0 * (np.pi - 3.0) ** 2, rel=1e-5)
    context.setParameter("phi0", 0.0)  # the far side: pi away
    energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert energy == pytest.approx(0.5 * 100.0 * np.pi**2, rel=1e-5)


def test_windows_run_extend_and_refuse_other_settings(tmp_path):
    config = UmbrellaConfig(solvent="vacuum", n_windows=2, equilibration_ps=0.5, save_every=25)
    run_umbrella(config, 0.001, tmp_path)
    _, first, ns = load_windows(tmp_path)
    assert ns == pytest.approx(0.001) and all(len(s) == 20 for s in first)
    for series, center in zip(first, window_centers(2)):
        assert np.all(np.abs(wrap_angle(series - center)) < 0.6)  # k = 200 kJ/mol/rad^2 holds phi near centre
    run_umbrella(config, 0.002, tmp_path)  # extends: the stored series continue, not restart
    _, second, ns = load_windows(tmp_path)
    assert ns == pytest.approx(0.002)
    for a, b in zip(first, second):
        assert len(b) == 40 and np.array_equal(b[:20], a)
    with pytest.raises(ValueError, match="other settings"):
        run_umbrella(UmbrellaConfig(solvent="vacuum", n_windows=3), 0.001, tmp_path)


def _aldp_files(folder):
    import openmm
    import openmm.app as app
    import openmm.unit as unit

    from bgflow_se3.systems import load_aldp

    aldp = load_aldp("vacuum")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "system.xml").write_text(openmm.XmlSerializer.serialize(aldp.system))
    with open(folder / "molecule.pdb", "w") as handle:
        app.PDBFile.writeFile(aldp.topology, aldp.positions_nm * unit.nanometer, handle)
    return folder / "system.xml", folder / "molecule.pdb"


def test_own_files_and_any_torsion_hold_that_torsion_at_the_centres(tmp_path):
    """A molecule given as files, biased along psi (not the default phi): psi sits at the window centres, the
    config round-trips through config.json, and a cache is not continued with changed files."""
    xml, pdb = _aldp_files(tmp_path / "inputs")
    psi = (6, 8, 14, 16)
    config = UmbrellaConfig.for_files(
        xml, pdb, psi, record_torsion=(4, 6, 8, 14), n_windows=2, equilibration_ps=0.5, save_every=25
    )
    assert config.torsion == psi and len(config.inputs_sha256) == 64
    cache = tmp_path / "cache"
    run_umbrella(config, 0.001, cache)
    stored, series, ns = load_windows(cache)
    assert stored == config and ns == pytest.approx(0.001)
    for values, center in zip(series, window_centers(2)):
        assert np.all(np.abs(wrap_angle(values - center)) < 0.6)
    run_umbrella(config, 0.002, cache)  # the same files: extends
    xml.write_text(xml.read_text().replace("<System", "<System ", 1))  # same System, other bytes
    with pytest.raises(ValueError, match="changed since this umbrella run started"):
        run_umbrella(config, 0.003, cache)
    with pytest.raises(ValueError, match="both system_xml and pdb"):
        UmbrellaConfig(system_xml=str(xml))
    with pytest.raises(ValueError, match="four distinct"):
        UmbrellaConfig.for_files(xml, pdb, (1, 1, 2, 3))
