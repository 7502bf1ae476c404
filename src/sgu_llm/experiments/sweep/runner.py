"""`sgu-llm sweep SWEEP.yaml`: methods x learning rates x model seeds x splits on the embedded benchmark.

Every method gets the same budget: the same learning-rate grid, epochs, data and models, and the
same rule for its reported point. For each (split, model seed) the target, retain and noise-floor
models are fine-tuned (cached) with that seed; the noise floor of seed s is the retain model of seed
s + 1. Each run unlearns a copy of the target and, at the start and after every epoch, records

- `holdout_ks`: the KS statistic between the forget set's and the holdout authors' truth ratios
  under the current model (`sgu_llm.trainers.stopping`; what a user without a retain model can compute);
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

import argparse
import copy
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from sgu_llm.core.cache import weights_fingerprint
from sgu_llm.core.files import write_json, write_text
from sgu_llm.data.benchmark import eval_sets, load_benchmark_data
from sgu_llm.evaluation import evaluate_model
from sgu_llm.evaluation.attacks import attack_report
from sgu_llm.evaluation.metrics import forget_quality, ks_d
from sgu_llm.evaluation.prefix import FrozenPrefix
from sgu_llm.evaluation.suite import forget_diagnostics_of
from sgu_llm.experiments.config import Recipe, parse_fields
from sgu_llm.experiments.probing import probe_pair
from sgu_llm.experiments.shared import eval_kwargs, make_trainer
from sgu_llm.experiments.sweep.backends import LocalBackend, Progress, Trial, make_backend
from sgu_llm.experiments.sweep.config import (
    Point,
    SweepConfig,
    attack_path,
    is_tuned,
    load_sweep,
    method_fields,
    method_points,
    methods_on,
    point_name,
    probe_path,
    record_point,
    run_path,
)
from sgu_llm.experiments.sweep.protocol import (
    add_error_bars,
    crossfit_rows,
    gate_table,
    noise_bands,
    point_rows,
)
from sgu_llm.experiments.sweep.records import (
    SELECTIONS,
    aggregate,
    attack_rows,
    attack_summary,
    baseline_diagnostics,
    best_row,
    choose,
    collect_attacks,
    collect_records,
    complete_seeds,
    entry_point,
    family,
    load_baselines,
    merge_rows,
    probe_rows,
    ranking_agreement,
    time_parts,
)
from sgu_llm.models.benchmark import benchmark_models
from sgu_llm.models.clamp import clamps
from sgu_llm.report.figures import plot_pareto
from sgu_llm.report.tables import grid_markdown, results_markdown
from sgu_llm.trainers.callbacks import EpochScoring
from sgu_llm.trainers.stopping import ks_distance, row_scores

RETAIN_SPLIT = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}


def read_json(path: str) -> Any:
    with open(path) as fh:
        return json.load(fh)


def run_recipe(cfg: SweepConfig, split: str, seed: int, method: str, point: Point, out: str) -> Recipe:
    """The recipe of one run: the sweep's base fields, the method's at this point, the split and the seed."""
    lr, setting = point
    fields_ = {**cfg.base, **method_fields(cfg, method, setting), "forget_split": split, "learning_rate": lr}
    if split in RETAIN_SPLIT:
        fields_["retain_split"] = RETAIN_SPLIT[split]
    fields_.update(model_seed=seed, noise_floor_seed=seed + 1, seed=seed, output_dir=out, report_to="none")
    return parse_fields(fields_, ["--overwrite_output_dir", "true"])


class EpochRecorder(EpochScoring):
    """The two stopping statistics and a CPU copy of the weights, at the start and after every epoch:
    `holdout_ks` (KS statistic of forget vs holdout truth ratios: what a user without a retain model can
    compute) and `forget_quality` (against the retain model: the benchmark's oracle)."""

    def __init__(self, tokenizer: Any, sets: dict, reference: dict, kw: dict, stop_at: float | None = None):
        super().__init__()
        self.tokenizer, self.sets, self.ref = tokenizer, sets, reference
        self.kw = {k: v for k, v in kw.items() if k != "max_new_tokens"}  # scoring only, no generation
        self.snapshots: list[dict] = []
        self.arithmetic: dict | None = None  # the trainer's, once it has trained (`UnlearnTrainer.arithmetic`)
        # `stop_at` (an epoch > 0): score only at the end of that epoch and stop training there (a repeat that
        # needs one epoch's weights: the schedule is the full run's, so they are that run's weights).
        self.stop_at = stop_at
        if stop_at is not None:
            self.score_start = False

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.stop_at is None:
            return super().on_epoch_end(args, state, control, model=model, **kwargs)
        if float(state.epoch or 0.0) >= self.stop_at - 1e-6:
            self._score(state, model)
            control.should_training_stop = True
        return control

    def score(self, model: Any) -> dict:
        f = row_scores(model, self.tokenizer, self.sets["forget"], "truth_ratio", **self.kw)
        h = row_scores(model, self.tokenizer, self.sets["holdout"], "truth_ratio", **self.kw)
        ref = self.ref["per_example"]["forget"]["truth_ratio"]
        return {"holdout_ks": ks_distance(f, h), "forget_quality": forget_quality(f, ref), "forget_ks_d": ks_d(f, ref)}

    def scored(self, state: Any, model: Any, record: dict) -> None:
        self.snapshots.append({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})

    @property
    def curve(self) -> list[dict]:
        return self.records


def keep_alternatives(run_dir: str, seed_dir: str) -> None:
    """Keep the alternatives a run sampled (`<run_dir>/alternatives/<split>.jsonl`, the same for every run of a
    seed: they come from the seed's target) beside the seed's runs: each file once."""
    made = os.path.join(run_dir, "alternatives")
    if not os.path.isdir(made):
        return
    os.makedirs(seed_dir, exist_ok=True)
    for name in sorted(os.listdir(made)):
        if not os.path.exists(os.path.join(seed_dir, name)):
            with open(os.path.join(made, name)) as fh:
                write_text(os.path.join(seed_dir, name), fh.read())


@dataclass
class SeedContext:
    """What every run of one (split, model seed) shares: data, tokenizer, the three models, the evaluation sets
    and settings, and the baselines' evaluations (`models_match`: the models are the ones the stored runs used)."""

    data: dict
    tokenizer: Any
    models: dict
    sets: dict
    kw: dict
    evals: dict
    metas: dict = field(default_factory=dict)
    prefix: FrozenPrefix = field(default_factory=FrozenPrefix)  # the frozen lower layers' output, shared by its runs


class Sweep:
    """Runs a `SweepConfig` stage by stage on a backend (`sgu_llm.experiments.sweep.backends`): the trials of a
    stage run in any order (in this process, or as Ray tasks); this object, the driver, writes every file.

    `execute(trial)` is what a worker runs; it reads nothing the driver writes (the seed's baselines and the
    stored curves come with the trial) and keeps the last seed it loaded, so the trials of one seed load its
    data and models once per worker.
    """

    def __init__(self, cfg: SweepConfig, log: Any = print, backend: Any = None, progress: Progress | None = None):
        self.cfg, self.log = cfg, log
        self.backend = backend or LocalBackend()
        self.progress = progress or Progress(enabled=False)
        self._loaded: tuple | None = None  # ((split, seed), SeedContext without evals)

    # --- what a worker runs -------------------------------------------------------------------------------

    def execute(self, trial: Trial) -> Any:
        """One trial's result: a seed's baselines (`models`), a run's record (`run`) or an attack entry (`attack`)."""
        if trial.kind == "models":
            return self.baseline_evals(trial.split, trial.seed, trial.inputs.get("stored"), trial.inputs["keep"])
        ctx = self.context(trial.split, trial.seed, trial.inputs["evals"])
        if trial.kind == "run":
            return self.train_point(trial.split, trial.seed, trial.method, trial.point, ctx)
        if trial.kind == "attack":
            return self.attack_one(trial.split, trial.seed, trial.method, trial.point, ctx, trial.inputs.get("curve"))
        if trial.kind == "probe":
            return self.probe_one(trial.split, trial.seed, trial.method, trial.point, ctx, trial.inputs["curve"])
        raise ValueError(f"unknown trial kind {trial.kind!r}")

    def load_seed(self, split: str, seed: int) -> SeedContext:
        """Data, tokenizer, the three models (fine-tuned when not cached), eval sets and settings of one
        (split, model seed); kept for the next trial of the same seed. `evals` is left empty."""
        if self._loaded is not None and self._loaded[0] == (split, seed):
            return self._loaded[1]
        self._loaded = None  # free the previous seed's models first
        first = next(iter(self.cfg.methods))
        recipe = run_recipe(self.cfg, split, seed, first, (1e-3, ()), tempfile.gettempdir())
        data = load_benchmark_data(recipe.script)
        tokenizer, models, metas = benchmark_models(
            data, recipe.bench, prompt_format=recipe.config.prompt_format, base=recipe.model
        )
        kw = eval_kwargs(recipe.config, recipe.evaluation)
        ctx = SeedContext(data, tokenizer, models, eval_sets(data), kw, {}, metas, FrozenPrefix())
        self._loaded = ((split, seed), ctx)
        return ctx

    def context(self, split: str, seed: int, evals: dict) -> SeedContext:
        """The seed's context with the baselines the driver handed over."""
        ctx = self.load_seed(split, seed)
        return SeedContext(ctx.data, ctx.tokenizer, ctx.models, ctx.sets, ctx.kw, evals, ctx.metas, ctx.prefix)

    def baseline_evals(self, split: str, seed: int, stored: dict | None, keep: bool) -> dict:
        """The `models` trial: fine-tune (or load) the seed's models and return `{"evals", "write", "stale"}`: the
        stored baselines when their model fingerprints match (diagnostics added when older: `write`), else new
        evaluations. Models that differ from the stored ones make the seed `stale` (its finished runs are moved
        aside and run again), unless `keep`: then only the retain model is evaluated, as the reference for
        these models, and `evals["models_match"]` is False."""
        ctx = self.load_seed(split, seed)
        models, tokenizer, sets, kw = ctx.models, ctx.tokenizer, ctx.sets, ctx.kw
        weights = {role: weights_fingerprint(m) for role, m in models.items()}
        write = stale = False
        evals = None
        if stored is not None:
            evals = dict(stored)
            recorded = {role: m.get("weights") for role, m in evals.get("meta", {}).items()}
            if set(recorded.values()) == {None}:  # written before fingerprints existed: record them now
                evals["meta"] = {role: {**meta, "weights": weights.get(role)} for role, meta in evals["meta"].items()}
                recorded, write = weights, True
            evals["models_match"] = recorded == weights
            if recorded != weights and keep:
                evals = {"retain": evaluate_model(models["retain"], tokenizer, sets, **kw), "models_match": False}
            elif recorded != weights:
                # Models fine-tuned again (another machine, another library version) differ in their last
                # bits, and forget quality with them: a seed's runs must all use the same models.
                evals, stale = None, True
        if evals is None:
            evals, seconds = {}, {}
            for name in ("retain", "target", "noise_floor"):  # the retain model first: the others' reference
                start = time.perf_counter()
                ref = {"reference": evals["retain"]} if name != "retain" else {}
                evals[name] = evaluate_model(models[name], tokenizer, sets, **ref, **kw)
                seconds[name] = time.perf_counter() - start
            evals["meta"] = {
                k: {"train_seconds": m.get("train_seconds"), "eval_seconds": seconds.get(k), "key": m.get("key"),
                    "weights": weights[k]}
                for k, m in ctx.metas.items()
            }
            evals["models_match"], write = True, True
        if evals["models_match"] and self.backfill_diagnostics(evals, models, tokenizer, sets, kw):
            write = True
        return {"evals": evals, "write": write, "stale": stale}

    # --- what the driver does -----------------------------------------------------------------------------

    def seed_baselines(self, split: str, seeds: list[int], keep: bool = False) -> dict[int, dict]:
        """Each seed's baselines (one `models` trial per seed), written to its baselines.json; a seed whose models
        changed has its folder moved aside first (unless `keep`)."""
        trials = []
        for seed in seeds:
            path = os.path.join(self.cfg.output_dir, split, f"seed{seed}", "baselines.json")
            stored = None
            if os.path.exists(path):
                with open(path) as fh:
                    stored = json.load(fh)
            trials.append(Trial("models", split, seed, inputs={"stored": stored, "keep": keep}))
        out = {}
        for trial, result in self.backend.run(self, trials, self.progress):
            folder = os.path.join(self.cfg.output_dir, split, f"seed{trial.seed}")
            if result["stale"]:
                moved = f"{folder}.stale-{time.strftime('%Y%m%d-%H%M%S')}"
                os.replace(folder, moved)
                self.log(f"[sweep] {split} seed {trial.seed}: models differ from the finished runs'; moved them to {moved}")
            evals = result["evals"]
            if result["write"]:
                write_json(os.path.join(folder, "baselines.json"), {k: v for k, v in evals.items() if k != "models_match"})
            out[trial.seed] = evals
        return out

    def baselines(self, split: str, seed: int, keep: bool = False) -> SeedContext:
        """One seed's context with its baselines (evaluated and written when missing), in this process."""
        return self.context(split, seed, self.seed_baselines(split, [seed], keep)[seed])

    @staticmethod
    def backfill_diagnostics(evals: dict, models: dict, tokenizer: Any, sets: dict, kw: dict) -> bool:
        """Add `forget_tr_mean` / `forget_outrank` to baselines evaluated before they existed (the rest of the
        stored evaluation is kept as it is). Returns whether anything was added."""
        added = False
        for role in ("retain", "target", "noise_floor"):
            if role in evals and "forget_outrank" not in evals[role]["aggregates"]:
                diag = forget_diagnostics_of(models[role], tokenizer, sets["forget"], **kw)
                evals[role]["per_example"]["forget"]["outranks"] = diag.pop("outranks")
                evals[role]["aggregates"].update(diag)
                added = True
        return added

    def unlearn(self, split: str, seed: int, method: str, point: Point, ctx: SeedContext, stop_at: float | None = None) -> tuple:
        """Unlearn a copy of the target with one method at one point: (model, EpochRecorder, seconds); `stop_at`:
        only up to that epoch, scored there alone (`EpochRecorder`)."""
        with tempfile.TemporaryDirectory() as tmp:
            recipe = run_recipe(self.cfg, split, seed, method, point, tmp)
            recipe.config.disable_tqdm = True
            recorder = EpochRecorder(ctx.tokenizer, ctx.sets, ctx.evals["retain"], ctx.kw, stop_at=stop_at)
            recorder.prefix = ctx.prefix  # every run of the seed starts from the same target: one record of it
            trainer = make_trainer(
                recipe.script.method, ctx.models["target"], recipe.config, ctx.data, ctx.tokenizer,
                retain_general=recipe.script.retain_general, peft_config=recipe.model.peft_config(),
                callbacks=[recorder],
            )
            start = time.perf_counter()
            trainer.train()
            wall = time.perf_counter() - start - recorder.seconds
            keep_alternatives(tmp, os.path.join(self.cfg.output_dir, split, f"seed{seed}", "alternatives"))
        recorder.arithmetic = trainer.arithmetic()
        return trainer.model, recorder, wall

    def train_point(self, split: str, seed: int, method: str, point: Point, ctx: SeedContext) -> dict:
        """One run's record: its per-epoch curve and the full evaluation of the selected epochs."""
        model, recorder, wall = self.unlearn(split, seed, method, point, ctx)
        tokenizer, sets, kw, evals = ctx.tokenizer, ctx.sets, ctx.kw, ctx.evals
        picks = choose(recorder.curve)
        evaluated: dict[int, dict] = {}
        selections = {}
        target_weights = evals.get("meta", {}).get("target", {}).get("weights")
        start = time.perf_counter()
        for rule, idx in picks.items():
            if rule in SELECTIONS and idx not in evaluated:  # full evaluation (with generation)
                model.load_state_dict(recorder.snapshots[idx])
                unchanged = recorder.curve[idx]["epoch"] == 0 or (weights_fingerprint(model) == target_weights
                                                                  and not clamps(model))
                if target_weights and unchanged:
                    # The target itself (an epoch-0 pick, or weights that did not move; an SAE clamp edits activations
                    # with the target's weights, so it is only the target at epoch 0): the seed's baseline.
                    full = evals["target"]
                else:
                    with ctx.prefix.active(model):  # teacher-forced scoring reuses the frozen layers; generation does not
                        full = evaluate_model(model, tokenizer, sets, reference=evals["retain"], **kw)
                # The per-row forget truth ratios too, so any aggregate over rows (D, its CI, a band) can be recomputed.
                evaluated[idx] = {**full["aggregates"], "forget_truth_ratios": full["per_example"]["forget"]["truth_ratio"]}
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
            # Where a run's time goes: the per-epoch scoring of the stopping statistics, the full evaluations of
            # the selected epochs (an epoch-0 pick reuses the target's).
            "scoring_seconds": recorder.seconds,
            "evaluation_seconds": time.perf_counter() - start,
            "arithmetic": recorder.arithmetic,  # torch, CPU kernels, compiled or eager selection
        }
        if setting:
            record["setting"] = dict(setting)
        return record

    def run_grid(self) -> list[dict]:
        """Run everything not already on disk; returns every run's record (in the order of the config: split,
        seed, method, point, whichever order the trials finished in)."""
        self.check_methods()
        records: list[dict] = []
        for split, seeds in self.cfg.splits.items():
            tune = [s for s in seeds if s in self.cfg.tune_seeds]
            for stage in (tune, [s for s in seeds if s not in tune]):  # the other seeds run the tune seeds' choice
                if stage:
                    records += self.run_stage(split, stage, records)
        return records

    def check_methods(self) -> None:
        """Parse every method's recipe at every point of its grid, so a bad field fails the sweep here, before any
        model is trained, and not in a worker hours later."""
        for split in self.cfg.splits:
            for method in methods_on(self.cfg, split):
                for point in method_points(self.cfg, method):
                    try:
                        run_recipe(self.cfg, split, 0, method, point, tempfile.gettempdir())
                    except ValueError as err:
                        raise ValueError(f"sweep method {method!r} at {point_name(point)}: {err}") from None

    def run_stage(self, split: str, seeds: list[int], records: list[dict]) -> list[dict]:
        """The runs of some seeds of one split whose points are known from `records`: those on disk are read, the
        others run as trials (after the seeds' `models` trials) and written as they finish."""
        todo = [(seed, m, p) for seed in seeds for m, ps in self.points_for(split, seed, records).items() for p in ps]
        paths = {x: run_path(self.cfg, split, *x) for x in todo}
        need = sorted({seed for (seed, *_), path in paths.items() if not os.path.exists(path)})
        evals = self.seed_baselines(split, need) if need else {}  # may move a seed's runs aside
        trials = [
            Trial("run", split, seed, method, point, inputs={"evals": evals[seed]})
            for (seed, method, point), path in paths.items()
            if not os.path.exists(path)
        ]
        done = {}
        for trial, rec in self.backend.run(self, trials, self.progress):
            done[(trial.seed, trial.method, trial.point)] = rec
            write_json(paths[(trial.seed, trial.method, trial.point)], rec)
            h = rec["selections"]["holdout"]
            self.log(
                f"[sweep] {split} seed {trial.seed} {trial.method} {point_name(trial.point)}: holdout-selected epoch "
                f"{h['epoch']:.0f} FQ {h['forget_quality']:.3g} MU {h['model_utility']:.3f} ({rec['unlearn_seconds']:.0f} s unlearning, {rec['scoring_seconds']:.0f} s scoring, "
                f"{rec['evaluation_seconds']:.0f} s evaluation)"
            )
        return [done[x] if x in done else read_json(paths[x]) for x in todo]

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

        Runs store no weights, so each run is repeated up to its holdout-selected epoch (`repeat_selected`);
        `same_curve` in its file says whether the repeat scored that epoch as the stored run did (same models, same
        machine: it does).
        """
        out = []
        for split in self.cfg.attack_splits:
            points = self.attack_points(split, records)
            todo = [(seed, m, p) for seed in self.cfg.splits[split] for m, p in [("retain", (0.0, ()))] + list(points[seed].items())]
            paths = {x: attack_path(self.cfg, split, *x) for x in todo}
            seeds = sorted({seed for (seed, *_), path in paths.items() if not os.path.exists(path)})
            evals = self.seed_baselines(split, seeds, keep=True) if seeds else {}
            trials = []
            for (seed, method, point), path in paths.items():
                if not os.path.exists(path):
                    curve = None
                    if method != "retain":
                        with open(run_path(self.cfg, split, seed, method, point)) as fh:
                            curve = json.load(fh)["curve"]
                    trials.append(Trial("attack", split, seed, method, point, inputs={"evals": evals[seed], "curve": curve}))
            done = {}
            for trial, entry in self.backend.run(self, trials, self.progress):
                done[(trial.seed, trial.method, trial.point)] = entry
                write_json(paths[(trial.seed, trial.method, trial.point)], entry)
                a = entry["attacks"]
                self.log(
                    f"[sweep] attacks {split} seed {trial.seed} {trial.method}: relearn prob "
                    f"{a['none']['forget_prob']:.3f} -> {a['relearn']['forget_prob']:.3f}"
                )
            out += [done[x] if x in done else read_json(paths[x]) for x in todo]
        return out

    def attack_points(self, split: str, records: list[dict]) -> dict[int, dict[str, Point]]:
        """seed -> method -> the point attacked there: each method's reported point on every seed, or under
        `selection: crossfit` each seed's crossfit point (chosen on the other seeds)."""
        methods = methods_on(self.cfg, split)
        complete = complete_seeds(self.cfg, records)
        if self.cfg.selection == "crossfit":
            base = {split: load_baselines(self.cfg, split)}
            rows = {r["method"]: r for r in crossfit_rows([r for r in complete if r["split"] == split], base,
                                                           self.cfg.utility_floor)}
            missing = [m for m in methods if m not in rows]
            if missing:
                raise ValueError(f"attack_splits: no crossfit row for {missing} on {split} (every point must run on every seed)")
            return {
                seed: {m: entry_point(next(e for e in rows[m]["per_seed"] if e["seed"] == seed)) for m in methods}
                for seed in self.cfg.splits[split]
            }
        try:
            reported = self.chosen(split, complete, methods)
        except ValueError as err:
            raise ValueError(f"attack_splits: {err}") from None
        return {seed: dict(reported) for seed in self.cfg.splits[split]}

    def attack_one(
        self, split: str, seed: int, method: str, point: Point, ctx: SeedContext, stored_curve: list | None = None
    ) -> dict:
        """The attacks on one run, repeated to get its holdout-selected weights (`method` "retain": the seed's
        retain model); `stored_curve` is the finished run's curve, which the repeat is compared with."""
        fields_of = method if method != "retain" else next(iter(self.cfg.methods))
        evaluation = run_recipe(self.cfg, split, seed, fields_of, (1e-3, ()), tempfile.gettempdir()).evaluation
        entry = {"method": method, "split": split, "seed": seed, "learning_rate": point[0],
                 "models_match": ctx.evals["models_match"]}
        if point[1]:
            entry["setting"] = dict(point[1])
        if method == "retain":
            model = ctx.models["retain"]
        else:
            model, repeat = self.repeat_selected(split, seed, method, point, ctx, stored_curve)
            entry.update(repeat)
        reference = ctx.evals["retain"]["per_example"]["forget"]["truth_ratio"]
        start = time.perf_counter()
        report = attack_report(
            {method: model}, ctx.tokenizer, ctx.sets["forget"], reference, ctx.kw,
            relearn_steps=evaluation.attack_relearn_steps, relearn_learning_rate=evaluation.attack_relearn_learning_rate,
            seed=seed,
        )
        entry["attacks"] = report["models"][method]
        entry["relearn"] = report["relearn"]
        entry["attack_seconds"] = time.perf_counter() - start
        return entry

    def repeat_selected(
        self, split: str, seed: int, method: str, point: Point, ctx: SeedContext, stored_curve: list | None
    ) -> tuple[Any, dict]:
        """A finished run repeated to get its weights at the holdout-selected epoch (runs store none): the model and
        `{"epoch", "same_curve"}`. With the stored curve, the repeat trains only up to the epoch that curve's
        holdout rule picked and scores only there; `same_curve`: the repeat's score there equals the stored one
        (same models, same machine: it does). Without it, the whole run is repeated and compared epoch by epoch."""
        if stored_curve is None:
            model, recorder, _ = self.unlearn(split, seed, method, point, ctx)
            idx = choose(recorder.curve)["holdout"]
            model.load_state_dict(recorder.snapshots[idx])
            return model, {"epoch": recorder.curve[idx]["epoch"], "same_curve": False, "arithmetic": recorder.arithmetic}
        start = time.perf_counter()
        want = stored_curve[choose(stored_curve)["holdout"]]
        if want["epoch"] == 0:  # the target itself
            model = copy.deepcopy(ctx.models["target"])
            scorer = EpochRecorder(ctx.tokenizer, ctx.sets, ctx.evals["retain"], ctx.kw)
            with torch.no_grad(), ctx.prefix.active(model):
                got = {"step": 0, "epoch": 0.0, **scorer.score(model.eval())}
        else:
            model, recorder, _ = self.unlearn(split, seed, method, point, ctx, stop_at=want["epoch"])
            got = recorder.curve[-1]
        return model, {
            "epoch": want["epoch"], "same_curve": all(got.get(k) == v for k, v in want.items()), "repeat_seconds": time.perf_counter() - start,
            "arithmetic": recorder.arithmetic if want["epoch"] != 0 else None,
        }

    def probed(self, split: str, records: list[dict]) -> tuple[str, Point]:
        """The probe stage's method and point: `probe_method` at its reported point, or the `sgu`-family method whose
        reported holdout row meets the utility floor with the best mean log10 forget quality (if none meets it,
        the one with the highest utility)."""
        table = aggregate(complete_seeds(self.cfg, records), {split: load_baselines(self.cfg, split)},
                          self.cfg.utility_floor, tune_seeds=self.tune_seeds_of())
        rows = [r for r in table if r["split"] == split and r["reported"] and r["selection"] == "holdout"]
        if self.cfg.probe_method is not None:
            rows = [r for r in rows if r["method"] == self.cfg.probe_method]
        else:
            rows = [r for r in rows if r["family"] == "sgu"]
        if not rows:
            raise ValueError(f"probe_splits: no finished {split} runs of {self.cfg.probe_method or 'an sgu-family method'} to probe")
        best = best_row(rows, self.cfg.utility_floor)
        return best["method"], record_point(best)

    def probe(self, records: list[dict]) -> list[dict]:
        """Probe the reported SGU-family row (`probed`) on every seed of the `probe_splits`: one JSON per seed,
        skipped when on disk."""
        out = []
        for split in self.cfg.probe_splits:
            method, point = self.probed(split, records)
            paths = {seed: probe_path(self.cfg, split, seed, method, point) for seed in self.cfg.splits[split]}
            need = [seed for seed, path in paths.items() if not os.path.exists(path)]
            evals = self.seed_baselines(split, need, keep=True) if need else {}
            trials = []
            for seed in need:
                with open(run_path(self.cfg, split, seed, method, point)) as fh:
                    curve = json.load(fh)["curve"]
                trials.append(Trial("probe", split, seed, method, point, inputs={"evals": evals[seed], "curve": curve}))
            done = {}
            for trial, entry in self.backend.run(self, trials, self.progress):
                done[trial.seed] = entry
                write_json(paths[trial.seed], entry)
                c = entry["causal"]
                self.log(
                    f"[sweep] probe {split} seed {trial.seed} {method}: {c['n_features']} features ({c['clamped_from']}), "
                    + ", ".join(f"factor {k}: selectivity {v['clamped_effects']['selectivity']:.3g}, p {v['random_at_least']:.2f}"
                                for k, v in c.get("by_scale", {}).items())
                )
            out += [done[s] if s in done else read_json(paths[s]) for s in self.cfg.splits[split]]
        return out

    def probe_one(self, split: str, seed: int, method: str, point: Point, ctx: SeedContext, stored_curve: list) -> dict:
        """The probe of one run: SAE feature states from the seed's target to the run's holdout-selected epoch, and the
        causal check on the target (`sgu_llm.experiments.probing.probe_pair`)."""
        with tempfile.TemporaryDirectory() as tmp:
            recipe = run_recipe(self.cfg, split, seed, method, point, tmp)
        model, repeat = self.repeat_selected(split, seed, method, point, ctx, stored_curve)
        start = time.perf_counter()
        target_key = ctx.metas.get("target", {}).get("key", recipe.model.model_name_or_path)
        report = probe_pair(ctx.models["target"], model, ctx.tokenizer, ctx.data, recipe.probe, recipe.bench,
                            target_key, recipe.config.prompt_format)
        entry = {"method": method, "split": split, "seed": seed, "learning_rate": point[0],
                 "models_match": ctx.evals["models_match"], **repeat}
        if point[1]:
            entry["setting"] = dict(point[1])
        keep = ("hook_name", "hf_module", "sae_quality", "state_counts", "causal", "causal_random_draws")
        entry.update({k: report[k] for k in keep if k in report})
        entry["probe_seconds"] = time.perf_counter() - start
        return entry




def write_results(
    cfg: SweepConfig, records: list[dict], command: str, attacks: list[dict] | None = None, probes: list[dict] | None = None
) -> list[dict]:
    """results.json, results.md and pareto.png from the finished runs of complete (split, seed)s; the attacks
    (`Sweep.attack`) go into the reported holdout rows (`attacks`, and the retain model's `retain_attacks`), or
    under `selection: crossfit` into the crossfit rows, the probe stage's causal checks (`Sweep.probe`) into the
    probed row (`causal`). Returns the rows written: per (split, method, point) the holdout and oracle rows, the
    `crossfit` rows, and one `gate` row per paired comparison (`sgu_llm.experiments.sweep.protocol`)."""
    baselines = {split: load_baselines(cfg, split) for split in cfg.splits}
    tuned = {m: list(cfg.tune_seeds) for m in cfg.methods if is_tuned(cfg, m)}
    complete = complete_seeds(cfg, records)
    rows = aggregate(complete, baselines, cfg.utility_floor, tune_seeds=tuned)
    # The error bars (sgu_llm.experiments.sweep.protocol): D per seed and the noise band in every row, the crossfit
    # rows, and the paired gate verdicts.
    bands = {split: noise_bands(b) for split, b in baselines.items()}
    add_error_bars(rows, complete, baselines, bands)
    cross = crossfit_rows(complete, baselines, cfg.utility_floor, bands)
    attacked = attack_rows(attacks or [])
    probed = probe_rows(probes or [])
    for r in rows:
        r["model"] = cfg.model_name
        if not (r["reported"] and r["selection"] == "holdout"):
            continue
        r["baseline_diagnostics"] = baseline_diagnostics(baselines.get(r["split"], {}), r["seeds"])
        got = attacked.get((r["split"], r["method"]))
        if got and entry_point(got) == record_point(r) and cfg.selection != "crossfit":
            r["attacks"] = got
            r["retain_attacks"] = attacked.get((r["split"], "retain"))
        got = probed.get((r["split"], r["method"]))
        if got and entry_point(got) == record_point(r):
            r["causal"] = got
    for r in cross:
        r.update(model=cfg.model_name, family=family(r["fields"]),
                 baseline_diagnostics=baseline_diagnostics(baselines.get(r["split"], {}), r["seeds"]))
        at = {(e["seed"], entry_point(e)) for e in r["per_seed"]}
        got = [a for a in attacks or [] if cfg.selection == "crossfit"
               and (a["split"], a["method"]) == (r["split"], r["method"]) and (a["seed"], entry_point(a)) in at]
        if got:
            r["attacks"] = attack_summary(got)
            r["retain_attacks"] = attacked.get((r["split"], "retain"))
    # "Does the gate help?", paired over seeds: at the crossfit points where a method has them, else at its reported
    # point (chosen on the tune seeds: labelled so).
    have = {(r["split"], r["method"]) for r in cross}
    reported = {(r["split"], r["method"]): record_point(r) for r in rows
                if r["reported"] and r["selection"] == "holdout" and (r["split"], r["method"]) not in have}
    gate = gate_table(cross + point_rows(complete, baselines, reported, "tune_seeds" if cfg.tune_seeds else "holdout", bands),
                      complete, baselines, cfg.methods, cfg.utility_floor)
    out_rows = rows + cross + [{"model": cfg.model_name, "method": g["gated"], "split": g["split"], "selection": "gate",
                                "gate": g} for g in gate]
    if cfg.benchmark:
        for r in out_rows:
            r["benchmark"] = cfg.benchmark
    os.makedirs(cfg.results_dir, exist_ok=True)
    # Other models' rows in the shared results.json (or this sweep's own): does their ranking of the methods hold?
    shared = cfg.results_json or os.path.join(cfg.results_dir, "results.json")
    mine = (cfg.model_name, cfg.benchmark)
    others = [r for r in read_json(shared) if (r.get("model"), r.get("benchmark")) != mine] if os.path.exists(shared) else []
    merge_rows(os.path.join(cfg.results_dir, "results.json"), out_rows, *mine)
    if rows:  # no complete seed yet: the model's rows already there stay, no empty plot
        if cfg.results_json:
            merge_rows(cfg.results_json, out_rows, *mine)
        plot_pareto(rows, baselines, os.path.join(cfg.results_dir, "pareto.png"))
    write_text(
        os.path.join(cfg.results_dir, "results.md"),
        results_markdown(cfg, rows, baselines, command, complete,
                         time_parts(records, baselines, attacks or [], probes or []), ranking_agreement(rows, others),
                         bands=bands, crossfit=cross, gate=gate),
    )
    # Every finished point, complete seeds or not (the rule's choice is marked only where the seeds are complete).
    every = aggregate(records, baselines, cfg.utility_floor, selections=("holdout",), tune_seeds=tuned)
    chosen = {(r["split"], r["method"], record_point(r)) for r in rows if r["reported"]}
    for r in every:
        r["reported"] = (r["split"], r["method"], record_point(r)) in chosen
    write_text(os.path.join(cfg.results_dir, "grid.md"), grid_markdown(cfg, every, command))
    return out_rows


def main(argv: list[str]) -> int:
    """`sgu-llm sweep SWEEP.yaml` (errors are ValueErrors; `sgu_llm.cli` prints them)."""
    parser = argparse.ArgumentParser(prog="sgu-llm sweep", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("config", help="sweep YAML, e.g. recipes/sweeps/tiny-tofu.yaml")
    parser.add_argument("--output_dir", help="override the sweep's output_dir")
    parser.add_argument("--results_dir", help="override the sweep's results_dir")
    parser.add_argument("--report_only", action="store_true", help="aggregate finished runs, train nothing")
    parser.add_argument(
        "--backend", default="local", choices=("local", "ray"),
        help="where trials run: local (this process, one after another) or ray (Ray tasks; pip install 'sgu-llm[ray]')",
    )
    parser.add_argument("--ray_address", help="join this running Ray cluster (default: start a local Ray)")
    parser.add_argument("--ray_num_cpus", type=int, help="CPUs of the local Ray (default: every core)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar (the log lines stay)")
    args = parser.parse_args(argv)
    cfg = load_sweep(args.config)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    if args.results_dir:
        cfg.results_dir = args.results_dir
    os.environ.setdefault("SGU_LLM_QUIET", "1")
    if args.report_only:
        records, attacks, probes = collect_records(cfg), collect_attacks(cfg), collect_records(cfg, prefix="probe")
    else:
        progress = Progress(enabled=not args.no_progress)
        backend = make_backend(args.backend, args.ray_address, args.ray_num_cpus)
        def log(message: str) -> None:  # timestamped: the log also gives the sweep's wall time across restarts
            progress.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}")

        sweep = Sweep(cfg, log=log, backend=backend, progress=progress)
        try:
            records = sweep.run_grid()
            # The probe stage first: one trial per seed, against one per method and seed for the attacks.
            probes = sweep.probe(records) if cfg.probe_splits else []
            attacks = sweep.attack(records) if cfg.attack_splits else []
        finally:
            progress.close()
    # The command that reproduces the outputs (--report_only or not, either backend: the same tables from the
    # same runs).
    write_results(cfg, records, f"sgu-llm sweep {args.config}", attacks, probes)
    print(f"[sweep] {len(records)} runs; {cfg.results_dir}/results.md")
    return 0
