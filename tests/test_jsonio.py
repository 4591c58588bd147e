"""Result files are strict JSON: NaN and infinities are written as null, never as the non-JSON word NaN."""

import json
import math

import numpy as np
import pytest

from bgflow_se3.jsonio import strict_json, write_json


def _strict_loads(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity, as every parser outside Python does."""

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_summary_with_nan_is_written_as_strict_json(tmp_path):
    summary = {
        "dF_kT": math.nan,
        "bounds": [math.inf, -math.inf, np.float32(1.5)],
        "n": np.int64(3),
        "reliable": np.bool_(False),
        "nested": {"kl": np.float64("nan"), "profile": np.array([0.0, np.nan])},
        "label": "EXP",
    }
    write_json(tmp_path / "results.json", summary)
    loaded = _strict_loads((tmp_path / "results.json").read_text())
    assert loaded == {
        "dF_kT": None,
        "bounds": [None, None, 1.5],
        "n": 3,
        "reliable": False,
        "nested": {"kl": None, "profile": [0.0, None]},
        "label": "EXP",
    }
    assert _strict_loads(strict_json({"x": math.nan}, indent=None)) == {"x": None}
    with pytest.raises(TypeError):
        strict_json({"x": object()})  # what JSON cannot hold still fails loudly
