"""Old path of the umbrella-sampling drivers, kept so that users' imports keep working.

New code imports ``bgflow_se3.simulate.umbrella_sampling`` (running and reading the windows) and
``bgflow_se3.simulate.umbrella_windows`` (one window: config, bias, System, context). The drivers moved out of the
catalogue, which imports nothing of ``bgflow_se3.simulate``: every name here is looked up in the new modules on
first use (module ``__getattr__``), so importing ``bgflow_se3.systems`` does not import the drivers. Monkeypatch
the new modules, not this one.
"""

from .forwarding import forwarding_getattr

__getattr__ = forwarding_getattr(
    __name__, ("bgflow_se3.simulate.umbrella_sampling", "bgflow_se3.simulate.umbrella_windows")
)
