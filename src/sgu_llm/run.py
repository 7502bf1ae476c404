"""`sgu-llm run RECIPE.yaml --output_dir DIR`: the whole benchmark in one command.

Data -> tokenizer -> target, retain and noise-floor models (cached) -> unlearning
with the recipe's method -> evaluation of all four models -> `metrics.json`,
`eval/*.json`, `report.md`, `report.html` and the unlearned model with a model card.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from typing import Any

from transformers import TrainerCallback

from sgu_llm.cache import cached_json, fingerprint

EVAL_NAMES = ("target", "retain", "noise_floor", "unlearned")


def eval_sets(data: dict[str, Any]) -> dict[str, Any]:
    sets = {
        "forget": data["forget_perturbed"],
        "retain": data["retain_perturbed"],
        "real_authors": data["real_authors"],
        "world_facts": data["world_facts"],
    }
    if "holdout" in data:
        sets["holdout"] = data["holdout"]
    return sets


EVAL_CACHE_FORMAT = 2  # bump when evaluate_model's numbers change (2: forget_tr_mean, forget_outrank)


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
    from sgu_llm.evaluation import evaluate_model

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


def eval_kwargs(config: Any, bench: Any) -> dict[str, Any]:
    """`evaluate_model` keyword arguments of a run: prompt format, batch size, generation length."""
    return dict(
        prompt_format=config.prompt_format,
        system_prompt=config.system_prompt,
        batch_size=bench.eval_batch_size,
        max_new_tokens=bench.max_new_tokens,
    )


class StepEvalCallback(TrainerCallback):
    """Forget quality and probabilities at the start and after every epoch of unlearning (no generation)."""

    def __init__(self, tokenizer: Any, sets: dict[str, Any], reference: dict, eval_kwargs: dict):
        self.tokenizer, self.reference, self.kw = tokenizer, reference, eval_kwargs
        self.sets = {k: v for k, v in sets.items() if k != "holdout"}
        self.records: list[dict] = []
        self.seconds = 0.0

    def _record(self, state: Any, model: Any) -> None:
        from sgu_llm.evaluation import evaluate_model

        start = time.perf_counter()
        agg = evaluate_model(
            model, self.tokenizer, self.sets, reference=self.reference, generate=False, **self.kw
        )["aggregates"]
        self.records.append(
            {
                "step": state.global_step,
                "epoch": state.epoch or 0.0,
                **{k: agg[k] for k in ("forget_quality", "forget_prob", "retain_prob", "forget_truth_ratio")},
            }
        )
        self.seconds += time.perf_counter() - start

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            self._record(state, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            self._record(state, model)


def measured_table(metrics: dict[str, Any]) -> str:
    """The model card's numbers: the unlearned model next to the target, retain model and noise floor."""
    lines = ["| metric | unlearned | target | retain model | noise floor |", "|---|---|---|---|---|"]
    for key in ("forget_quality", "model_utility", "forget_prob", "retain_prob", "forget_rouge", "privleak"):
        cells = [(metrics[n] or {}).get(key) for n in ("unlearned", "target", "retain", "noise_floor")]
        lines.append(f"| {key} | " + " | ".join("–" if v is None else f"{v:.4g}" for v in cells) + " |")
    return "\n".join(lines)


def data_line(script: Any) -> str:
    return f"Forget set `{script.forget_split}`, retain set `{script.retain_split}` from `{script.dataset_name}`."


def model_card(metrics: dict[str, Any], config: Any, script: Any) -> str:
    """The card `sgu-llm run` writes beside the unlearned model (the trainer writes the same on save)."""
    from sgu_llm.card import build_card

    return build_card(metrics["method"], config, data=data_line(script), measured=measured_table(metrics))


def prepare_sae(
    target: Any,
    tokenizer: Any,
    train_set: Any,
    probe_args: Any,
    bench: Any,
    target_key: str,
    prompt_format: str,
) -> tuple[Any, dict[str, float]]:
    """The probe's SAE: a given sae-lens folder/release, or one trained on the target's activations (cached)."""
    from sgu_llm.data.pairing import prepare_qa_dataset
    from sgu_llm.files import atomic_dir, write_json
    from sgu_llm.probe import collect_activations, load_sae, sae_quality, save_sae, train_sae

    rows = prepare_qa_dataset(train_set, tokenizer, "SAE", prompt_format=prompt_format).to_list()

    def activations() -> Any:
        return collect_activations(target, rows, probe_args.sae_hook_name, tokenizer.pad_token_id)[0]

    if probe_args.sae_path:
        sae = load_sae(probe_args.sae_path, probe_args.sae_id).eval()
        return sae, sae_quality(sae, activations())
    key = fingerprint(
        {
            "target": target_key,
            "hook": probe_args.sae_hook_name,
            "expansion": probe_args.sae_expansion,
            "l1": probe_args.sae_l1_coefficient,
            "epochs": probe_args.sae_epochs,
            "format": 1,
        }
    )
    path = os.path.join(bench.cache_dir, "saes", key[:16])
    quality_file = os.path.join(path, "quality.json")
    if not os.path.exists(os.path.join(path, "cfg.json")):
        acts = activations()
        sae = train_sae(
            acts,
            expansion=probe_args.sae_expansion,
            l1_coefficient=probe_args.sae_l1_coefficient,
            epochs=probe_args.sae_epochs,
            hook_name=probe_args.sae_hook_name,
        ).eval()
        quality = sae_quality(sae, acts)

        def save(folder: str) -> None:
            save_sae(sae, folder)
            write_json(os.path.join(folder, "quality.json"), quality)

        atomic_dir(path, save)
    elif not os.path.exists(quality_file):  # cached before the quality was kept beside it
        write_json(quality_file, sae_quality(load_sae(path).eval(), activations()))
    with open(quality_file) as fh:
        quality = json.load(fh)
    # Loaded through sae-lens' own loader, as a published SAE would be; its quality is read from the cache
    # (measured on the target's activations when it was trained), so a cached run skips those forwards.
    return load_sae(path).eval(), quality


def largest_forget_drops(features: list[dict], k: int) -> list[int]:
    """The `k` probed features whose mean forget activation fell most, relative to its start (drops only)."""
    drops = []
    for f in features:
        first, last = f["steps"][0]["forget_mean_act"], f["steps"][-1]["forget_mean_act"]
        if first > 0 and last < first:
            drops.append(((first - last) / first, f["feature"]))
    return [feature for _, feature in sorted(drops, reverse=True)[:k]]


def probe_report(
    probe: Any,
    target: Any,
    tokenizer: Any,
    forget_rows: list[dict],
    retain_rows: list[dict],
    probe_args: Any,
    quality: dict,
    *,
    actions: list | None = None,
    train_seconds: float | None = None,
    other_seconds: float = 0.0,
) -> dict[str, Any]:
    """The probe's JSON (`sgu-llm run` and `sgu-llm probe`): feature states and per-step statistics, the top
    contexts of the removed features, SGU actions, the probe's cost and the causal check on the target."""
    from sgu_llm.probe import causal_check
    from sgu_llm.probe.hooks import resolve_hook

    out = probe.to_json()
    for f in out["features"]:
        if f["state"] in ("pruned", "reversed"):
            f["contexts"] = probe.top_contexts(f["feature"])
    # The features unlearning switched off on the forget set: pruned, and reversed (pushed past zero). When
    # none reached those states, the check clamps the features whose forget activation fell most instead
    # (and says so): the effect of what unlearning reduced, not of what it removed.
    removed = [f["feature"] for f in out["features"] if f["state"] in ("pruned", "reversed")]
    clamped_from = "removed"
    if not removed:
        removed, clamped_from = largest_forget_drops(out["features"], probe_args.causal_fallback_features), "largest_drop"
    start = probe.history[0]
    causal = causal_check(
        target,
        probe.sae,
        probe.hook_name,
        tokenizer.pad_token_id,
        forget_rows,
        retain_rows,
        removed,
        (start["forget"].freq + start["retain"].freq) / 2,
        exclude=out["selected"],
        draws=probe_args.causal_random_draws,
        scales=tuple(probe_args.causal_scales),
    )
    without = (
        float("nan") if train_seconds is None else max(train_seconds - probe.seconds - other_seconds, 1e-9)
    )
    out.update(
        {
            "hf_module": resolve_hook(target, probe.hook_name)[2],
            "sae_quality": quality,
            "actions": actions or [],
            "unlearn_seconds_without_probe": without,
            "probe_share": probe.seconds / without,
            "causal": {**causal, "clamped_from": clamped_from},
            "causal_random_draws": probe_args.causal_random_draws,
        }
    )
    return out


def base_model_knowledge(model_args: Any, bench: Any, world_facts: Any, kw: dict[str, Any]) -> list[bool]:
    """Which world facts the pretrained base model states before any fine-tuning (greedy answers)."""
    from sgu_llm.benchmark import load_base
    from sgu_llm.evaluation import metrics as M
    from sgu_llm.evaluation.suite import generate_answers

    model, tokenizer = load_base(model_args, bench.cache_dir)
    model.eval()
    gens = generate_answers(
        model,
        tokenizer,
        world_facts["question"],
        prompt_format=kw["prompt_format"],
        system_prompt=kw["system_prompt"],
        max_new_tokens=kw["max_new_tokens"],
        batch_size=kw["batch_size"],
    )
    return M.answer_known(gens, world_facts["answer"]).tolist()


def world_facts_known(
    evals: dict[str, dict], sets: dict[str, Any], base: list[bool] | None
) -> dict[str, Any]:
    """Per model, how many world facts its greedy answer states (from the evaluations' generations)."""
    from sgu_llm.evaluation import metrics as M

    answers = sets["world_facts"]["answer"]
    out: dict[str, Any] = {"of": len(answers)}
    if base is not None:
        out["base"] = int(sum(base))
    for name, result in evals.items():
        gens = result["per_example"]["world_facts"].get("generation")
        if gens is not None:
            out[name] = int(M.answer_known(gens, answers).sum())
    return out


def _load(path: str, model_args: Any) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=model_args.trust_remote_code)


def check_run_folder(out: str, config: Any) -> None:
    if os.path.exists(os.path.join(out, "metrics.json")) and not config.overwrite_output_dir:
        raise ValueError(
            f"{out!r} already holds a run (metrics.json); choose another --output_dir or pass "
            "--overwrite_output_dir true"
        )


def load_models(data: dict, model_args: Any, bench: Any, config: Any) -> tuple[Any, dict, dict, dict]:
    """(tokenizer, models by role, fine-tuning metadata by role, evaluations given as files).

    The benchmark's own models (tiny or fine-tuned from a base model, cached), or a Hub/local target with a
    retain model (or its saved evaluation) and optionally a noise-floor model.
    """
    from sgu_llm.benchmark import benchmark_models
    from sgu_llm.pretrained import is_benchmark_model

    if is_benchmark_model(model_args.model_name_or_path) or bench.finetune_base:
        tokenizer, models, metas = benchmark_models(
            data, bench, prompt_format=config.prompt_format, base=model_args
        )
        return tokenizer, models, metas, {}
    from sgu_llm.unlearn import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_args, None, bench, config.prompt_format)
    models, given = {"target": model}, {}
    if bench.retain_eval_file:
        with open(bench.retain_eval_file) as fh:
            given["retain"] = json.load(fh)
    elif bench.retain_model_name_or_path:
        models["retain"] = _load(bench.retain_model_name_or_path, model_args)
    else:
        raise ValueError(
            "with a Hub or local target model, give retain_model_name_or_path or retain_eval_file: "
            "forget quality compares against a model never trained on the forget set"
        )
    if bench.noise_floor_model_name_or_path:
        models["noise_floor"] = _load(bench.noise_floor_model_name_or_path, model_args)
    return tokenizer, models, {}, given


def evaluate_baselines(
    models: dict, tokenizer: Any, sets: dict, kw: dict, bench: Any, metas: dict, given: dict
) -> dict[str, dict]:
    """The retain model first (the reference of forget quality), then the target and the noise floor."""
    key = {role: metas.get(role, {}).get("key") for role in ("target", "retain", "noise_floor")}
    evals = dict(given)
    if "retain" not in evals:
        evals["retain"] = evaluate_cached(
            models["retain"], tokenizer, sets, kw, bench.cache_dir, key["retain"]
        )
    for role in ("target", "noise_floor"):
        if role in models:
            evals[role] = evaluate_cached(
                models[role], tokenizer, sets, kw, bench.cache_dir, key[role], evals["retain"], key["retain"]
            )
    return evals


def make_trainer(
    script: Any,
    model_args: Any,
    bench: Any,
    config: Any,
    data: dict,
    models: dict,
    tokenizer: Any,
    callbacks: list,
) -> Any:
    """The method's trainer on a copy of the target, writing into `<output_dir>/unlearned` (a copy of config)."""
    from sgu_llm.benchmark import unlearning_retain_set
    from sgu_llm.trainers import get_method

    _, trainer_cls = get_method(script.method)
    args = copy.copy(config)  # the caller's config keeps its output_dir
    args.output_dir = os.path.join(config.output_dir, "unlearned")
    args.overwrite_output_dir = True  # inside a run folder the caller checked
    return trainer_cls(
        copy.deepcopy(models["target"]),
        args,
        forget_dataset=data["forget"],
        retain_dataset=unlearning_retain_set(data, script.retain_general),
        processing_class=tokenizer,
        peft_config=model_args.peft_config(),
        callbacks=callbacks or None,
        holdout_dataset=data.get("holdout"),
        forget_eval_dataset=data["forget_perturbed"],
    )


def attach_probe(
    trainer: Any,
    models: dict,
    tokenizer: Any,
    data: dict,
    metas: dict,
    model_args: Any,
    bench: Any,
    probe_args: Any,
    prompt_format: str,
) -> tuple[Any, dict, float]:
    """Train (or load) the SAE on the target's activations and attach the probe: (callback, quality, seconds)."""
    from sgu_llm.benchmark import training_sets
    from sgu_llm.probe import SAEProbe, SAEProbeCallback

    t = time.perf_counter()
    target_key = metas.get("target", {}).get("key", model_args.model_name_or_path)
    sae, quality = prepare_sae(
        models["target"],
        tokenizer,
        training_sets(data)["target"],
        probe_args,
        bench,
        target_key,
        prompt_format,
    )
    seconds = time.perf_counter() - t
    pairs, n = trainer.train_dataset, probe_args.probe_examples
    probe = SAEProbe(
        sae,
        probe_args.sae_hook_name,
        tokenizer,
        pairs.forget.select(range(min(n, len(pairs.forget)))).to_list(),
        pairs.retain.select(range(min(n, len(pairs.retain)))).to_list(),
        probe_args,
    )
    return SAEProbeCallback(probe, probe_args.probe_every).attach(trainer), quality, seconds


def run_attacks(
    unlearned: Any, models: dict, tokenizer: Any, sets: dict, ref: dict, kw: dict, bench: Any, seed: int,
    retain_key: str | None,
) -> dict | None:
    """Relearning and quantization on the unlearned model and on the retain model (cached when it has a key)."""
    from sgu_llm.attacks import attack_report

    if not bench.attacks or "retain" not in models:
        return None

    def attack(name: str, model: Any) -> dict:
        return attack_report(
            {name: model},
            tokenizer,
            sets["forget"],
            ref["per_example"]["forget"]["truth_ratio"],
            kw,
            relearn_steps=bench.attack_relearn_steps,
            relearn_learning_rate=bench.attack_relearn_learning_rate,
            seed=seed,
        )

    report = attack("unlearned", unlearned)
    if retain_key is None:
        retain = attack("retain", models["retain"])
    else:
        material = {
            "model": retain_key,
            "forget": fingerprint(sets["forget"].to_list()),
            "kw": kw,
            "relearn": [bench.attack_relearn_steps, bench.attack_relearn_learning_rate, seed],
        }
        retain = cached_json(bench.cache_dir, "attacks", material, lambda: attack("retain", models["retain"]))
    report["models"]["retain"] = retain["models"]["retain"]
    return report


def collect_metrics(
    method: str,
    evals: dict,
    step_eval: Any,
    probe_json: dict | None,
    world: dict,
    attacks: dict | None,
    timings: dict,
    metas: dict,
) -> dict[str, Any]:
    return {
        "method": method,
        "forget_quality": evals["unlearned"]["aggregates"]["forget_quality"],
        "model_utility": evals["unlearned"]["aggregates"]["model_utility"],
        "noise_floor_forget_quality": evals["noise_floor"]["aggregates"]["forget_quality"]
        if "noise_floor" in evals
        else None,
        **{name: evals[name]["aggregates"] if name in evals else None for name in EVAL_NAMES},
        "steps": step_eval.records if step_eval else [],
        "probe": {k: probe_json[k] for k in ("sae_quality", "probe_share", "state_counts", "causal")}
        if probe_json
        else None,
        "world_facts_known": world,
        "attacks": attacks,
        "timings": timings,
        "models": {
            k: {"train_seconds": m.get("train_seconds"), "final_accuracy": m.get("final_accuracy")}
            for k, m in metas.items()
        },
    }


def write_outputs(
    out: str, trainer: Any, metrics: dict, evals: dict, probe_json: dict | None, script: Any
) -> None:
    """The unlearned model and its card (every rank: FSDP/DeepSpeed gather), then rank 0's files; metrics last."""
    from sgu_llm.files import write_json, write_text
    from sgu_llm.report import build_report

    trainer.card_measured, trainer.card_data = measured_table(metrics), data_line(script)
    trainer.save_unlearned_model(trainer.args.output_dir)
    if not trainer.is_world_process_zero():
        return
    for name, result in evals.items():
        write_json(os.path.join(out, "eval", f"{name}.json"), result, indent=None)
    if probe_json is not None:
        write_json(os.path.join(out, "probe.json"), probe_json, indent=None)
    md, page = build_report(metrics, evals, metrics["steps"], trainer.state.log_history, probe_json)
    write_text(os.path.join(out, "report.md"), md)
    write_text(os.path.join(out, "report.html"), page)
    write_json(
        os.path.join(out, "metrics.json"), metrics, indent=2
    )  # last: its presence marks a finished run


def run_benchmark(
    script: Any, model_args: Any, bench: Any, config: Any, probe_args: Any = None
) -> dict[str, Any]:
    """Data, models, baseline evaluations, unlearning (with the probe), evaluation, attacks, files."""
    from sgu_llm.benchmark import load_benchmark_data
    from sgu_llm.evaluation import evaluate_model
    from sgu_llm.pretrained import is_benchmark_model
    from sgu_llm.trainers.base import resume_argument

    out = config.output_dir
    check_run_folder(out, config)
    timings: dict[str, float] = {}
    t0 = t = time.perf_counter()
    data = load_benchmark_data(script)
    sets, kw = eval_sets(data), eval_kwargs(config, bench)
    tokenizer, models, metas, given = load_models(data, model_args, bench, config)
    timings["models"] = time.perf_counter() - t
    t = time.perf_counter()
    evals = evaluate_baselines(models, tokenizer, sets, kw, bench, metas, given)
    ref = evals["retain"]
    timings["evaluate_baselines"] = time.perf_counter() - t

    step_eval = StepEvalCallback(tokenizer, sets, ref, kw) if bench.eval_each_epoch else None
    trainer = make_trainer(
        script, model_args, bench, config, data, models, tokenizer, [step_eval] if step_eval else []
    )
    probe_cb = None
    if probe_args is not None and probe_args.probe:
        probe_cb, quality, timings["sae"] = attach_probe(
            trainer, models, tokenizer, data, metas, model_args, bench, probe_args, config.prompt_format
        )
    base_known = None
    if bench.finetune_base and not is_benchmark_model(model_args.model_name_or_path):
        t = time.perf_counter()
        base_known = base_model_knowledge(model_args, bench, sets["world_facts"], kw)
        timings["base_knowledge"] = time.perf_counter() - t
    t = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_argument(trainer.args))
    timings["unlearn"] = time.perf_counter() - t
    unlearned = trainer.accelerator.unwrap_model(trainer.model)
    probe_json = None
    if probe_cb is not None and trainer.is_world_process_zero():  # the probe measures on rank 0 (a full copy)
        t = time.perf_counter()
        pairs = trainer.train_dataset
        probe_json = probe_report(
            probe_cb.probe,
            models["target"],
            tokenizer,
            pairs.forget.to_list(),
            pairs.retain.select(range(min(100, len(pairs.retain)))).to_list(),
            probe_args,
            quality,
            actions=probe_cb.actions,
            train_seconds=probe_cb.train_seconds,
            other_seconds=step_eval.seconds if step_eval else 0.0,
        )
        timings["probe_report"] = time.perf_counter() - t
    t = time.perf_counter()
    evals["unlearned"] = evaluate_model(unlearned, tokenizer, sets, reference=ref, **kw)
    timings["evaluate_unlearned"] = time.perf_counter() - t
    attacks = None
    if trainer.is_world_process_zero():
        t = time.perf_counter()
        attacks = run_attacks(
            unlearned, models, tokenizer, sets, ref, kw, bench, config.seed, metas.get("retain", {}).get("key")
        )
        if attacks is not None and bench.sweep_results:
            from sgu_llm.sweep import sweep_attacks

            model_name = model_args.model_name_or_path.split(":", 1)[-1].rstrip("/").split("/")[-1]
            attacks["sweep"] = sweep_attacks(bench.sweep_results, model_name, script.forget_split)
        timings["attacks"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    world = world_facts_known(evals, sets, base_known)
    metrics = collect_metrics(script.method, evals, step_eval, probe_json, world, attacks, timings, metas)
    stops = [h for h in trainer.state.log_history if "stop/epoch" in h]  # the holdout rule's chosen epoch
    metrics["stop"] = {k.split("/")[1]: v for k, v in stops[-1].items()} if stops else None
    write_outputs(out, trainer, metrics, evals, probe_json, script)
    # Destroy the process group under torchrun/accelerate: a live gloo group can abort a rank at exit.
    trainer.accelerator.end_training()
    return metrics


def main(argv: list[str] | None = None) -> int:
    from sgu_llm.unlearn import parse_args

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--config", argv[0], *argv[1:]]  # `sgu-llm run RECIPE.yaml ...`
    try:
        script, model_args, bench, probe_args, config = parse_args(argv)
        metrics = run_benchmark(script, model_args, bench, config, probe_args)
    except ValueError as err:
        if os.environ.get("SGU_LLM_DEBUG"):
            raise
        print(f"sgu-llm run: error: {err}", file=sys.stderr)
        return 2
    from sgu_llm.report import _fmt

    print(
        f"[{metrics['method']}] forget quality {_fmt(metrics['forget_quality'])} "
        f"(target {_fmt(metrics['target']['forget_quality'])}, noise floor {_fmt(metrics['noise_floor_forget_quality'])}) | "
        f"model utility {_fmt(metrics['model_utility'])} (target {_fmt(metrics['target']['model_utility'])}) | "
        f"{metrics['timings']['total']:.0f} s | {config.output_dir}/report.html"
    )
    probe = metrics.get("probe")
    if probe:
        c = probe["causal"]
        print(
            f"[probe] SAE explained variance {probe['sae_quality']['explained_variance']:.3f}; probe cost "
            f"{100 * probe['probe_share']:.1f} % of unlearning; final states {probe['state_counts'][-1]}"
        )
        if c.get("n_features"):
            print(
                f"[probe] causal check, {c['n_features']} removed features clamped on the target: forget prob drop "
                f"{c['clamped_forget_drop']:.4g} (matched random {c['random_forget_drop']:.4g}), forget NLL rise "
                f"{c['clamped_forget_nll_rise']:.4g} (random {c['random_forget_nll_rise']:.4g})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
