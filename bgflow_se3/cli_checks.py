"""argparse ``type=`` checks shared by the ``bgflow-se3`` command line and the example scripts.

Each function takes the option's text and returns the converted value, or raises ``argparse.ArgumentTypeError``,
which argparse turns into a one-line usage error (exit code 2) at parse time, before any work starts. argparse
applies ``type`` to defaults only when they are strings, so a ``Path`` default (e.g. an optional cache that may not
exist yet) is left as it is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["existing_directory", "n_bootstrap", "output_directory", "positive_int", "umbrella_cache"]


def output_directory(text: str) -> Path:
    """A folder to write into: new or an existing directory, never an existing file (nor below one)."""
    path = Path(text)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise argparse.ArgumentTypeError(
                    f"{folder} is an existing file, not a directory: give a new or existing folder"
                )
            break
    return path


def existing_directory(text: str) -> Path:
    """A folder that must exist (an explicitly given cache or reference directory)."""
    path = Path(text)
    if not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"{path} {what}: give an existing folder, or leave the option out")
    return path


def umbrella_cache(text: str) -> Path:
    """An umbrella-sampling cache holding ``profile.npz`` (written by ``systems/aldp/umbrella.py``)."""
    path = existing_directory(text)
    if not (path / "profile.npz").is_file():
        raise argparse.ArgumentTypeError(
            f"{path} has no profile.npz: run `PYTHONPATH=. python systems/aldp/umbrella.py` or give the folder it "
            "wrote (its --cache)"
        )
    return path


def positive_int(text: str) -> int:
    """An integer >= 1 (bins, windows, counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer: give a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def n_bootstrap(text: str) -> int:
    """A bootstrap count: 0 (no bootstrap: the asymptotic error) or at least 2."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer: give 0 or at least 2") from None
    if value < 0 or value == 1:
        raise argparse.ArgumentTypeError(f"must be 0 (no bootstrap) or at least 2, got {value}")
    return value
