"""Recompute stored sweep runs of one model seed from the shipped models, in an empty cache, and compare each
epoch of their curves with the stored record (`results/sweep-tiny-tofu`).

    python scripts/reproduce_sweep.py --seed 0 --runs npo:0.001 gru_altpo:0.001:pref_beta=0.05

Prints whether the models are the ones the stored runs used (weights fingerprints), then per run and epoch the
holdout KS statistic and forget quality, recomputed and stored, and ends with `max_ks_gap=` and
`max_log10_fq_gap=` over all of them. `tests/test_reproduce.py` runs it on one of these runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile

from sgu_llm.experiments.sweep import Sweep, load_sweep
from sgu_llm.experiments.sweep.config import run_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(ROOT, "recipes", "sweeps", "tiny-tofu.yaml")
STORED = os.path.join(ROOT, "results", "sweep-tiny-tofu")


def parse_run(text: str) -> tuple[str, tuple]:
    """`gru_altpo:0.001:pref_beta=0.05` -> ("gru_altpo", (0.001, (("pref_beta", 0.05),)))."""
    method, lr, *setting = text.split(":")
    pairs = tuple(sorted((k, float(v)) for k, v in (s.split("=") for s in setting)))
    return method, (float(lr), pairs)


def recompute(seed: int, runs: list[tuple[str, tuple]], work: str, split: str = "forget10") -> dict:
    """{"models_match": bool, "runs": {method: [(epoch, ks, stored ks, fq, stored fq), ...]}}: the runs repeated
    with the shipped models (an empty cache under `work`) against the stored records."""
    os.environ["SGU_LLM_CACHE"] = os.path.join(work, "empty-cache")  # nothing trained here: shipped models
    cfg = load_sweep(SWEEP)
    cfg.output_dir = os.path.join(work, "runs")
    seed_dir = os.path.join(cfg.output_dir, split, f"seed{seed}")
    os.makedirs(seed_dir, exist_ok=True)
    shutil.copy(os.path.join(STORED, split, f"seed{seed}", "baselines.json"), seed_dir)
    sweep = Sweep(cfg, log=lambda m: None)
    ctx = sweep.baselines(split, seed, keep=True)
    out = {"models_match": ctx.evals["models_match"], "runs": {}}
    for method, point in runs:
        with open(run_path(cfg, split, seed, method, point).replace(cfg.output_dir, STORED)) as fh:
            stored = json.load(fh)["curve"]
        _, recorder, _ = sweep.unlearn(split, seed, method, point, ctx)
        out["runs"][method] = [
            (g["epoch"], g["holdout_ks"], w["holdout_ks"], g["forget_quality"], w["forget_quality"])
            for g, w in zip(recorder.curve, stored)
        ] + [(None,) * 5] * (len(recorder.curve) != len(stored))  # a length mismatch shows as a None row
    return out


def log10_gap(a: float, b: float) -> float:
    return abs(math.log10(max(a, 1e-300)) - math.log10(max(b, 1e-300)))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", nargs="+", default=["npo:0.001", "gru_altpo:0.001:pref_beta=0.05"])
    args = parser.parse_args()
    os.environ.setdefault("SGU_LLM_QUIET", "1")
    with tempfile.TemporaryDirectory() as work:
        result = recompute(args.seed, [parse_run(r) for r in args.runs], work)
    print(f"models_match={result['models_match']}")
    ks_gap = fq_gap = 0.0
    for method, rows in result["runs"].items():
        for epoch, ks, ks0, fq, fq0 in rows:
            if epoch is None:
                raise SystemExit(f"{method}: the curve has another number of epochs than the stored one")
            ks_gap, fq_gap = max(ks_gap, abs(ks - ks0)), max(fq_gap, log10_gap(fq, fq0))
            print(f"{method} epoch {epoch:g}: holdout_ks {ks:.4f} (stored {ks0:.4f}) forget_quality {fq:.4g} (stored {fq0:.4g})")
    print(f"max_ks_gap={ks_gap:.4g}\nmax_log10_fq_gap={fq_gap:.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
