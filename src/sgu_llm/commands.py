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
        script, _, bench, _, config = parse_args(argv)
        data = load_benchmark_data(script)
        _, _, metas = benchmark_models(data, bench, prompt_format=config.prompt_format)
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
