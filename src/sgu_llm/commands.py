"""`sgu-llm finetune` and `sgu-llm eval`."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any


def finetune_main(argv: list[str]) -> int:
    """Fine-tune (or find cached) the benchmark's target, retain and noise-floor models for a recipe."""
    from sgu_llm.benchmark import benchmark_models, load_benchmark_data
    from sgu_llm.unlearn import parse_args

    if argv and not argv[0].startswith("-"):
        argv = ["--config", argv[0], *argv[1:]]
    try:
        script, model_args, bench, _, config = parse_args(argv)
        data = load_benchmark_data(script)
        _, _, metas = benchmark_models(data, bench, prompt_format=config.prompt_format, base=model_args)
    except ValueError as err:
        print(f"sgu-llm finetune: error: {err}", file=sys.stderr)
        return 2
    for role, meta in metas.items():
        print(
            f"{role}: accuracy {meta.get('final_accuracy', float('nan')):.4f}, "
            f"{meta.get('train_seconds', 0):.0f} s to train, key {meta['key'][:16]} in {bench.cache_dir}"
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


def load_saved_model(path: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.exists(os.path.join(path, "adapter_config.json")):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path)
    return model, AutoTokenizer.from_pretrained(path)


def eval_main(argv: list[str]) -> int:
    """Evaluate a saved model on the TOFU sets named by the data fields (synthetic by default)."""
    from transformers import HfArgumentParser

    from sgu_llm.benchmark import BenchmarkArguments, load_benchmark_data
    from sgu_llm.evaluation import evaluate_model
    from sgu_llm.run import eval_sets
    from sgu_llm.unlearn import ScriptArguments

    if argv and not argv[0].startswith("-"):
        argv = ["--model_path", argv[0], *argv[1:]]
    parser = HfArgumentParser((EvalArguments, ScriptArguments, BenchmarkArguments))
    args, script, bench = parser.parse_args_into_dataclasses(args=argv)
    try:
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
            batch_size=bench.eval_batch_size,
            max_new_tokens=bench.max_new_tokens,
        )
    except ValueError as err:
        print(f"sgu-llm eval: error: {err}", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as fh:
        json.dump(result, fh)
    print(json.dumps({k: round(v, 6) for k, v in result["aggregates"].items()}, indent=1))
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
    from transformers import HfArgumentParser

    from sgu_llm.attacks import attack_report, attack_table
    from sgu_llm.benchmark import BenchmarkArguments, load_benchmark_data
    from sgu_llm.data.prompts import DEFAULT_SYSTEM_PROMPT
    from sgu_llm.evaluation.suite import truth_ratios
    from sgu_llm.files import write_json
    from sgu_llm.unlearn import ScriptArguments

    if argv and not argv[0].startswith("-"):
        argv = ["--model_path", argv[0], *argv[1:]]
    parser = HfArgumentParser((AttackArguments, ScriptArguments, BenchmarkArguments))
    args, script, bench = parser.parse_args_into_dataclasses(args=argv)
    try:
        forget = load_benchmark_data(script)["forget_perturbed"]
        model, tokenizer = load_saved_model(args.model_path)
        retain, _ = load_saved_model(args.retain_model)
        kw = dict(
            prompt_format=args.prompt_format,
            system_prompt=DEFAULT_SYSTEM_PROMPT,
            batch_size=bench.eval_batch_size,
            max_new_tokens=bench.max_new_tokens,
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
    except ValueError as err:
        print(f"sgu-llm attack: error: {err}", file=sys.stderr)
        return 2
    write_json(args.output, report)
    print("\n".join(attack_table(report)))
    return 0


@dataclass
class ProbeCommandArguments:
    before: str = field(metadata={"help": "Folder of the model before unlearning (save_pretrained)."})
    after: str = field(
        metadata={"help": "Folder of the model after unlearning (full model or LoRA adapter)."}
    )
    output_dir: str = field(default="probe-report", metadata={"help": "Where probe.json and probe.html go."})
    prompt_format: str = field(
        default="phi", metadata={"help": "phi, llama2 or chat_template: the format the models were trained in."}
    )


def probe_main(argv: list[str]) -> int:
    """Probe a saved before/after pair: feature states, causal check and the report section, without training."""
    from transformers import HfArgumentParser

    from sgu_llm.benchmark import BenchmarkArguments, load_benchmark_data, training_sets
    from sgu_llm.data.pairing import prepare_qa_dataset
    from sgu_llm.probe.probe import ProbeArguments, SAEProbe
    from sgu_llm.report import build_probe_section
    from sgu_llm.run import prepare_sae, probe_report
    from sgu_llm.unlearn import ScriptArguments

    parser = HfArgumentParser((ProbeCommandArguments, ScriptArguments, BenchmarkArguments, ProbeArguments))
    args, script, bench, probe_args = parser.parse_args_into_dataclasses(args=argv)
    try:
        before, tokenizer = load_saved_model(args.before)
        after, _ = load_saved_model(args.after)
        data = load_benchmark_data(script)
        sae, quality = prepare_sae(
            before, tokenizer, training_sets(data)["target"], probe_args, bench, args.before, args.prompt_format
        )
        n = probe_args.probe_examples
        fmt = {"prompt_format": args.prompt_format}
        forget = prepare_qa_dataset(data["forget"], tokenizer, "forget", **fmt).to_list()
        retain = prepare_qa_dataset(
            data["retain"].select(range(min(100, len(data["retain"])))), tokenizer, "retain", **fmt
        )
        retain = retain.to_list()
        probe = SAEProbe(sae, probe_args.sae_hook_name, tokenizer, forget[:n], retain[:n], probe_args)
        probe.measure(before, 0)
        probe.measure(after, 1)
    except ValueError as err:
        print(f"sgu-llm probe: error: {err}", file=sys.stderr)
        return 2
    out = probe_report(probe, before, tokenizer, forget, retain, probe_args, quality)
    from sgu_llm.files import write_json, write_text

    write_json(os.path.join(args.output_dir, "probe.json"), out, indent=None)
    md, page = build_probe_section(out)
    write_text(os.path.join(args.output_dir, "probe.md"), md)
    write_text(
        os.path.join(args.output_dir, "probe.html"),
        f"<!doctype html><html><head><meta charset='utf-8'><title>sgu-llm probe</title></head><body>{page}</body></html>",
    )
    print(md)
    return 0
