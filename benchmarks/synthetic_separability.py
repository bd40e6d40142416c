"""Does one phase of the synthetic multiphase liver data decide the class? Per-phase vs all-phase linear classifiers.

    python benchmarks/synthetic_separability.py [--n-cases 150] [--seeds 0 1 2] [--shape 64 96 96] [--motion]

Prints one JSON line per seed: accuracy of a cross-validated logistic regression on hand-crafted lesion features
(lesion-minus-liver HU, rim-minus-core HU) of all phases together (the baseline a single phase is compared with) and
of each phase alone. See :mod:`nnunet_ext.evaluation.separability`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time


def main(argv=None) -> int:
    from nnunet_ext.evaluation.separability import phase_separability

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-cases", type=int, default=150)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--shape", type=int, nargs=3, default=[64, 96, 96])
    p.add_argument("--spacing", type=float, nargs=3, default=[2.0, 1.5, 1.5])
    p.add_argument("--motion", action="store_true", help="default misalignment (3 mm / 3 deg) instead of none")
    args = p.parse_args(argv)
    for seed in args.seeds:
        t0 = time.time()
        res = phase_separability(args.n_cases, seed, tuple(args.shape), tuple(args.spacing),
                                 3.0 if args.motion else 0.0, 3.0 if args.motion else 0.0)
        print(json.dumps({"seed": seed, "n_cases": args.n_cases, "shape": args.shape, "motion": args.motion, **res,
                          "seconds": round(time.time() - t0, 1), "machine": platform.node()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
