#!/usr/bin/env python
"""Time timm_isomax.metrics.ood_metrics (all metrics, one sort) on N scores (default 10 million: half ID,
half OOD), with continuous and heavily tied scores. Prints the best of --repeats runs.

    python scripts/benchmark_metrics.py --scores 10000000
"""
import argparse
import sys
import time
from typing import Optional, Sequence

import numpy as np

from timm_isomax.metrics import ood_metrics


def best_seconds(id_scores: np.ndarray, ood_scores: np.ndarray, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ood_metrics(id_scores, ood_scores)
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scores", type=int, default=10_000_000, help="total number of scores (ID + OOD)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    half = args.scores // 2
    id_scores, ood_scores = rng.normal(1.0, 1.0, half), rng.normal(0.0, 1.0, args.scores - half)
    cases = {
        "continuous (float64, no ties)": (id_scores, ood_scores),
        "heavily tied (1,000 distinct values)": (np.round(id_scores, 2), np.round(ood_scores, 2)),
        "float32 scores": (id_scores.astype(np.float32), ood_scores.astype(np.float32)),
    }
    print(f"ood_metrics on {args.scores:,} scores ({half:,} ID + {args.scores - half:,} OOD), best of {args.repeats}:")
    for name, (id_case, ood_case) in cases.items():
        print(f"  {name:40s} {best_seconds(id_case, ood_case, args.repeats):6.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
