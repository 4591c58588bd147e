"""Strict JSON for the result files (results.json, summary.json): NaN and infinities are written as ``null``.

``json.dumps`` writes a float NaN as the bare word ``NaN``, which is not JSON (jq, JavaScript and most parsers
reject the file). Every results/summary file of the library, the examples and the recipes goes through
``write_json``: non-finite floats become ``null`` (read back as None: "no number"), numpy scalars and arrays become
plain numbers and lists, and ``json.dumps(..., allow_nan=False)`` guarantees the output is valid JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .files import write_atomically

__all__ = ["json_safe", "strict_json", "write_json"]


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None and numpy scalars/arrays turned into Python ones.

    Dicts (string keys), lists and tuples are converted recursively; other objects are returned unchanged (so that
    ``json.dumps`` still rejects what it cannot write).
    """
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def strict_json(value: Any, indent: int | None = 2) -> str:
    """Valid JSON text of ``value`` (see ``json_safe``): NaN and +/-inf are written as ``null``."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False)


def write_json(path: str | Path, value: Any, indent: int | None = 2) -> None:
    """Write ``value`` to ``path`` as strict JSON (``strict_json``), with a final newline, atomically
    (``files.write_atomically``: an interrupted write leaves the old file)."""
    write_atomically(Path(path), (strict_json(value, indent) + "\n").encode())
