"""Plots of training curves (matplotlib, Agg canvas; no pyplot state)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_training_curves"]

DEFAULT_KEYS = ("loss", "ess_flow", "ess", "ess_ais", "grad_norm", "lr", "hmc_acceptance", "n_target_evaluations")


def plot_training_curves(
    history: Sequence[dict[str, float]], path: str | Path, keys: Sequence[str] = DEFAULT_KEYS
) -> Path:
    """Plot each metric in ``keys`` present in ``history`` against the iteration; save a PNG at ``path``.

    history: records with an ``iteration`` entry (as ``TrainResult.history``). Returns the path written.
    """
    keys = [k for k in keys if any(math.isfinite(float(r.get(k, math.nan))) for r in history)]
    if not keys:
        raise ValueError("none of the requested metrics has a finite value in the history")
    it = np.array([r["iteration"] for r in history], dtype=float)
    n_cols = min(3, len(keys))
    n_rows = math.ceil(len(keys) / n_cols)
    fig = Figure(figsize=(4.0 * n_cols, 3.0 * n_rows))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.93, wspace=0.3, hspace=0.5)
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(n_rows, n_cols, i + 1)
        y = np.array([float(r.get(key, math.nan)) for r in history])
        ok = np.isfinite(y)
        ax.plot(it[ok], y[ok], lw=1)
        if key in ("grad_norm", "lr") and np.all(y[ok] > 0):
            ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_title(key)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path
