"""Old module paths of the catalogue that forward to the drivers' new homes, lazily.

The drivers moved from ``bgflow_se3.systems`` to ``bgflow_se3.simulate``; the catalogue imports nothing of
``bgflow_se3.simulate``, so each old module defines ``__getattr__ = forwarding_getattr(__name__, new_modules)``:
a name is looked up in the new modules (in order) on first use, and importing the catalogue imports no driver.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import import_module
from typing import Any

__all__ = ["forwarding_getattr"]


def forwarding_getattr(module_name: str, new_modules: Sequence[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``module_name`` that returns ``name`` from the first of ``new_modules`` that has
    it, importing that module on first use; ``AttributeError`` when none has it."""

    def __getattr__(name: str) -> Any:
        for module in new_modules:
            try:
                return getattr(import_module(module), name)
            except AttributeError:
                continue
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    return __getattr__
