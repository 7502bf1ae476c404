"""The sweep harness: runs, aggregation over model seeds, the reported point, resume."""

import copy
import dataclasses
import glob
import json
import os
import shutil
import sys

import pytest
import yaml

from sgu_llm.evaluation.metrics import ks_d
from sgu_llm.experiments.sweep import (
    Sweep,
    SweepConfig,
    aggregate,
    collect_records,
    load_sweep,
    pareto_front,
    write_results,
)
from sgu_llm.experiments.sweep.backends import make_backend
from sgu_llm.experiments.sweep.config import method_points
from sgu_llm.experiments.sweep.records import load_baselines, time_parts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = {
    "base": {
        "model_name_or_path": "builtin:tiny-llama",
        "dataset_name": "synthetic",
        "synthetic_num_authors": 20,
        "holdout_split": "holdout10",
        "hidden_size": 32,
        "finetune_max_epochs": 10,
        "finetune_target_accuracy": 0.3,
        "max_new_tokens": 8,
        "num_train_epochs": 1,
        "per_device_train_batch_size": 8,
        "disable_tqdm": True,
        "save_strategy": "no",
    },
    "methods": {"sgu": {"method": "sgu"}, "graddiff": {"method": "graddiff"}},
    "learning_rates": [1e-3],
    "splits": {"forget10": [0]},
}


@pytest.mark.slow
def test_sweep_runs_writes_results_and_resumes(tmp_path):
    cfg = SweepConfig(**TINY, output_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "docs"))
    records = Sweep(cfg, log=lambda m: None).run_grid()
    assert {(r["method"], r["seed"]) for r in records} == {("sgu", 0), ("graddiff", 0)}
    for r in records:
        assert len(r["curve"]) == 2  # the start and 1 epoch
        assert set(r["selections"]) == {"holdout", "oracle", "final"}
        best = max(c["forget_quality"] for c in r["curve"])
        assert r["selections"]["oracle"]["forget_quality"] == pytest.approx(best)
        kernels = r["arithmetic"]["selection_kernels"]  # the record says what computed it
        assert r["arithmetic"]["torch"] and set(kernels) == ({"sgu_select", "threshold_rows"} if r["method"] == "sgu" else set())
    rows = write_results(cfg, records, "sgu-llm sweep test.yaml")
    for name in ("results.json", "results.md", "pareto.png", "grid.md"):
        assert os.path.getsize(tmp_path / "docs" / name) > 0
    saved = json.load(open(tmp_path / "docs" / "results.json"))
    assert saved == json.loads(json.dumps(rows))
    # The per-row forget truth ratios are stored, so D (and any aggregate over rows) can be recomputed; the rows
    # carry D per seed and the noise band (seed 0's retain model against its one independent retrain).
    base = load_baselines(cfg, "forget10")[0]
    retain_tr = base["retain"]["per_example"]["forget"]["truth_ratio"]
    for r in records:
        h = r["selections"]["holdout"]
        assert len(h["forget_truth_ratios"]) == len(retain_tr) == 20
        assert h["forget_ks_d"] == pytest.approx(float(ks_d(h["forget_truth_ratios"], retain_tr)))
    band = ks_d(base["noise_floor"]["per_example"]["forget"]["truth_ratio"], retain_tr)
    for r in saved:
        if r["selection"] == "holdout":
            assert r["noise_band"] == [[pytest.approx(band)] * 2] and r["seeds_in_band"] in (0, 1)
            assert r["forget_ks_d"] == [pytest.approx(records[0]["selections"]["holdout"]["forget_ks_d"])] or r["method"] != records[0]["method"]
    (gate,) = [r["gate"] for r in saved if r["selection"] == "gate"]  # sgu over the NLL against GradDiff
    assert (gate["alone"], gate["gated"], gate["verdict"]) == ("graddiff", "sgu", "undecided")  # 1 seed: no CI
    saved = [r for r in saved if r["selection"] != "gate"]
    needed = {
        "method",
        "split",
        "selection",
        "forget_quality_mean",
        "forget_quality_median",
        "model_utility_mean",
        "target_model_utility",
        "seeds",
        "model",
    }
    assert all(needed <= set(r) for r in saved)
    # Crossfit on two seeds (seed 1 a copy of seed 0's runs, so no more training): each seed's point is chosen on
    # the other, the rows and the gate table say so, and the attack stage would attack each seed's own point.
    two = dataclasses.replace(cfg, output_dir=str(tmp_path / "two"), results_dir=str(tmp_path / "two-docs"),
                              splits={"forget10": [0, 1]}, selection="crossfit", benchmark="test-size")
    shutil.copytree(tmp_path / "runs", tmp_path / "two")
    shutil.copytree(tmp_path / "two" / "forget10" / "seed0", tmp_path / "two" / "forget10" / "seed1")
    both = records + [{**copy.deepcopy(r), "seed": 1} for r in records]
    out = write_results(two, both, "sgu-llm sweep two.yaml")
    cross = {r["method"]: r for r in out if r["selection"] == "crossfit"}
    assert set(cross) == {"sgu", "graddiff"} and cross["sgu"]["seeds"] == [0, 1]
    assert all(r["benchmark"] == "test-size" for r in out)
    assert cross["sgu"]["forget_ks_d"] == [records[0]["selections"]["holdout"]["forget_ks_d"]] * 2 or records[0]["method"] != "sgu"
    (gate,) = [r["gate"] for r in out if r["selection"] == "gate"]
    assert gate["selection"] == "crossfit" and gate["crossfit_d"]["n"] == 2
    md = (tmp_path / "two-docs" / "results.md").read_text()
    assert "### Crossfit selection" in md and "### Does the gate help? Paired over seeds" in md
    assert Sweep(dataclasses.replace(two, attack_splits=["forget10"]), log=lambda m: None).attack_points("forget10", both) == {
        s: {"sgu": (1e-3, ()), "graddiff": (1e-3, ())} for s in (0, 1)
    }
    with pytest.raises(ValueError, match="remove tune_seeds"):
        dataclasses.replace(two, tune_seeds=[0])

    # Resume: a second run trains nothing and returns the same records.
    class NoTraining(Sweep):
        def train_point(self, *args, **kwargs):
            raise AssertionError("a finished run was trained again")

    again = NoTraining(cfg, log=lambda m: None).run_grid()
    assert sorted(json.dumps(r, sort_keys=True) for r in again) == sorted(
        json.dumps(r, sort_keys=True) for r in records
    )
    assert len(collect_records(cfg)) == 2
    # Attacks on each method's reported point and on the retain model: the repeated run scores every epoch as
    # the stored one did; the rows and results.md carry them; a second pass repeats nothing.
    cfg.attack_splits = ["forget10"]
    attacks = Sweep(cfg, log=lambda m: None).attack(records)
    assert sorted(a["method"] for a in attacks) == ["graddiff", "retain", "sgu"]
    assert all(a["models_match"] and a.get("same_curve", True) for a in attacks)
    for a in attacks:
        assert set(a["attacks"]) == {"none", "relearn", "int8", "int4"}
        assert 0 <= a["attacks"]["relearn"]["forget_prob"] <= 1
    rows = write_results(cfg, records, "sgu-llm sweep test.yaml", attacks)
    attacked = [r for r in rows if r.get("attacks")]
    assert sorted(r["method"] for r in attacked) == ["graddiff", "sgu"]
    assert all(r["selection"] == "holdout" and r["retain_attacks"]["seeds"] == [0] for r in attacked)
    assert "### Attacks (1 model seeds)" in (tmp_path / "docs" / "results.md").read_text()

    class NoRepeat(Sweep):
        def unlearn(self, *args, **kwargs):
            raise AssertionError("an attacked run was repeated")

    assert NoRepeat(cfg, log=lambda m: None).attack(records) == attacks
    from sgu_llm.report.tables import sweep_attack_rows as sweep_attacks

    found = sweep_attacks(str(tmp_path / "docs" / "results.json"), "tiny-llama", "forget10")
    assert sorted(r["method"] for r in found["rows"]) == ["graddiff", "sgu"] and found["retain"] is not None
    assert sweep_attacks(str(tmp_path / "none.json"), "tiny-llama", "forget10")["rows"] == []
    cfg.attack_splits = []
    # A repeat trains only up to the epoch the stored curve's holdout rule picked, and has that epoch's weights
    # of the whole run (same schedule) and its score.
    import torch

    cfg.base = {**cfg.base, "num_train_epochs": 2}
    sweep = Sweep(cfg, log=lambda m: None)
    ctx = sweep.baselines("forget10", 0, keep=True)
    _, recorder, _ = sweep.unlearn("forget10", 0, "graddiff", (1e-3, ()), ctx)
    curve = [c if i == 1 else {**c, "holdout_ks": 1.0} for i, c in enumerate(recorder.curve)]
    again, info = sweep.repeat_selected("forget10", 0, "graddiff", (1e-3, ()), ctx, curve)
    assert (info["epoch"], info["same_curve"]) == (1.0, True) and info["repeat_seconds"] > 0
    for k, v in again.state_dict().items():
        torch.testing.assert_close(v, recorder.snapshots[1][k], rtol=0, atol=0)
    cfg.base = {**cfg.base, "num_train_epochs": 1}
    # The probe stage: the reported SGU-family row (here `sgu`) repeated and probed, its causal check at both
    # clamp factors in the row and results.md; the rows also go into a shared results.json beside another
    # model's; a second pass repeats nothing.
    cfg.probe_splits = ["forget10"]
    cfg.base = {**cfg.base, "sae_epochs": 2, "causal_random_draws": 2, "probe_examples": 8}
    probes = Sweep(cfg, log=lambda m: None).probe(records)
    assert [(p["method"], p["seed"]) for p in probes] == [("sgu", 0)] and probes[0]["same_curve"]
    assert set(probes[0]["causal"]["by_scale"]) == {"0.0", "-2.0"}
    shared = tmp_path / "all.json"
    shared.write_text(json.dumps([{"model": "other", "method": "npo"}]))
    cfg.results_json = str(shared)
    rows = write_results(cfg, records, "sgu-llm sweep test.yaml", attacks, probes)
    causal = [r["causal"] for r in rows if r.get("causal")]
    assert len(causal) == 1 and causal[0]["seeds"] == [0]
    assert set(causal[0]["per_seed"][0]["scales"]) == {"0.0", "-2.0"}
    assert 1 / 3 <= causal[0]["per_seed"][0]["scales"]["0.0"]["p_value"] <= 1  # 2 draws
    assert "The probe's causal check: `sgu`" in (tmp_path / "docs" / "results.md").read_text()
    assert json.loads(shared.read_text())[0] == {"model": "other", "method": "npo"}
    assert len(json.loads(shared.read_text())) == 1 + len(rows)
    assert NoRepeat(cfg, log=lambda m: None).probe(records) == probes
    # Where the time went: every part the files recorded (3 fine-tunings and their evaluations, 2 runs, 3 attacks
    # with 2 repeats, 1 probe), in results.md.
    parts = {p["part"]: p["count"] for p in time_parts(records, {"forget10": load_baselines(cfg, "forget10")}, attacks, probes)}
    assert parts == {"fine-tuning": 3, "baseline evaluation": 3, "run: unlearning": 2, "run: per-epoch scoring": 2,
                     "run: selected epochs' evaluation": 2, "run (all three)": 2, "attack: repeat to the selected epoch": 2,
                     "attack: attacks": 3, "probe: repeat to the selected epoch": 1, "probe: SAE and causal check": 1}
    assert "## Where the time went" in (tmp_path / "docs" / "results.md").read_text()
    cfg.probe_splits, cfg.results_json = [], None

    # A killed run (its file missing) is the only one trained again.
    os.remove(tmp_path / "runs" / "forget10" / "seed0" / "graddiff" / "lr0.001.json")
    trained = []

    class Counting(Sweep):
        def train_point(self, split, seed, method, point, ctx):
            trained.append(method)
            return super().train_point(split, seed, method, point, ctx)

    Counting(cfg, log=lambda m: None).run_grid()
    assert trained == ["graddiff"]
    # A seed left unfinished, resumed with models that differ from the ones its finished runs used
    # (fine-tuned again elsewhere): its runs are moved aside, not mixed, and the whole seed runs again.
    base = tmp_path / "runs" / "forget10" / "seed0" / "baselines.json"
    saved = json.loads(base.read_text())
    saved["meta"]["target"]["weights"] = "0" * 16
    base.write_text(json.dumps(saved))
    os.remove(tmp_path / "runs" / "forget10" / "seed0" / "graddiff" / "lr0.001.json")
    trained.clear()
    Counting(cfg, log=lambda m: None).run_grid()
    assert sorted(trained) == ["graddiff", "sgu"]
    assert len(list((tmp_path / "runs" / "forget10").glob("seed0.stale-*"))) == 1


def fake_run(method, seed, lr, fq, mu, ks=0.5):
    sel = {"epoch": 1.0, "forget_quality": fq, "model_utility": mu, "forget_rouge": 0.5, "privleak": 1.0, "holdout_ks": ks}
    return {
        "method": method,
        "split": "forget10",
        "seed": seed,
        "learning_rate": lr,
        "unlearn_seconds": 1.0,
        "selections": {"holdout": sel, "oracle": sel, "final": sel},
    }


def test_reported_learning_rate_is_the_same_rule_for_every_method():
    base = {
        s: {
            "target": {"aggregates": {"model_utility": 1.0}},
            "noise_floor": {"aggregates": {"forget_quality": 0.9}},
        }
        for s in (0, 1)
    }
    records = [
        # lr 1: best forget quality but utility below the floor; lr 2: allowed, better than lr 3.
        *(fake_run("m", s, 1.0, 0.9, 0.5) for s in (0, 1)),
        *(fake_run("m", s, 2.0, 0.1, 0.96) for s in (0, 1)),
        *(fake_run("m", s, 3.0, 0.01, 0.99, ks=0.3) for s in (0, 1)),
        # no lr passes the floor: the one with the best utility is reported
        *(fake_run("n", s, 1.0, 0.9, 0.2) for s in (0, 1)),
        *(fake_run("n", s, 2.0, 0.9, 0.4) for s in (0, 1)),
    ]
    rows = aggregate(records, {"forget10": base}, 0.95)
    reported = {
        (r["method"], r["learning_rate"]) for r in rows if r["reported"] and r["selection"] == "holdout"
    }
    assert reported == {("m", 2.0), ("n", 2.0)}
    row = next(
        r for r in rows if r["method"] == "m" and r["learning_rate"] == 2.0 and r["selection"] == "holdout"
    )
    assert row["seeds"] == [0, 1] and row["forget_quality_mean"] == pytest.approx(0.1)
    assert row["noise_floor_forget_quality"] == [0.9, 0.9]
    # The rule reads the retain model (forget quality); the retain-free rule (lowest holdout KS among the points
    # over the floor) would pick lr 3 here, whose forget quality is worse: the row says so.
    free = row["retain_free_choice"]
    assert (free["learning_rate"], free["same"]) == (3.0, False)
    assert (free["forget_quality_mean"], free["chosen_forget_quality_mean"]) == (pytest.approx(0.01), pytest.approx(0.1))


def test_gate_table_pairs_each_baseline_with_the_gate_over_its_objective():
    # GradDiff is NLL ascent plus the retain NLL, NPO the NPO loss plus it: each sits beside SGU's rules over the
    # same forget objective; SimNPO, with no gated run, is left out.
    from sgu_llm.report.tables import gate_markdown

    base = {0: {"target": {"aggregates": {"model_utility": 1.0}}, "noise_floor": {"aggregates": {"forget_quality": 0.9}}}}
    methods = {"graddiff": {"method": "graddiff"}, "npo": {"method": "npo"}, "simnpo": {"method": "simnpo"},
               "sgu": {"method": "sgu"}, "gru": {"method": "sgu", "selective_function": "gru", "forget_loss": "npo"}}
    runs = [{**fake_run(m, 0, 1.0, 0.1, 0.99), "fields": f} for m, f in methods.items()]
    cfg = SweepConfig(**{**TINY, "methods": methods})
    table = [line.split(" | ")[:2] for line in gate_markdown(cfg, aggregate(runs, {"forget10": base}, 0.95)) if line.startswith("| n")]
    assert table == [["| nll", "alone"], ["| nll", "sgu"], ["| npo", "alone"], ["| npo", "gru"]]


def test_ranking_agreement_with_another_models_rows():
    from sgu_llm.experiments.sweep.records import ranking_agreement

    def row(model, method, log10_fq, seeds=(0,)):
        return {"model": model, "split": "forget10", "method": method, "reported": True, "selection": "holdout",
                "log10_forget_quality_mean": log10_fq, "seeds": list(seeds)}

    ours = [row("big", m, v) for m, v in (("a", -1.0), ("b", -2.0), ("c", -3.0), ("d", -4.0))]
    theirs = [row("tiny", m, v, (0, 1, 2)) for m, v in (("a", -3.0), ("b", -1.0), ("c", -2.0), ("e", 0.0))]
    # an oracle row does not count; another benchmark's rows (same model, split and methods) are their own comparison
    other_benchmark = [{**r, "benchmark": "tofu-size", "log10_forget_quality_mean": -r["log10_forget_quality_mean"]}
                       for r in theirs]
    got, there = ranking_agreement(ours, theirs + other_benchmark + [{**theirs[0], "selection": "oracle", "method": "d"}])
    assert (got["other_model"], got["other_benchmark"], got["methods"], got["seeds"], got["other_seeds"]) == ("tiny", None, 3, 1, 3)
    assert got["order"] == ["a", "b", "c"] and got["other_order"] == ["b", "c", "a"]
    assert got["spearman"] == pytest.approx(-0.5)
    assert there["other_benchmark"] == "tofu-size" and there["other_order"] == ["a", "c", "b"]
    assert there["spearman"] == pytest.approx(0.5)


def test_only_complete_seeds_are_reported():
    from sgu_llm.experiments.sweep import complete_seeds

    cfg = SweepConfig(
        **{**TINY, "learning_rates": [1.0, 2.0], "methods": {"m": {"method": "sgu"}, "n": {"method": "sgu"}}}
    )
    records = [fake_run(m, s, lr, 0.1, 0.9) for m in ("m", "n") for s in (0, 1) for lr in (1.0, 2.0)]
    records = [
        r for r in records if not (r["seed"] == 1 and r["method"] == "n" and r["learning_rate"] == 2.0)
    ]
    assert {r["seed"] for r in complete_seeds(cfg, records)} == {0}


def test_time_parts_count_each_fine_tuned_model_once():
    # Seed s's noise floor is seed s + 1's retain model (same cache key): 2 seeds fine-tune 5 models, not 6.
    def meta(*keys):
        return {"meta": {role: {"key": k, "train_seconds": 10.0, "eval_seconds": 2.0}
                         for role, k in zip(("target", "retain", "noise_floor"), keys)}}

    base = {"forget10": {0: meta("t0", "r0", "r1"), 1: meta("t1", "r1", "r2")}}
    runs = [{**fake_run("m", s, 1.0, 0.1, 0.9), "scoring_seconds": 2.0, "evaluation_seconds": 3.0} for s in (0, 1)]
    parts = {p["part"]: p for p in time_parts(runs, base, [], [])}
    assert (parts["fine-tuning"]["count"], parts["fine-tuning"]["total"]) == (5, 50.0)
    assert parts["baseline evaluation"]["count"] == 6 and parts["run (all three)"]["median"] == 6.0
    from sgu_llm.report.tables import timing_markdown

    assert "**0.02**" in "\n".join(timing_markdown(list(parts.values())))  # 50 + 12 + 12 s, not 12 twice


def test_pareto_front():
    assert sorted(pareto_front([(0.1, 0.9), (0.5, 0.5), (0.05, 0.8), (0.5, 0.4)])) == [0, 1]


def test_sweep_yaml_parses_and_names_known_methods(tmp_path):
    from sgu_llm.selection import list_selective_functions
    from sgu_llm.trainers import list_methods

    cfg = load_sweep(os.path.join(ROOT, "recipes", "sweeps", "tiny-tofu.yaml"))
    assert len(cfg.splits["forget10"]) >= 5 and all(len(s) >= 3 for s in cfg.splits.values())
    for fields_ in cfg.methods.values():
        assert fields_["method"] in list_methods()
        assert fields_.get("selective_function", "sgu") in list_selective_functions()
    for path in sorted(glob.glob(os.path.join(ROOT, "recipes", "sweeps", "*.yaml"))):  # every run's recipe parses
        Sweep(load_sweep(path), log=lambda m: None).check_methods()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "epochs": 3}))
    with pytest.raises(ValueError, match="unknown keys"):
        load_sweep(str(bad))
    with pytest.raises(ValueError, match="probe_method 'gru' is not one of the sweep's methods"):
        SweepConfig(**TINY, probe_method="gru")
    with pytest.raises(ValueError, match=r"probe_splits \['forget05'\] are not in splits"):
        SweepConfig(**TINY, probe_splits=["forget05"])
    # a method that trains nothing has its own one-value learning-rate grid: its 9 points are the objectives' budget
    assert [p[0] for p in method_points(cfg, "sae_clamp")] == [0.0] * 9
    assert {p[0] for p in method_points(cfg, "altpo")} == set(cfg.learning_rates)
    with pytest.raises(ValueError, match="learning_rates must be a non-empty list"):
        SweepConfig(**{**TINY, "methods": {"m": {"method": "sgu", "learning_rates": []}}})


def test_ray_backend_without_ray_names_the_extra(monkeypatch):
    """`--backend ray` without Ray installed: a ValueError with the install line (the CLI exits 2 with it)."""
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'sgu-llm\[ray\]'"):
        make_backend("ray")
    with pytest.raises(ValueError, match="--ray_address is for --backend ray"):
        make_backend("local", address="head:6379")


def assert_close(got, want, where="rows"):
    """Nested JSON values equal, floats to a relative 1e-9."""
    if isinstance(want, float) and isinstance(got, (int, float)):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), where
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


@pytest.mark.parametrize("benchmark, n_methods", [("tofu-size", 18), ("tofu-size-frontier", 5)])
def test_stored_tofu_size_records_rebuild_the_published_rows(tmp_path, benchmark, n_methods):
    # docs/results.json's TOFU-size rows (the main sweep and its frontier extension) are what the stored sweep
    # records (results/sweep-<benchmark>) aggregate to: rebuilt here from the records alone (no training), they equal
    # the published ones, and they carry what the error-bar protocol promises for every method: crossfit rows over
    # seeds 0-4 with D per seed, its CI, the noise band, the seeds in it, the relearning attack, and a paired gate
    # verdict for every objective and rule.
    from sgu_llm.experiments.sweep.records import collect_attacks

    cfg = load_sweep(os.path.join(ROOT, "recipes", "sweeps", f"{benchmark}.yaml"))
    cfg.output_dir = os.path.join(ROOT, cfg.output_dir)
    cfg.results_dir, cfg.results_json = str(tmp_path), None
    rebuilt = write_results(cfg, collect_records(cfg), f"sgu-llm sweep recipes/sweeps/{benchmark}.yaml", collect_attacks(cfg))
    published = [r for r in json.load(open(os.path.join(ROOT, "docs", "results.json"))) if r.get("benchmark") == benchmark]
    assert_close(json.loads(json.dumps(rebuilt)), published)  # to 1e-9: another machine's summation order
    cross = {r["method"]: r for r in published if r["selection"] == "crossfit"}
    assert set(cross) == set(cfg.methods) and len(cross) == n_methods
    for r in cross.values():
        assert r["split"] == "forget10" and r["seeds"] == [0, 1, 2, 3, 4]
        d = r["forget_ks_d"]
        assert len(d) == len(r["forget_ks_d_ci"]) == len(r["noise_band"]) == 5
        assert r["forget_ks_d_mean"] == pytest.approx(sum(d) / 5)
        assert all(lo <= x <= hi for x, (lo, hi) in zip(d, r["forget_ks_d_ci"]))
        assert r["seeds_in_band"] == sum(x <= band[1] for x, band in zip(d, r["noise_band"]))
        assert r["attacks"]["seeds"] == r["seeds"] and "forget_prob" in r["attacks"]["relearn"]
        assert r["model_utility_mean"] > 0 and r["forget_tr_mean_mean"] > 0
    verdicts = {(g["gate"]["alone"], g["gate"]["gated"]): g["gate"]["verdict"] for g in published if g["selection"] == "gate"}
    if benchmark == "tofu-size-frontier":
        assert set(verdicts) == {("altpo", m) for m in ("gru_altpo", "sgu_reverse_altpo", "rowgate_altpo", "gru_rowgate_altpo")}
        return
    for objective in ("graddiff", "npo", "altpo", "calibrated"):
        for rule in ("gru", "sgu_reverse"):
            assert verdicts[(objective, f"{rule}_{objective}")] in ("helps", "hurts", "undecided")
    assert verdicts[("graddiff", "sgu")] in ("helps", "hurts", "undecided")
    # the row gate (alone and under SGU) and the retain subspace, each against AltPO alone
    for gated in ("rowgate_altpo", "gru_rowgate_altpo", "sgu_reverse_rowgate_altpo", "subspace_altpo"):
        assert verdicts[("altpo", gated)] in ("helps", "hurts", "undecided")
