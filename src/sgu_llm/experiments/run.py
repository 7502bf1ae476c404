"""`sgu-llm run RECIPE.yaml --output_dir DIR`: the whole benchmark in one command.

Data -> tokenizer -> target, retain and noise-floor models (cached or shipped) -> unlearning with the recipe's
method -> evaluation of all four models -> `metrics.json`, `eval/*.json`, `report.md`, `report.html` and the
unlearned model with a model card.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from dataclasses import dataclass, field, fields
from typing import Any

from sgu_llm.core.cache import cached_json, fingerprint, weights_fingerprint
from sgu_llm.core.files import write_json, write_text
from sgu_llm.core.formatting import fmt
from sgu_llm.data.benchmark import eval_sets, load_benchmark_data
from sgu_llm.evaluation import evaluate_model
from sgu_llm.evaluation import metrics as M
from sgu_llm.evaluation.attacks import attack_report
from sgu_llm.evaluation.suite import generate_answers
from sgu_llm.experiments.config import Recipe, parse_args
from sgu_llm.experiments.probing import attach_probe, merged, probe_evidence, probe_report
from sgu_llm.experiments.shared import eval_kwargs, evaluate_baselines, load_models, make_trainer
from sgu_llm.models.benchmark import benchmark_models, load_base
from sgu_llm.models.pretrained import is_benchmark_model
from sgu_llm.report.run_report import build_report
from sgu_llm.report.tables import sweep_attack_rows, sweep_noise_band
from sgu_llm.trainers import get_method
from sgu_llm.trainers.callbacks import EpochEvaluation
from sgu_llm.trainers.card import build_card
from sgu_llm.trainers.outputs import resume_argument

EVAL_NAMES = ("target", "retain", "noise_floor", "unlearned")


@dataclass
class Timings:
    """Seconds per named step (`with timings("unlearn"): ...`)."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


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
    return build_card(metrics["method"], config, data=data_line(script), measured=measured_table(metrics))


def base_model_knowledge(model_args: Any, bench: Any, world_facts: Any, kw: dict[str, Any]) -> list[bool]:
    """Which world facts the pretrained base model states before any fine-tuning (greedy answers)."""
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
    answers = sets["world_facts"]["answer"]
    out: dict[str, Any] = {"of": len(answers)}
    if base is not None:
        out["base"] = int(sum(base))
    for name, result in evals.items():
        gens = result["per_example"]["world_facts"].get("generation")
        if gens is not None:
            out[name] = int(M.answer_known(gens, answers).sum())
    return out


def check_run_folder(out: str, config: Any) -> None:
    if os.path.exists(os.path.join(out, "metrics.json")) and not config.overwrite_output_dir:
        raise ValueError(
            f"{out!r} already holds a run (metrics.json); choose another --output_dir or pass "
            "--overwrite_output_dir true"
        )


def run_attacks(
    unlearned: Any, models: dict, tokenizer: Any, sets: dict, ref: dict, kw: dict, evaluation: Any, cache_dir: str, seed: int,
    retain_key: str | None,
) -> dict | None:
    """Relearning and quantization on the unlearned model and on the retain model (cached when it has a key)."""
    if not evaluation.attacks or "retain" not in models:
        return None

    def attack(name: str, model: Any) -> dict:
        return attack_report(
            {name: model},
            tokenizer,
            sets["forget"],
            ref["per_example"]["forget"]["truth_ratio"],
            kw,
            relearn_steps=evaluation.attack_relearn_steps,
            relearn_learning_rate=evaluation.attack_relearn_learning_rate,
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
            "relearn": [evaluation.attack_relearn_steps, evaluation.attack_relearn_learning_rate, seed],
        }
        retain = cached_json(cache_dir, "attacks", material, lambda: attack("retain", models["retain"]))
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
        # forget quality's size-free companion: the KS distance to the retain model, its CI, the noise floor's D
        "forget_ks_d": evals["unlearned"]["aggregates"].get("forget_ks_d"),
        "forget_ks_d_ci": evals["unlearned"]["aggregates"].get("forget_ks_d_ci"),
        "noise_floor_forget_ks_d": evals["noise_floor"]["aggregates"].get("forget_ks_d") if "noise_floor" in evals else None,
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


@dataclass
class Prepared:
    """A run's data, evaluation sets and settings, models and the baselines' evaluations."""

    data: dict
    sets: dict
    kw: dict
    tokenizer: Any
    models: dict
    metas: dict
    evals: dict


def prepare(recipe: Recipe, timings: Timings) -> Prepared:
    """Data, the target, retain and noise-floor models, and their evaluations (cached with the models)."""
    with timings("models"):
        data = load_benchmark_data(recipe.script)
        tokenizer, models, metas, given = load_models(data, recipe.model, recipe.bench, recipe.evaluation, recipe.config)
    sets, kw = eval_sets(data), eval_kwargs(recipe.config, recipe.evaluation)
    with timings("evaluate_baselines"):
        evals = evaluate_baselines(models, tokenizer, sets, kw, recipe.bench.cache_dir, metas, given)
    return Prepared(data, sets, kw, tokenizer, models, metas, evals)


def unlearn_with_probe(recipe: Recipe, p: Prepared, timings: Timings) -> tuple[Any, Any, dict | None]:
    """Unlearn a copy of the target (per-epoch evaluation, the SAE probe): (trainer, step evaluation, probe JSON)."""
    script, config, probe_args = recipe.script, recipe.config, recipe.probe
    step_eval = EpochEvaluation(p.tokenizer, p.sets, p.evals["retain"], p.kw) if recipe.evaluation.eval_each_epoch else None
    args = copy_config(config)
    trainer = make_trainer(
        script.method, p.models["target"], args, p.data, p.tokenizer, retain_general=script.retain_general,
        peft_config=recipe.model.peft_config(), callbacks=[step_eval] if step_eval else [],
    )
    probe_cb = None
    if probe_args is not None and probe_args.probe and trainer.trains_weights:  # sae_clamp: no updates to probe
        with timings("sae"):
            probe_cb, quality = attach_probe(
                trainer, p.models, p.tokenizer, p.data, p.metas, recipe.model, recipe.bench, probe_args,
                config.prompt_format,
            )
    with timings("unlearn"):
        trainer.train(resume_from_checkpoint=resume_argument(trainer.args))
    probe_json = None
    if probe_cb is not None and trainer.is_world_process_zero():  # the probe measures on rank 0 (a full copy)
        with timings("probe_report"):
            pairs = trainer.train_dataset
            probe_json = probe_report(
                probe_cb.probe, p.models["target"], p.tokenizer, pairs.forget.to_list(),
                pairs.retain.select(range(min(100, len(pairs.retain)))).to_list(), probe_args, quality,
                actions=probe_cb.actions, train_seconds=probe_cb.train_seconds,
                other_seconds=step_eval.seconds if step_eval else 0.0,
            )
        if probe_args.evidence:
            with timings("probe_evidence"):
                probe_json["evidence"] = run_evidence(recipe, p, trainer)
    return trainer, step_eval, probe_json


def null_model(recipe: Recipe, p: Prepared, steps: int) -> Any:
    """The evidence's null: the target fine-tuned as the unlearning run was (same optimizer settings, batches,
    adapter) for `steps` steps with SGU's `retain_only` rule, which maintains g_r everywhere (the forget pass
    is the NLL's and is ignored)."""
    cls = get_method("sgu")[0]
    init = {f.name for f in fields(cls) if f.init}
    kw = {k: v for k, v in recipe.config.to_dict().items() if k in init and not k.endswith("_token")}
    kw.update(
        output_dir=os.path.join(recipe.config.output_dir, "null"), overwrite_output_dir=True,
        selective_function="retain_only", forget_loss="nll", max_steps=steps, stop_on_holdout=False,
        save_strategy="no", report_to="none", row_gate=False,
    )
    trainer = make_trainer("sgu", p.models["target"], cls(**kw), p.data, p.tokenizer,
                           retain_general=recipe.script.retain_general, peft_config=recipe.model.peft_config())
    trainer.train()
    return merged(trainer.model)


def run_evidence(recipe: Recipe, p: Prepared, trainer: Any) -> dict[str, Any]:
    """The probe's evidence on the unlearned model (at the holdout-selected step when the run stopped there),
    against a retain-only null of as many steps (`evidence_null`)."""
    steps = next((h["stop/step"] for h in reversed(trainer.state.log_history) if "stop/step" in h),
                 trainer.state.global_step)
    null = null_model(recipe, p, steps) if recipe.probe.evidence_null and steps > 0 else None
    target_key = p.metas.get("target", {}).get("key", recipe.model.model_name_or_path)
    return probe_evidence(p.models["target"], merged(trainer.model), p.tokenizer, p.data, recipe.probe, recipe.bench,
                          target_key, recipe.config.prompt_format, null=null)


def evidence_only(recipe: Recipe) -> dict[str, Any]:
    """The probe's evidence alone (`scripts/probe_table.py --probe_only`): the benchmark's target (cached or
    fine-tuned), unlearning as `sgu-llm run` does it (same trainer, config and stopping rule), the retain-only null
    and `probe_evidence`; no retain or noise-floor model and no evaluation, which the evidence does not read.
    Returns `{"evidence", "timings"}`."""
    timings = Timings()
    with timings("models"):
        data = load_benchmark_data(recipe.script)
        tokenizer, models, metas = benchmark_models(data, recipe.bench, roles=("target",),
                                                    prompt_format=recipe.config.prompt_format, base=recipe.model)
    p = Prepared(data, {}, {}, tokenizer, models, metas, {})
    trainer = make_trainer(recipe.script.method, models["target"], copy_config(recipe.config), data, tokenizer,
                           retain_general=recipe.script.retain_general, peft_config=recipe.model.peft_config())
    with timings("unlearn"):
        trainer.train()
    with timings("probe_evidence"):
        evidence = run_evidence(recipe, p, trainer)
    return {"evidence": evidence, "timings": timings.seconds}


def copy_config(config: Any) -> Any:
    """The run's config writing into `<output_dir>/unlearned` (the caller's config keeps its output_dir)."""
    args = copy.copy(config)
    args.output_dir = os.path.join(config.output_dir, "unlearned")
    args.overwrite_output_dir = True  # inside a run folder the caller checked
    return args


def run_benchmark(recipe: Recipe) -> dict[str, Any]:
    """Data, models, baseline evaluations, unlearning (with the probe), evaluation, attacks, files."""
    script, model_args, config = recipe.script, recipe.model, recipe.config
    check_run_folder(config.output_dir, config)
    timings = Timings()
    start = time.perf_counter()
    p = prepare(recipe, timings)
    base_known = None
    if recipe.bench.finetune_base and not is_benchmark_model(model_args.model_name_or_path):
        with timings("base_knowledge"):
            base_known = base_model_knowledge(model_args, recipe.bench, p.sets["world_facts"], p.kw)
    trainer, step_eval, probe_json = unlearn_with_probe(recipe, p, timings)
    unlearned = trainer.accelerator.unwrap_model(trainer.model)
    with timings("evaluate_unlearned"):
        p.evals["unlearned"] = evaluate_model(unlearned, p.tokenizer, p.sets, reference=p.evals["retain"], **p.kw)
    attacks = None
    model_name = model_args.model_name_or_path.split(":", 1)[-1].rstrip("/").split("/")[-1]
    if trainer.is_world_process_zero():
        with timings("attacks"):
            attacks = run_attacks(
                unlearned, p.models, p.tokenizer, p.sets, p.evals["retain"], p.kw, recipe.evaluation,
                recipe.bench.cache_dir, config.seed, p.metas.get("retain", {}).get("key"),
            )
            if attacks is not None and recipe.evaluation.sweep_results:
                attacks["sweep"] = sweep_attack_rows(recipe.evaluation.sweep_results, model_name, script.forget_split,
                                                     recipe.evaluation.sweep_benchmark)
    timings.seconds["total"] = time.perf_counter() - start
    world = world_facts_known(p.evals, p.sets, base_known)
    metrics = collect_metrics(script.method, p.evals, step_eval, probe_json, world, attacks, timings.seconds, p.metas)
    stops = [h for h in trainer.state.log_history if "stop/epoch" in h]  # the holdout rule's chosen epoch
    metrics["stop"] = {k.split("/")[1]: v for k, v in stops[-1].items()} if stops else None
    metrics["arithmetic"] = trainer.arithmetic()  # torch, CPU kernels, compiled or eager selection
    # What "as good as retraining" looks like here: the D of the sweep's independent retrains of this run's retain
    # model, where the recipe names the sweep's results and the sweep used this very model (its weights).
    metrics["noise_band"] = None
    if recipe.evaluation.sweep_results and "retain" in p.models:
        metrics["noise_band"] = sweep_noise_band(recipe.evaluation.sweep_results, model_name, script.forget_split,
                                                 weights_fingerprint(p.models["retain"]), recipe.evaluation.sweep_benchmark)
    write_outputs(config.output_dir, trainer, metrics, p.evals, probe_json, script)
    # Destroy the process group under torchrun/accelerate: a live gloo group can abort a rank at exit.
    trainer.accelerator.end_training()
    return metrics


def main(argv: list[str]) -> int:
    """`sgu-llm run RECIPE.yaml ...` (errors are ValueErrors; `sgu_llm.cli` prints them)."""
    if argv and not argv[0].startswith("-"):
        argv = ["--config", argv[0], *argv[1:]]
    recipe = parse_args(argv)
    metrics = run_benchmark(recipe)
    print(
        f"[{metrics['method']}] forget quality {fmt(metrics['forget_quality'])} "
        f"(target {fmt(metrics['target']['forget_quality'])}, noise floor {fmt(metrics['noise_floor_forget_quality'])}) | "
        f"KS distance to the retain model D {fmt(metrics['forget_ks_d'])} [95 % CI {fmt(metrics['forget_ks_d_ci'][0])}, "
        f"{fmt(metrics['forget_ks_d_ci'][1])}] (noise floor {fmt(metrics['noise_floor_forget_ks_d'])}"
        + (f"; the sweep's retrains {fmt(metrics['noise_band'][0])}–{fmt(metrics['noise_band'][1])}" if metrics.get("noise_band") else "")
        + ") | "
        f"model utility {fmt(metrics['model_utility'])} (target {fmt(metrics['target']['model_utility'])}) | "
        f"{metrics['timings']['total']:.0f} s | {recipe.config.output_dir}/report.html"
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
