"""A sweep's configuration (`SweepConfig`, read from YAML) and the names of its runs: points, paths, fields."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

import yaml


@dataclass
class SweepConfig:
    """A sweep, as read from YAML (every key is a field here)."""

    base: dict = field(metadata={"help": "Recipe fields shared by every run (data, schedule, batch size)."})
    methods: dict = field(
        metadata={
            "help": "name -> recipe fields of that method (at least `method`), e.g. {sgu: {method: sgu}}; besides "
            "recipe fields: `grid` (field -> values, times the learning rates), `splits` (the splits it runs on) and "
            "`learning_rates` (its own grid, for a method that trains nothing: sae_clamp: [0.0])."
        }
    )
    learning_rates: list = field(metadata={"help": "The learning-rate grid, the same for every method."})
    splits: dict = field(
        metadata={"help": "forget split -> list of model seeds, e.g. {forget10: [0, 1, 2, 3, 4]}."}
    )
    output_dir: str = field(
        default="runs/sweep",
        metadata={"help": "One JSON per finished run (resume), written by the driver whichever backend ran it."},
    )
    results_dir: str = field(default="docs", metadata={"help": "Where results.{md,json} and pareto.png go."})
    best_only_splits: list = field(
        default_factory=list, metadata={"help": "Splits that run only each method's reported learning rate."}
    )
    utility_floor: float = field(
        default=0.95, metadata={"help": "Reported point: model utility at least this times the target's."}
    )
    model_name: str = field(default="tiny-llama", metadata={"help": "The `model` field of the result rows."})
    benchmark: str | None = field(
        default=None,
        metadata={
            "help": "The `benchmark` field of the result rows (e.g. tofu-size): rows are replaced in a shared "
            "results.json by (model, benchmark), so two benchmarks of one model keep their own rows."
        },
    )
    selection: str = field(
        default="tune_seeds",
        metadata={
            "help": "How each method's reported point is chosen. tune_seeds: on `tune_seeds` for methods with a grid "
            "(their other seeds run only that point), on every seed otherwise. crossfit: every point runs on every "
            "seed, and each seed's point is chosen on the other seeds by the same rule for every method (lowest mean "
            "D at utility >= the floor) and reported on it (rows with `selection: crossfit`; attacks per seed at "
            "that seed's point)."
        },
    )
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
            "(relearning, int8 and int4 quantization; sgu_llm.evaluation.attacks), for every model seed, next to the same "
            "attacks on that seed's retain model. The run is repeated to get its weights (runs store none)."
        },
    )
    probe_splits: list = field(
        default_factory=list,
        metadata={
            "help": "Splits where the reported SGU-family row (`probe_method`) is repeated on every model seed and probed: "
            "SAE features (the probe fields in `base`: sae_hook_name, sae_expansion, ...) from the target to the "
            "holdout-selected epoch, and the causal check on the target (clamp factors causal_scales against "
            "causal_random_draws matched random sets; sgu_llm.probe)."
        },
    )
    probe_method: str | None = field(
        default=None,
        metadata={
            "help": "The method the probe stage probes at its reported point; None: the `sgu`-family method whose "
            "reported row (holdout selection) meets the utility floor with the best mean log10 forget quality."
        },
    )
    results_json: str | None = field(
        default=None,
        metadata={
            "help": "Also write the rows into this results.json in place of this model's rows (e.g. docs/results.json, "
            "which holds every model's rows); results_dir keeps its own."
        },
    )
    trial_cpus: float = field(
        default=1,
        metadata={"help": "CPU cores each trial asks Ray for (--backend ray; Ray sets the trial's OMP_NUM_THREADS to it)."},
    )
    trial_gpus: float = field(
        default=0,
        metadata={
            "help": "GPUs each trial asks Ray for (--backend ray): 1 runs one trial per GPU, 0.5 two trials on each GPU, "
            "8 one trial over 8 GPUs (with trial_processes: 8)."
        },
    )
    trial_processes: int = field(
        default=1,
        metadata={
            "help": "Above 1: each unlearning run is an `accelerate launch --num_processes N` job (data-parallel over the "
            "devices the trial was given); the fine-tunings, baselines and attacks stay single-process."
        },
    )
    accelerate_config: str | None = field(
        default=None,
        metadata={"help": "accelerate config file for trial_processes > 1, e.g. recipes/accelerate/ddp.yaml."},
    )
    max_retries: int = field(
        default=2,
        metadata={
            "help": "How many times a trial whose worker died (killed, out of memory, node lost) is run again "
            "(--backend ray). A trial that raises fails the sweep at once."
        },
    )

    def __post_init__(self):
        if self.trial_cpus < 0 or self.trial_gpus < 0 or (self.trial_cpus == 0 and self.trial_gpus == 0):
            raise ValueError(
                f"trial_cpus ({self.trial_cpus}) and trial_gpus ({self.trial_gpus}) must be >= 0 and not both 0"
            )
        if self.trial_processes < 1 or self.max_retries < 0:
            raise ValueError(
                f"trial_processes must be >= 1 (got {self.trial_processes}) and max_retries >= 0 (got {self.max_retries})"
            )
        if self.selection not in ("tune_seeds", "crossfit"):
            raise ValueError(f"selection must be tune_seeds or crossfit, got {self.selection!r}")
        if self.selection == "crossfit" and self.tune_seeds:
            raise ValueError(
                "selection: crossfit runs every point on every seed and chooses on the other seeds; remove tune_seeds "
                f"({self.tune_seeds}) or use selection: tune_seeds"
            )
        if not self.methods or not self.learning_rates or not self.splits:
            raise ValueError("a sweep needs methods, learning_rates and splits")
        for name, fields_ in self.methods.items():
            if not isinstance(fields_, dict) or "method" not in fields_:
                raise ValueError(f"sweep method {name!r} must be a mapping with at least a `method` key")
            unknown = set(fields_.get("splits", [])) - set(self.splits)
            if unknown:
                raise ValueError(f"sweep method {name!r}: splits {sorted(unknown)} are not in splits {sorted(self.splits)}")
            rates = fields_.get("learning_rates", self.learning_rates)
            if not isinstance(rates, list) or not rates:
                raise ValueError(f"sweep method {name!r}: learning_rates must be a non-empty list, got {rates!r}")
            grid = fields_.get("grid", {})
            if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
                raise ValueError(f"sweep method {name!r}: grid must map config fields to non-empty lists of values")
        if self.probe_method is not None and self.probe_method not in self.methods:
            raise ValueError(f"probe_method {self.probe_method!r} is not one of the sweep's methods {sorted(self.methods)}")
        for name in ("best_only_splits", "attack_splits", "probe_splits"):
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


SWEEP_KEYS = ("grid", "splits", "learning_rates")  # keys of a sweep method that are not recipe fields


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
    """The learning rates (the method's own, else the sweep's) times the method's grid (no grid: the learning rates
    alone)."""
    grid = cfg.methods[method].get("grid", {})
    settings = [tuple(sorted(zip(grid, values))) for values in itertools.product(*grid.values())]
    rates = cfg.methods[method].get("learning_rates", cfg.learning_rates)
    return [(float(lr), setting) for lr in rates for setting in settings]


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


def probe_path(cfg: SweepConfig, split: str, seed: int, method: str, point: Point) -> str:
    """The probe and causal check of one run (`Sweep.probe`)."""
    return os.path.join(cfg.output_dir, split, f"seed{seed}", method, f"probe-{point_name(point)}.json")


def method_fields(cfg: SweepConfig, method: str, setting: tuple = ()) -> dict:
    """The recipe fields of a method at one grid setting."""
    fields_ = {k: v for k, v in cfg.methods[method].items() if k not in SWEEP_KEYS}
    return {**fields_, **dict(setting)}
