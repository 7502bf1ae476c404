"""The error-bar protocol, as pure functions of finished runs and baselines (no model is loaded here):

- `noise_bands`: what "as good as retraining" looks like per model seed, the KS distance D of every independent
  retrain (the other seeds' retain models, the noise floors) to that seed's retain model;
- `crossfit_rows`: selection without selection bias, each seed's point chosen on the other seeds by one rule for
  every method and reported on the held-out seed;
- `frontier`: the lowest D a method reaches on a seed at utility >= the floor, over its grid and evaluated epochs;
- `gate_table`: paired answers to "does the gate help?", each SGU rule over an objective against the objective
  alone, per seed, with a bootstrap CI over seeds and a verdict.

D of a record evaluated before D was stored is recovered exactly from its forget quality (`ks_d_from_pvalue`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sgu_llm.core.formatting import spread
from sgu_llm.evaluation.metrics import ks_d, ks_d_from_pvalue, paired_mean_ci, verdict
from sgu_llm.experiments.sweep.config import Point, record_point
from sgu_llm.report.tables import objective_of

CROSSFIT_KEYS = (
    "forget_ks_d",
    "forget_quality",
    "model_utility",
    "forget_rouge",
    "privleak",
    "forget_prob",
    "forget_truth_ratio",
    "forget_tr_mean",
    "forget_outrank",
)

EVALUATED = ("holdout", "oracle")  # the selections evaluated in full (utility known)


def forget_ratios(evals: dict) -> np.ndarray:
    """One model's per-row forget truth ratios from its stored evaluation."""
    return np.asarray(evals["per_example"]["forget"]["truth_ratio"], dtype=float)


def selection_d(sel: dict, n: int) -> float | None:
    """D of one selected epoch: stored, or recovered from its forget quality on `n` paired rows."""
    if sel.get("forget_ks_d") is not None:
        return float(sel["forget_ks_d"])
    if sel.get("forget_quality") is None:
        return None
    return ks_d_from_pvalue(sel["forget_quality"], n)


def noise_bands(base: dict[int, dict]) -> dict[int, dict]:
    """Per model seed: `{"noise_band": [min, max], "retrain_d": [...], "retrains": k, "retain_weights"}` over the independent
    retrains of that seed's retain model, i.e. every other retain model of the sweep (other seeds' retain models
    and noise floors, each counted once by its weights) scored on the same forget rows. Seeds with no other
    retrain are left out. `base`: model seed -> that seed's baselines.json (one split)."""
    models: dict[str, np.ndarray] = {}  # weights fingerprint -> forget truth ratios
    own: dict[int, str] = {}
    for seed, b in sorted(base.items()):
        meta = b.get("meta", {})
        for role in ("retain", "noise_floor"):
            if role in b and "per_example" in b[role]:
                key = meta.get(role, {}).get("weights") or f"{role}-seed{seed}"
                models.setdefault(key, forget_ratios(b[role]))
        if "retain" in b:
            own[seed] = meta.get("retain", {}).get("weights") or f"retain-seed{seed}"
    out = {}
    for seed, key in own.items():
        ref = models[key]
        ds = sorted(float(ks_d(r, ref)) for k, r in models.items() if k != key and r.shape == ref.shape)
        if ds:
            out[seed] = {"noise_band": [ds[0], ds[-1]], "retrain_d": ds, "retrains": len(ds), "retain_weights": key}
    return out


def complete_points(runs: list[dict], seeds: list[int]) -> dict[Point, dict[int, dict]]:
    """point -> seed -> record, for the points of one method that ran on every one of `seeds`."""
    by: dict[Point, dict[int, dict]] = {}
    for r in runs:
        by.setdefault(record_point(r), {})[r["seed"]] = r
    return {p: s for p, s in by.items() if all(x in s for x in seeds)}


def choose_point(
    points: dict[Point, dict[int, dict]], seeds: list[int], n: dict[int, int], target_mu: dict[int, float], floor: float
) -> Point:
    """The crossfit rule, on `seeds` only (every method alike): among the points whose mean utility (holdout-selected
    epoch) over `seeds` is >= `floor` x the mean target utility, the lowest mean D; if none, the highest mean
    utility. Ties: the earlier point in sorted order."""
    scored = []
    bar = floor * float(np.mean([target_mu[s] for s in seeds]))
    for p in sorted(points):
        sels = [points[p][s]["selections"]["holdout"] for s in seeds]
        mu = float(np.mean([x["model_utility"] for x in sels]))
        d = float(np.mean([selection_d(x, n[s]) for x, s in zip(sels, seeds)]))
        scored.append((p, mu, d))
    ok = [t for t in scored if t[1] >= bar]
    if ok:
        return min(ok, key=lambda t: t[2])[0]
    return max(scored, key=lambda t: t[1])[0]


def seed_entry(rec: dict, b: dict, band: dict | None) -> dict:
    """One seed's values at one run's holdout-selected epoch (`b`: that seed's baselines.json, `band`: its noise
    band or None)."""
    sel = rec["selections"]["holdout"]
    entry = {"seed": rec["seed"], "learning_rate": rec["learning_rate"],
             **({"setting": rec["setting"]} if rec.get("setting") else {}),
             "epoch": sel.get("epoch"), "target_model_utility": b["target"]["aggregates"]["model_utility"]}
    for key in CROSSFIT_KEYS:
        entry[key] = selection_d(sel, len(forget_ratios(b["retain"]))) if key == "forget_ks_d" else sel.get(key)
    entry["forget_ks_d_ci"] = sel.get("forget_ks_d_ci")
    if band is not None:
        entry["noise_band"] = band["noise_band"]
        entry["in_band"] = entry["forget_ks_d"] <= band["noise_band"][1]
    return entry


def seeds_row(method: str, split: str, selection: str, runs: list[dict], per_seed: list[dict]) -> dict:
    """A result row from per-seed entries (`seed_entry`): the per-seed values and their spread over seeds."""
    row = {"method": method, "split": split, "selection": selection, "seeds": [e["seed"] for e in per_seed],
           "fields": runs[0].get("fields", {}), "per_seed": per_seed,
           "target_model_utility": float(np.mean([e["target_model_utility"] for e in per_seed])),
           "forget_ks_d": [e["forget_ks_d"] for e in per_seed],
           "forget_ks_d_ci": [e["forget_ks_d_ci"] for e in per_seed]}
    for key in CROSSFIT_KEYS:
        vals = [e[key] for e in per_seed if e.get(key) is not None]
        if vals:
            row.update({f"{key}_{stat}": v for stat, v in spread(vals).items()})
    if all("noise_band" in e for e in per_seed):
        row["noise_band"] = [e["noise_band"] for e in per_seed]
        row["seeds_in_band"] = sum(e["in_band"] for e in per_seed)
    return row


def by_method(records: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["split"], r["method"]), []).append(r)
    return groups


def crossfit_rows(
    records: list[dict], base: dict[str, dict[int, dict]], floor: float, bands: dict[str, dict[int, dict]] | None = None
) -> list[dict]:
    """One `selection: crossfit` row per (split, method) whose every point ran on every seed of the split (at
    least 2 seeds): for each seed, the point `choose_point` picks on the other seeds, and that seed's
    holdout-selected epoch at it (`seed_entry`, with its `noise_band` from `bands` and the row's `seeds_in_band`:
    how many seeds have D <= their band's upper end). A method whose grid ran on some seeds only (the tune seeds)
    gets no crossfit row. `base`: split -> seed -> baselines.json."""
    bands = bands or {}
    rows = []
    for (split, method), runs in sorted(by_method(records).items()):
        b = base.get(split, {})
        seeds = sorted({r["seed"] for r in runs} & set(b))
        points = complete_points(runs, seeds)
        if len(seeds) < 2 or not points or len(points) < len({record_point(r) for r in runs}):
            continue
        n = {s: len(forget_ratios(b[s]["retain"])) for s in seeds}
        target_mu = {s: b[s]["target"]["aggregates"]["model_utility"] for s in seeds}
        per_seed = []
        for s in seeds:
            p = choose_point(points, [x for x in seeds if x != s], n, target_mu, floor)
            per_seed.append(seed_entry(points[p][s], b[s], bands.get(split, {}).get(s)))
        rows.append({**seeds_row(method, split, "crossfit", runs, per_seed), "points": len(points)})
    return rows


def point_rows(
    records: list[dict], base: dict[str, dict[int, dict]], points: dict[tuple, Point], selection: str,
    bands: dict[str, dict[int, dict]] | None = None,
) -> list[dict]:
    """Rows like `crossfit_rows`' at one given point per (split, method) (`points`, e.g. each method's reported
    point chosen on the tune seeds), labelled `selection`."""
    bands = bands or {}
    rows = []
    for (split, method), runs in sorted(by_method(records).items()):
        if (split, method) not in points:
            continue
        at = sorted((r for r in runs if record_point(r) == points[(split, method)] and r["seed"] in base.get(split, {})),
                    key=lambda r: r["seed"])
        if at:
            per_seed = [seed_entry(r, base[split][r["seed"]], bands.get(split, {}).get(r["seed"])) for r in at]
            rows.append(seeds_row(method, split, selection, runs, per_seed))
    return rows


def frontier(runs: list[dict], base: dict[int, dict], floor: float) -> dict[int, dict | None]:
    """Per seed of one method's runs (one split): the lowest D over its points and evaluated epochs (holdout- and
    oracle-selected) at utility >= `floor` x that seed's target utility, with where it was reached; None where
    no evaluated epoch meets the floor."""
    out: dict[int, dict | None] = {}
    for r in runs:
        s = r["seed"]
        if s not in base:
            continue
        n = len(forget_ratios(base[s]["retain"]))
        bar = floor * base[s]["target"]["aggregates"]["model_utility"]
        out.setdefault(s, None)
        for name in EVALUATED:
            sel = r["selections"].get(name)
            if not sel or sel.get("model_utility") is None or sel["model_utility"] < bar:
                continue
            d = selection_d(sel, n)
            best = out[s]
            if best is None or d < best["forget_ks_d"]:
                out[s] = {"forget_ks_d": d, "model_utility": sel["model_utility"], "learning_rate": r["learning_rate"],
                          **({"setting": r["setting"]} if r.get("setting") else {}), "epoch": sel.get("epoch")}
    return out


def gate_pairs(methods: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """(objective, rule, alone, gated): every gated method whose objective also runs alone in `methods` (name ->
    fields; `objective_of`: GradDiff is the NLL alone, NPO the NPO loss). Gated: an SGU method (not a control
    rule; `gate_rule`) or an objective under the row gate (`row_gate: true`; rule `row_gate`).

    Example:
        >>> gate_pairs({"altpo": {"method": "altpo"}, "rg": {"method": "altpo", "row_gate": True},
        ...             "g": {"method": "sgu", "selective_function": "gru", "forget_loss": "altpo", "row_gate": True}})
        [('altpo', 'gru+row_gate', 'altpo', 'g'), ('altpo', 'row_gate', 'altpo', 'rg')]
    """
    alone = {objective_of(f): name for name, f in methods.items() if gate_rule(f) is None and objective_of(f)
             and f.get("method") != "sgu"}
    out = []
    for name, f in methods.items():
        rule = gate_rule(f)
        if rule is not None and objective_of(f) in alone:
            out.append((objective_of(f), rule, alone[objective_of(f)], name))
    return sorted(out)


def gate_rule(fields_: dict) -> str | None:
    """The gate a method runs: SGU's selective function (None for the controls `retain_only` and `random_mask`),
    `+row_gate` with the row gate, `row_gate` for an objective alone under it; None: no gate."""
    row = "row_gate" if fields_.get("row_gate") else None
    if fields_.get("method") != "sgu":
        return row
    rule = fields_.get("selective_function", "sgu")
    if rule in ("retain_only", "random_mask"):
        return None
    return f"{rule}+{row}" if row else rule


def paired(a: dict[int, Any], b: dict[int, Any], key: str) -> dict:
    """Per-seed differences b - a of `key` on the seeds both have, with `paired_mean_ci`."""
    seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None)
    diffs = [round(b[s][key] - a[s][key], 12) for s in seeds]  # D lives on k/n: no float dust around 0
    return {"seeds": seeds, "diffs": diffs, **paired_mean_ci(diffs)}


def gate_table(
    rows: list[dict], records: list[dict], base: dict[str, dict[int, dict]], methods: dict[str, dict], floor: float
) -> list[dict]:
    """One entry per (split, objective, gated method): the gated method against the objective alone, paired over
    seeds, at the points of `rows` (one row per method: `crossfit_rows`, or `point_rows`; D and utility) and on the
    frontier (D): the mean difference (gated - alone; negative D is better), its bootstrap CI over seeds, the
    sign count and the verdict (`helps`, `hurts`, `undecided`). `selection`: the rows' (`a/b` where they differ)."""
    by_row = {(r["split"], r["method"]): {e["seed"]: e for e in r["per_seed"]} for r in rows}
    label = {(r["split"], r["method"]): r["selection"] for r in rows}
    runs = by_method(records)
    out = []
    for split in sorted({r["split"] for r in rows}):
        for objective, rule, alone, gated in gate_pairs(methods):
            if (split, alone) not in by_row or (split, gated) not in by_row:
                continue
            a, g = by_row[(split, alone)], by_row[(split, gated)]
            d, mu = paired(a, g, "forget_ks_d"), paired(a, g, "model_utility")
            fa = frontier(runs[(split, alone)], base[split], floor)
            fg = frontier(runs[(split, gated)], base[split], floor)
            fd = paired(fa, fg, "forget_ks_d")
            out.append({
                "split": split, "objective": objective, "rule": rule, "alone": alone, "gated": gated,
                "selection": "/".join(dict.fromkeys([label[(split, alone)], label[(split, gated)]])),
                "crossfit_d": d, "crossfit_utility": mu, "frontier_d": fd,
                "frontier_missing": {"alone": sorted(s for s, v in fa.items() if v is None),
                                     "gated": sorted(s for s, v in fg.items() if v is None)},
                "verdict": verdict(d["ci"]), "frontier_verdict": verdict(fd["ci"]),
            })
    return out


def add_error_bars(
    rows: list[dict], records: list[dict], base: dict[str, dict[int, dict]], bands: dict[str, dict[int, dict]]
) -> None:
    """Add to each `aggregate` row (one split, method, point and selection), in place: per-seed `forget_ks_d`
    (recovered from forget quality where the record predates D) with its spread, `forget_ks_d_ci` per seed (None
    where not stored), and where every seed has one, `noise_band` per seed, `seeds_in_band` and the fingerprints of
    the seeds' retain models the bands are about (`retain_weights`)."""
    index = {(r["split"], r["method"], record_point(r), r["seed"]): r for r in records}
    for row in rows:
        split, sel, b = row["split"], row["selection"], base.get(row["split"], {})
        recs = [index.get((split, row["method"], record_point(row), s)) for s in row["seeds"]]
        if any(r is None or sel not in r["selections"] for r in recs) or any(s not in b for s in row["seeds"]):
            continue
        ds = [selection_d(r["selections"][sel], len(forget_ratios(b[s]["retain"]))) for r, s in zip(recs, row["seeds"])]
        if None in ds:
            continue
        row["forget_ks_d"] = ds
        row.update({f"forget_ks_d_{k}": v for k, v in spread(ds).items()})
        row["forget_ks_d_ci"] = [r["selections"][sel].get("forget_ks_d_ci") for r in recs]
        if all(s in bands.get(split, {}) for s in row["seeds"]):
            row["noise_band"] = [bands[split][s]["noise_band"] for s in row["seeds"]]
            row["seeds_in_band"] = int(sum(d <= band[1] for d, band in zip(ds, row["noise_band"])))
            row["retain_weights"] = [bands[split][s]["retain_weights"] for s in row["seeds"]]
