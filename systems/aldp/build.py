"""Rebuild the shipped alanine dipeptide files: python systems/aldp/build.py [--out DIR].

Writes aldp.pdb (openmmtools' ACE-ALA-NME structure) and the serialized Systems vacuum.xml (amber99sbildn.xml),
implicit.xml (amber99sbildn.xml + amber99_obc.xml) and gbn2.xml (amber14-all.xml + implicit/gbn2.xml), NoCutoff,
constraints=None, no CMMotionRemover.
"""

import argparse
from pathlib import Path

from bgflow_se3.simulate.aldp_files import write_aldp_files

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "bgflow_se3" / "systems" / "data" / "aldp"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    write_aldp_files(args.out)
    print(f"wrote {sorted(p.name for p in args.out.iterdir())} to {args.out}")
