"""The alanine dipeptide flow shipped with the package: load it, verify it still matches the code, save a new one.

``systems/aldp/pretrain_flow.py`` makes ``bgflow_se3/systems/data/aldp/icflow_<solvent>.pt``: an
``InternalCoordinateFlow`` trained by maximum likelihood on seeded Langevin data, with its provenance (command,
commit, machine, wall time, metrics) in the file and in ``icflow_<solvent>.json`` beside it. The file also holds
fingerprint configurations and the log q the flow gave them when it was saved: ``load_pretrained_aldp_flow``
recomputes them and raises ``PretrainedModelMismatch`` when the code no longer reproduces them (a changed
Z-matrix, coupling or spline), instead of silently sampling from a different density.
"""

from __future__ import annotations

import io
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..files import write_atomically
from ..flow import InternalCoordinateFlow

__all__ = ["PretrainedModelMismatch", "load_pretrained_aldp_flow", "pretrained_path", "save_pretrained_aldp_flow"]

FINGERPRINT_ATOL = 1e-6  # nats, in float64


class PretrainedModelMismatch(RuntimeError):
    """The shipped model's fingerprint log q differs from what the current code computes from it."""


def pretrained_path(solvent: str = "implicit") -> Path:
    """Where the shipped flow for ``solvent`` lives (inside the installed package)."""
    return Path(str(resources.files("bgflow_se3.systems") / "data" / "aldp" / f"icflow_{solvent}.pt"))


def save_pretrained_aldp_flow(
    flow: InternalCoordinateFlow, config: dict[str, Any], provenance: dict[str, Any], path: str | Path
) -> Path:
    """Write the flow (float32 weights), its constructor ``config`` (without data), fingerprints and provenance.

    Fingerprints: 16 of the flow's own samples and their float64 log q. A JSON copy of the provenance is written
    beside the file.
    """
    path = Path(path)
    flow64 = InternalCoordinateFlow(flow.zmatrix, **config).double()
    flow64.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in flow.state_dict().items()})
    with torch.no_grad():
        x, _ = flow64.sample(16, torch.Generator().manual_seed(0))
        x = x[torch.isfinite(x).all(-1).all(-1)]
        log_q = flow64.log_prob(x)
    state = {k: v.float() if v.is_floating_point() else v for k, v in flow.state_dict().items()}
    payload = {
        "zmatrix": flow.zmatrix.cpu(),
        "config": config,
        "state_dict": state,
        "fingerprint_x": x.cpu(),
        "fingerprint_log_q": log_q.cpu(),
        "provenance": provenance,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomically(path, buffer.getbuffer())
    write_atomically(path.with_suffix(".json"), json.dumps(provenance, indent=2).encode())
    return path


def load_pretrained_aldp_flow(
    solvent: str = "implicit", path: str | Path | None = None, dtype: torch.dtype = torch.float32
) -> tuple[InternalCoordinateFlow, dict[str, Any]]:
    """The shipped flow (in ``dtype``) and its provenance dict.

    Raises ``FileNotFoundError`` naming the recipe when there is none, and ``PretrainedModelMismatch`` when the
    current code gives its fingerprint configurations another log q (beyond 1e-6 nats in float64).
    """
    path = Path(path) if path is not None else pretrained_path(solvent)
    if not path.exists():
        raise FileNotFoundError(
            f"no pretrained flow at {path}; make one with `PYTHONPATH=. python systems/aldp/pretrain_flow.py "
            f"--solvent {solvent}`"
        )
    payload = torch.load(path, map_location="cpu", weights_only=False)
    flow = InternalCoordinateFlow(payload["zmatrix"], **payload["config"]).double()
    try:
        flow.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
    except RuntimeError as error:  # parameter names or shapes changed
        raise PretrainedModelMismatch(f"{path} no longer fits InternalCoordinateFlow: {error}") from error
    with torch.no_grad():
        log_q = flow.log_prob(payload["fingerprint_x"].double())
    expected = payload["fingerprint_log_q"].double()
    error = (log_q - expected).abs().max().item()
    if not error <= FINGERPRINT_ATOL:
        raise PretrainedModelMismatch(
            f"{path}: the current code gives the fingerprint configurations log q off by up to {error:.3g} nats "
            f"(allowed {FINGERPRINT_ATOL}); the flow's definition changed since the model was saved "
            f"({payload['provenance'].get('commit', '?')}): retrain with systems/aldp/pretrain_flow.py"
        )
    return flow.to(dtype), payload["provenance"]
