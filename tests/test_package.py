import subprocess
import sys


def test_flow_train_reweight_never_import_openmm():
    code = (
        "import sys, bgflow_se3, bgflow_se3.flow, bgflow_se3.train, bgflow_se3.reweight; "
        "assert 'openmm' not in sys.modules, 'openmm was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_aldp_systems_load_as_shipped():
    from bgflow_se3.systems import load_aldp

    for solvent, gb in [("vacuum", False), ("implicit", True)]:
        aldp = load_aldp(solvent)
        names = {type(f).__name__ for f in aldp.system.getForces()}
        assert ("GBSAOBCForce" in names) == gb
        assert aldp.system.getNumParticles() == aldp.topology.getNumAtoms() == 22
        assert aldp.system.getNumConstraints() == 0
        assert not aldp.system.usesPeriodicBoundaryConditions()
