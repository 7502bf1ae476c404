"""`sgu-llm finetune`, `sgu-llm eval`, `sgu-llm attack` and `sgu-llm probe`: the benchmark's steps one at a time.

Each `*_main(argv)` raises `ValueError` for a user error; `sgu_llm.cli` prints it and exits 2.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from sgu_llm.core.files import write_json, write_text
from sgu_llm.data.benchmark import eval_sets, load_benchmark_data
from sgu_llm.data.prompts import DEFAULT_SYSTEM_PROMPT
from sgu_llm.evaluation import evaluate_model
from sgu_llm.evaluation.attacks import attack_report
from sgu_llm.evaluation.suite import truth_ratios
from sgu_llm.experiments.config import EvaluationArguments, ScriptArguments, parse_args
from sgu_llm.experiments.probing import merged, probe_evidence, probe_pair
from sgu_llm.models.benchmark import BenchmarkArguments, benchmark_models, shipped_weights
from sgu_llm.models.saved import load_saved_model
from sgu_llm.probe.sae_probe import ProbeArguments
from sgu_llm.report.page import md_table
from sgu_llm.report.run_report import build_probe_section
from sgu_llm.report.tables import RUN_ATTACK_HEADERS, run_attack_caption, run_attack_rows


def finetune_main(argv: list[str]) -> int:
    """Fine-tune the benchmark's target, retain and noise-floor models for a recipe, here, into the cache (runs
    then use them), and say whether each rebuild matches the weights the package ships for the same key."""
    if argv and not argv[0].startswith("-"):
        argv = ["--config", argv[0], *argv[1:]]
    recipe = parse_args(argv)
    data = load_benchmark_data(recipe.script)
    _, _, metas = benchmark_models(
        data, recipe.bench, prompt_format=recipe.config.prompt_format, base=recipe.model, rebuild=True
    )
    for role, meta in metas.items():
        shipped = shipped_weights(meta["material"]["role"], meta["key"])
        if shipped is None:
            source = "none shipped for this key"
        else:
            source = f"{'matches' if meta.get('weights') == shipped else 'differs from'} the shipped weights {shipped}"
        print(
            f"{role}: accuracy {meta.get('final_accuracy', float('nan')):.4f}, {meta.get('train_seconds', 0):.0f} s "
            f"to train, weights {meta.get('weights')}, key {meta['key'][:16]}: {source}"
        )
    return 0


@dataclass
class EvalArguments:
    model_path: str = field(metadata={"help": "Folder of a saved model (save_pretrained) or LoRA adapter."})
    output: str = field(
        default="eval.json", metadata={"help": "Where to write the JSON with per-example values."}
    )
    reference: str | None = field(
        default=None, metadata={"help": "Eval JSON of the retain model: enables forget quality and privleak."}
    )
    prompt_format: str = field(default="phi", metadata={"help": "phi, llama2 or chat_template."})


def eval_main(argv: list[str]) -> int:
    """Evaluate a saved model on the TOFU sets named by the data fields (synthetic by default)."""
    if argv and not argv[0].startswith("-"):
        argv = ["--model_path", argv[0], *argv[1:]]
    parser = HfArgumentParser((EvalArguments, ScriptArguments, EvaluationArguments))
    args, script, evaluation = parser.parse_args_into_dataclasses(args=argv)
    reference = None
    if args.reference:
        with open(args.reference) as fh:
            reference = json.load(fh)
    data = load_benchmark_data(script)
    model, tokenizer = load_saved_model(args.model_path)
    result = evaluate_model(
        model,
        tokenizer,
        eval_sets(data),
        reference=reference,
        prompt_format=args.prompt_format,
        batch_size=evaluation.eval_batch_size,
        max_new_tokens=evaluation.max_new_tokens,
    )
    write_json(args.output, result, indent=None)
    print(json.dumps({k: round(v, 6) if isinstance(v, float) else [round(x, 6) for x in v] if isinstance(v, list) else v
                      for k, v in result["aggregates"].items()}, indent=1))
    return 0


@dataclass
class AttackArguments:
    model_path: str = field(metadata={"help": "Folder of the unlearned model (save_pretrained) or LoRA adapter."})
    retain_model: str = field(
        metadata={"help": "Folder of the retain model: attacked the same way, and the forget-quality reference."}
    )
    output: str = field(default="attacks.json", metadata={"help": "Where to write the attack report (JSON)."})
    prompt_format: str = field(default="phi", metadata={"help": "phi, llama2 or chat_template."})
    relearn_steps: int = field(default=10, metadata={"help": "AdamW steps of the relearning attack."})
    relearn_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the relearning attack."})


def attack_main(argv: list[str]) -> int:
    """Relearning and int8/int4 quantization attacks on a saved model, next to the same on the retain model."""
    if argv and not argv[0].startswith("-"):
        argv = ["--model_path", argv[0], *argv[1:]]
    parser = HfArgumentParser((AttackArguments, ScriptArguments, EvaluationArguments))
    args, script, evaluation = parser.parse_args_into_dataclasses(args=argv)
    forget = load_benchmark_data(script)["forget_perturbed"]
    model, tokenizer = load_saved_model(args.model_path)
    retain, _ = load_saved_model(args.retain_model)
    kw = dict(
        prompt_format=args.prompt_format,
        system_prompt=DEFAULT_SYSTEM_PROMPT,
        batch_size=evaluation.eval_batch_size,
        max_new_tokens=evaluation.max_new_tokens,
    )
    score_kw = {k: kw[k] for k in ("prompt_format", "system_prompt", "batch_size")}
    reference = truth_ratios(retain.eval(), tokenizer, forget, **score_kw)
    report = attack_report(
        {"unlearned": model, "retain": retain},
        tokenizer,
        forget,
        reference,
        kw,
        relearn_steps=args.relearn_steps,
        relearn_learning_rate=args.relearn_learning_rate,
    )
    write_json(args.output, report)
    print(run_attack_caption(report) + "\n\n" + md_table(RUN_ATTACK_HEADERS, run_attack_rows(report)))
    return 0


@dataclass
class ProbeCommandArguments:
    before: str = field(metadata={"help": "Folder of the model before unlearning (save_pretrained)."})
    after: str = field(
        metadata={"help": "Folder of the model after unlearning (full model or LoRA adapter)."}
    )
    null: str | None = field(
        default=None,
        metadata={
            "help": "With evidence: true, a folder of the model before unlearning fine-tuned on retain rows only as "
            "long (the null the features are ranked against); without it they are ranked against nothing."
        },
    )
    output_dir: str = field(default="probe-report", metadata={"help": "Where probe.json and probe.html go."})
    prompt_format: str = field(
        default="phi", metadata={"help": "phi, llama2 or chat_template: the format the models were trained in."}
    )


def probe_main(argv: list[str]) -> int:
    """Probe a saved before/after pair: feature states, causal check and the report section, without training."""
    parser = HfArgumentParser((ProbeCommandArguments, ScriptArguments, BenchmarkArguments, ProbeArguments))
    args, script, bench, probe_args = parser.parse_args_into_dataclasses(args=argv)
    before, tokenizer = load_saved_model(args.before)
    after, _ = load_saved_model(args.after)
    data = load_benchmark_data(script)
    out = probe_pair(before, after, tokenizer, data, probe_args, bench, args.before, args.prompt_format)
    if probe_args.evidence:
        null = merged(load_saved_model(args.null)[0]) if args.null else None
        out["evidence"] = probe_evidence(before, merged(after), tokenizer, data, probe_args, bench, args.before,
                                         args.prompt_format, null=null)
    write_json(os.path.join(args.output_dir, "probe.json"), out, indent=None)
    md, page = build_probe_section(out)
    write_text(os.path.join(args.output_dir, "probe.md"), md)
    write_text(
        os.path.join(args.output_dir, "probe.html"),
        f"<!doctype html><html><head><meta charset='utf-8'><title>sgu-llm probe</title></head><body>{page}</body></html>",
    )
    print(md)
    return 0
