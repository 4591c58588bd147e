"""Old path of ``bgflow_se3.sampling.torsion_setting`` (set a torsion by rotating one side); kept for users' imports."""

from .torsion_setting import moving_side, set_torsion, torsion_angle

__all__ = ["moving_side", "set_torsion", "torsion_angle"]
