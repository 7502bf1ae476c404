"""Finished runs as data: collecting them, the spread over model seeds, the reported point of each method, and
which (split, seed)s are complete. Pure functions of records and baselines (no model is loaded here)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
from scipy import stats

from sgu_llm.core.files import write_json
from sgu_llm.core.formatting import spread
from sgu_llm.experiments.sweep.config import (
    Point,
    SweepConfig,
    is_tuned,
    method_points,
    methods_on,
    record_point,
)
from sgu_llm.objectives import list_objectives
from sgu_llm.trainers.stopping import pick_checkpoint

SELECTIONS = ("holdout", "oracle")  # evaluated in full; "final" keeps the curve's numbers only


SUMMARY_KEYS = (
    "forget_quality",
    "forget_ks_d",
    "model_utility",
    "forget_rouge",
    "privleak",
    "forget_prob",
    "retain_prob",
    "forget_truth_ratio",
    "forget_tr_mean",
    "forget_outrank",
    "holdout_ks",
)


ATTACKS = ("none", "relearn", "int8", "int4")


ATTACK_METRICS = ("forget_prob", "forget_rouge", "forget_quality")


DIAGNOSTICS = ("forget_truth_ratio", "forget_tr_mean", "forget_outrank")


BASELINE_METHODS = ("gradascent", "graddiff", "npo", "simnpo")


CONTROL_RULES = ("retain_only", "random_mask")


SIGN_GATING_RULES = ("sign_conflict", "sago")


def choose(curve: list[dict]) -> dict[str, int]:
    """Checkpoint index per selection rule (ties: the earliest)."""

    return {
        "holdout": pick_checkpoint([c["holdout_ks"] for c in curve]),
        "oracle": pick_checkpoint([-c["forget_quality"] for c in curve]),
        "final": len(curve) - 1,
    }


def collect_records(cfg: SweepConfig, prefix: str = "lr") -> list[dict]:
    """Every finished run on disk (the JSON files whose names start with `prefix`)."""
    out = []
    for root, dirs, files in os.walk(cfg.output_dir):
        dirs.sort()  # the same order on every machine (float sums over seeds depend on it in the last bit)
        for name in sorted(files):
            if name.startswith(prefix) and name.endswith(".json"):
                with open(os.path.join(root, name)) as fh:
                    out.append(json.load(fh))
    return out


def collect_attacks(cfg: SweepConfig) -> list[dict]:
    """Every attacked run on disk."""
    return collect_records(cfg, prefix="attacks")


def load_baselines(cfg: SweepConfig, split: str) -> dict[int, dict]:
    out = {}
    for seed in cfg.splits[split]:
        path = os.path.join(cfg.output_dir, split, f"seed{seed}", "baselines.json")
        if os.path.exists(path):
            with open(path) as fh:
                out[seed] = json.load(fh)
    return out


def family(fields_: dict) -> str:
    """`baseline` (loss-based methods, the forget objectives on their own), `activation_edit` (sae_clamp: no
    weight changes), `control`, `sign_gating` (SAGO, sign_conflict) or `sgu`."""
    if fields_.get("method") in BASELINE_METHODS or fields_.get("method") in list_objectives():
        return "baseline"
    if fields_.get("method") == "sae_clamp":
        return "activation_edit"
    rule = fields_.get("selective_function", "sgu")
    if rule in CONTROL_RULES:
        return "control"
    return "sign_gating" if rule in SIGN_GATING_RULES else "sgu"


def summarise(runs: list[dict], base: dict[int, dict], sel: str) -> dict:
    """Spread over the model seeds of `runs` (one method, split and point) at one selection."""
    seeds = sorted(r["seed"] for r in runs)
    target_mu = [base[s]["target"]["aggregates"]["model_utility"] for s in seeds if s in base]
    first = runs[0]
    row = {
        "method": first["method"],
        "split": first["split"],
        "learning_rate": first["learning_rate"],
        "selection": sel,
        "seeds": seeds,
        "target_model_utility": float(np.mean(target_mu)) if target_mu else None,
        "noise_floor_forget_quality": [
            base[s]["noise_floor"]["aggregates"]["forget_quality"] for s in seeds if s in base
        ],
        "family": family(first.get("fields", {})),
        "epoch": spread([r["selections"][sel]["epoch"] for r in runs])
        if all(r["selections"][sel].get("epoch") is not None for r in runs)
        else None,
        "unlearn_seconds": spread([r["unlearn_seconds"] for r in runs]),
    }
    if first.get("setting"):
        row["setting"] = first["setting"]
    for key in SUMMARY_KEYS:
        vals = [r["selections"][sel].get(key) for r in runs]
        vals = [v for v in vals if v is not None]
        if vals:
            for stat, v in spread(vals).items():
                row[f"{key}_{stat}"] = v
    row["log10_forget_quality_mean"] = float(
        np.mean([math.log10(max(r["selections"][sel]["forget_quality"], 1e-300)) for r in runs])
    )
    return row


def best_point(rows: list[dict], floor: float, retain_free: bool = False) -> Point:
    """The reported point among one method's holdout rows: the best mean log10 forget quality among those with
    mean utility >= floor x the target's; if none, the highest mean utility. `retain_free`: the rule without the
    retain model instead, the lowest mean holdout KS statistic (the stopping rule's) among the same points."""
    return record_point(best_row(rows, floor, retain_free))


def best_row(rows: list[dict], floor: float, retain_free: bool = False) -> dict:
    """The row `best_point` picks (rows of one method, or of several: the probe stage's SGU-family row)."""
    ok = [r for r in rows if r["target_model_utility"] and r["model_utility_mean"] >= floor * r["target_model_utility"]]
    if not ok:
        return max(rows, key=lambda r: r["model_utility_mean"])
    if retain_free:
        return min(ok, key=lambda r: (r.get("holdout_ks_mean", float("inf")), -r["log10_forget_quality_mean"]))
    return max(ok, key=lambda r: r["log10_forget_quality_mean"])


def aggregate(
    records: list[dict],
    baselines: dict[str, dict[int, dict]],
    floor: float,
    selections: tuple = SELECTIONS,
    tune_seeds: dict[str, list] | None = None,
) -> list[dict]:
    """One row per (split, method, point, selection): spread over model seeds, and `reported`.

    `baselines` maps split -> model seed -> that seed's baselines.json. The reported point of a method is
    decided on its holdout rows (`best_point`); for a method in `tune_seeds` on those seeds' runs alone (its
    other seeds ran only that point).
    """
    tune_seeds = tune_seeds or {}
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["split"], r["method"], record_point(r)), []).append(r)
    rows = []
    for (split, _, _), runs in sorted(groups.items(), key=lambda kv: kv[0]):
        rows += [summarise(runs, baselines.get(split, {}), sel) for sel in selections]
    for split, method in sorted({(r["split"], r["method"]) for r in rows}):
        if method in tune_seeds:
            decide = [
                summarise([r for r in runs if r["seed"] in tune_seeds[method]], baselines.get(split, {}), "holdout")
                for (sp, m, _), runs in groups.items()
                if sp == split and m == method and any(r["seed"] in tune_seeds[method] for r in runs)
            ]
        else:
            decide = [r for r in rows if r["split"] == split and r["method"] == method and r["selection"] == "holdout"]
        best, free = best_point(decide, floor), best_point(decide, floor, retain_free=True)
        picked = {record_point(d): d for d in decide}
        for r in rows:
            if r["split"] == split and r["method"] == method:
                r["reported"] = record_point(r) == best
                # The seeds the point was chosen on: the tune seeds, or every seed of the row (its own numbers
                # chose it: the optimism `selection: crossfit` removes).
                r["chosen_on"] = sorted({s for d in decide for s in d["seeds"]})
                if r["reported"] and r["selection"] == "holdout" and len(decide) > 1:
                    # What the retain-free rule would have picked, judged on the same (tune) seeds.
                    f = picked[free]
                    r["retain_free_choice"] = {
                        "learning_rate": f["learning_rate"], **({"setting": f["setting"]} if f.get("setting") else {}),
                        "same": free == best, "seeds": f["seeds"],
                        "forget_quality_mean": f["forget_quality_mean"], "model_utility_mean": f["model_utility_mean"],
                        "chosen_forget_quality_mean": picked[best]["forget_quality_mean"],
                    }
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (forget quality, model utility)."""
    front = []
    for i, (fq, mu) in enumerate(points):
        dominated = any(
            (f2 >= fq and m2 >= mu) and (f2 > fq or m2 > mu) for j, (f2, m2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def complete_seeds(cfg: SweepConfig, records: list[dict]) -> list[dict]:
    """The records of (split, seed)s where every configured method has all its points (one point on the
    `best_only_splits`, and for tuned methods on seeds outside `tune_seeds`), so every row of a split covers
    the same model seeds."""
    have: dict[tuple, set] = {}
    for r in records:
        have.setdefault((r["split"], r["seed"]), set()).add((r["method"], record_point(r)))

    def complete(split: str, seed: int) -> bool:
        got = have.get((split, seed), set())
        for method in methods_on(cfg, split):
            one = split in cfg.best_only_splits or (is_tuned(cfg, method) and seed not in cfg.tune_seeds)
            need = 1 if one else len(method_points(cfg, method))
            if sum(m == method for m, _ in got) < need:
                return False
        return True

    return [r for r in records if r["method"] in cfg.methods and complete(r["split"], r["seed"])]


def attack_rows(attacks: list[dict]) -> dict[tuple, dict]:
    """(split, method) -> {"seeds", "learning_rate", attack -> metric -> spread over seeds}; method "retain"
    is the retain model (what "nothing to recover" looks like)."""
    groups: dict[tuple, list[dict]] = {}
    for a in attacks:
        groups.setdefault((a["split"], a["method"]), []).append(a)
    return {key: attack_summary(runs) for key, runs in groups.items()}


def attack_summary(runs: list[dict]) -> dict:
    """One method's attacked runs (one per seed) as `attack_rows` gives them: seeds, settings, spread per attack
    and metric (`learning_rate` / `setting`: the first run's; under crossfit the seeds' points differ)."""
    return {
        "seeds": sorted(r["seed"] for r in runs),
        "learning_rate": runs[0]["learning_rate"],
        **({"setting": runs[0]["setting"]} if runs[0].get("setting") else {}),
        "relearn_settings": runs[0]["relearn"],
        "models_match": all(r.get("models_match", True) for r in runs),
        "same_curve": all(r.get("same_curve", True) for r in runs),
        **{attack: {m: spread([r["attacks"][attack][m] for r in runs]) for m in ATTACK_METRICS} for attack in ATTACKS},
    }


def baseline_diagnostics(base: dict[int, dict], seeds: list[int]) -> dict[str, dict[str, float]]:
    """Target, retain and noise-floor forget diagnostics, means over `seeds` (where stored)."""
    out = {}
    for role in ("target", "retain", "noise_floor"):
        aggs = [base[s][role]["aggregates"] for s in seeds if s in base and role in base[s]]
        out[role] = {k: float(np.mean([a[k] for a in aggs])) for k in DIAGNOSTICS if aggs and all(k in a for a in aggs)}
    return out


def entry_point(entry: dict) -> Point:
    """The point of an attack or probe summary (`attack_rows`, `probe_rows`)."""
    return (entry["learning_rate"], tuple(sorted(entry.get("setting", {}).items())))


def probe_rows(probes: list[dict]) -> dict[tuple, dict]:
    """(split, method) -> the probe stage's causal check over seeds: per seed and clamp factor, the clamped set's
    forget / retain NLL rise and selectivity, the matched random sets' selectivity (mean, std, max) and the
    empirical p-value (1 + draws reaching the clamped set's selectivity) / (1 + draws)."""
    groups: dict[tuple, list[dict]] = {}
    for p in probes:
        groups.setdefault((p["split"], p["method"]), []).append(p)
    out = {}
    for key, entries in groups.items():
        per_seed = []
        for e in sorted(entries, key=lambda e: e["seed"]):
            c = e["causal"]
            draws = e.get("causal_random_draws", 0)
            scales = {}
            for factor, b in c.get("by_scale", {}).items():
                sel = [t["selectivity"] for t in b["random_effects"]]
                reached = round(b["random_at_least"] * len(sel))
                scales[factor] = {
                    "forget_nll_rise": b["clamped_effects"]["forget_nll_rise"],
                    "retain_nll_rise": b["clamped_effects"]["retain_nll_rise"],
                    "selectivity": b["clamped_effects"]["selectivity"],
                    "random_selectivity_mean": float(np.mean(sel)),
                    "random_selectivity_std": b["random_selectivity_std"],
                    "random_selectivity_max": b["random_selectivity_max"],
                    "p_value": (1 + reached) / (1 + len(sel)),
                }
            per_seed.append({
                "seed": e["seed"], "epoch": e.get("epoch"), "same_curve": e.get("same_curve"), "draws": draws,
                "n_features": c["n_features"], "clamped_from": c.get("clamped_from"),
                "state_counts": (e.get("state_counts") or [None])[-1], "scales": scales,
            })
        out[key] = {
            "seeds": [p["seed"] for p in per_seed],
            "learning_rate": entries[0]["learning_rate"],
            **({"setting": entries[0]["setting"]} if entries[0].get("setting") else {}),
            "hook_name": entries[0].get("hook_name"),
            "per_seed": per_seed,
        }
    return out


def time_parts(records: list[dict], baselines: dict, attacks: list[dict], probes: list[dict]) -> list[dict]:
    """Where a sweep's time went, from what its files recorded: one row per part, `{"part", "count", "total",
    **spread}` in seconds (`count`: the items that recorded it; parts nothing recorded are left out). Fine-tunings
    are counted once per model (a seed's noise floor is the next seed's retain model)."""
    values: dict[str, list[float]] = {}

    def add(part: str, value: Any) -> None:
        if value is not None:
            values.setdefault(part, []).append(float(value))

    tuned: dict[str, float] = {}
    for base in baselines.values():
        for evals in base.values():
            for role, meta in evals.get("meta", {}).items():
                if meta.get("train_seconds") is not None:
                    tuned[meta.get("key") or f"{role}-{len(tuned)}"] = meta["train_seconds"]
                add("baseline evaluation", meta.get("eval_seconds"))
    for seconds in tuned.values():
        add("fine-tuning", seconds)
    for r in records:
        add("run: unlearning", r.get("unlearn_seconds"))
        add("run: per-epoch scoring", r.get("scoring_seconds"))
        add("run: selected epochs' evaluation", r.get("evaluation_seconds"))
        parts = [r.get(k) for k in ("unlearn_seconds", "scoring_seconds", "evaluation_seconds")]
        if None not in parts:
            add("run (all three)", sum(parts))
    for a in attacks:
        add("attack: repeat to the selected epoch", a.get("repeat_seconds"))
        add("attack: attacks", a.get("attack_seconds"))
    for p in probes:
        add("probe: repeat to the selected epoch", p.get("repeat_seconds"))
        add("probe: SAE and causal check", p.get("probe_seconds"))
    return [{"part": k, "count": len(v), "total": float(sum(v)), **spread(v)} for k, v in values.items()]


def ranking_agreement(rows: list[dict], others: list[dict]) -> list[dict]:
    """Does another sweep rank the methods as this one does? Per (split, other model, other benchmark): the methods
    both report (holdout rows), Spearman's rank correlation of their mean log10 forget quality, and each side's order
    (best first) with its seeds. `others`: rows of other sweeps (a shared results.json); each benchmark is its own
    comparison (the embedded and the TOFU-size sweeps share a model and the split's name)."""

    def reported(rs: list[dict]) -> dict[tuple, dict]:
        return {(r["split"], r.get("model"), r.get("benchmark"), r["method"]): r for r in rs
                if r.get("reported") and r.get("selection") == "holdout"}

    ours = {(sp, m): r for (sp, _, _, m), r in reported(rows).items()}  # one sweep: keyed by (split, method)
    theirs = reported(others)
    out = []
    for split, model, benchmark in sorted({k[:3] for k in theirs}, key=lambda k: tuple(str(x or "") for x in k)):
        common = sorted(m for (sp, m) in ours if sp == split and (split, model, benchmark, m) in theirs)
        if len(common) < 3:
            continue
        a = [ours[(split, m)]["log10_forget_quality_mean"] for m in common]
        b = [theirs[(split, model, benchmark, m)]["log10_forget_quality_mean"] for m in common]
        rho = stats.spearmanr(a, b).statistic
        out.append({
            "split": split, "other_model": model, "other_benchmark": benchmark, "methods": len(common),
            "spearman": float(rho),
            "order": [m for _, m in sorted(zip(a, common), key=lambda t: -t[0])],
            "other_order": [m for _, m in sorted(zip(b, common), key=lambda t: -t[0])],
            "seeds": max(len(ours[k]["seeds"]) for k in ours if k[0] == split),
            "other_seeds": max(len(theirs[(split, model, benchmark, m)]["seeds"]) for m in common),
        })
    return out


def merge_rows(path: str, rows: list[dict], model: str, benchmark: str | None = None) -> None:
    """Write `rows` into results.json in place of that model's rows on that benchmark (where its first row was; at
    the end if it had none), keeping every other (model, benchmark)'s in its order."""
    out, placed = [], False
    if os.path.exists(path):
        with open(path) as fh:
            for r in json.load(fh):
                if (r.get("model"), r.get("benchmark")) != (model, benchmark):
                    out.append(r)
                elif not placed:
                    out, placed = out + rows, True
    write_json(path, out if placed else out + rows)


def run_record(metrics: dict, name: str, fields: dict, learning_rate: float, split: str, seed: int) -> tuple:
    """A finished `sgu-llm run` as a sweep record (its one selection: the holdout stop) and its baselines."""
    unlearned = metrics["unlearned"]
    chosen = {key: unlearned.get(key) for key in SUMMARY_KEYS}
    chosen["epoch"] = (metrics.get("stop") or {}).get("epoch")
    record = {
        "method": name,
        "split": split,
        "seed": seed,
        "learning_rate": learning_rate,
        "fields": fields,
        "selections": {"holdout": chosen},
        "unlearn_seconds": metrics["timings"]["unlearn"],
    }
    return record, {"target": {"aggregates": metrics["target"]}, "noise_floor": {"aggregates": metrics["noise_floor"]}}
