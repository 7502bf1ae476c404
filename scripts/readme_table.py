"""The README's results table, printed from docs/results.json (the sweep's reported rows).

    python scripts/readme_table.py [--split forget10] [--model tiny-llama] [--rows 12]

Rows: each method's reported point (holdout selection, the point the sweep's shared rule chose), best mean
forget quality first, the first `--rows` of them; docs/results.md has every row.
"""

from __future__ import annotations

import argparse
import json
import os

from sgu_llm.report.tables import attack_seeds_note

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def g(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.2g}" if abs(x) < 0.01 else f"{x:.3g}"


def point(r: dict) -> str:
    return f"{r['learning_rate']:g}" + "".join(f", {k} {v:g}" for k, v in sorted(r.get("setting", {}).items()))


def rise(r: dict) -> str:
    a = r.get("attacks")
    if not a:
        return "–"
    return g(a["relearn"]["forget_prob"]["mean"] - a["none"]["forget_prob"]["mean"]) + attack_seeds_note(r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=os.path.join(ROOT, "docs", "results.json"))
    ap.add_argument("--split", default="forget10")
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--rows", type=int, default=12)
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
    base = next((r["baseline_diagnostics"] for r in rows if r.get("baseline_diagnostics")), {})
    retain = base.get("retain", {})
    print(
        f"{a.split}, {len(seeds)} model seeds; target utility {rows[0]['target_model_utility']:.3f} (mean); noise floors "
        + ", ".join(g(x) for x in rows[0]["noise_floor_forget_quality"])
        + f"; retain model: mean R {g(retain.get('forget_tr_mean'))}, outrank {g(retain.get('forget_outrank'))}"
        + f"; the first {min(a.rows, len(rows))} of {len(rows)} methods:\n"
    )
    print("| method | family | point | forget quality: mean (median; min–max) | utility (x target) | mean R | outrank | relearn rise |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows[: a.rows]:
        fq = (
            f"{g(r['forget_quality_mean'])} ({g(r['forget_quality_median'])}; "
            f"{g(r['forget_quality_min'])}–{g(r['forget_quality_max'])})"
        )
        mu = f"{r['model_utility_mean']:.3f} ({r['model_utility_mean'] / r['target_model_utility']:.2f})"
        print(
            f"| `{r['method']}` | {r['family']} | {point(r)} | {fq} | {mu} | {g(r.get('forget_tr_mean_mean'))} | "
            f"{g(r.get('forget_outrank_mean'))} | {rise(r)} |"
        )


if __name__ == "__main__":
    main()
