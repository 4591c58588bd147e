"""Quick demo: batched reduced energies and forces of alanine dipeptide and LJ13 (CPU, seconds).

python examples/energy_demo.py
"""

import torch

from bgflow_se3 import LennardJonesEnergy
from bgflow_se3.systems import load_aldp


def main() -> None:
    aldp = load_aldp("implicit")
    print(
        f"alanine dipeptide: {aldp.system.getNumParticles()} atoms, forces "
        f"{[type(f).__name__ for f in aldp.system.getForces()]}"
    )
    generator = torch.Generator().manual_seed(0)
    lj13 = LennardJonesEnergy(13)
    x = torch.randn(1024, 13, 3, generator=generator, dtype=torch.float64)
    u = lj13(x)
    f = lj13.force(x)
    print(f"LJ13: u of 1024 random configurations, median {u.median():.1f} kT; |force| max {f.abs().max():.3g}")


if __name__ == "__main__":
    main()
