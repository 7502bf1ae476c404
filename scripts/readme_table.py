"""The README's results table, printed from docs/results.json (the sweep's reported rows).

    python scripts/readme_table.py [--split forget10] [--model tiny-llama]

Rows: each method's reported point (holdout selection, the learning rate the sweep's shared rule chose),
best mean forget quality first.
"""

from __future__ import annotations

import argparse
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def g(x: float) -> str:
    return f"{x:.2g}" if abs(x) < 0.01 else f"{x:.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=os.path.join(ROOT, "docs", "results.json"))
    ap.add_argument("--split", default="forget10")
    ap.add_argument("--model", default="tiny-llama")
    a = ap.parse_args()
    with open(a.results) as fh:
        rows = json.load(fh)
    rows = [
        r
        for r in rows
        if r["split"] == a.split and r.get("model", "tiny-llama") == a.model and r["selection"] == "holdout"
        and r.get("reported")
    ]
    rows.sort(key=lambda r: -r["forget_quality_mean"])
    if not rows:
        raise SystemExit(f"no reported rows for {a.split} / {a.model} in {a.results}")
    seeds = rows[0]["seeds"]
    print(
        f"{a.split}, {len(seeds)} model seeds; target utility {rows[0]['target_model_utility']:.3f} (mean); noise floors "
        + ", ".join(g(x) for x in rows[0]["noise_floor_forget_quality"])
        + ":\n"
    )
    print("| method | family | lr | forget quality: mean (median; min–max) | model utility (x target) | forget ROUGE | privleak |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        fq = (
            f"{g(r['forget_quality_mean'])} ({g(r['forget_quality_median'])}; "
            f"{g(r['forget_quality_min'])}–{g(r['forget_quality_max'])})"
        )
        mu = f"{r['model_utility_mean']:.3f} ({r['model_utility_mean'] / r['target_model_utility']:.2f})"
        print(
            f"| `{r['method']}` | {r['family']} | {r['learning_rate']:g} | {fq} | {mu} | "
            f"{r['forget_rouge_mean']:.3f} | {r['privleak_mean']:.1f} |"
        )


if __name__ == "__main__":
    main()
