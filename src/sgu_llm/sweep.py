"""`sgu-llm sweep SWEEP.yaml`: methods x learning rates x model seeds x splits on the embedded benchmark.

Every method gets the same budget: the same learning-rate grid, epochs, data and models, and the
same rule for its reported point. For each (split, model seed) the target, retain and noise-floor
models are fine-tuned (cached) with that seed; the noise floor of seed s is the retain model of seed
s + 1. Each run unlearns a copy of the target and, at the start and after every epoch, records

- `holdout_ks`: the KS statistic between the forget set's and the holdout authors' truth ratios
  under the current model (`sgu_llm.stopping`; what a user without a retain model can compute);
- `forget_quality`: the KS p-value against the retain model (the benchmark's oracle).

Two checkpoints of each run are evaluated in full (`selection`): `holdout` (the epoch with the
smallest holdout_ks, no retain model used) and `oracle` (the epoch with the best forget quality);
`final` (the last epoch) keeps its forget quality and holdout_ks from the curve. Each finished run is one JSON file under `output_dir`, written atomically:
a killed sweep skips finished runs when started again. `results_dir` receives `results.json`,
`results.md` and `pareto.png`.

Reported point of a method (the same rule for all): among its learning rates whose mean model
utility (holdout selection) is at least `utility_floor` x the target's, the one with the highest
mean log10 forget quality; if none qualifies, the one with the highest mean model utility. The
splits in `best_only_splits` run only that learning rate per method (chosen on the first split).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from sgu_llm.cache import weights_fingerprint
from sgu_llm.files import atomic_dir, write_json, write_text
from sgu_llm.objectives import list_objectives

SELECTIONS = ("holdout", "oracle")  # evaluated in full; "final" keeps the curve's numbers only
SUMMARY_KEYS = (
    "forget_quality",
    "model_utility",
    "forget_rouge",
    "privleak",
    "forget_prob",
    "retain_prob",
    "forget_truth_ratio",
    "forget_tr_mean",
    "forget_outrank",
)


@dataclass
class SweepConfig:
    """A sweep, as read from YAML (every key is a field here)."""

    base: dict = field(metadata={"help": "Recipe fields shared by every run (data, schedule, batch size)."})
    methods: dict = field(
        metadata={
            "help": "name -> recipe fields of that method (at least `method`), e.g. {sgu: {method: sgu}}."
        }
    )
    learning_rates: list = field(metadata={"help": "The learning-rate grid, the same for every method."})
    splits: dict = field(
        metadata={"help": "forget split -> list of model seeds, e.g. {forget10: [0, 1, 2, 3, 4]}."}
    )
    output_dir: str = field(default="runs/sweep", metadata={"help": "One JSON per finished run (resume)."})
    results_dir: str = field(default="docs", metadata={"help": "Where results.{md,json} and pareto.png go."})
    best_only_splits: list = field(
        default_factory=list, metadata={"help": "Splits that run only each method's reported learning rate."}
    )
    utility_floor: float = field(
        default=0.95, metadata={"help": "Reported point: model utility at least this times the target's."}
    )
    model_name: str = field(default="tiny-llama", metadata={"help": "The `model` field of the result rows."})
    tune_seeds: list = field(
        default_factory=list,
        metadata={
            "help": "Model seeds on which the methods with a `grid` search it (learning rates x grid); on the other "
            "seeds of a split they run only the point chosen there (by the rule of the reported point)."
        },
    )
    attack_splits: list = field(
        default_factory=list,
        metadata={
            "help": "Splits where each method's reported learning rate is attacked at its holdout-selected epoch "
            "(relearning, int8 and int4 quantization; sgu_llm.attacks), for every model seed, next to the same "
            "attacks on that seed's retain model. The run is repeated to get its weights (runs store none)."
        },
    )

    def __post_init__(self):
        if not self.methods or not self.learning_rates or not self.splits:
            raise ValueError("a sweep needs methods, learning_rates and splits")
        for name, fields_ in self.methods.items():
            if not isinstance(fields_, dict) or "method" not in fields_:
                raise ValueError(f"sweep method {name!r} must be a mapping with at least a `method` key")
            unknown = set(fields_.get("splits", [])) - set(self.splits)
            if unknown:
                raise ValueError(f"sweep method {name!r}: splits {sorted(unknown)} are not in splits {sorted(self.splits)}")
            grid = fields_.get("grid", {})
            if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
                raise ValueError(f"sweep method {name!r}: grid must map config fields to non-empty lists of values")
        for name in ("best_only_splits", "attack_splits"):
            unknown = set(getattr(self, name)) - set(self.splits)
            if unknown:
                raise ValueError(f"{name} {sorted(unknown)} are not in splits {sorted(self.splits)}")


def load_sweep(path: str) -> SweepConfig:
    with open(path) as fh:
        raw = yaml.safe_load(fh) or {}
    allowed = set(SweepConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"sweep {path!r} has unknown keys {unknown}; allowed: {sorted(allowed)}")
    return SweepConfig(**raw)


SWEEP_KEYS = ("grid", "splits")  # keys of a sweep method that are not recipe fields
Point = tuple  # (learning rate, setting): setting is a sorted tuple of (grid field, value) pairs


def point_name(point: Point) -> str:
    """`lr0.001`, or with a grid setting `lr0.001-pref_beta0.1`: the run's file name (without .json).

    Example:
        >>> point_name((0.001, (("pref_beta", 0.1),)))
        'lr0.001-pref_beta0.1'
    """
    lr, setting = point
    return f"lr{lr:g}" + "".join(f"-{k}{v:g}" for k, v in setting)


def record_point(record: dict) -> Point:
    return (record["learning_rate"], tuple(sorted(record.get("setting", {}).items())))


def method_points(cfg: SweepConfig, method: str) -> list[Point]:
    """The learning rates times the method's grid (no grid: the learning rates alone)."""
    grid = cfg.methods[method].get("grid", {})
    settings = [tuple(sorted(zip(grid, values))) for values in itertools.product(*grid.values())]
    return [(float(lr), setting) for lr in cfg.learning_rates for setting in settings]


def methods_on(cfg: SweepConfig, split: str) -> list[str]:
    """The methods that run on `split` (a method's `splits` key limits it; default: every split)."""
    return [m for m, f in cfg.methods.items() if split in f.get("splits", cfg.splits)]


def is_tuned(cfg: SweepConfig, method: str) -> bool:
    """A method with a `grid` (even an empty one) searches on `tune_seeds` and runs its choice elsewhere."""
    return "grid" in cfg.methods[method] and bool(cfg.tune_seeds)


def run_path(cfg: SweepConfig, split: str, seed: int, method: str, point: Point) -> str:
    return os.path.join(cfg.output_dir, split, f"seed{seed}", method, f"{point_name(point)}.json")


def attack_path(cfg: SweepConfig, split: str, seed: int, method: str, point: Point) -> str:
    """The attacks on one run (`method` "retain": the seed's retain model, the point ignored)."""
    if method == "retain":
        return os.path.join(cfg.output_dir, split, f"seed{seed}", "attacks-retain.json")
    return os.path.join(cfg.output_dir, split, f"seed{seed}", method, f"attacks-{point_name(point)}.json")


def method_fields(cfg: SweepConfig, method: str, setting: tuple = ()) -> dict:
    """The recipe fields of a method at one grid setting."""
    fields_ = {k: v for k, v in cfg.methods[method].items() if k not in SWEEP_KEYS}
    return {**fields_, **dict(setting)}


def parse_run_config(cfg: SweepConfig, split: str, seed: int, method: str, point: Point, out: str) -> tuple:
    """(script, model_args, bench, probe_args, config) of one run, through the recipe parser."""
    from sgu_llm.unlearn import parse_args

    lr, setting = point
    retain = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}.get(split)
    fields_ = {**cfg.base, **method_fields(cfg, method, setting), "forget_split": split, "learning_rate": lr}
    if retain:
        fields_["retain_split"] = retain
    fields_.update(model_seed=seed, noise_floor_seed=seed + 1, seed=seed, output_dir=out, report_to="none")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        yaml.safe_dump(fields_, fh)
    try:
        return parse_args(["--config", fh.name, "--overwrite_output_dir", "true"])
    finally:
        os.unlink(fh.name)


class EpochRecorder:
    """Trainer callback: the two stopping statistics and a CPU copy of the weights, every epoch."""

    def __init__(self, tokenizer: Any, sets: dict, reference: dict, kw: dict):
        from transformers import TrainerCallback

        self.tokenizer, self.sets, self.ref = tokenizer, sets, reference
        self.kw = {k: v for k, v in kw.items() if k != "max_new_tokens"}  # scoring only, no generation
        self.curve: list[dict] = []
        self.snapshots: list[dict] = []
        self.seconds = 0.0
        recorder = self

        class _CB(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                recorder.record(state, model)

            def on_epoch_end(self, args, state, control, model=None, **kwargs):
                recorder.record(state, model)

        self.callback = _CB()

    def record(self, state: Any, model: Any) -> None:
        from sgu_llm.evaluation.metrics import forget_quality
        from sgu_llm.stopping import ks_distance, row_scores

        start = time.perf_counter()
        was_training = model.training
        model.eval()
        f = row_scores(model, self.tokenizer, self.sets["forget"], "truth_ratio", **self.kw)
        h = row_scores(model, self.tokenizer, self.sets["holdout"], "truth_ratio", **self.kw)
        model.train(was_training)
        self.curve.append(
            {
                "epoch": float(state.epoch or 0.0),
                "step": state.global_step,
                "holdout_ks": ks_distance(f, h),
                "forget_quality": forget_quality(f, self.ref["per_example"]["forget"]["truth_ratio"]),
            }
        )
        self.snapshots.append({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
        self.seconds += time.perf_counter() - start


def keep_alternatives(run_dir: str, seed_dir: str) -> None:
    """Keep the alternatives a run sampled (`<run_dir>/alternatives`, the same for every run of a seed: they
    come from the seed's target) beside the seed's runs, once."""
    made = os.path.join(run_dir, "alternatives")
    if os.path.isdir(made) and not os.path.isdir(seed_dir):
        atomic_dir(seed_dir, lambda tmp: shutil.copytree(made, tmp, dirs_exist_ok=True))


def choose(curve: list[dict]) -> dict[str, int]:
    """Checkpoint index per selection rule (ties: the earliest)."""
    from sgu_llm.stopping import pick_checkpoint

    return {
        "holdout": pick_checkpoint([c["holdout_ks"] for c in curve]),
        "oracle": pick_checkpoint([-c["forget_quality"] for c in curve]),
        "final": len(curve) - 1,
    }


class Sweep:
    """Runs a `SweepConfig`, one (split, model seed) at a time; models and baselines loaded once each."""

    def __init__(self, cfg: SweepConfig, log: Any = print):
        self.cfg, self.log = cfg, log

    def baselines(self, split: str, seed: int, keep: bool = False) -> tuple[Any, Any, dict, dict, dict, dict]:
        """Data, tokenizer, models, eval sets, eval kwargs and the baselines' evaluations (cached as JSON).

        Models that differ from the ones the finished runs used move those runs aside (they are run again),
        unless `keep`: then they stay, and `evals["models_match"]` is False.
        """
        from sgu_llm.benchmark import benchmark_models, load_benchmark_data
        from sgu_llm.evaluation import evaluate_model
        from sgu_llm.run import eval_kwargs, eval_sets

        first = next(iter(self.cfg.methods))
        script, model_args, bench, _, config = parse_run_config(
            self.cfg, split, seed, first, (1e-3, ()), tempfile.gettempdir()
        )
        data = load_benchmark_data(script)
        tokenizer, models, metas = benchmark_models(
            data, bench, prompt_format=config.prompt_format, base=model_args
        )
        sets = eval_sets(data)
        kw = eval_kwargs(config, bench)
        folder = os.path.join(self.cfg.output_dir, split, f"seed{seed}")
        path = os.path.join(folder, "baselines.json")
        weights = {role: weights_fingerprint(m) for role, m in models.items()}
        evals = None
        if os.path.exists(path):
            with open(path) as fh:
                evals = json.load(fh)
            stored = {role: m.get("weights") for role, m in evals.get("meta", {}).items()}
            if set(stored.values()) == {None}:  # written before fingerprints existed: record them now
                for role, meta in evals.get("meta", {}).items():
                    meta["weights"] = weights.get(role)
                write_json(path, evals)
                stored = weights
            evals["models_match"] = stored == weights
            if stored != weights and keep:  # the reference for these models (not written)
                evals = {"retain": evaluate_model(models["retain"], tokenizer, sets, **kw), "models_match": False}
            elif stored != weights:
                # Models fine-tuned again (another machine, another library version) differ in their last
                # bits, and forget quality with them: a seed's runs must all use the same models.
                stale = f"{folder}.stale-{time.strftime('%Y%m%d-%H%M%S')}"
                os.replace(folder, stale)
                self.log(
                    f"[sweep] {split} seed {seed}: models differ from the finished runs'; moved them to {stale}"
                )
                evals = None
        if evals is None:
            evals = {"retain": evaluate_model(models["retain"], tokenizer, sets, **kw)}
            for name in ("target", "noise_floor"):
                evals[name] = evaluate_model(models[name], tokenizer, sets, reference=evals["retain"], **kw)
            evals["meta"] = {
                k: {"train_seconds": m.get("train_seconds"), "key": m.get("key"), "weights": weights[k]}
                for k, m in metas.items()
            }
            write_json(path, evals)
            evals["models_match"] = True
        if evals["models_match"] and self.backfill_diagnostics(evals, models, tokenizer, sets, kw):
            write_json(path, {k: v for k, v in evals.items() if k != "models_match"})
        return data, tokenizer, models, sets, kw, evals

    @staticmethod
    def backfill_diagnostics(evals: dict, models: dict, tokenizer: Any, sets: dict, kw: dict) -> bool:
        """Add `forget_tr_mean` / `forget_outrank` to baselines evaluated before they existed (the rest of the
        stored evaluation is kept as it is). Returns whether anything was added."""
        from sgu_llm.evaluation.suite import forget_diagnostics_of

        added = False
        for role in ("retain", "target", "noise_floor"):
            if role in evals and "forget_outrank" not in evals[role]["aggregates"]:
                diag = forget_diagnostics_of(models[role], tokenizer, sets["forget"], **kw)
                evals[role]["per_example"]["forget"]["outranks"] = diag.pop("outranks")
                evals[role]["aggregates"].update(diag)
                added = True
        return added

    def unlearn(self, split, seed, method, point, data, tokenizer, models, sets, kw, evals) -> tuple:
        """Unlearn a copy of the target with one method at one point: (model, EpochRecorder, seconds)."""
        from sgu_llm.benchmark import unlearning_retain_set
        from sgu_llm.trainers import get_method

        with tempfile.TemporaryDirectory() as tmp:
            script, model_args, _, _, config = parse_run_config(self.cfg, split, seed, method, point, tmp)
            config.disable_tqdm = True
            recorder = EpochRecorder(tokenizer, sets, evals["retain"], kw)
            _, trainer_cls = get_method(script.method)
            model = copy.deepcopy(models["target"])
            trainer = trainer_cls(
                model,
                config,
                forget_dataset=data["forget"],
                retain_dataset=unlearning_retain_set(data, script.retain_general),
                processing_class=tokenizer,
                peft_config=model_args.peft_config(),
                callbacks=[recorder.callback],
                holdout_dataset=data.get("holdout"),
            )
            start = time.perf_counter()
            trainer.train()
            wall = time.perf_counter() - start - recorder.seconds
            keep_alternatives(tmp, os.path.join(self.cfg.output_dir, split, f"seed{seed}", "alternatives"))
        return model, recorder, wall

    def run_one(self, split, seed, method, point, data, tokenizer, models, sets, kw, evals) -> dict:
        from sgu_llm.evaluation import evaluate_model

        model, recorder, wall = self.unlearn(split, seed, method, point, data, tokenizer, models, sets, kw, evals)
        picks = choose(recorder.curve)
        evaluated: dict[int, dict] = {}
        selections = {}
        for rule, idx in picks.items():
            if rule in SELECTIONS and idx not in evaluated:  # full evaluation (with generation)
                model.load_state_dict(recorder.snapshots[idx])
                result = evaluate_model(model, tokenizer, sets, reference=evals["retain"], **kw)
                evaluated[idx] = result["aggregates"]
            selections[rule] = {**recorder.curve[idx], **evaluated.get(idx, {})}
        lr, setting = point
        record = {
            "method": method,
            "split": split,
            "seed": seed,
            "learning_rate": lr,
            "fields": method_fields(self.cfg, method, setting),
            "curve": recorder.curve,
            "selections": selections,
            "unlearn_seconds": wall,
        }
        if setting:
            record["setting"] = dict(setting)
        return record

    def run(self) -> list[dict]:
        """Run everything not already on disk; returns every run's record."""
        records = []
        for split, seeds in self.cfg.splits.items():
            tune = [s for s in seeds if s in self.cfg.tune_seeds]  # first: the other seeds run their choice
            for seed in tune + [s for s in seeds if s not in tune]:
                points = self.points_for(split, seed, records)
                todo = [(m, p) for m in methods_on(self.cfg, split) for p in points[m]]
                missing = [x for x in todo if not os.path.exists(run_path(self.cfg, split, seed, *x))]
                # Loaded first: a seed whose models changed is moved aside and run again whole.
                loaded = self.baselines(split, seed) if missing else None
                for method, point in todo:
                    path = run_path(self.cfg, split, seed, method, point)
                    if os.path.exists(path):
                        with open(path) as fh:
                            records.append(json.load(fh))
                        continue
                    t = time.perf_counter()
                    rec = self.run_one(split, seed, method, point, *loaded)
                    write_json(path, rec)
                    records.append(rec)
                    h = rec["selections"]["holdout"]
                    self.log(
                        f"[sweep] {split} seed {seed} {method} {point_name(point)}: holdout-selected epoch "
                        f"{h['epoch']:.0f} FQ {h['forget_quality']:.3g} MU {h['model_utility']:.3f} "
                        f"({time.perf_counter() - t:.0f} s)"
                    )
        return records

    def points_for(self, split: str, seed: int, records: list[dict]) -> dict[str, list[Point]]:
        """Each method's points on this (split, seed): its whole grid, or the point chosen on the first split
        (`best_only_splits`) or on the tune seeds (tuned methods on the other seeds)."""
        methods = methods_on(self.cfg, split)
        out = {m: method_points(self.cfg, m) for m in methods}
        if split in self.cfg.best_only_splits:
            first = next(iter(self.cfg.splits))
            return {m: [p] for m, p in self.chosen(first, records, methods).items()}
        tuned = [m for m in methods if is_tuned(self.cfg, m) and seed not in self.cfg.tune_seeds]
        if tuned:
            out.update({m: [p] for m, p in self.chosen(split, records, tuned).items()})
        return out

    def chosen(self, split: str, records: list[dict], methods: list[str]) -> dict[str, Point]:
        """The reported point of each of `methods` on `split` from the finished runs (tuned methods: on the
        tune seeds)."""
        table = aggregate(records, {split: load_baselines(self.cfg, split)}, self.cfg.utility_floor,
                          tune_seeds=self.tune_seeds_of())
        best = {r["method"]: record_point(r) for r in table if r["split"] == split and r["reported"]}
        missing = [m for m in methods if m not in best]
        if missing:
            raise ValueError(f"no finished {split} runs to pick the point of {missing} from")
        return {m: best[m] for m in methods}

    def tune_seeds_of(self) -> dict[str, list]:
        """method -> the seeds its reported point is chosen on (tuned methods only)."""
        return {m: list(self.cfg.tune_seeds) for m in self.cfg.methods if is_tuned(self.cfg, m)}


    def attack(self, records: list[dict]) -> list[dict]:
        """Attack each method's reported learning rate (holdout-selected epoch) on every seed of the
        `attack_splits`, and each seed's retain model; one JSON per attacked run, skipped when on disk.

        Runs store no weights, so each run is repeated; `same_curve` in its file says whether the repeat
        scored every epoch as the stored run did (same models, same machine: it does).
        """
        out = []
        for split in self.cfg.attack_splits:
            methods = methods_on(self.cfg, split)
            try:
                reported = self.chosen(split, complete_seeds(self.cfg, records), methods)
            except ValueError as err:
                raise ValueError(f"attack_splits: {err}") from None
            for seed in self.cfg.splits[split]:
                todo = [("retain", (0.0, ()))] + [(m, reported[m]) for m in methods]
                paths = {m: attack_path(self.cfg, split, seed, m, point) for m, point in todo}
                loaded = None
                for method, point in todo:
                    if not os.path.exists(paths[method]):
                        loaded = loaded or self.baselines(split, seed, keep=True)
                        write_json(paths[method], self.attack_one(split, seed, method, point, loaded))
                    with open(paths[method]) as fh:
                        out.append(json.load(fh))
        return out

    def attack_one(self, split: str, seed: int, method: str, point: Point, loaded: tuple) -> dict:
        """The attacks on one run, repeated to get its holdout-selected weights (`method` "retain": the seed's
        retain model)."""
        from sgu_llm.attacks import attack_report

        data, tokenizer, models, sets, kw, evals = loaded
        fields_of = method if method != "retain" else next(iter(self.cfg.methods))
        _, _, bench, _, _ = parse_run_config(self.cfg, split, seed, fields_of, (1e-3, ()), tempfile.gettempdir())
        t = time.perf_counter()
        entry = {"method": method, "split": split, "seed": seed, "learning_rate": point[0],
                 "models_match": evals["models_match"]}
        if point[1]:
            entry["setting"] = dict(point[1])
        if method == "retain":
            model = models["retain"]
        else:
            model, recorder, _ = self.unlearn(split, seed, method, point, *loaded)
            idx = choose(recorder.curve)["holdout"]
            model.load_state_dict(recorder.snapshots[idx])
            with open(run_path(self.cfg, split, seed, method, point)) as fh:
                stored = json.load(fh)
            entry["epoch"] = recorder.curve[idx]["epoch"]
            entry["same_curve"] = stored["curve"] == recorder.curve
        report = attack_report(
            {method: model}, tokenizer, sets["forget"], evals["retain"]["per_example"]["forget"]["truth_ratio"], kw,
            relearn_steps=bench.attack_relearn_steps, relearn_learning_rate=bench.attack_relearn_learning_rate,
            seed=seed,
        )
        entry["attacks"] = report["models"][method]
        entry["relearn"] = report["relearn"]
        self.log(
            f"[sweep] attacks {split} seed {seed} {method}: relearn prob {entry['attacks']['none']['forget_prob']:.3f}"
            f" -> {entry['attacks']['relearn']['forget_prob']:.3f} ({time.perf_counter() - t:.0f} s)"
        )
        return entry


# ---- aggregation, tables and the plot ------------------------------------------------------------


ATTACKS = ("none", "relearn", "int8", "int4")
ATTACK_METRICS = ("forget_prob", "forget_rouge", "forget_quality")


def attack_rows(attacks: list[dict]) -> dict[tuple, dict]:
    """(split, method) -> {"seeds", "learning_rate", attack -> metric -> spread over seeds}; method "retain"
    is the retain model (what "nothing to recover" looks like)."""
    groups: dict[tuple, list[dict]] = {}
    for a in attacks:
        groups.setdefault((a["split"], a["method"]), []).append(a)
    out = {}
    for key, runs in groups.items():
        out[key] = {
            "seeds": sorted(r["seed"] for r in runs),
            "learning_rate": runs[0]["learning_rate"],
            **({"setting": runs[0]["setting"]} if runs[0].get("setting") else {}),
            "relearn_settings": runs[0]["relearn"],
            "models_match": all(r.get("models_match", True) for r in runs),
            "same_curve": all(r.get("same_curve", True) for r in runs),
            **{
                attack: {m: _spread([r["attacks"][attack][m] for r in runs]) for m in ATTACK_METRICS}
                for attack in ATTACKS
            },
        }
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


BASELINE_METHODS = ("gradascent", "graddiff", "npo", "simnpo")
CONTROL_RULES = ("retain_only", "random_mask")
SIGN_GATING_RULES = ("sign_conflict", "sago")


def family(fields_: dict) -> str:
    """`baseline` (loss-based methods, the forget objectives on their own), `control`, `sign_gating` (SAGO,
    sign_conflict) or `sgu`."""
    if fields_.get("method") in BASELINE_METHODS or fields_.get("method") in list_objectives():
        return "baseline"
    rule = fields_.get("selective_function", "sgu")
    if rule in CONTROL_RULES:
        return "control"
    return "sign_gating" if rule in SIGN_GATING_RULES else "sgu"


def goal_check(rows: list[dict], split: str, floor: float, fq_goal: float = 0.5) -> str:
    """One paragraph, computed from the rows: is an SGU-family method at forget quality >= `fq_goal`
    with utility >= `floor` x target (holdout selection), and is it dominated by a baseline?"""
    hold = [r for r in rows if r["split"] == split and r["selection"] == "holdout"]
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
            f"`{best['method']}` lr {best['learning_rate']:g}, forget quality {_fmt(best['forget_quality_mean'])} "
            f"(median {_fmt(best['forget_quality_median'])}), utility {_fmt(best['model_utility_mean'])} "
            f"({_fmt(_ratio(best['model_utility_mean'], best['target_model_utility']))} x target)"
            + (
                ""
                if met
                else f", {_fmt(fq_goal / max(best['forget_quality_mean'], 1e-300))}x short in forget quality"
            )
            + ". "
            + (
                f"Dominated by baseline point(s): {', '.join(sorted(set(dominated)))}."
                if dominated
                else "No baseline point (any learning rate) has both higher forget quality and higher utility."
            )
        )
    return " ".join(out)


def _spread(values: list[float]) -> dict[str, float]:
    v = np.array(values, dtype=float)
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
    }


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
        "epoch": _spread([r["selections"][sel]["epoch"] for r in runs])
        if all(r["selections"][sel].get("epoch") is not None for r in runs)
        else None,
        "unlearn_seconds": _spread([r["unlearn_seconds"] for r in runs]),
    }
    if first.get("setting"):
        row["setting"] = first["setting"]
    for key in SUMMARY_KEYS:
        vals = [r["selections"][sel].get(key) for r in runs]
        vals = [v for v in vals if v is not None]
        if vals:
            for stat, v in _spread(vals).items():
                row[f"{key}_{stat}"] = v
    row["log10_forget_quality_mean"] = float(
        np.mean([math.log10(max(r["selections"][sel]["forget_quality"], 1e-300)) for r in runs])
    )
    return row


def best_point(rows: list[dict], floor: float) -> Point:
    """The reported point among one method's holdout rows: the best mean log10 forget quality among those with
    mean utility >= floor x the target's; if none, the highest mean utility."""
    ok = [r for r in rows if r["target_model_utility"] and r["model_utility_mean"] >= floor * r["target_model_utility"]]
    best = max(ok, key=lambda r: r["log10_forget_quality_mean"]) if ok else max(rows, key=lambda r: r["model_utility_mean"])
    return record_point(best)


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
        best = best_point(decide, floor)
        for r in rows:
            if r["split"] == split and r["method"] == method:
                r["reported"] = record_point(r) == best
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


def write_results(cfg: SweepConfig, records: list[dict], command: str, attacks: list[dict] | None = None) -> list[dict]:
    """results.json, results.md and pareto.png from the finished runs of complete (split, seed)s; the attacks
    (`Sweep.attack`) go into the reported holdout rows (`attacks`, and the retain model's `retain_attacks`)."""
    baselines = {split: load_baselines(cfg, split) for split in cfg.splits}
    tuned = {m: list(cfg.tune_seeds) for m in cfg.methods if is_tuned(cfg, m)}
    rows = aggregate(complete_seeds(cfg, records), baselines, cfg.utility_floor, tune_seeds=tuned)
    attacked = attack_rows(attacks or [])
    for r in rows:
        r["model"] = cfg.model_name
        if r["reported"] and r["selection"] == "holdout":
            r["baseline_diagnostics"] = baseline_diagnostics(baselines.get(r["split"], {}), r["seeds"])
        got = attacked.get((r["split"], r["method"]))
        point = (got["learning_rate"], tuple(sorted(got.get("setting", {}).items()))) if got else None
        if got and r["reported"] and r["selection"] == "holdout" and point == record_point(r):
            r["attacks"] = got
            r["retain_attacks"] = attacked.get((r["split"], "retain"))
    os.makedirs(cfg.results_dir, exist_ok=True)
    merge_rows(os.path.join(cfg.results_dir, "results.json"), rows, cfg.model_name)
    plot_pareto(rows, baselines, os.path.join(cfg.results_dir, "pareto.png"))
    write_text(
        os.path.join(cfg.results_dir, "results.md"),
        results_markdown(cfg, rows, baselines, command, complete_seeds(cfg, records)),
    )
    return rows


DIAGNOSTICS = ("forget_truth_ratio", "forget_tr_mean", "forget_outrank")


def baseline_diagnostics(base: dict[int, dict], seeds: list[int]) -> dict[str, dict[str, float]]:
    """Target, retain and noise-floor forget diagnostics, means over `seeds` (where stored)."""
    out = {}
    for role in ("target", "retain", "noise_floor"):
        aggs = [base[s][role]["aggregates"] for s in seeds if s in base and role in base[s]]
        out[role] = {k: float(np.mean([a[k] for a in aggs])) for k in DIAGNOSTICS if aggs and all(k in a for a in aggs)}
    return out


def merge_rows(path: str, rows: list[dict], model: str) -> None:
    """Write `rows` into results.json in place of that model's rows, keeping every other model's."""
    kept = []
    if os.path.exists(path):
        with open(path) as fh:
            kept = [r for r in json.load(fh) if r.get("model") != model]
    write_json(path, kept + rows)


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


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.2g}" if abs(x) < 0.01 and x != 0 else f"{x:.3g}"


def _ratio(a: float, b: float | None) -> float | None:
    return a / b if b else None


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


def results_markdown(
    cfg: SweepConfig, rows: list[dict], baselines: dict, command: str, records: list[dict] | None = None
) -> str:
    lines = [
        "# Results: methods side by side on the embedded benchmark",
        "",
        f"Reproduce (fresh cache): `{command}`. Model `{cfg.model_name}`; learning rates "
        f"{', '.join(f'{float(x):g}' for x in cfg.learning_rates)} for every method; spread over model seeds "
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
                f"| {s} | {_fmt(t['forget_quality'])} | {_fmt(t['model_utility'])} | "
                f"{_fmt(n['forget_quality'])} | {_fmt(n['model_utility'])} |"
            )
        lines += [
            "",
            "| method | selection | point | FQ mean | FQ median | FQ min–max | MU mean | MU min–max | MU / target | "
            "forget ROUGE | privleak | truth ratio | mean R | outrank | epoch (median) | unlearn s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for sel in ("holdout", "oracle"):
            for r in sorted(
                (r for r in rows if r["split"] == split and r["reported"] and r["selection"] == sel),
                key=lambda r: -r["forget_quality_mean"],
            ):
                lines.append(
                    f"| `{r['method']}` | {sel} | {point_label(r)} | {_fmt(r['forget_quality_mean'])} | "
                    f"{_fmt(r['forget_quality_median'])} | {_fmt(r['forget_quality_min'])}–{_fmt(r['forget_quality_max'])} | "
                    f"{_fmt(r['model_utility_mean'])} | {_fmt(r['model_utility_min'])}–{_fmt(r['model_utility_max'])} | "
                    f"{_fmt(_ratio(r['model_utility_mean'], r['target_model_utility']))} | {_fmt(r.get('forget_rouge_mean'))} | "
                    f"{_fmt(r.get('privleak_mean'))} | {_fmt(r.get('forget_truth_ratio_mean'))} | "
                    f"{_fmt(r.get('forget_tr_mean_mean'))} | {_fmt(r.get('forget_outrank_mean'))} | "
                    f"{r['epoch']['median']:.0f} | {r['unlearn_seconds']['median']:.1f} |"
                )
        lines += ["", diagnostics_line(rows, split), "", goal_check(rows, split, cfg.utility_floor), ""]
        lines += gate_markdown(cfg, [r for r in rows if r["split"] == split])
        if records:
            lines += [stopping_check(records, split), ""]
        lines += attack_markdown([r for r in rows if r["split"] == split and r.get("attacks")])
    lines += ["![forget quality against model utility](pareto.png)", ""]
    return "\n".join(lines)


def point_label(row: dict) -> str:
    """`0.001`, or with a grid setting `0.001, pref_beta 0.1`."""
    return f"{row['learning_rate']:g}" + "".join(f", {k} {v:g}" for k, v in sorted(row.get("setting", {}).items()))


def diagnostics_line(rows: list[dict], split: str) -> str:
    """The baselines' forget diagnostics, from a reported row that carries them."""
    row = next((r for r in rows if r["split"] == split and r.get("baseline_diagnostics")), None)
    if row is None:
        return ""
    parts = [
        f"{role.replace('_', ' ')} {_fmt(d.get('forget_truth_ratio'))} / {_fmt(d.get('forget_tr_mean'))} / "
        f"{_fmt(d.get('forget_outrank'))}"
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


def objective_of(fields_: dict) -> str | None:
    """The forget objective a method trains: its own name for the standalone objectives, `forget_loss` under SGU."""
    if fields_.get("method") == "sgu":
        return fields_.get("forget_loss", "nll")
    return fields_.get("method") if fields_.get("method") in list_objectives() else None


def gate_markdown(cfg: SweepConfig, rows: list[dict]) -> list[str]:
    """"Does the gate help?": each objective X that runs on its own next to SGU's rules over X (reported
    holdout rows), with the diagnostics and the relearning rise."""
    reported = {r["method"]: r for r in rows if r["reported"] and r["selection"] == "holdout"}
    by_objective: dict[str, list[tuple[str, dict]]] = {}
    for name, fields_ in cfg.methods.items():
        x = objective_of(fields_)
        if x and name in reported:
            gate = "alone" if fields_["method"] != "sgu" else fields_.get("selective_function", "sgu")
            by_objective.setdefault(x, []).append((gate, reported[name]))
    pairs = {x: v for x, v in by_objective.items() if any(g == "alone" for g, _ in v) and len(v) > 1}
    if not pairs:
        return []
    lines = [
        "### Does the gate help? Each objective alone (plus the retain NLL) against SGU's rules over it",
        "",
        "Reported point of each (holdout-selected epoch; the same rule and grid for all); relearn rise: forget "
        "probability gained by ten relearning steps (mean over seeds).",
        "",
        "| " + " | ".join(GATE_HEADERS) + " |",
        "|" + "---|" * len(GATE_HEADERS),
    ]
    for x, entries in sorted(pairs.items()):
        for gate, r in sorted(entries, key=lambda e: e[0] != "alone"):
            rise = None
            if r.get("attacks"):
                rise = r["attacks"]["relearn"]["forget_prob"]["mean"] - r["attacks"]["none"]["forget_prob"]["mean"]
            lines.append(
                f"| {x} | {gate} | {point_label(r)} | {_fmt(r['forget_quality_mean'])} "
                f"({_fmt(r['forget_quality_median'])}; {_fmt(r['forget_quality_min'])}–{_fmt(r['forget_quality_max'])}) | "
                f"{_fmt(r['model_utility_mean'])} ({_fmt(_ratio(r['model_utility_mean'], r['target_model_utility']))}) | "
                f"{_fmt(r.get('forget_truth_ratio_mean'))} | {_fmt(r.get('forget_tr_mean_mean'))} | "
                f"{_fmt(r.get('forget_outrank_mean'))} | {_fmt(rise)} |"
            )
    return lines + [""]


ATTACK_HEADERS = ["model", "prob: none", "prob: relearn", "prob: int8", "prob: int4", "FQ: none", "FQ: relearn",
                  "FQ: int4"]


def attack_cells(rows: list[dict], retain: dict | None) -> list[list[str]]:
    """Table cells (ATTACK_HEADERS) of attacked sweep rows and the retain model, mean (min–max) over seeds,
    ordered by the forget probability relearning brings back (least first)."""

    def cell(a: dict, attack: str, metric: str) -> str:
        x = a[attack][metric]
        return f"{_fmt(x['mean'])} ({_fmt(x['min'])}–{_fmt(x['max'])})"

    entries = sorted(((f"`{r['method']}` (lr {r['learning_rate']:g})", r["attacks"]) for r in rows),
                     key=lambda e: e[1]["relearn"]["forget_prob"]["mean"])
    if retain:
        entries.append(("retain model", retain))
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
    lines = [f"### Attacks ({len(rows[0]['attacks']['seeds'])} model seeds)", "", attack_caption(rows[0]["attacks"]), ""]
    lines += ["| " + " | ".join(ATTACK_HEADERS) + " |", "|" + "---|" * len(ATTACK_HEADERS)]
    lines += ["| " + " | ".join(c) + " |" for c in attack_cells(rows, rows[0].get("retain_attacks"))]
    notes = []
    if not all(r["attacks"]["models_match"] for r in rows):
        notes.append("the models fine-tuned for the attacks differ from the ones the sweep's runs used (another "
                     "machine or library version), so the attacked runs are not the tabled runs")
    elif not all(r["attacks"]["same_curve"] for r in rows):
        notes.append("some repeated runs did not score every epoch as the stored run did")
    lines += [""] + ([f"Note: {'; '.join(notes)}.", ""] if notes else [])
    return lines


def sweep_attacks(path: str, model: str, split: str) -> dict | None:
    """The attacked rows of a sweep's results.json for one model and split (`sgu-llm run --sweep_results`)."""
    if not path:
        return None
    if not os.path.exists(path):
        return {"source": path, "rows": [], "retain": None, "note": f"{path} does not exist (run the sweep first)"}
    with open(path) as fh:
        rows = [r for r in json.load(fh) if r.get("model") == model and r["split"] == split and r.get("attacks")]
    keep = ("method", "learning_rate", "family", "attacks", "forget_quality_mean", "model_utility_mean")
    return {
        "source": path,
        "rows": [{k: r.get(k) for k in keep} for r in rows],
        "retain": rows[0].get("retain_attacks") if rows else None,
        "note": None if rows else f"{path} has no attacked rows for model {model!r} and split {split!r}",
    }


def plot_pareto(rows: list[dict], baselines: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = sorted({r["split"] for r in rows})
    fig, axes = plt.subplots(1, len(splits), figsize=(6.5 * len(splits), 5), squeeze=False)
    methods = sorted({r["method"] for r in rows})
    colours = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(methods)}
    for ax, split in zip(axes[0], splits):
        pts = [r for r in rows if r["split"] == split and r["selection"] == "holdout"]
        for r in pts:
            ax.scatter(
                r["model_utility_mean"],
                max(r["forget_quality_mean"], 1e-30),
                color=colours[r["method"]],
                marker="o" if r["reported"] else ".",
                s=60 if r["reported"] else 25,
                label=r["method"] if r["reported"] else None,
            )
        base = baselines.get(split, {})
        if base:
            t_mu = np.mean([b["target"]["aggregates"]["model_utility"] for b in base.values()])
            nf = np.mean([b["noise_floor"]["aggregates"]["forget_quality"] for b in base.values()])
            ax.axvline(t_mu, color="grey", ls="--", lw=1, label="target utility")
            ax.axvline(0.95 * t_mu, color="grey", ls=":", lw=1, label="0.95 x target")
            ax.axhline(nf, color="black", ls="--", lw=1, label="noise floor (mean)")
        ax.set_yscale("log")
        ax.set_xlabel("model utility (mean over seeds)")
        ax.set_ylabel("forget quality (mean over seeds, log)")
        ax.set_title(f"{split}: holdout-selected epoch; large = reported lr")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="sgu-llm sweep", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="sweep YAML, e.g. recipes/tiny-tofu/sweep.yaml")
    parser.add_argument("--output_dir", help="override the sweep's output_dir")
    parser.add_argument("--results_dir", help="override the sweep's results_dir")
    parser.add_argument("--report_only", action="store_true", help="aggregate finished runs, train nothing")
    args = parser.parse_args(argv)
    try:
        cfg = load_sweep(args.config)
        if args.output_dir:
            cfg.output_dir = args.output_dir
        if args.results_dir:
            cfg.results_dir = args.results_dir
        os.environ.setdefault("SGU_LLM_QUIET", "1")
        sweep = Sweep(cfg, log=lambda m: print(m, flush=True))
        if args.report_only:
            records, attacks = collect_records(cfg), collect_attacks(cfg)
        else:
            records = sweep.run()
            attacks = sweep.attack(records) if cfg.attack_splits else []
        # The command that reproduces the outputs (--report_only or not: the same tables from the same runs).
        write_results(cfg, records, f"sgu-llm sweep {args.config}", attacks)
    except ValueError as err:
        print(f"sgu-llm sweep: error: {err}", file=sys.stderr)
        return 2
    print(f"[sweep] {len(records)} runs; {cfg.results_dir}/results.md")
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
