"""The README's results table, printed from docs/results.json (the sweep's reported rows).

    python scripts/readme_table.py [--split forget10] [--model tiny-llama] [--rows 12]

Rows: each method's reported point (holdout selection, the point the sweep's shared rule chose), best mean
forget quality first, the first `--rows` of them; docs/results.md has every row.
"""

from __future__ import annotations

import argparse
import json
import os

from sgu_llm.core.formatting import fmt
from sgu_llm.report.tables import band_cell, d_cell, point_label, relearn_rise_cell

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def point(row: dict) -> str:
    """The row's point; a crossfit row has one per seed."""
    if row["selection"] == "crossfit":
        return ", ".join(point_label(e) for e in row["per_seed"])
    return point_label(row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=os.path.join(ROOT, "docs", "results.json"))
    ap.add_argument("--split", default="forget10")
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--benchmark", default=None, help="the rows' benchmark (e.g. tofu-size); default: rows without one")
    ap.add_argument("--selection", default="holdout", help="holdout (each method's reported point) or crossfit")
    a = ap.parse_args()
    with open(a.results) as fh:
        rows = json.load(fh)
    rows = [
        r
        for r in rows
        if r["split"] == a.split and r.get("model", "tiny-llama") == a.model and r.get("benchmark") == a.benchmark
        and r["selection"] == a.selection and (r.get("reported") or a.selection == "crossfit")
    ]
    rows.sort(key=lambda r: (r.get("forget_ks_d_mean", 1.0), -r["forget_quality_mean"]))
    if not rows:
        raise SystemExit(f"no reported rows for {a.split} / {a.model} in {a.results}")
    seeds = rows[0]["seeds"]
    base = next((r["baseline_diagnostics"] for r in rows if r.get("baseline_diagnostics")), {})
    retain = base.get("retain", {})
    print(
        f"{a.split}, {len(seeds)} model seeds; target utility {rows[0]['target_model_utility']:.3f} (mean); noise floors "
        + ", ".join(fmt(x) for x in rows[0]["noise_floor_forget_quality"])
        + f"; retain model: mean R {fmt(retain.get('forget_tr_mean'))}, outrank {fmt(retain.get('forget_outrank'))}"
        + f"; the first {min(a.rows, len(rows))} of {len(rows)} methods:\n"
    )
    print("| method | family | point | forget quality: mean (median; min–max) | D to retain: mean (min–max) | seeds in "
          "noise band | utility (x target) | mean R | outrank | relearn rise |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows[: a.rows]:
        fq = (
            f"{fmt(r['forget_quality_mean'])} ({fmt(r['forget_quality_median'])}; "
            f"{fmt(r['forget_quality_min'])}–{fmt(r['forget_quality_max'])})"
        )
        mu = f"{r['model_utility_mean']:.3f} ({r['model_utility_mean'] / r['target_model_utility']:.2f})"
        print(
            f"| `{r['method']}` | {r['family']} | {point(r)} | {fq} | {d_cell(r)} | {band_cell(r)} | {mu} | "
            f"{fmt(r.get('forget_tr_mean_mean'))} | "
            f"{fmt(r.get('forget_outrank_mean'))} | {relearn_rise_cell(r)} |"
        )


if __name__ == "__main__":
    main()
