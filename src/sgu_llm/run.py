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


EVAL_CACHE_FORMAT = 1  # bump when evaluate_model's numbers change


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
    from sgu_llm.benchmark import fingerprint
    from sgu_llm.evaluation import evaluate_model
    from sgu_llm.files import atomic_dir

    if model_key is None or (reference is not None and reference_key is None):
        return evaluate_model(model, tokenizer, sets, reference=reference, **kw)
    key = fingerprint(
        {
            "format": EVAL_CACHE_FORMAT,
            "model": model_key,
            "reference": reference_key,
            "sets": {name: fingerprint(ds.to_list()) for name, ds in sorted(sets.items())},
            "kw": kw,
        }
    )
    folder = os.path.join(cache_dir, "evals", key[:16])
    path = os.path.join(folder, "eval.json")
    if os.path.exists(path):
        with open(path) as fh:
            return json.load(fh)
    result = evaluate_model(model, tokenizer, sets, reference=reference, **kw)

    def save(tmp: str) -> None:
        with open(os.path.join(tmp, "eval.json"), "w") as fh:
            json.dump(result, fh)

    atomic_dir(folder, save)
    return json.loads(json.dumps(result))  # the same floats a cached run reads back


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


def model_card(metrics: dict[str, Any], config: Any, script: Any) -> str:
    lines = [
        "---",
        "library_name: transformers",
        "tags: [unlearning, sgu-llm, " + metrics["method"] + "]",
        "---",
        f"# Unlearned with sgu-llm ({metrics['method']})",
        "",
        f"Forget set `{script.forget_split}`, retain set `{script.retain_split}` from `{script.dataset_name}`.",
        "",
        "## Measured",
        "",
        "| metric | unlearned | target | retain model | noise floor |",
        "|---|---|---|---|---|",
    ]
    for key in ("forget_quality", "model_utility", "forget_prob", "retain_prob", "forget_rouge", "privleak"):
        cells = [(metrics[n] or {}).get(key) for n in ("unlearned", "target", "retain", "noise_floor")]
        lines.append(f"| {key} | " + " | ".join("–" if v is None else f"{v:.4g}" for v in cells) + " |")
    # TrainingArguments.to_dict() masks every *_token field; dataclasses.asdict would not.
    cfg = {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool, type(None)))}
    lines += [
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(cfg, indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


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
    from sgu_llm.benchmark import fingerprint
    from sgu_llm.data.pairing import prepare_qa_dataset
    from sgu_llm.files import atomic_dir
    from sgu_llm.probe import collect_activations, load_sae, sae_quality, save_sae, train_sae

    rows = prepare_qa_dataset(train_set, tokenizer, "SAE", prompt_format=prompt_format).to_list()
    acts, _ = collect_activations(target, rows, probe_args.sae_hook_name, tokenizer.pad_token_id)
    if probe_args.sae_path:
        sae = load_sae(probe_args.sae_path, probe_args.sae_id)
    else:
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
        if not os.path.exists(os.path.join(path, "cfg.json")):
            sae = train_sae(
                acts,
                expansion=probe_args.sae_expansion,
                l1_coefficient=probe_args.sae_l1_coefficient,
                epochs=probe_args.sae_epochs,
                hook_name=probe_args.sae_hook_name,
            )
            atomic_dir(path, lambda folder: save_sae(sae, folder))
        sae = load_sae(path)  # through sae-lens' own loader, as a published SAE would be
    sae.eval()
    return sae, sae_quality(sae, acts)


def probe_report(
    callback: Any, target: Any, tokenizer: Any, trainer: Any, probe_args: Any, quality: dict, step_eval: Any
) -> dict[str, Any]:
    """The probe's JSON: features with states and per-step statistics, SGU actions, cost and the causal check."""
    from sgu_llm.probe import causal_check
    from sgu_llm.probe.hooks import resolve_hook

    probe = callback.probe
    out = probe.to_json()
    states = {f["feature"]: f["state"] for f in out["features"]}
    for f in out["features"]:
        if f["state"] in ("pruned", "reversed"):
            f["contexts"] = probe.top_contexts(f["feature"])
    other = probe.seconds + (step_eval.seconds if step_eval else 0.0)
    without = max(callback.train_seconds - other, 1e-9)
    # The features unlearning switched off on the forget set: pruned, and reversed (pushed past zero).
    pruned = [f for f, s in states.items() if s in ("pruned", "reversed")]
    start = probe.history[0]
    freq = (start["forget"].freq + start["retain"].freq) / 2
    pairs = trainer.train_dataset
    causal = causal_check(
        target,
        probe.sae,
        probe.hook_name,
        tokenizer.pad_token_id,
        pairs.forget.to_list(),
        pairs.retain.select(range(min(100, len(pairs.retain)))).to_list(),
        pruned,
        freq,
        exclude=out["selected"],
        draws=probe_args.causal_random_draws,
        scales=tuple(probe_args.causal_scales),
    )
    out.update(
        {
            "hf_module": resolve_hook(target, probe.hook_name)[2],
            "sae_quality": quality,
            "actions": callback.actions,
            "unlearn_seconds_without_probe": without,
            "probe_share": probe.seconds / without,
            "causal": causal,
            "causal_random_draws": probe_args.causal_random_draws,
        }
    )
    return out


def base_model_knowledge(model_args: Any, bench: Any, world_facts: Any, kw: dict[str, Any]) -> list[bool]:
    """Which world facts the pretrained base model states before any fine-tuning (greedy answers)."""
    from sgu_llm.evaluation import metrics as M
    from sgu_llm.evaluation.suite import generate_answers
    from sgu_llm.pretrained import load_pretrained

    model, tokenizer = load_pretrained(
        model_args.model_name_or_path,
        model_args.gguf_file,
        dtype="float32",
        trust_remote_code=model_args.trust_remote_code,
        cache_dir=bench.cache_dir,
    )
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


def world_facts_known(evals: dict[str, dict], sets: dict[str, Any], base: list[bool] | None) -> dict[str, Any]:
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


def run_benchmark(
    script: Any, model_args: Any, bench: Any, config: Any, probe_args: Any = None
) -> dict[str, Any]:
    from sgu_llm.benchmark import benchmark_models, load_benchmark_data, unlearning_retain_set
    from sgu_llm.evaluation import evaluate_model
    from sgu_llm.files import write_json, write_text
    from sgu_llm.pretrained import is_benchmark_model
    from sgu_llm.report import build_report
    from sgu_llm.trainers import get_method
    from sgu_llm.trainers.base import resume_argument

    out = config.output_dir
    if os.path.exists(os.path.join(out, "metrics.json")) and not config.overwrite_output_dir:
        raise ValueError(
            f"{out!r} already holds a run (metrics.json); choose another --output_dir or pass "
            "--overwrite_output_dir true"
        )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = load_benchmark_data(script)
    sets = eval_sets(data)
    kw = eval_kwargs(config, bench)

    evals: dict[str, dict] = {}
    metas: dict[str, dict] = {}
    def key_of(role: str) -> str | None:
        """The cache key of a model the benchmark fine-tuned (None for models loaded as given)."""
        return metas.get(role, {}).get("key")

    if is_benchmark_model(model_args.model_name_or_path) or bench.finetune_base:
        tokenizer, models, metas = benchmark_models(
            data, bench, prompt_format=config.prompt_format, base=model_args
        )
        timings["models"] = time.perf_counter() - t0
        t = time.perf_counter()
        evals["retain"] = evaluate_cached(models["retain"], tokenizer, sets, kw, bench.cache_dir, key_of("retain"))
    else:
        # A fine-tuned Hub or local target; the reference comes from a retain model or its saved eval.
        from sgu_llm.unlearn import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(model_args, None, bench, config.prompt_format)
        models = {"target": model}
        if bench.retain_eval_file:
            with open(bench.retain_eval_file) as fh:
                evals["retain"] = json.load(fh)
        elif bench.retain_model_name_or_path:
            models["retain"] = _load(bench.retain_model_name_or_path, model_args)
        else:
            raise ValueError(
                "with a Hub or local target model, give retain_model_name_or_path or retain_eval_file: "
                "forget quality compares against a model never trained on the forget set"
            )
        if bench.noise_floor_model_name_or_path:
            models["noise_floor"] = _load(bench.noise_floor_model_name_or_path, model_args)
        timings["models"] = time.perf_counter() - t0
        t = time.perf_counter()
        if "retain" not in evals:
            evals["retain"] = evaluate_model(models["retain"], tokenizer, sets, **kw)
    ref = evals["retain"]
    for role in ("target", "noise_floor"):
        if role in models:
            evals[role] = evaluate_cached(
                models[role], tokenizer, sets, kw, bench.cache_dir, key_of(role), ref, key_of("retain")
            )
    timings["evaluate_baselines"] = time.perf_counter() - t

    _, trainer_cls = get_method(script.method)
    config.output_dir = os.path.join(out, "unlearned")
    config.overwrite_output_dir = True  # inside a run folder we already checked
    step_eval = StepEvalCallback(tokenizer, sets, ref, kw) if bench.eval_each_epoch else None
    trainer = trainer_cls(
        copy.deepcopy(models["target"]),
        config,
        forget_dataset=data["forget"],
        retain_dataset=unlearning_retain_set(data, script.retain_general),
        processing_class=tokenizer,
        peft_config=model_args.peft_config(),
        callbacks=[step_eval] if step_eval else None,
        holdout_dataset=data.get("holdout"),
        forget_eval_dataset=data["forget_perturbed"],
    )
    probe_cb = None
    if probe_args is not None and probe_args.probe:
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
            config.prompt_format,
        )
        timings["sae"] = time.perf_counter() - t
        pairs = trainer.train_dataset
        n = probe_args.probe_examples
        probe = SAEProbe(
            sae,
            probe_args.sae_hook_name,
            tokenizer,
            pairs.forget.select(range(min(n, len(pairs.forget)))).to_list(),
            pairs.retain.select(range(min(n, len(pairs.retain)))).to_list(),
            probe_args,
        )
        probe_cb = SAEProbeCallback(probe, probe_args.probe_every).attach(trainer)
    base_known = None
    if bench.finetune_base and not is_benchmark_model(model_args.model_name_or_path):
        t = time.perf_counter()
        base_known = base_model_knowledge(model_args, bench, sets["world_facts"], kw)
        timings["base_knowledge"] = time.perf_counter() - t
    t = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_argument(config))
    timings["unlearn"] = time.perf_counter() - t
    unlearned = trainer.accelerator.unwrap_model(trainer.model)
    probe_json = None
    if probe_cb is not None:
        probe_json = probe_report(
            probe_cb, models["target"], tokenizer, trainer, probe_args, quality, step_eval
        )
    t = time.perf_counter()
    evals["unlearned"] = evaluate_model(unlearned, tokenizer, sets, reference=ref, **kw)
    timings["evaluate_unlearned"] = time.perf_counter() - t
    attacks = None
    if bench.attacks and "retain" in models and trainer.is_world_process_zero():
        from sgu_llm.attacks import attack_report

        t = time.perf_counter()
        attacks = attack_report(
            {"unlearned": unlearned, "retain": models["retain"]},
            tokenizer,
            sets["forget"],
            ref["per_example"]["forget"]["truth_ratio"],
            kw,
            relearn_steps=bench.attack_relearn_steps,
            relearn_learning_rate=bench.attack_relearn_learning_rate,
            seed=config.seed,
        )
        timings["attacks"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    metrics = {
        "method": script.method,
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
        "world_facts_known": world_facts_known(evals, sets, base_known),
        "attacks": attacks,
        "timings": timings,
        "models": {
            k: {"train_seconds": m.get("train_seconds"), "final_accuracy": m.get("final_accuracy")}
            for k, m in metas.items()
        },
    }
    # Every rank saves: under FSDP or DeepSpeed the weights are gathered from all of them (rank 0 writes).
    trainer.save_unlearned_model(config.output_dir)
    if trainer.is_world_process_zero():
        for name, result in evals.items():
            write_json(os.path.join(out, "eval", f"{name}.json"), result, indent=None)
        write_text(os.path.join(config.output_dir, "README.md"), model_card(metrics, config, script))
        if probe_json is not None:
            write_json(os.path.join(out, "probe.json"), probe_json, indent=None)
        md, page = build_report(metrics, evals, metrics["steps"], trainer.state.log_history, probe_json)
        write_text(os.path.join(out, "report.md"), md)
        write_text(os.path.join(out, "report.html"), page)
        write_json(os.path.join(out, "metrics.json"), metrics, indent=2)  # last: its presence marks a finished run
    config.output_dir = out
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
