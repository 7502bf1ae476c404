"""The README's results table, printed from docs/results.json (the sweep's reported rows).

    python scripts/readme_table.py [--split forget10] [--model tiny-llama] [--rows 12]
    python scripts/readme_table.py --benchmark tofu-size --selection crossfit --rows 14 --compact

Rows: each method's reported point (holdout selection, the point the sweep's shared rule chose), best mean
forget quality first, the first `--rows` of them; docs/results.md has every row.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter

from sgu_llm.core.formatting import fmt
from sgu_llm.report.tables import band_cell, d_cell, point_label, relearn_rise_cell

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def point(row: dict) -> str:
    """The row's point; a crossfit row has one per seed, counted (`0.003 ×4, 0.001 ×1`)."""
    if row["selection"] == "crossfit":
        counts = Counter(point_label(e) for e in row["per_seed"])
        if len(counts) == 1:
            return next(iter(counts))
        return ", ".join(f"{p} ×{n}" for p, n in counts.most_common())
    return point_label(row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=os.path.join(ROOT, "docs", "results.json"))
    ap.add_argument("--split", default="forget10")
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--benchmark", default=None, help="the rows' benchmark (e.g. tofu-size); default: rows without one")
    ap.add_argument("--selection", default="holdout", help="holdout (each method's reported point) or crossfit")
    ap.add_argument("--compact", action="store_true", help="the README's columns: D, band, utility, median FQ, relearn")
    a = ap.parse_args()
    with open(a.results) as fh:
        rows = json.load(fh)
    mine = [
        r for r in rows if r["split"] == a.split and r.get("model", "tiny-llama") == a.model
        and r.get("benchmark") == a.benchmark
    ]
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
    # crossfit rows carry no noise floor of their own: the benchmark's holdout rows (the same seeds) do
    floors = next((r["noise_floor_forget_quality"] for r in [*rows, *mine] if r.get("noise_floor_forget_quality")), [])
    bands = next((r["noise_band"] for r in rows if r.get("noise_band")), None)
    band = f"; noise band (D of independent retrains) {fmt(min(b[0] for b in bands))}–{fmt(max(b[1] for b in bands))}" if bands else ""
    base = next((r["baseline_diagnostics"] for r in rows if r.get("baseline_diagnostics")), {})
    retain = base.get("retain", {})
    print(
        f"{a.split}, {len(seeds)} model seeds; target utility {rows[0]['target_model_utility']:.3f} (mean); noise floors "
        + ", ".join(fmt(x) for x in floors)
        + band
        + f"; retain model: mean R {fmt(retain.get('forget_tr_mean'))}, outrank {fmt(retain.get('forget_outrank'))}"
        + f"; the first {min(a.rows, len(rows))} of {len(rows)} methods:\n"
    )
    if a.compact:
        print("| method | point (lr) | D to retain: mean (min–max) | seeds in band | utility (x target) | "
              "forget quality: median | relearn rise |")
        print("|---|---|---|---|---|---|---|")
        for r in rows[: a.rows]:
            print(
                f"| `{r['method']}` | {point(r)} | {d_cell(r)} | {band_cell(r)} | "
                f"{r['model_utility_mean'] / r['target_model_utility']:.2f} | {fmt(r['forget_quality_median'])} | "
                f"{relearn_rise_cell(r)} |"
            )
        return
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
