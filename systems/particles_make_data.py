"""Make (or remake) the cached equilibrium data of the particle benchmarks: DW4, LJ13, LJ55.

    PYTHONPATH=. python systems/particles_make_data.py dw4 lj13 [--cache DIR] [--force]

Settings live in ``bgflow_se3.simulate.particle_mcmc.PARTICLE_SYSTEMS``; each folder's README records them and the
measured time. LJ55 is slow on a CPU (tens of minutes); DW4 takes seconds, LJ13 a few minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from bgflow_se3.simulate.particle_mcmc import (
    PARTICLE_SYSTEMS,
    default_cache_dir,
    make_particle_data,
    stale_cache_reason,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("systems", nargs="+", choices=sorted(PARTICLE_SYSTEMS))
    parser.add_argument("--cache", type=Path, default=None, help=f"cache folder (default {default_cache_dir()})")
    parser.add_argument("--force", action="store_true", help="regenerate even if cached data exist")
    parser.add_argument("--device", default="cpu", help="where the chains run, e.g. cuda (LJ55)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in args.systems:
        folder = (args.cache or default_cache_dir()) / name
        stale = stale_cache_reason(name, args.cache)
        if stale:
            print(f"{name}: {stale}; regenerating")
        if (folder / "meta.json").exists() and not args.force and not stale:
            print(f"{name}: cached at {folder} (use --force to regenerate)")
            continue
        out = make_particle_data(name, cache_dir=args.cache, device=args.device)
        meta = json.loads((out / "meta.json").read_text())
        check = meta["check"]
        print(
            f"{name}: tau_int {meta['tau_int_steps']:.1f} steps, thin {meta['thin_steps']}, "
            f"acceptance {meta['acceptance']:.2f}, virial {check['virial']:.2f} +- {check['virial_stderr']:.2f} "
            f"(expected {check['virial_expected']:.0f}), {meta['wall_time_s']:.0f} s -> {out}"
        )


if __name__ == "__main__":
    main()
