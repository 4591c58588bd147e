"""Old path of ``bgflow_se3.simulate.particle_mcmc``, kept so that users' imports keep working.

New code imports ``bgflow_se3.simulate.particle_mcmc`` (MCMC data of the DW4/LJ13/LJ55 particle systems). The
drivers moved out of the catalogue, which imports nothing of ``bgflow_se3.simulate``: every name here is looked up
in the new module on first use (module ``__getattr__``), so importing ``bgflow_se3.systems`` does not import the
drivers. Monkeypatch the new module, not this one.
"""

from .forwarding import forwarding_getattr

__getattr__ = forwarding_getattr(__name__, ("bgflow_se3.simulate.particle_mcmc",))
