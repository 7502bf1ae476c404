"""Which forget rows a method misses: the share of rows in each tail of the retain model's truth ratios.

D (the KS distance to the retain model) says how far a method's forget truth ratios are from a retrain's, not
which rows are off. Per model seed, with the retain model's forget truth ratios R_retain, this prints the share
of the method's rows (holdout-selected epoch, stored per row in the sweep records) below the 10th percentile of
R_retain (still known: undershoot) and above its 90th (pushed past a model that never saw them: overshoot). A
retrain puts about 10 % in each tail; a method that only shifts the distribution empties the low tail, one that
spreads it fills both.

    python scripts/row_tails.py results/sweep-tofu-size altpo:0.001 gru_altpo:0.001 \
        --also results/sweep-tofu-size-frontier altpo:0.002 gru_altpo:0.002

The baselines (target, retain, noise floor) are read from the first sweep folder's `baselines.json`.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def load(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def tails(values: np.ndarray, reference: np.ndarray, q: float) -> tuple[float, float]:
    """Shares of `values` below the q-quantile and above the (1 - q)-quantile of `reference`."""
    lo, hi = np.quantile(reference, [q, 1 - q])
    return float((values < lo).mean()), float((values > hi).mean())


def seeds_of(sweep: str, split: str) -> list[int]:
    root = os.path.join(sweep, split)
    return sorted(int(d[4:]) for d in os.listdir(root) if d.startswith("seed") and d[4:].isdigit())


def row(label: str, per_seed: list[tuple[float, float]]) -> str:
    lo, hi = np.array([p[0] for p in per_seed]), np.array([p[1] for p in per_seed])
    return (f"| {label} | {lo.mean():.3f} ({lo.min():.2f}–{lo.max():.2f}) | "
            f"{hi.mean():.3f} ({hi.min():.2f}–{hi.max():.2f}) |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", help="A sweep's output folder (e.g. results/sweep-tofu-size).")
    ap.add_argument("points", nargs="+", help="METHOD:LEARNING_RATE, as the records are named (lr0.001.json).")
    ap.add_argument("--also", nargs="+", action="append", default=[],
                    help="Another sweep folder with the same seeds and models, then its METHOD:LR points.")
    ap.add_argument("--split", default="forget10", help="The forget split (default forget10).")
    ap.add_argument("--quantile", type=float, default=0.1, help="The tail's size in the retain model (0.1).")
    args = ap.parse_args(argv)
    if not 0 < args.quantile < 0.5:
        ap.error(f"--quantile {args.quantile} must lie in (0, 0.5)")
    groups = [(args.sweep, args.points)] + [(g[0], g[1:]) for g in args.also]
    seeds = seeds_of(args.sweep, args.split)
    base = {s: load(os.path.join(args.sweep, args.split, f"seed{s}", "baselines.json")) for s in seeds}
    ref = {s: np.asarray(b["retain"]["per_example"]["forget"]["truth_ratio"], float) for s, b in base.items()}
    pct = f"{args.quantile:.0%}"
    print(f"{args.split}, seeds {seeds}: share of forget rows below the retain model's {pct} quantile of the "
          f"truth ratio (still known) and above its {1 - args.quantile:.0%} quantile (overshoot); mean (min–max)\n")
    print("| model | below (undershoot) | above (overshoot) |\n|---|---|---|")
    for name in ("target", "noise_floor"):
        pairs = [tails(np.asarray(base[s][name]["per_example"]["forget"]["truth_ratio"], float), ref[s], args.quantile)
                 for s in seeds]
        print(row(name, pairs))
    for sweep, points in groups:
        for point in points:
            method, _, lr = point.partition(":")
            if not lr:
                ap.error(f"{point!r}: give METHOD:LEARNING_RATE, e.g. altpo:0.001")
            pairs = []
            for s in seeds:
                path = os.path.join(sweep, args.split, f"seed{s}", method, f"lr{lr}.json")
                if not os.path.exists(path):
                    ap.error(f"no record {path}: run the sweep, or name a method and learning rate it ran")
                rows = np.asarray(load(path)["selections"]["holdout"]["forget_truth_ratios"], float)
                pairs.append(tails(rows, ref[s], args.quantile))
            print(row(f"`{method}` lr {lr} ({os.path.basename(sweep.rstrip('/'))})", pairs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
