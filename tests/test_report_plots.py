"""The run report from hand-made inputs (no model): matplotlib plots inline as SVG, tables from the data."""

import math
import random
import re

import pytest

from sgu_llm.core.formatting import fmt as _fmt
from sgu_llm.report.figures import use_log_scale
from sgu_llm.report.run_report import build_probe_section, build_report, probe_plots, run_plots

MODELS = ("target", "retain", "noise_floor", "unlearned")
ACTIONS = ("sgu/maintain_frac", "sgu/prune_frac", "sgu/reverse_frac", "sgu/conflict_frac")


def fake_eval(name: str, rng: random.Random) -> dict:
    """An evaluation result as `evaluate_model` returns it, with forget truth ratios spread by model."""
    centre = {"target": 0.05, "retain": 0.6, "noise_floor": 0.62, "unlearned": 0.4}[name]
    aggregates = {
        "forget_quality": {"target": 3.1e-9, "retain": 1.0, "noise_floor": 0.731, "unlearned": 0.0123}[name],
        "model_utility": 0.4 + 0.01 * len(name),
        "forget_prob": {"target": 0.93, "retain": 0.21, "noise_floor": 0.2, "unlearned": 0.08}[name],
        "forget_rouge": 0.5,
        "forget_truth_ratio": centre,
        "retain_prob": 0.9 - 0.01 * len(name),
        "retain_rouge": 0.8,
        "privleak": -12.5,
    }
    ratios = [centre * math.exp(rng.gauss(0, 0.5)) for _ in range(40)]
    return {"aggregates": aggregates, "per_example": {"forget": {"truth_ratio": ratios}}}


def fake_probe(rng: random.Random) -> dict:
    """`probe_report`'s JSON: features with per-step statistics, state counts, SGU's actions and a causal check."""
    steps = [0, 5, 10]
    features = [
        {
            "feature": f,
            "state": ("maintained", "pruned", "reversed", "collateral")[f % 4],
            "steps": [
                {"step": s, "forget_mean_act": rng.uniform(0, 2), "retain_mean_act": rng.uniform(0, 0.5)} for s in steps
            ],
            "contexts": ["…born in [Paris] in…", "a | b"],
        }
        for f in range(12)
    ]
    effects = {"forget_drop": 0.05, "retain_drop": 0.001, "forget_nll_rise": 0.31, "retain_nll_rise": 0.02,
               "selectivity": 0.29}
    random_mean = {k: v / 4 for k, v in effects.items()}
    entry = {"clamped_effects": effects, "random_mean": random_mean, "random_selectivity_std": 0.011,
             "random_selectivity_min": 0.05, "random_selectivity_max": 0.09, "random_at_least": 0.0}
    return {
        "hook_name": "blocks.1.hook_resid_post",
        "hf_module": "model.layers.1",
        "selected": [f["feature"] for f in features],
        "features": features,
        "state_counts": [{"step": s, "maintained": 12 - i, "pruned": i, "reversed": 0, "collateral": 0}
                         for i, s in enumerate(steps)],
        "probe_seconds": 1.5,
        "probe_share": 0.042,
        "unlearn_seconds_without_probe": 35.7,
        "sae_quality": {"explained_variance": 0.91, "l0": 12.3, "dead_fraction": 0.02, "d_sae": 256},
        "actions": [{"step": s, "tensors": {f"model.layers.{k}.mlp.down_proj.weight": [0.1, 0.7 - 0.01 * s, 0.2]
                                            for k in (0, 1)}} for s in range(1, 11)],
        "causal": {"n_features": 3, "baseline": {"forget_prob": 0.9, "retain_prob": 0.8},
                   "by_scale": {"0.0": entry, "-1.0": entry}},
        "causal_random_draws": 5,
    }


@pytest.fixture(scope="module")
def inputs():
    rng = random.Random(0)
    evals = {name: fake_eval(name, rng) for name in MODELS}
    # forget quality over the unlearning epochs: from 1e-9 up to 0.5, nine orders of magnitude
    steps = [
        {"step": 10 * i, "epoch": float(i), "forget_quality": fq, "forget_prob": 0.9 - 0.2 * i,
         "retain_prob": 0.88, "forget_truth_ratio": 0.1 + 0.1 * i}
        for i, fq in enumerate((3.1e-9, 2e-5, 0.004, 0.5))
    ]
    log_history = [
        {"step": s, "loss": 1.0, **{k: (0.6 - 0.01 * s, 0.2 + 0.005 * s, 0.2 + 0.005 * s, 0.3)[i] for i, k in enumerate(ACTIONS)}}
        for s in range(1, 31)
    ]
    log_history.append({"step": 30, "train_runtime": 10.0})  # the trainer's last record has no sgu/* keys
    attacks = {
        "rows_trained": 20,
        "rows_measured": 20,
        "relearn": {"steps": 10, "learning_rate": 1e-3, "batch_size": 8},
        "models": {m: {a: {"forget_prob": 0.1234, "forget_rouge": 0.4321, "forget_quality": 0.00567}
                       for a in ("none", "relearn", "int8", "int4")} for m in ("unlearned", "retain")},
    }
    metrics = {
        "method": "sgu",
        "forget_quality": evals["unlearned"]["aggregates"]["forget_quality"],
        "model_utility": evals["unlearned"]["aggregates"]["model_utility"],
        "noise_floor_forget_quality": evals["noise_floor"]["aggregates"]["forget_quality"],
        **{name: evals[name]["aggregates"] for name in MODELS},
        "steps": steps,
        "world_facts_known": {"of": 10, "target": 9, "retain": 9, "noise_floor": 8, "unlearned": 9},
        "attacks": attacks,
        "timings": {"models": 1.0, "unlearn": 40.2, "total": 60.0},
    }
    return metrics, evals, steps, log_history, fake_probe(rng)


@pytest.fixture(scope="module")
def report(inputs):
    return build_report(*inputs)


def cells(page: str) -> set[str]:
    return set(re.findall(r"<td>(.*?)</td>", page))


def test_every_plot_is_inline_svg_without_xml_prolog(report):
    _, page = report
    assert page.count("<svg") >= 8  # 5 of the run and 3 of the probe
    body = page[page.index("<body") :]
    assert "<?xml" not in body and "<!DOCTYPE svg" not in body
    assert page.count('<svg style="width:100%;height:auto"') == page.count("<svg")
    for title in (
        "Forget-set truth ratio distributions",
        "SGU action fractions",
        "SAE probe",
        "Forget-specific feature states over steps",
        "forget vs retain mean activation",
        "Maintain fraction per parameter tensor",
        "Probe cost:",
        "% of the unlearning time",
        "Causal check",
        "Attacks: does the forgotten come back?",
    ):
        assert title in page, title


def test_tables_show_the_input_numbers(inputs, report):
    metrics, evals, *_ = inputs
    md, page = report
    td = cells(page)
    for name in MODELS:
        for key in ("forget_quality", "model_utility", "privleak"):
            value = _fmt(evals[name]["aggregates"][key])
            assert value in td and f"| {value} " in md, (name, key)
    assert {"0.1234", "0.4321", "0.00567", "int4"} <= td  # the attack table
    assert {"0.31", "0.29", "0.00", "0.011, 0.05 to 0.09", "-1"} <= td  # the causal table
    assert "…born in [Paris] in… / a | b" in td  # a '|' stays in HTML, markdown gets '/'
    assert "…born in [Paris] in… / a / b" in md
    assert f"Forget quality {_fmt(metrics['forget_quality'])} (noise floor: 0.731)" in md and "Plots are in" in md


def test_forget_quality_uses_a_log_axis_when_it_spans_decades(inputs):
    _, evals, steps, log_history, _ = inputs
    plots = run_plots(evals, steps, log_history)
    assert plots["Forget quality over unlearning"].axes[0].get_yscale() == "log"
    assert plots["Probabilities over unlearning"].axes[0].get_yscale() == "linear"
    assert use_log_scale([1e-9, 0.5]) and not use_log_scale([0.01, 0.9]) and not use_log_scale([0.0, 1e-9, 0.5])
    scatter = plots["Forget vs retain probability"].axes[0]
    (x0, x1), xs = scatter.get_xlim(), [0.93, 0.21, 0.2, 0.08]
    assert x0 < min(xs) and x1 > max(xs)  # margins: no point on an axis


def test_the_report_is_deterministic(inputs, report):
    assert build_report(*inputs) == report


def test_probe_section_alone(inputs):
    probe = inputs[-1]
    md, page = build_probe_section(probe)
    assert md.startswith("## SAE probe") and "<h2>SAE probe</h2>" in page and page.count("<svg") == 3
    assert len(probe_plots({**probe, "actions": []})) == 2
    static = {**probe, "probe_share": float("nan"), "causal": {"n_features": 0}}
    md, page = build_probe_section(static)
    assert "no unlearning run" in page and "nothing to clamp" in md
