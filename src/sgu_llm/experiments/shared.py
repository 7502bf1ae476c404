"""What the experiments share: the data and model a recipe names, evaluation settings and the cached
evaluation, and the one place a trainer is built."""

from __future__ import annotations

import copy
import json
from typing import Any

import torch

from sgu_llm.core.cache import cached_json, fingerprint
from sgu_llm.data.benchmark import load_benchmark_data, unlearning_retain_set
from sgu_llm.data.tofu import check_disjoint, load_tofu
from sgu_llm.evaluation import evaluate_model
from sgu_llm.models.benchmark import benchmark_models
from sgu_llm.models.pretrained import is_benchmark_model, load_pretrained
from sgu_llm.models.saved import load_saved_model
from sgu_llm.objectives import get_objective
from sgu_llm.trainers import get_method

EVAL_CACHE_FORMAT = 2  # bump when evaluate_model's numbers change (2: forget_tr_mean, forget_outrank)


def trains_here(model_args: Any, bench: Any) -> bool:
    """Whether the target is made here (the tiny benchmark model, or `finetune_base`) rather than loaded."""
    return is_benchmark_model(model_args.model_name_or_path) or bench.finetune_base


def needs_holdout(config: Any) -> bool:
    """Whether the method reads holdout rows (the stopping rule, the calibrated objective, the row gate)."""
    forget_loss = getattr(config, "forget_loss", None)
    objective_reads = bool(forget_loss and get_objective(forget_loss).needs_holdout)
    return bool(config.stop_on_holdout or objective_reads or getattr(config, "row_gate", False))


def unlearning_data(script: Any, model_args: Any, bench: Any, config: Any) -> dict[str, Any]:
    """The sets `sgu-llm unlearn` needs: every benchmark split when the target is made here (it fine-tunes on
    them first), else the forget and retain splits, the general sets with `retain_general`, the holdout split
    when the method reads one, and the perturbed forget split the stopping rule's truth ratios read."""
    if trains_here(model_args, bench):
        return load_benchmark_data(script)
    kw = script.synthetic_kwargs()
    data = {
        "forget": load_tofu(script.forget_split, source=script.forget_file or script.dataset_name, **kw),
        "retain": load_tofu(script.retain_split, source=script.retain_file or script.dataset_name, **kw),
    }
    if script.retain_general:
        for key, config_name in (("real_authors", "real_authors_perturbed"), ("world_facts", "world_facts_perturbed")):
            data[key] = load_tofu(config_name, source=script.dataset_name, **kw)
    if needs_holdout(config):
        if not script.holdout_split:
            raise ValueError("this method reads holdout rows: set holdout_split (rows of the same kind no model trained on)")
        data["holdout"] = load_tofu(script.holdout_split, source=script.dataset_name, **kw)
    if config.stop_on_holdout and config.stop_metric == "truth_ratio":
        data["forget_perturbed"] = load_tofu(f"{script.forget_split}_perturbed", source=script.dataset_name, **kw)
    check_disjoint(data["forget"], data["retain"])
    return data


def load_model_and_tokenizer(
    model_args: Any, data: dict[str, Any] | None, bench: Any, prompt_format: str = "phi"
) -> tuple[Any, Any]:
    """The model to unlearn and its tokenizer: the benchmark's cached target for `builtin:tiny-llama` (or, with
    `bench.finetune_base`, the base model fine-tuned on the benchmark's data), else the pretrained model."""
    if data is not None and trains_here(model_args, bench):
        tokenizer, models, _ = benchmark_models(data, bench, roles=("target",), prompt_format=prompt_format, base=model_args)
        return models["target"], tokenizer
    dtype = model_args.dtype if model_args.dtype == "auto" else getattr(torch, model_args.dtype)
    return load_pretrained(
        model_args.model_name_or_path,
        model_args.gguf_file,
        dtype=dtype,
        trust_remote_code=model_args.trust_remote_code,
        cache_dir=bench.cache_dir if bench is not None else None,
        tokenizer_name_or_path=model_args.tokenizer_name_or_path,
    )


def load_models(data: dict, model_args: Any, bench: Any, evaluation: Any, config: Any) -> tuple[Any, dict, dict, dict]:
    """(tokenizer, models by role, fine-tuning metadata by role, evaluations given as files).

    The benchmark's own models (tiny or fine-tuned from a base model, cached or shipped), or a Hub/local target
    with a retain model (or its saved evaluation) and optionally a noise-floor model.
    """
    if trains_here(model_args, bench):
        tokenizer, models, metas = benchmark_models(data, bench, prompt_format=config.prompt_format, base=model_args)
        return tokenizer, models, metas, {}
    model, tokenizer = load_model_and_tokenizer(model_args, None, bench, config.prompt_format)
    models, given = {"target": model}, {}
    if evaluation.retain_eval_file:
        with open(evaluation.retain_eval_file) as fh:
            given["retain"] = json.load(fh)
    elif evaluation.retain_model_name_or_path:
        models["retain"] = load_saved_model(evaluation.retain_model_name_or_path, model_args.trust_remote_code)[0]
    else:
        raise ValueError(
            "with a Hub or local target model, give retain_model_name_or_path or retain_eval_file: "
            "forget quality compares against a model never trained on the forget set"
        )
    if evaluation.noise_floor_model_name_or_path:
        models["noise_floor"] = load_saved_model(evaluation.noise_floor_model_name_or_path, model_args.trust_remote_code)[0]
    return tokenizer, models, {}, given


def eval_kwargs(config: Any, evaluation: Any) -> dict[str, Any]:
    """`evaluate_model` keyword arguments of a run: prompt format, batch size, generation length."""
    return dict(
        prompt_format=config.prompt_format,
        system_prompt=config.system_prompt,
        batch_size=evaluation.eval_batch_size,
        max_new_tokens=evaluation.max_new_tokens,
    )


def evaluate_cached(
    model: Any,
    tokenizer: Any,
    sets: dict[str, Any],
    kw: dict[str, Any],
    cache_dir: str,
    model_key: str | None,
    reference: dict | None = None,
    reference_key: str | None = None,
) -> dict[str, Any]:
    """`evaluate_model`, cached beside the benchmark's models when the model has a cache key.

    The key covers the model, the reference model, every evaluation row and the evaluation settings,
    so a run whose models are cached skips re-evaluating them (on a pretrained model that is most of
    a run's time).
    """

    def compute() -> dict[str, Any]:
        return evaluate_model(model, tokenizer, sets, reference=reference, **kw)

    if model_key is None or (reference is not None and reference_key is None):
        return compute()
    material = {
        "format": EVAL_CACHE_FORMAT,
        "model": model_key,
        "reference": reference_key,
        "sets": {name: fingerprint(ds.to_list()) for name, ds in sorted(sets.items())},
        "kw": kw,
    }
    return cached_json(cache_dir, "evals", material, compute, "eval.json")


def evaluate_baselines(
    models: dict, tokenizer: Any, sets: dict, kw: dict, cache_dir: str, metas: dict, given: dict
) -> dict[str, dict]:
    """The retain model first (the reference of forget quality), then the target and the noise floor."""
    key = {role: metas.get(role, {}).get("key") for role in ("target", "retain", "noise_floor")}
    evals = dict(given)
    if "retain" not in evals:
        evals["retain"] = evaluate_cached(models["retain"], tokenizer, sets, kw, cache_dir, key["retain"])
    for role in ("target", "noise_floor"):
        if role in models:
            evals[role] = evaluate_cached(
                models[role], tokenizer, sets, kw, cache_dir, key[role], evals["retain"], key["retain"]
            )
    return evals


def make_trainer(
    method: str,
    model: Any,
    config: Any,
    data: dict,
    tokenizer: Any,
    *,
    retain_general: bool = False,
    peft_config: Any = None,
    callbacks: list | None = None,
    copy_model: bool = True,
    task: str = "causal_lm",
) -> Any:
    """The method's trainer on (a copy of) `model`: forget and retain sets from `data` (the retain split, plus
    the general sets with `retain_general`), the holdout rows and the perturbed forget set where `data` has
    them (the stopping rule and the calibrated objective read them; objectives see question/answer only)."""
    _, trainer_cls = get_method(method)
    return trainer_cls(
        copy.deepcopy(model) if copy_model else model,
        config,
        forget_dataset=data["forget"],
        retain_dataset=unlearning_retain_set(data, retain_general),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks or None,
        holdout_dataset=data.get("holdout"),
        forget_eval_dataset=data.get("forget_perturbed"),
        task=task,
    )
