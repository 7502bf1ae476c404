"""Rows of `docs/results.json` from finished `sgu-llm run` folders, in the sweep's row format.

    python scripts/run_rows.py --model smollm2-135m-instruct \
        recipes/smollm2-135m/sgu.yaml=runs/smollm2-sgu recipes/smollm2-135m/npo.yaml=runs/smollm2-npo ...

Each RECIPE=RUN_DIR pair is one run (one model seed); the row's method is the recipe's file name and its
fields (method, selective function, forget loss, learning rate, split, seed) come from the recipe. The rows
replace that model's rows in results.json; every other model's rows are kept.
"""

from __future__ import annotations

import argparse
import json
import os

import yaml

from sgu_llm.experiments.sweep.records import aggregate, merge_rows, run_record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ("method", "selective_function", "forget_loss")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="RECIPE.yaml=RUN_DIR pairs")
    ap.add_argument("--model", required=True, help="The `model` field of the rows.")
    ap.add_argument("--results", default=os.path.join(ROOT, "docs", "results.json"))
    ap.add_argument("--utility_floor", type=float, default=0.95)
    a = ap.parse_args()
    records, baselines = [], {}
    for pair in a.runs:
        recipe, run_dir = pair.split("=", 1)
        with open(recipe) as fh:
            cfg = yaml.safe_load(fh)
        with open(os.path.join(run_dir, "metrics.json")) as fh:
            metrics = json.load(fh)
        name = os.path.splitext(os.path.basename(recipe))[0]
        fields = {k: cfg[k] for k in FIELDS if k in cfg}
        split, seed = cfg.get("forget_split", "forget10"), cfg.get("seed", 0)
        record, base = run_record(metrics, name, fields, float(cfg["learning_rate"]), split, seed)
        records.append(record)
        baselines.setdefault(split, {})[seed] = base
    rows = aggregate(records, baselines, a.utility_floor, selections=("holdout",))
    for r in rows:
        r["model"] = a.model
    merge_rows(a.results, rows, a.model)
    for r in rows:
        print(f"{r['method']}: forget quality {r['forget_quality_mean']:.3g}, utility {r['model_utility_mean']:.3f} "
              f"(target {r['target_model_utility']:.3f})")


if __name__ == "__main__":
    main()
