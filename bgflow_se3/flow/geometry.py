"""Old path of ``bgflow_se3.flow.frames`` (CoM, shift-CoM, equivariant frames, spherical coordinates); kept for
users' imports. The package's shared angles, dihedrals and chirality are in ``bgflow_se3.geometry``."""

from .frames import (
    FrameMethod,
    cartesian_from_spherical,
    centre_on_aug,
    centre_on_x,
    frame_gram_min_eig,
    orthonormal_frame,
    random_rotation,
    remove_com,
    safe_norm,
    spherical_from_cartesian,
)

__all__ = [
    "FrameMethod",
    "cartesian_from_spherical",
    "centre_on_aug",
    "centre_on_x",
    "frame_gram_min_eig",
    "orthonormal_frame",
    "random_rotation",
    "remove_com",
    "safe_norm",
    "spherical_from_cartesian",
]
