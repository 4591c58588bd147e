"""Old path of ``bgflow_se3.simulate.openmm_langevin``, kept so that users' imports keep working.

New code imports ``bgflow_se3.simulate.openmm_langevin`` (OpenMM Langevin contexts, hydrogen mass repartitioning,
reduced energies). The drivers moved out of the catalogue, which imports nothing of ``bgflow_se3.simulate``: every
name here is looked up in the new module on first use (module ``__getattr__``), so importing ``bgflow_se3.systems``
does not import the drivers. Monkeypatch the new module, not this one.
"""

from .forwarding import forwarding_getattr

__getattr__ = forwarding_getattr(__name__, ("bgflow_se3.simulate.openmm_langevin",))
