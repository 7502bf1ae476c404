"""The sweep's tables and paragraphs as markdown, computed from its rows (`docs/results.md`), and the attack
tables of a run and of a sweep. Rendering only: the rows come from `sgu_llm.experiments.sweep`."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from sgu_llm.core.formatting import fmt
from sgu_llm.trainers.objective import STANDALONE_CONFIGS


def _ratio(a: float, b: float | None) -> float | None:
    return a / b if b else None


def point_label(row: dict) -> str:
    """`0.001`, or with a grid setting `0.001, pref_beta 0.1`."""
    return f"{row['learning_rate']:g}" + "".join(f", {k} {v:g}" for k, v in sorted(row.get("setting", {}).items()))


# Baselines that are a forget objective plus the retain NLL, the same two terms SGU gates: GradDiff is NLL ascent
# plus the retain NLL, NPO the NPO loss plus the retain NLL.
ALONE_AS = {"graddiff": "nll", "npo": "npo"}


def objective_of(fields_: dict) -> str | None:
    """The forget objective a method trains, for objectives that also run on their own plus the retain NLL: the
    method's name (`method: altpo`, ...; GradDiff: `nll`, NPO: `npo`), or `forget_loss` under SGU. None for the
    rest (objectives without a run of their own, SimNPO, gradient ascent).

    Example:
        >>> objective_of({"method": "graddiff"}), objective_of({"method": "sgu"}), objective_of({"method": "simnpo"})
        ('nll', 'nll', None)
    """
    method = fields_.get("method")
    name = fields_.get("forget_loss", "nll") if method == "sgu" else ALONE_AS.get(method, method)
    return name if name in STANDALONE_CONFIGS or name in ALONE_AS.values() else None


def full_rows(rows: list[dict], split: str) -> list[dict]:
    """The holdout rows of `split` that cover every model seed its rows do (a tuned method's other grid points
    ran on the tune seeds only)."""
    hold = [r for r in rows if r["split"] == split and r["selection"] == "holdout"]
    most = max((len(r["seeds"]) for r in hold), default=0)
    return [r for r in hold if len(r["seeds"]) == most]


def goal_check(rows: list[dict], split: str, floor: float, fq_goal: float = 0.5) -> str:
    """One paragraph, computed from the rows: is an SGU-family method at forget quality >= `fq_goal`
    with utility >= `floor` x target (holdout selection), and is it dominated by a baseline?"""
    hold = full_rows(rows, split)
    fam = [r for r in hold if r.get("family") == "sgu"]
    if not fam:
        return "No SGU-family runs yet."
    ok = [r for r in fam if (_ratio(r["model_utility_mean"], r["target_model_utility"]) or 0) >= floor]
    best = max(ok, key=lambda r: r["forget_quality_mean"]) if ok else None
    base_pts = [r for r in hold if r.get("family") == "baseline"]
    out = []
    if best is None:
        out.append(f"No SGU-family configuration keeps model utility >= {floor} x the target's.")
    else:
        met = best["forget_quality_mean"] >= fq_goal
        dominated = [
            b["method"]
            for b in base_pts
            if b["forget_quality_mean"] >= best["forget_quality_mean"]
            and b["model_utility_mean"] >= best["model_utility_mean"]
        ]
        out.append(
            f"Goal (forget quality >= {fq_goal} at model utility >= {floor} x target, holdout selection, mean "
            f"over seeds): **{'met' if met else 'missed'}**. Best SGU-family point within the utility bound: "
            f"`{best['method']}` lr {best['learning_rate']:g}, forget quality {fmt(best['forget_quality_mean'])} "
            f"(median {fmt(best['forget_quality_median'])}), utility {fmt(best['model_utility_mean'])} "
            f"({fmt(_ratio(best['model_utility_mean'], best['target_model_utility']))} x target)"
            + (
                ""
                if met
                else f", {fmt(fq_goal / max(best['forget_quality_mean'], 1e-300))}x short in forget quality"
            )
            + ". "
            + (
                f"Dominated by baseline point(s): {', '.join(sorted(set(dominated)))}."
                if dominated
                else "No baseline point (any learning rate) has both higher forget quality and higher utility."
            )
        )
    return " ".join(out)


def stopping_check(records: list[dict], split: str) -> str:
    """How close the holdout stopping rule (no retain model) comes to the oracle epoch, over every run."""
    runs = [r for r in records if r["split"] == split]
    if not runs:
        return ""
    near = sum(
        abs(r["selections"]["holdout"]["epoch"] - r["selections"]["oracle"]["epoch"]) <= 1 + 1e-9 for r in runs
    )
    pairs: dict[tuple, list[dict]] = {}
    for r in runs:
        pairs.setdefault((r["method"], r["learning_rate"]), []).append(r)
    ratios = []
    for group in pairs.values():
        hold = sum(r["selections"]["holdout"]["forget_quality"] for r in group) / len(group)
        orac = sum(r["selections"]["oracle"]["forget_quality"] for r in group) / len(group)
        ratios.append(orac / hold if hold > 0 else float("inf"))
    within = sum(x <= 2 for x in ratios)
    return (
        f"Holdout stopping rule against the oracle, {len(runs)} runs: it picked the oracle's epoch or one "
        f"epoch away in {100 * near / len(runs):.0f} % of them; its mean forget quality is within 2x of the "
        f"oracle's for {within} of {len(ratios)} method and learning-rate pairs "
        f"(median ratio {float(np.median(ratios)):.2f})."
    )


def diagnostics_line(rows: list[dict], split: str) -> str:
    """The baselines' forget diagnostics, from a reported row that carries them."""
    row = next((r for r in rows if r["split"] == split and r.get("baseline_diagnostics")), None)
    if row is None:
        return ""
    parts = [
        f"{role.replace('_', ' ')} {fmt(d.get('forget_truth_ratio'))} / {fmt(d.get('forget_tr_mean'))} / "
        f"{fmt(d.get('forget_outrank'))}"
        for role, d in row["baseline_diagnostics"].items()
        if d
    ]
    return (
        "Forget diagnostics, truth ratio (mean min(R, 1/R)) / mean R / outrank (share of rows whose true answer "
        f"beats all five wrong ones), means over seeds {row['seeds']}: " + "; ".join(parts) + ". A method left of "
        "the retain model's mean R with a higher outrank still prefers the true answers (undershoot); right of it "
        "with a lower one, the wrong ones (overshoot)."
    )


GATE_HEADERS = ["objective", "alone / gate", "point", "FQ mean (median; min–max)", "MU (x target)", "truth ratio",
                "mean R", "outrank", "relearn rise"]


def gate_markdown(cfg: Any, rows: list[dict]) -> list[str]:
    """"Does the gate help?": each objective X that runs on its own next to SGU's rules over X (reported
    holdout rows), with the diagnostics and the relearning rise."""
    reported = {r["method"]: r for r in rows if r["reported"] and r["selection"] == "holdout"}
    by_objective: dict[str, list[tuple[str, dict]]] = {}
    for name, fields_ in cfg.methods.items():
        x = objective_of(fields_)
        if x and name in reported:
            rule = ("row_gate" if fields_["method"] != "sgu" else fields_.get("selective_function", "sgu")
                    + ("+row_gate" if fields_.get("row_gate") else ""))
            alone = fields_["method"] != "sgu" and not fields_.get("row_gate")
            gate = "alone" if alone else rule if name == rule else f"{rule} (`{name}`)"
            by_objective.setdefault(x, []).append((gate, reported[name]))
    pairs = {x: v for x, v in by_objective.items() if any(g == "alone" for g, _ in v) and len(v) > 1}
    if not pairs:
        return []
    lines = [
        "### Does the gate help? Each objective alone (plus the retain NLL) against SGU's rules over it",
        "",
        "Reported point of each (holdout-selected epoch; the same rule and grid for all); `nll` alone is GradDiff, "
        "`npo` alone is NPO; relearn rise: forget probability gained by ten relearning steps (mean over seeds).",
        "",
        "| " + " | ".join(GATE_HEADERS) + " |",
        "|" + "---|" * len(GATE_HEADERS),
    ]
    for x, entries in sorted(pairs.items()):
        for gate, r in sorted(entries, key=lambda e: e[0] != "alone"):
            lines.append(
                f"| {x} | {gate} | {point_label(r)} | {fmt(r['forget_quality_mean'])} "
                f"({fmt(r['forget_quality_median'])}; {fmt(r['forget_quality_min'])}–{fmt(r['forget_quality_max'])}) | "
                f"{fmt(r['model_utility_mean'])} ({fmt(_ratio(r['model_utility_mean'], r['target_model_utility']))}) | "
                f"{fmt(r.get('forget_truth_ratio_mean'))} | {fmt(r.get('forget_tr_mean_mean'))} | "
                f"{fmt(r.get('forget_outrank_mean'))} | {relearn_rise_cell(r)} |"
            )
    return lines + [""]


def attack_seeds_note(row: dict) -> str:
    """" (seeds 0, 1)" when the row's attacks cover fewer model seeds than its forget quality (a sweep stopped
    during its attack stage), else "".

        >>> attack_seeds_note({"seeds": [0, 1, 2], "attacks": {"seeds": [0, 1]}})
        ' (seeds 0, 1)'
        >>> attack_seeds_note({"seeds": [0, 1], "attacks": {"seeds": [0, 1]}})
        ''
    """
    got = (row.get("attacks") or {}).get("seeds")
    if got is None or row.get("seeds") is None or list(got) == list(row["seeds"]):
        return ""
    return f" (seed{'s' if len(got) > 1 else ''} {', '.join(map(str, got))})"


def relearn_rise_cell(row: dict) -> str:
    """The forget probability ten relearning steps bring back (mean over the attacked seeds), labelled when those
    seeds are fewer than the row's; a dash for a row without attacks.

        >>> relearn_rise_cell({"seeds": [0, 1], "attacks": {"seeds": [0],
        ...     "none": {"forget_prob": {"mean": 0.25}}, "relearn": {"forget_prob": {"mean": 0.5}}}})
        '0.25 (seed 0)'
        >>> relearn_rise_cell({"seeds": [0]})
        '–'
    """
    a = row.get("attacks")
    if not a:
        return fmt(None)
    return fmt(a["relearn"]["forget_prob"]["mean"] - a["none"]["forget_prob"]["mean"]) + attack_seeds_note(row)


ATTACK_HEADERS = ["model", "prob: none", "prob: relearn", "prob: int8", "prob: int4", "FQ: none", "FQ: relearn",
                  "FQ: int4"]


def attack_cells(rows: list[dict], retain: dict | None) -> list[list[str]]:
    """Table cells (ATTACK_HEADERS) of attacked sweep rows and the retain model, mean (min–max) over seeds,
    ordered by the forget probability relearning brings back (least first)."""

    def cell(a: dict, attack: str, metric: str) -> str:
        x = a[attack][metric]
        return f"{fmt(x['mean'])} ({fmt(x['min'])}–{fmt(x['max'])})"

    def where(r: dict) -> str:
        return "crossfit points" if r.get("selection") == "crossfit" else f"lr {r['learning_rate']:g}"

    entries = sorted(((f"`{r['method']}` ({where(r)}){attack_seeds_note(r)}", r["attacks"]) for r in rows),
                     key=lambda e: e[1]["relearn"]["forget_prob"]["mean"])
    if retain:
        entries.append(("retain model" + attack_seeds_note({"seeds": rows[0].get("seeds"), "attacks": retain}), retain))
    return [
        [name, cell(a, "none", "forget_prob"), cell(a, "relearn", "forget_prob"), cell(a, "int8", "forget_prob"),
         cell(a, "int4", "forget_prob"), cell(a, "none", "forget_quality"), cell(a, "relearn", "forget_quality"),
         cell(a, "int4", "forget_quality")]
        for name, a in entries
    ]


def attack_caption(attacks: dict) -> str:
    """What the attack table of `attacks` (an `attack_rows` entry) measured."""
    r = attacks["relearn_settings"]
    return (
        "Each method at its reported learning rate and holdout-selected epoch, and the retain model (which never "
        "saw the forget set: its numbers are what \"nothing to recover\" looks like). Relearning: "
        f"{r['steps']} AdamW steps (lr {r['learning_rate']:g}, batch {r['batch_size']}) on the even forget rows; "
        "int8 / int4: per-channel round-to-nearest of every linear layer; every number on the odd forget rows. "
        "Forget probability (prob) and forget quality (FQ): mean (min–max) over model seeds."
    )


def attack_markdown(rows: list[dict]) -> list[str]:
    """The attacks table of one split's attacked rows (`write_results`)."""
    if not rows:
        return []
    counts = {len(r["attacks"]["seeds"]) for r in rows}
    seeds = f"{counts.pop()} model seeds" if len(counts) == 1 else "model seeds as listed: the attack stage is unfinished"
    lines = [f"### Attacks ({seeds})", "", attack_caption(rows[0]["attacks"]), ""]
    lines += ["| " + " | ".join(ATTACK_HEADERS) + " |", "|" + "---|" * len(ATTACK_HEADERS)]
    lines += ["| " + " | ".join(c) + " |" for c in attack_cells(rows, rows[0].get("retain_attacks"))]
    notes = []
    if not all(r["attacks"]["models_match"] for r in rows):
        notes.append("the models fine-tuned for the attacks differ from the ones the sweep's runs used (another "
                     "machine or library version), so the attacked runs are not the tabled runs")
    elif not all(r["attacks"]["same_curve"] for r in rows):
        notes.append("some repeated runs did not score the selected epoch as the stored run did")
    lines += [""] + ([f"Note: {'; '.join(notes)}.", ""] if notes else [])
    return lines


def grid_markdown(cfg: Any, rows: list[dict], command: str) -> str:
    """Every point of every method (holdout-selected epoch), the sweep's `grid.md`: what the rule chose from."""
    lines = [
        "# Every point of the sweep (holdout-selected epoch)",
        "",
        f"Reproduce: `{command}`. Model `{cfg.model_name}`. Every finished point, seeds finished or not. `chosen`: the "
        f"point the rule reports (holdout selection, model utility >= {cfg.utility_floor} x target, then best mean log10 "
        "forget quality; tuned methods choose on their tune seeds and run only that point on the others, so its row "
        "has more seeds), marked once every point of the tune seeds has finished.",
        "",
    ]
    for split in cfg.splits:
        lines += [
            f"## {split}", "",
            "| method | point | seeds | FQ mean (min–max) | MU mean (x target) | holdout KS | mean R | outrank | epoch (median) | chosen |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted((r for r in rows if r["split"] == split and r["selection"] == "holdout"),
                        key=lambda r: (r["method"], r["learning_rate"], sorted(r.get("setting", {}).items()))):
            lines.append(
                f"| `{r['method']}` | {point_label(r)} | {len(r['seeds'])} | {fmt(r['forget_quality_mean'])} "
                f"({fmt(r['forget_quality_min'])}–{fmt(r['forget_quality_max'])}) | {fmt(r['model_utility_mean'])} "
                f"({fmt(_ratio(r['model_utility_mean'], r['target_model_utility']))}) | {fmt(r.get('holdout_ks_mean'))} | "
                f"{fmt(r.get('forget_tr_mean_mean'))} | {fmt(r.get('forget_outrank_mean'))} | "
                f"{r['epoch']['median']:.0f} | {'yes' if r['reported'] else ''} |"
            )
        lines.append("")
    return "\n".join(lines)


def retain_free_markdown(rows: list[dict]) -> list[str]:
    """The tuning rule (reads the retain model) against the retain-free rule, per method (`retain_free_choice`)."""
    rows = [r for r in rows if r.get("retain_free_choice")]
    if not rows:
        return []
    same = sum(r["retain_free_choice"]["same"] for r in rows)
    lines = [
        "### The tuning rule reads the retain model; what a retain-free rule would have picked",
        "",
        "Retain-free rule: among the same points meeting the utility floor, the lowest mean holdout KS statistic (the "
        f"stopping rule's statistic, no retain model). It picks the same point for {same} of {len(rows)} methods; "
        "forget quality of both picks on the seeds the point was chosen on:",
        "",
        "| method | chosen | FQ | retain-free pick | FQ | MU |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["method"]):
        c = r["retain_free_choice"]
        lines.append(
            f"| `{r['method']}` | {point_label(r)} | {fmt(c['chosen_forget_quality_mean'])} | "
            f"{point_label(c)}{' (same)' if c['same'] else ''} | {fmt(c['forget_quality_mean'])} | {fmt(c['model_utility_mean'])} |"
        )
    return lines + [""]


CAUSAL_HEADERS = [
    "seed", "epoch", "features clamped", "factor", "forget NLL rise", "retain NLL rise", "selectivity",
    "random selectivity: mean (std; max)", "p",
]


def causal_markdown(rows: list[dict]) -> list[str]:
    """The probe stage's causal check over seeds (`causal` of the probed row; `write_results`)."""
    lines = []
    for r in rows:
        c = r["causal"]
        draws = {p["draws"] for p in c["per_seed"]}
        lines += [
            f"### The probe's causal check: `{r['method']}` at {point_label(r)}, {len(c['seeds'])} model seeds",
            "",
            f"SAE at `{c['hook_name']}`, trained on each seed's target. The features the probe finds removed "
            "(pruned or reversed) between the target and the run's holdout-selected epoch are clamped in the target "
            "(or, when none is removed, the ones whose forget activation fell most: `largest_drop`); selectivity = "
            "forget NLL rise - retain NLL rise; the same for random feature sets of matched firing frequency "
            f"({', '.join(str(d) for d in sorted(draws))} draws); p = (1 + draws reaching the clamped set's "
            "selectivity) / (1 + draws).",
            "",
            "| " + " | ".join(CAUSAL_HEADERS) + " |",
            "|" + "---|" * len(CAUSAL_HEADERS),
        ]
        for p in c["per_seed"]:
            for factor, e in p["scales"].items():
                lines.append(
                    f"| {p['seed']} | {fmt(p['epoch'])} | {p['n_features']} ({p['clamped_from']}) | {factor} | "
                    f"{fmt(e['forget_nll_rise'])} | {fmt(e['retain_nll_rise'])} | {fmt(e['selectivity'])} | "
                    f"{fmt(e['random_selectivity_mean'])} ({fmt(e['random_selectivity_std'])}; "
                    f"{fmt(e['random_selectivity_max'])}) | {fmt(e['p_value'])} |"
                )
        lines.append("")
    return lines


def ranking_markdown(agreements: list[dict]) -> list[str]:
    """Whether another sweep ranked the same methods the same way (`records.ranking_agreement`)."""
    lines = []
    for a in agreements:
        lines += [
            f"Against `{a['other_model']}` on the {a.get('other_benchmark') or 'embedded'} benchmark ({a['other_seeds']} model seeds) on the {a['methods']} methods both report: "
            f"Spearman rank correlation of mean log10 forget quality {a['spearman']:.2f} (this sweep: {a['seeds']} "
            f"model seeds). Best first, here: {', '.join(a['order'])}; there: {', '.join(a['other_order'])}.",
            "",
        ]
    return lines


def timing_markdown(parts: list[dict]) -> list[str]:
    """Where the sweep's time went (`sgu_llm.experiments.sweep.records.time_parts`): count, total and per-item
    spread of each part, and the sum of the parts."""
    if not parts:
        return []
    lines = [
        "## Where the time went",
        "",
        "Seconds as each part recorded them (one trial at a time on this machine); the sum is the sweep's wall time "
        "less process start-up and model loading. `run (all three)` repeats the three run parts above it and is not "
        "added again.",
        "",
        "| part | count | total (h) | median s | mean s | min–max s |",
        "|---|---|---|---|---|---|",
    ]
    for p in parts:
        lines.append(
            f"| {p['part']} | {p['count']} | {p['total'] / 3600:.2f} | {p['median']:.0f} | {p['mean']:.0f} | "
            f"{p['min']:.0f}–{p['max']:.0f} |"
        )
    total = sum(p["total"] for p in parts if p["part"] != "run (all three)")
    return lines + [f"| **sum of the parts** | | **{total / 3600:.2f}** | | | |", ""]


def d_cell(row: dict) -> str:
    """D to the retain model: mean (min–max) over seeds, a dash where the row has none.

        >>> d_cell({"forget_ks_d_mean": 0.12, "forget_ks_d_min": 0.1, "forget_ks_d_max": 0.15})
        '0.12 (0.1–0.15)'
    """
    if row.get("forget_ks_d_mean") is None:
        return fmt(None)
    return f"{fmt(row['forget_ks_d_mean'])} ({fmt(row['forget_ks_d_min'])}–{fmt(row['forget_ks_d_max'])})"


def band_cell(row: dict) -> str:
    """How many seeds sit inside their noise band (D <= the band's upper end), e.g. `2/5`; a dash without bands."""
    if row.get("seeds_in_band") is None:
        return fmt(None)
    return f"{row['seeds_in_band']}/{len(row['seeds'])}"


def ci_text(ci: list | None) -> str:
    return "–" if ci is None else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def band_markdown(bands: dict[int, dict]) -> list[str]:
    """One line: each seed's noise band (the D of its independent retrains to its retain model)."""
    if not bands:
        return []
    parts = [f"seed {s}: {fmt(b['noise_band'][0])}–{fmt(b['noise_band'][1])} ({b['retrains']} retrains)"
             for s, b in sorted(bands.items())]
    return ["Noise band, the KS distance D of independent retrains (the other seeds' retain models and noise floors) "
            "to each seed's retain model, i.e. what \"as good as retraining\" looks like: " + "; ".join(parts) + ".", ""]


def table_head(title: str, caption: str, headers: list[str]) -> list[str]:
    """A section's heading, caption and table header, as markdown lines."""
    return [f"### {title}", "", caption, "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]


CROSSFIT_HEADERS = ["method", "family", "points chosen (per seed)", "D mean (min–max)", "seeds in band",
                    "D per seed [CI]", "MU (x target)", "FQ mean (median)", "mean R", "outrank", "relearn rise"]


def crossfit_markdown(rows: list[dict]) -> list[str]:
    """The crossfit rows of one split, lowest mean D first."""
    if not rows:
        return []
    lines = table_head(
        "Crossfit selection: each seed's point chosen on the other seeds, reported on it",
        "For every method the same rule on the other seeds' holdout-selected epochs (lowest mean D at model utility "
        ">= the floor x target's), so no reported number was read when choosing it. D: KS distance of the forget "
        "truth ratios to the seed's retain model, with its paired row-bootstrap CI (where stored).",
        CROSSFIT_HEADERS,
    )
    for r in sorted(rows, key=lambda r: r["forget_ks_d_mean"]):
        pts = ", ".join(point_label(e) for e in r["per_seed"])
        per = "; ".join(f"{fmt(e['forget_ks_d'])} {ci_text(e.get('forget_ks_d_ci'))}" for e in r["per_seed"])
        lines.append(
            f"| `{r['method']}` | {r.get('family', '')} | {pts} | {d_cell(r)} | {band_cell(r)} | {per} | "
            f"{fmt(r['model_utility_mean'])} ({fmt(_ratio(r['model_utility_mean'], r['target_model_utility']))}) | "
            f"{fmt(r['forget_quality_mean'])} ({fmt(r['forget_quality_median'])}) | {fmt(r.get('forget_tr_mean_mean'))} | "
            f"{fmt(r.get('forget_outrank_mean'))} | {relearn_rise_cell(r)} |"
        )
    return lines + [""]


GATE_VERDICT_HEADERS = ["objective", "gated method (rule)", "selection", "ΔD mean [95 % CI] (lower / higher)",
                        "verdict", "Δutility mean [CI]", "frontier ΔD mean [CI]", "frontier verdict"]


def gate_verdict_markdown(gate: list[dict]) -> list[str]:
    """The paired gate table of one split (`gate_table`)."""
    if not gate:
        return []
    lines = table_head(
        "Does the gate help? Paired over seeds",
        "Each gated method (an SGU rule, the row gate, or both) against its objective alone on the same seeds: per seed the difference (gated − alone) in "
        "D (negative: closer to the retain model) and in utility at the rows' points, and on the frontier (the "
        "lowest D over the grid and the evaluated epochs at utility >= the floor); the mean difference with a "
        "percentile bootstrap CI over seeds, the seeds where the gated method is lower / higher, and the verdict: "
        "**helps** or **hurts** when the CI excludes 0, else undecided. `tune_seeds`: points chosen on the tune "
        "seeds (those seeds' numbers are not held out).",
        GATE_VERDICT_HEADERS,
    )
    for g in gate:
        d, mu, fd = g["crossfit_d"], g["crossfit_utility"], g["frontier_d"]
        missing = g["frontier_missing"]
        note = "" if not (missing["alone"] or missing["gated"]) else (
            f" ({fd['n']} seeds: the others reach no evaluated epoch at the floor)")
        lines.append(
            f"| {g['objective']} | `{g['gated']}` ({g['rule']}) | {g['selection']} | {fmt(d['mean'])} {ci_text(d['ci'])} "
            f"({d['below_zero']} / {d['above_zero']}) | **{g['verdict']}** | {fmt(mu['mean'])} {ci_text(mu['ci'])} | "
            f"{fmt(fd['mean'])} {ci_text(fd['ci'])}{note} | {g['frontier_verdict']} |"
        )
    return lines + [""]


def results_markdown(
    cfg: Any, rows: list[dict], baselines: dict, command: str, records: list[dict] | None = None,
    timing: list[dict] | None = None, agreements: list[dict] | None = None, bands: dict | None = None,
    crossfit: list[dict] | None = None, gate: list[dict] | None = None,
) -> str:
    lines = [
        f"# Results: methods side by side on the {'`' + cfg.benchmark + '` benchmark' if getattr(cfg, 'benchmark', None) else 'embedded benchmark'}, "
        f"`{cfg.model_name}`",
        "",
        f"Reproduce (fresh cache): `{command}`. Model `{cfg.model_name}`; learning rates "
        f"{', '.join(f'{float(x):g}' for x in cfg.learning_rates)} for every method"
        + "".join(f" (`{m}`: {', '.join(f'{float(x):g}' for x in f['learning_rates'])}, its own grid)"
                  for m, f in cfg.methods.items() if "learning_rates" in f)
        + "; spread over model seeds "
        "(target, retain and noise-floor models trained with each seed). `holdout`: the epoch the "
        "holdout-KS stopping rule picks (no retain model); `oracle`: the epoch with the best forget quality "
        "(uses the retain model); the learning rate of each method is chosen by the same rule for all "
        f"(holdout selection, model utility >= {cfg.utility_floor} x target, then best mean log10 forget quality).",
        "",
    ]
    for split, seeds in cfg.splits.items():
        base = baselines.get(split, {})
        done = sorted({s for r in rows if r["split"] == split for s in r["seeds"]})
        lines += [f"## {split} (model seeds finished: {len(done)} of {len(seeds)})", ""]
        lines += [
            "| seed | target FQ | target MU | noise floor FQ | noise floor MU |",
            "|---|---|---|---|---|",
        ]
        for s in sorted(base):
            t, n = base[s]["target"]["aggregates"], base[s]["noise_floor"]["aggregates"]
            lines.append(
                f"| {s} | {fmt(t['forget_quality'])} | {fmt(t['model_utility'])} | "
                f"{fmt(n['forget_quality'])} | {fmt(n['model_utility'])} |"
            )
        lines += [""] + band_markdown((bands or {}).get(split, {}))
        lines += [
            "| method | selection | point | FQ mean | FQ median | FQ min–max | D mean (min–max) | in band | MU mean | "
            "MU min–max | MU / target | forget ROUGE | privleak | truth ratio | mean R | outrank | epoch (median) | "
            "unlearn s |",
            "|" + "---|" * 18,
        ]
        for sel in ("holdout", "oracle"):
            for r in sorted(
                (r for r in rows if r["split"] == split and r["reported"] and r["selection"] == sel),
                key=lambda r: -r["forget_quality_mean"],
            ):
                lines.append(
                    f"| `{r['method']}` | {sel} | {point_label(r)} | {fmt(r['forget_quality_mean'])} | "
                    f"{fmt(r['forget_quality_median'])} | {fmt(r['forget_quality_min'])}–{fmt(r['forget_quality_max'])} | "
                    f"{d_cell(r)} | {band_cell(r)} | "
                    f"{fmt(r['model_utility_mean'])} | {fmt(r['model_utility_min'])}–{fmt(r['model_utility_max'])} | "
                    f"{fmt(_ratio(r['model_utility_mean'], r['target_model_utility']))} | {fmt(r.get('forget_rouge_mean'))} | "
                    f"{fmt(r.get('privleak_mean'))} | {fmt(r.get('forget_truth_ratio_mean'))} | "
                    f"{fmt(r.get('forget_tr_mean_mean'))} | {fmt(r.get('forget_outrank_mean'))} | "
                    f"{r['epoch']['median']:.0f} | {r['unlearn_seconds']['median']:.1f} |"
                )
        lines += ["", diagnostics_line(rows, split), "", goal_check(rows, split, cfg.utility_floor), ""]
        lines += ranking_markdown([a for a in agreements or [] if a["split"] == split])
        lines += crossfit_markdown([r for r in crossfit or [] if r["split"] == split])
        lines += gate_verdict_markdown([g for g in gate or [] if g["split"] == split])
        lines += gate_markdown(cfg, [r for r in rows if r["split"] == split])
        lines += retain_free_markdown([r for r in rows if r["split"] == split])
        if records:
            lines += [stopping_check(records, split), ""]
        lines += attack_markdown([r for r in rows + (crossfit or []) if r["split"] == split and r.get("attacks")])
        lines += causal_markdown([r for r in rows if r["split"] == split and r.get("causal")])
    lines += timing_markdown(timing or [])
    lines += ["![forget quality against model utility](pareto.png)", "", "Every point of every method: [grid.md](grid.md).", ""]
    return "\n".join(lines)


def sweep_rows(path: str, model: str, split: str, benchmark: str | None = None) -> list[dict]:
    """The rows of a sweep's results.json for one model, benchmark (None: rows without one) and split."""
    with open(path) as fh:
        return [r for r in json.load(fh)
                if (r.get("model"), r.get("benchmark"), r["split"]) == (model, benchmark, split)]


def sweep_noise_band(path: str, model: str, split: str, retain_weights: str, benchmark: str | None = None) -> list | None:
    """[min, max] D of the independent retrains of a retain model (by its weights fingerprint) from a sweep's rows:
    a run whose retain model is one the sweep used gets that seed's band; None when the file or the model is not
    there.

        >>> import json, tempfile
        >>> f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        >>> json.dump([{"model": "m", "split": "forget10", "seeds": [0, 1], "noise_band": [[0.1, 0.2], [0.0, 0.3]],
        ...             "retain_weights": ["a", "b"]}], f)
        >>> f.close(); sweep_noise_band(f.name, "m", "forget10", "b"), sweep_noise_band(f.name, "m", "forget10", "c")
        ([0.0, 0.3], None)
    """
    if not path or not os.path.exists(path):
        return None
    for r in sweep_rows(path, model, split, benchmark):
        if r.get("noise_band") and retain_weights in r.get("retain_weights", []):
            return r["noise_band"][r["retain_weights"].index(retain_weights)]
    return None


def sweep_attack_rows(path: str, model: str, split: str, benchmark: str | None = None) -> dict | None:
    """The attacked rows of a sweep's results.json for one model, benchmark and split (`sgu-llm run
    --sweep_results`)."""
    if not path:
        return None
    if not os.path.exists(path):
        return {"source": path, "rows": [], "retain": None, "note": f"{path} does not exist (run the sweep first)"}
    rows = [r for r in sweep_rows(path, model, split, benchmark) if r.get("attacks")]
    keep = ("method", "learning_rate", "selection", "family", "seeds", "attacks", "forget_quality_mean",
            "model_utility_mean", "forget_ks_d_mean")
    return {
        "source": path,
        "rows": [{k: r.get(k) for k in keep} for r in rows],
        "retain": rows[0].get("retain_attacks") if rows else None,
        "note": None if rows else f"{path} has no attacked rows for model {model!r} and split {split!r}",
    }


RUN_ATTACK_HEADERS = ["model", "attack", "forget prob", "forget ROUGE", "forget quality"]


def run_attack_caption(report: dict[str, Any]) -> str:
    """What `sgu_llm.evaluation.attacks.attack_report` measured, in one paragraph."""
    r = report["relearn"]
    return (
        f"Attacks, measured on {report['rows_measured']} held-out forget rows (relearning: {r['steps']} AdamW steps "
        f"at lr {r['learning_rate']:g} on the other {report['rows_trained']} rows; int8 / int4: per-channel "
        "round-to-nearest of every linear layer). The retain model never saw the forget set: its numbers after an "
        "attack are what \"nothing to recover\" looks like."
    )


def run_attack_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per (model, attack) of an attack report (`RUN_ATTACK_HEADERS`)."""
    return [
        [name, attack, f"{m['forget_prob']:.4f}", f"{m['forget_rouge']:.4f}", f"{m['forget_quality']:.3g}"]
        for name, entry in report["models"].items()
        for attack, m in entry.items()
    ]
