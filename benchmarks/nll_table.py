"""Test NLL (nats per configuration) of the flows on DW4 and LJ13 after maximum-likelihood training on 1e3 samples.

    PYTHONPATH=. python benchmarks/nll_table.py --quick                 # small models, a few minutes on a CPU
    PYTHONPATH=. python benchmarks/nll_table.py --device cuda           # full models (a GPU recommended)
    PYTHONPATH=. python benchmarks/nll_table.py --test-file dw4_test.npy --test-file lj13_test.npy

Models: E-NF (EGNN CNF), Köhler's radial-kernel CNF, the non-equivariant RealNVP (with and without random-rotation
augmentation of the training data), and the augmented coupling flow (each projection) when
``bgflow_se3.flow.AugmentedCouplingFlow`` exists (its marginal log q by importance sampling, K = 20). Every NLL uses
the CoM-free Gaussian normalised on the (n_atoms - 1) * dim subspace, so it compares with the literature (E-NF
Table 1: DW4 8.15 at 1e3; LJ13 30.56 at 1e3; augmented flow LJ13 about 30.2). CNFs train with the Hutchinson trace
and are evaluated with the exact trace. ``--test-file`` evaluates every trained model on an external ``.npy`` test
set of shape (n, n_atoms * dim) (the layout of the public data sets; the CoM is removed here). Writes JSON (``--out``)
and a Markdown table next to it; prints each NLL and its difference to E-NF from the same run.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from bgflow_se3.flow import ENFlow, KernelFlow, NonEquivariantFlow, random_rotations
from bgflow_se3.systems.particle_data import load_particle_data, remove_com

SHAPES = {"dw4": (4, 2), "lj13": (13, 3), "lj55": (55, 3)}
PUBLISHED = {"dw4": {"E-NF (paper)": 8.15}, "lj13": {"E-NF (paper)": 30.56, "augmented flow (paper)": 30.19}}
BASELINES = ("enf", "kernel", "noneq", "noneq_rot")


def _augmented_flow_class():
    try:
        from bgflow_se3.flow import AugmentedCouplingFlow
    except ImportError:
        return None
    return AugmentedCouplingFlow


def build_model(name: str, n_atoms: int, dim: int, quick: bool, scale: float = 1.0) -> nn.Module:
    """A fresh model; ``name`` is a baseline key or ``augmented_<projection>``; scale: the data's RMS coordinate."""
    if name == "enf":
        steps = 4 if quick else 20
        return ENFlow(n_atoms, dim, hidden=16 if quick else 32, n_steps=steps, trace="hutchinson", length_scale=scale)
    if name == "kernel":
        return KernelFlow(n_atoms, dim, n_kernels=32 if quick else 64, n_steps=8 if quick else 20, length_scale=scale)
    if name.startswith("noneq"):
        layers, hidden = (6, 64) if quick else (12, 128)
        return NonEquivariantFlow(n_atoms, dim, n_layers=layers, hidden=hidden, length_scale=scale)
    if name.startswith("augmented_"):
        cls = _augmented_flow_class()
        wanted = {
            "dim": dim,
            "projection": name.removeprefix("augmented_"),
            "n_blocks": 3 if quick else 12,
            "hidden": 32 if quick else 128,
            "length_scale": scale,
        }
        accepted = inspect.signature(cls).parameters
        return cls(n_atoms, **{k: v for k, v in wanted.items() if k in accepted})
    raise ValueError(f"unknown model {name!r}")


def _loss(model: nn.Module, name: str, x: Tensor, generator: torch.Generator) -> Tensor:
    """Per-sample training loss (batch,): -log q(x), or for the augmented flow -log q(x, a) + log pi(a|x) + aux."""
    if name.startswith("augmented_"):
        a = model.sample_aug_target(x, generator=generator)
        log_q, aux = model.log_prob_joint_and_aux(x, a)
        return -(log_q - model.log_prob_aug_target(a, x)) + aux
    if name == "noneq_rot":
        rot = random_rotations(x.shape[0], x.shape[-1], generator, dtype=x.dtype).to(x.device)
        x = torch.einsum("bij,bnj->bni", rot, x)
    return -model.log_prob(x)


def train(model: nn.Module, name: str, data: Tensor, steps: int, batch: int, lr: float, seed: int) -> float:
    """Adam with cosine decay; non-finite batches are skipped, gradients clipped at norm 10. Returns seconds."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(len(data), (batch,), generator=gen)
        loss = _loss(model, name, data[idx.to(data.device)], gen)
        finite = torch.isfinite(loss)
        if finite.any():
            opt.zero_grad()
            loss[finite].mean().backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
        sched.step()
    return time.perf_counter() - start


def evaluate_nll(model: nn.Module, name: str, x: Tensor, batch: int = 250) -> tuple[float, float]:
    """Mean test NLL and its standard error (nats per configuration) in float64 with exact traces."""
    model = model.double()
    x = remove_com(x.double())
    nll = []
    with torch.no_grad():  # the CNFs switch grad on internally for their traces, without a parameter graph
        for chunk in x.split(batch):
            if name.startswith("augmented_"):
                lp = model.log_prob(chunk, n_samples=20)
            elif name == "enf":
                lp = model.log_prob(chunk, trace="exact")
            else:
                lp = model.log_prob(chunk)
            nll.append(-lp)
    nll = torch.cat(nll)
    model.float()
    return nll.mean().item(), nll.std().item() / math.sqrt(len(nll))


def load_test_file(path: Path) -> tuple[str, Tensor]:
    """An external test set (n, n_atoms * dim) -> (system name, CoM-free tensor (n, n_atoms, dim))."""
    arr = np.load(path)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected shape (n, n_atoms * dim), got {arr.shape}")
    for name, (n, d) in SHAPES.items():
        if arr.shape[1] == n * d:
            return name, remove_com(torch.from_numpy(arr).double().reshape(-1, n, d))
    raise ValueError(f"{path}: {arr.shape[1]} columns match none of {SHAPES}; expected n_atoms * dim")


def _markdown(results: list[dict]) -> str:
    lines = [
        "| system | test set | model | test NLL (nats) | vs E-NF | train NLL | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        delta = "" if r.get("delta_vs_enf") is None else f"{r['delta_vs_enf']:+.2f}"
        lines.append(
            f"| {r['system']} | {r['test_set']} | {r['model']} | {r['test_nll']:.2f} ± {r['test_nll_stderr']:.2f} "
            f"| {delta} | {r['train_nll']:.2f} | {r['train_time_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small models, few steps (minutes on a CPU)")
    parser.add_argument("--systems", nargs="+", default=["dw4", "lj13"], choices=sorted(SHAPES))
    parser.add_argument("--models", nargs="+", default=None, help="subset of: enf kernel noneq noneq_rot augmented")
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default 300 quick, 5000 full)")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--lr", type=float, default=None, help="default 1e-3 (5e-4 for E-NF, 2e-4 augmented)")
    parser.add_argument("--n-test", type=int, default=None, help="test configurations (default all; 500 quick)")
    parser.add_argument("--test-file", type=Path, action="append", default=[])
    parser.add_argument("--cache", type=Path, default=None, help="data cache folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/nll_table.json"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    steps = args.steps or (300 if args.quick else 5000)
    n_test = args.n_test or (500 if args.quick else None)

    wanted = args.models or [*BASELINES, "augmented"]
    models = [m for m in wanted if m in BASELINES]
    if "augmented" in wanted:
        cls = _augmented_flow_class()
        if cls is None:
            print("augmented flow: bgflow_se3.flow.AugmentedCouplingFlow not found, skipped")
        else:
            models += ["augmented_spherical", "augmented_cartesian", "augmented_vector"]
    external = [load_test_file(p) + (str(p),) for p in args.test_file]

    results: list[dict] = []
    for system in args.systems:
        n_atoms, dim = SHAPES[system]
        train_x = load_particle_data(system, "train", cache_dir=args.cache)[: args.n_train].to(args.device)
        test_x = load_particle_data(system, "test", cache_dir=args.cache)[:n_test].to(args.device)
        test_sets = [("ours", test_x)] + [(f, x.to(args.device)) for s, x, f in external if s == system]
        scale = math.sqrt(train_x.pow(2).sum(dim=(1, 2)).mean().item() / ((n_atoms - 1) * dim))
        enf_nll: dict[str, float] = {}
        for name in models:
            torch.manual_seed(args.seed)
            try:
                model = build_model(name, n_atoms, dim, args.quick, scale).to(args.device)
            except (ValueError, NotImplementedError) as err:
                print(f"{system} {name}: skipped ({err})")
                continue
            lr = args.lr or (5e-4 if name == "enf" else 2e-4 if name.startswith("augmented") else 1e-3)
            # E-NF's RK4 solve with a trace per stage is ~10x slower per step on a CPU: a third of the steps in --quick
            n_steps = max(1, steps // 3) if args.quick and name == "enf" else steps
            seconds = train(model, name, train_x, n_steps, args.batch, lr, args.seed)
            train_nll, _ = evaluate_nll(model, name, train_x[:n_test])
            for label, x in test_sets:
                nll, err = evaluate_nll(model, name, x)
                if name == "enf":
                    enf_nll[label] = nll
                row = {
                    "system": system, "test_set": label, "model": name, "n_train": len(train_x),
                    "test_nll": nll, "test_nll_stderr": err, "train_nll": train_nll, "train_time_s": seconds,
                    "delta_vs_enf": nll - enf_nll[label] if label in enf_nll else None,
                }  # fmt: skip
                results.append(row)
                delta = "" if row["delta_vs_enf"] is None else f" ({row['delta_vs_enf']:+.2f} vs E-NF)"
                print(f"{system} [{label}] {name}: test NLL {nll:.2f} ± {err:.2f}{delta}, train NLL {train_nll:.2f}, "
                      f"{seconds:.0f} s")  # fmt: skip

    table = _markdown(results)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "nll_table",
        "quick": args.quick,
        "steps": steps,
        "batch": args.batch,
        "n_train": args.n_train,
        "device": args.device,
        "machine": platform.platform(),
        "torch": torch.__version__,
        "published": PUBLISHED,
        "results": results,
    }
    args.out.write_text(json.dumps(payload, indent=2))
    args.out.with_suffix(".md").write_text(table + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
