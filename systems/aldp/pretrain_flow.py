"""Recipe of the shipped alanine dipeptide flow: seeded Langevin data + maximum likelihood, with provenance.

    PYTHONPATH=. python systems/aldp/pretrain_flow.py                      # the shipped model (~45 min, 2 CPU cores)
    PYTHONPATH=. python systems/aldp/pretrain_flow.py --iterations 50 --replicas 36 --ps 2 --out /tmp/x.pt  # seconds

Data: ``seeded_aldp_md`` (Langevin replicas started in every Ramachandran basin, TorchForceField float32); the
last 10 % of the replicas are held out for the validation NLL. Model: ``InternalCoordinateFlow`` (8 mixed spline
couplings, MLPs 2 x 128, 8 bins) trained by ``fit_ml`` (Adam, warm-up + cosine). Written to
``bgflow_se3/systems/data/aldp/icflow_<solvent>.pt`` with a JSON of its provenance (command, commit, machine, wall
time, data, validation NLL, reverse ESS of the flow alone on 20,000 samples per phi state).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bgflow_se3.energy import TorchForceField
from bgflow_se3.flow import InternalCoordinateFlow
from bgflow_se3.reweight import effective_sample_size, log_importance_weights
from bgflow_se3.sampling.torsion_setting import torsion_angle
from bgflow_se3.simulate.pretrained import pretrained_path, save_pretrained_aldp_flow
from bgflow_se3.simulate.seeded_md import seeded_aldp_md
from bgflow_se3.systems import load_aldp
from bgflow_se3.systems.aldp import PHI_ATOMS, is_l_form
from bgflow_se3.train import fit_ml

CONFIG = dict(n_layers=8, hidden=128, n_hidden=2, n_bins=8)


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solvent", default="implicit", choices=["implicit", "vacuum"])
    parser.add_argument("--replicas", type=int, default=504)
    parser.add_argument("--ps", type=float, default=20.0, help="Langevin ps per replica after 1 ps equilibration")
    parser.add_argument("--iterations", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="default: the package's shipped model path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    commit = _commit()  # the code that runs, not the checkout at the end
    start = time.perf_counter()
    aldp = load_aldp(args.solvent)
    energy = TorchForceField.from_system(aldp.system, 300.0)
    frames = seeded_aldp_md(
        aldp, energy, args.replicas, args.ps, save_every_ps=0.1, generator=torch.Generator().manual_seed(args.seed)
    )
    md_s = time.perf_counter() - start
    per_replica = frames.reshape(-1, args.replicas, 22, 3)
    n_val = max(1, args.replicas // 10)
    train = per_replica[:, :-n_val].reshape(-1, 22, 3).double()
    valid = per_replica[:, -n_val:].reshape(-1, 22, 3).double()
    flow = InternalCoordinateFlow.for_topology(aldp.topology, data=train, seed=args.seed, **CONFIG)
    result = fit_ml(
        flow,
        train.float(),
        batch_size=args.batch_size,
        n_iterations=args.iterations,
        lr=args.lr,
        warmup_iterations=min(200, args.iterations // 10 + 1),
        seed=args.seed,
        plot=False,
    )
    train_s = time.perf_counter() - start - md_s
    flow64 = flow.double()
    with torch.no_grad():
        val_nll = float(-flow64.log_prob(valid).mean())
        x, log_q = flow64.sample(20_000, torch.Generator().manual_seed(args.seed + 1))
        u = TorchForceField.from_system(aldp.system, 300.0)(x)
        u = torch.where(is_l_form(x), u, torch.full_like(u, np.inf))
    log_w = log_importance_weights(log_q.numpy(), u.numpy())
    positive = (torsion_angle(x, PHI_ATOMS) > 0).numpy()
    metrics = {
        "validation_nll": val_nll,
        "final_train_loss": result.last("loss", 50),
        "reverse_ess_20000": effective_sample_size(log_w).fraction,
        "effective_samples_phi_positive": effective_sample_size(np.where(positive, log_w, -np.inf)).count,
        "effective_samples_phi_negative": effective_sample_size(np.where(~positive, log_w, -np.inf)).count,
        "d_fraction": float(1 - is_l_form(x).double().mean()),
    }
    provenance = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "commit": commit,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {args.threads} threads",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "data": {
            "replicas": args.replicas,
            "ps_per_replica": args.ps,
            "frames_train": len(train),
            "frames_valid": len(valid),
        },
        "training": {"iterations": args.iterations, "batch_size": args.batch_size, "lr": args.lr, "config": CONFIG},
        "wall_s": {"md": md_s, "training": train_s, "total": time.perf_counter() - start},
        "metrics": metrics,
    }
    out = args.out or pretrained_path(args.solvent)
    save_pretrained_aldp_flow(flow.float(), CONFIG, provenance, out)
    print(json.dumps(provenance, indent=2))


if __name__ == "__main__":
    main()
