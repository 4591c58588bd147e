"""This process's own cgroups: the directories whose limits bind it, for one controller, in cgroup v2 and v1.

A batch system (SLURM, Kubernetes) confines a job by the limits of the job's cgroup, which is rarely the top of the
hierarchy: the process's cgroup is named in /proc/self/cgroup, the hierarchies' mount points in
/proc/self/mountinfo, and a parent's limit binds its children too, so every ancestor up to the mount counts.
``memory`` (memory limits) and ``threads`` (CPU quota) read their files in the directories ``own_cgroups`` returns.
Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

__all__ = ["CgroupDirs", "Mount", "cgroup_mounts", "own_cgroups"]

#: this process's /proc entry (its ``cgroup`` and ``mountinfo`` files are read)
PROC_SELF = Path("/proc/self")
#: where the v2 (unified) hierarchy is assumed to be mounted when mountinfo cannot be read
CGROUP2_MOUNT = Path("/sys/fs/cgroup")


class Mount(NamedTuple):
    """One cgroup mount from /proc/self/mountinfo."""

    root: str  # the cgroup path of the mount's top directory, e.g. "/" (or "/docker/<id>" without a cgroup namespace)
    point: Path  # where it is mounted, e.g. /sys/fs/cgroup
    fstype: str  # "cgroup2" or "cgroup" (v1)
    options: frozenset[str]  # super options; for v1 they name the controllers, e.g. {"rw", "cpu", "cpuacct"}


class CgroupDirs(NamedTuple):
    """The directories of one hierarchy whose limits bind this process."""

    version: int  # 2 (the unified hierarchy) or 1 (the v1 hierarchy of the controller)
    dirs: tuple[Path, ...]  # this process's own cgroup directory first, then each ancestor up to the mount point


def own_cgroups(
    controller: str, v1_mount: Path, proc_self: Path | None = None, v2_mount: Path | None = None
) -> list[CgroupDirs]:
    """This process's cgroup and its ancestors, for each hierarchy that may hold ``controller``'s limits.

    controller: the v1 controller name, e.g. "memory" or "cpu" (a v1 line "3:cpu,cpuacct:/slurm" matches "cpu").
    One entry for the v2 line of /proc/self/cgroup ("0::/path") and one for the v1 line naming ``controller``, in
    the file's order, each in the first mount (from ``proc_self``/mountinfo: cgroup2, or cgroup whose options name
    the controller) that shows it. Without mountinfo, ``v2_mount`` (default ``CGROUP2_MOUNT``) and ``v1_mount``
    (e.g. /sys/fs/cgroup/cpu) are assumed. A path the mount does not hold (a cgroup namespace the mount does not
    reflect) falls back to the mount's top directory, the nearest cgroup this process can see. [] when
    ``proc_self``/cgroup (default ``PROC_SELF``) cannot be read.
    """
    proc_self = PROC_SELF if proc_self is None else proc_self
    v2_mount = CGROUP2_MOUNT if v2_mount is None else v2_mount
    try:
        lines = (proc_self / "cgroup").read_text().splitlines()
    except OSError:
        return []
    mounts = cgroup_mounts(proc_self / "mountinfo")
    found = []
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and controllers == "":  # v2, the unified hierarchy
            candidates = [m for m in mounts if m.fstype == "cgroup2"] or [Mount("/", v2_mount, "cgroup2", frozenset())]
            version = 2
        elif controller in controllers.split(","):  # v1, the controller's hierarchy
            candidates = [m for m in mounts if m.fstype == "cgroup" and controller in m.options]
            candidates = candidates or [Mount("/", v1_mount, "cgroup", frozenset({controller}))]
            version = 1
        else:
            continue
        for mount in candidates:
            leaf = _cgroup_dir(mount, path)
            if leaf is not None:
                found.append(CgroupDirs(version, tuple(_ancestors(leaf, mount.point))))
                break
    return found


def cgroup_mounts(mountinfo: Path) -> list[Mount]:
    """The cgroup (v1) and cgroup2 mounts listed in ``mountinfo`` (/proc/self/mountinfo); [] when unreadable.

    A line reads "id parent major:minor root mount-point options [optional fields] - fstype source super-options".
    """
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if len(fields) < sep + 3 or fields[sep + 1] not in ("cgroup", "cgroup2"):
            continue
        options = frozenset(fields[sep + 3].split(",")) if len(fields) > sep + 3 else frozenset()
        mounts.append(Mount(_unescape(fields[3]), Path(_unescape(fields[4])), fields[sep + 1], options))
    return mounts


def _unescape(field: str) -> str:
    """A mountinfo path with its octal escapes (\\040 for a space, \\011, \\012, \\134) decoded."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _cgroup_dir(mount: Mount, path: str) -> Path | None:
    """The directory of cgroup ``path`` (from /proc/self/cgroup) under ``mount``, or None when it is not mounted.

    The path is relative to the hierarchy's root and the mount shows the subtree at ``mount.root``. When the path is
    not under the mount's root, the mount's top directory stands in.
    """
    root = mount.root.rstrip("/")
    if path == root or path.startswith(root + "/"):
        candidate = mount.point / path[len(root) :].lstrip("/")
        if candidate.is_dir():
            return candidate
    return mount.point if mount.point.is_dir() else None


def _ancestors(leaf: Path, top: Path) -> Iterator[Path]:
    """``leaf``, its parent, ... up to and including ``top`` (the mount point of the hierarchy)."""
    directory = leaf
    while True:
        yield directory
        if directory == top or directory.parent == directory:
            return
        directory = directory.parent
