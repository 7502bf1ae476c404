"""The run report: `report.md` and a self-contained `report.html` with plots drawn by matplotlib (inline SVG).

Both files are rendered from one list of blocks built from the run's data: headings, paragraphs, tables
(every cell formatted once, so the two files show the same numbers) and plots (HTML only).
"""

from __future__ import annotations

import math
from typing import Any

from matplotlib.figure import Figure

from sgu_llm.core.formatting import fmt
from sgu_llm.report.figures import (
    heatmap_figure,
    histogram_figure,
    line_figure,
    scatter_figure,
    truth_ratio_figure,
)
from sgu_llm.report.page import Block, html_page, paragraph, to_html, to_markdown
from sgu_llm.report.tables import (
    ATTACK_HEADERS,
    RUN_ATTACK_HEADERS,
    attack_caption,
    attack_cells,
    run_attack_caption,
    run_attack_rows,
)

HEADLINE = (
    "forget_quality",
    "model_utility",
    "forget_prob",
    "forget_rouge",
    "forget_truth_ratio",
    "forget_tr_mean",
    "forget_outrank",
    "retain_prob",
    "retain_rouge",
    "privleak",
)
MODELS = ("target", "retain", "noise_floor", "unlearned")
ACTIONS = ("sgu/maintain_frac", "sgu/prune_frac", "sgu/reverse_frac", "sgu/conflict_frac")
STATES = ("maintained", "pruned", "reversed", "collateral")  # as sgu_llm.probe.stats (which needs torch)


# The run report


def _models(evals: dict[str, dict]) -> list[str]:
    return [n for n in MODELS if n in evals]


def _headline_table(evals: dict[str, dict]) -> Block:
    names = _models(evals)
    rows = [[key] + [fmt(evals[n]["aggregates"].get(key)) for n in names] for key in HEADLINE]
    return "table", (["metric", *names], rows)


def _known_line(known: dict[str, Any] | None) -> list[Block]:
    """'World facts stated' line: how much general knowledge each model keeps (greedy answers)."""
    if not known or len(known) < 2:
        return []
    names = [n for n in ("base", *MODELS) if n in known]
    cells = ", ".join(f"{n} {known[n]}" for n in names)
    return [paragraph(f"World facts stated in the greedy answer (of {known['of']}): {cells}.")]


def _attack_blocks(attacks: dict[str, Any] | None) -> list[Block]:
    if not attacks:
        return []
    blocks = [
        ("h2", "Attacks: does the forgotten come back?"),
        paragraph(run_attack_caption(attacks)),
        ("table", (RUN_ATTACK_HEADERS, run_attack_rows(attacks))),
    ]
    sweep = attacks.get("sweep")
    if sweep:
        blocks.append(("h3", f"Every method of the sweep ({sweep['source']})"))
        if sweep["rows"]:
            seeds = len(sweep["rows"][0]["attacks"]["seeds"])
            caption = attack_caption(sweep["rows"][0]["attacks"])
            blocks.append(paragraph(f"The same attacks, from the sweep's runs over {seeds} model seeds. {caption}"))
            blocks.append(("table", (ATTACK_HEADERS, attack_cells(sweep["rows"], sweep["retain"]))))
        else:
            blocks.append(paragraph(sweep["note"]))
    return blocks


def _over_steps(records: list[dict], keys: tuple[str, ...]) -> dict[str, tuple[list, list]]:
    """Named (steps, values) series from per-step records ("sgu/maintain_frac" is named "maintain frac")."""
    xs = [r["step"] for r in records]
    return {k.split("/")[-1].replace("_", " "): (xs, [r[k] for r in records]) for k in keys}


def run_plots(evals: dict[str, dict], steps: list[dict], log_history: list[dict]) -> dict[str, Figure]:
    """Truth ratios and probabilities of the models; forget quality, probabilities and SGU's actions over the
    unlearning steps where they were recorded."""
    names = _models(evals)
    ratios = {
        n: [r for r in evals[n]["per_example"]["forget"]["truth_ratio"] if math.isfinite(r)] for n in names
    }
    probs = {
        n: ([evals[n]["aggregates"]["forget_prob"]], [evals[n]["aggregates"]["retain_prob"]]) for n in names
    }
    plots = {}
    if any(ratios.values()):
        plots["Forget-set truth ratio distributions"] = histogram_figure(ratios, "truth ratio")
        boxed = {n: v for n, v in ratios.items() if v and min(v) > 0}
        if boxed:
            plots["Undershoot or overshoot: forget truth ratios against the retain model's"] = truth_ratio_figure(boxed)
    plots["Forget vs retain probability"] = scatter_figure(probs, "forget probability", "retain probability")
    if steps:
        fq = _over_steps(steps, ("forget_quality",))
        plots["Forget quality over unlearning"] = line_figure(fq, "optimizer step", "forget quality")
        values = _over_steps(steps, ("forget_prob", "retain_prob", "forget_truth_ratio"))
        plots["Probabilities over unlearning"] = line_figure(values, "optimizer step", "value")
    acts = [h for h in log_history if ACTIONS[0] in h]
    if acts:
        fractions = _over_steps(acts, ACTIONS)
        plots["SGU action fractions over steps"] = line_figure(
            fractions, "optimizer step", "fraction of coordinates"
        )
    return plots


def build_report(
    metrics: dict[str, Any],
    evals: dict[str, dict],
    steps: list[dict],
    log_history: list[dict],
    probe: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Markdown and HTML reports from a run's metrics, the four models' evals and the per-step records."""
    blocks: list[Block] = [
        ("h1", f"sgu-llm run: {metrics['method']}"),
        paragraph(
            f"Forget quality {fmt(metrics['forget_quality'])} "
            f"(noise floor: {fmt(metrics['noise_floor_forget_quality'])}), "
            f"model utility {fmt(metrics['model_utility'])} (target: {fmt(metrics['target']['model_utility'])})."
        ),
        paragraph(
            "The noise floor is a second retain model trained with another seed: a forget quality at or above "
            "it is as indistinguishable from the retain model as retraining gets."
        ),
        _headline_table(evals),
        *_known_line(metrics.get("world_facts_known")),
        *_attack_blocks(metrics.get("attacks")),
        paragraph("Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in metrics["timings"].items())),
        *(("plot", plot) for plot in run_plots(evals, steps, log_history).items()),
        ("md", "Plots are in report.html."),
        *(_probe_blocks(probe) if probe else []),
    ]
    return to_markdown(blocks), html_page("sgu-llm report", blocks)


# The SAE probe section


def _probe_summary(probe: dict[str, Any]) -> Block:
    q = probe["sae_quality"]
    counts = probe["state_counts"]
    final = counts[-1] if counts else {}
    if probe["probe_share"] == probe["probe_share"]:  # nan for a static before/after probe
        cost = (
            f"Probe cost: {probe['probe_seconds']:.1f} s, {100 * probe['probe_share']:.1f} % of the unlearning time "
            f"without it ({probe['unlearn_seconds_without_probe']:.1f} s of training steps, per-epoch evaluation "
            "excluded)."
        )
    else:
        cost = f"Probe cost: {probe['probe_seconds']:.1f} s (before/after probe, no unlearning run)."
    return paragraph(
        f"SAE on `{probe['hook_name']}` ({probe['hf_module']}): explained variance {q['explained_variance']:.3f}, "
        f"L0 {q['l0']:.1f}, dead features {q['dead_fraction']:.3f} of {q['d_sae']}.",
        f"{len(probe['selected'])} forget-specific features; at the end: "
        + ", ".join(f"{s} {final.get(s, 0)}" for s in STATES)
        + ".",
        cost,
    )


def _causal_blocks(probe: dict[str, Any]) -> list[Block]:
    causal = probe.get("causal") or {}
    if not causal.get("n_features"):
        return [
            paragraph("Causal check: the probe called no feature pruned or reversed and no feature's forget activation "
               "fell, so there was nothing to clamp.")
        ]
    largest_drop = causal.get("clamped_from") == "largest_drop"
    which = (
        "whose forget activation fell most during unlearning (the probe called none pruned or reversed)"
        if largest_drop
        else "unlearning switched off (pruned or reversed)"
    )
    clamped_label = "largest drop" if largest_drop else "removed"
    header = [
        "factor",
        "features",
        "forget prob drop",
        "retain prob drop",
        "forget NLL rise",
        "retain NLL rise",
        "selectivity",
        "random selectivity: std, min-max",
        "random >= clamped",
    ]
    effects = ("forget_drop", "retain_drop", "forget_nll_rise", "retain_nll_rise", "selectivity")
    rows = []
    for scale, entry in causal.get("by_scale", {}).items():
        spread = (
            f"{entry['random_selectivity_std']:.3g}, {entry['random_selectivity_min']:.3g} to "
            f"{entry['random_selectivity_max']:.3g}"
        )
        for label, eff, spread_cell, p_cell in (
            (clamped_label, entry["clamped_effects"], "", f"{entry['random_at_least']:.2f}"),
            ("matched random (mean)", entry["random_mean"], spread, ""),
        ):
            rows.append(
                [f"{float(scale):g}", label, *(f"{eff[k]:.4g}" for k in effects), spread_cell, p_cell]
            )
    return [
        paragraph(
            f"Causal check on the target model, clamping the {causal['n_features']} features {which} through the SAE "
            f"(reconstruction + error term) against {probe['causal_random_draws']} draws of as many random "
            "features of matched firing frequency. Each clamp multiplies the features by a factor (0: off; "
            'negative: pushed past zero). Selectivity = forget NLL rise - retain NLL rise; "random >= clamped" '
            "is the fraction of random draws at least as selective (an empirical p-value)."
        ),
        paragraph(
            f"Unclamped target: forget prob {causal['baseline']['forget_prob']:.4f}, "
            f"retain prob {causal['baseline']['retain_prob']:.4f}."
        ),
        ("table", (header, rows)),
    ]


def _top_features(probe: dict[str, Any]) -> list[Block]:
    """The first ten features unlearning switched off, with their activations and top forget contexts."""
    top = [f for f in probe["features"] if f["state"] in ("pruned", "reversed")][:10]
    if not top:
        return []
    header = ["feature", "state", "forget act start -> end", "retain act start -> end", "top forget contexts"]
    rows = [
        [
            str(f["feature"]),
            f["state"],
            f"{f['steps'][0]['forget_mean_act']:.3f} -> {f['steps'][-1]['forget_mean_act']:.3f}",
            f"{f['steps'][0]['retain_mean_act']:.3f} -> {f['steps'][-1]['retain_mean_act']:.3f}",
            " / ".join(f.get("contexts", [])),
        ]
        for f in top
    ]
    return [("table", (header, rows))]


def probe_plots(probe: dict[str, Any]) -> dict[str, Figure]:
    """Feature states over steps, forget vs retain activation, SGU's maintain fractions."""
    plots = {}
    if probe["state_counts"]:
        states = _over_steps(probe["state_counts"], STATES)
        plots["Forget-specific feature states over steps"] = line_figure(states, "optimizer step", "features")
    feats = probe["features"]
    if feats:
        acts = {
            when: (
                [f["steps"][i]["forget_mean_act"] for f in feats],
                [f["steps"][i]["retain_mean_act"] for f in feats],
            )
            for when, i in (("before", 0), ("after", -1))
        }
        plots["Selected features: forget vs retain mean activation"] = scatter_figure(
            acts, "forget mean activation", "retain mean activation"
        )
    actions = probe.get("actions") or []
    if actions:
        names = sorted({n for a in actions for n in a["tensors"]})
        grid = [[a["tensors"].get(n, [0, 0, 0])[1] for a in actions] for n in names]
        plots["Maintain fraction per parameter tensor feeding the probed layer x step"] = heatmap_figure(
            names, [a["step"] for a in actions], grid, "maintain fraction"
        )
    return plots


def _num(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def evidence_blocks(evidence: dict[str, Any]) -> list[Block]:
    """Where unlearning acts (the patching curve), the causal table with both controls, the feature cards and the
    sentence the evidence supports."""
    curve = evidence["curve"]
    series = {f"{k} rows": (curve["layers"], curve[f"{k}_fraction"]) for k in ("forget", "retain")}
    header = ["k", "fraction of the layer patch", "p vs matched random", "random sets' fraction",
              "random-weights SAE's fraction", "retain side effect", "null overlap",
              *(f"clamp {s}: selectivity (p)" for s in (evidence["rows"][0]["clamp"] if evidence["rows"] else {}))]
    rows = [
        [str(r["k"]), _num(r["fraction_of_layer_patch"]), _num(r["p_random"]), _num(r["random_sets_fraction"]),
         _num(r["random_sae_fraction"]), _num(r["retain_side_effect"]), _num(r["null_overlap"]),
         *(f"{_num(c['selectivity'])} ({_num(c['p_random'])})" for c in r["clamp"].values())]
        for r in evidence["rows"]
    ]
    card_header = ["rank", "feature", "state (null's)", "net attribution (null's)", "forget act: target -> unlearned",
                   "retain act: target -> unlearned", "top forget contexts", "top retain contexts"]
    cards = [
        [str(c["rank"]), str(c["feature"]), f"{c['state']} ({c.get('null_state', '–')})",
         f"{_num(c['net_attribution'])} ({_num(c['null_net_attribution'])})",
         f"{c['target_act']['forget']:.3f} -> {c['unlearned_act']['forget']:.3f}",
         f"{c['target_act']['retain']:.3f} -> {c['unlearned_act']['retain']:.3f}",
         " / ".join(c["forget_contexts"]), " / ".join(c["retain_contexts"])]
        for c in evidence.get("cards", [])
    ]
    t = evidence["trained_sae"]
    return [
        ("h3", "Where unlearning acts, and which features carry it"),
        paragraph(
            "Patching curve: the target's residual stream after layer L replaced by the unlearned model's (same "
            "inputs); the share of the answer NLL change (unlearned - target) it reproduces on forget rows, and on "
            f"retain rows (collateral). Forget NLL {curve['target_nll']['forget']:.4g} -> "
            f"{curve['unlearned_nll']['forget']:.4g}, retain {curve['target_nll']['retain']:.4g} -> "
            f"{curve['unlearned_nll']['retain']:.4g}. The SAE sits at {evidence['layer_reason']}."
        ),
        ("plot", ("Share of the NLL change reproduced by patching the output of layer L", line_figure(
            series, "decoder layer L", "fraction of the change"))),
        paragraph(
            f"Causal test on held-out rows ({t['test_rows']['forget']} forget, {t['test_rows']['retain']} retain; "
            f"features ranked on {t['select_rows']['forget']} other forget rows"
            f"{', net of a retain-only null run of the same length' if evidence['null'] else ''}): the top k "
            "features of the target patched to their unlearned values, as a fraction of the whole-layer patch, "
            f"against {t['draws']} matched random feature sets and the same procedure through a random-weights SAE; "
            "retain side effect = retain NLL rise / forget NLL rise; clamps multiply the features by a negative factor."
        ),
        ("table", (header, rows)),
        paragraph(evidence["verdict"]),
        *([("table", (card_header, cards))] if cards else []),
    ]


def _probe_blocks(probe: dict[str, Any]) -> list[Block]:
    return [
        ("h2", "SAE probe"),
        _probe_summary(probe),
        *_causal_blocks(probe),
        *_top_features(probe),
        *(("plot", plot) for plot in probe_plots(probe).items()),
        *(evidence_blocks(probe["evidence"]) if probe.get("evidence") else []),
    ]


def build_probe_section(probe: dict[str, Any]) -> tuple[str, str]:
    """Markdown and HTML for the SAE probe: quality, states over steps, scatter, top features, heatmap, causal table."""
    blocks = _probe_blocks(probe)
    return to_markdown(blocks), to_html(blocks)
