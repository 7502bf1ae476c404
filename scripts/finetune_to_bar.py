"""How long LoRA fine-tuning takes to reach a recipe's memorisation bar, beside the recipe's own fine-tuning.

The bar: teacher-forced answer-token accuracy `finetune_target_accuracy` on the target's training set, and a
target forget quality far below the noise floor. The target is fine-tuned with LoRA adapters (rank
`--lora_r`, on the recipe's `finetune_train_layers`, at `--learning_rate`) in a temporary cache, up to the
recipe's `finetune_max_epochs`; the recipe's own target (weights of the same layers) comes from the cache
(fine-tuned if missing), and both are scored against the recipe's retain model.

    python scripts/finetune_to_bar.py recipes/smollm2-135m/sgu.yaml --lora_r 16 --learning_rate 1e-3
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--lora_r", type=int, default=16)
    ap.add_argument("--learning_rate", type=float, default=1e-3, help="LoRA's rate (adapters usually need more)")
    a = ap.parse_args()

    from sgu_llm.data.benchmark import eval_sets, load_benchmark_data
    from sgu_llm.evaluation.metrics import forget_quality
    from sgu_llm.evaluation.suite import truth_ratios
    from sgu_llm.experiments.config import parse_args
    from sgu_llm.experiments.shared import eval_kwargs
    from sgu_llm.models.benchmark import benchmark_models

    script, model_args, bench, evaluation, _, config = parse_args(["--config", a.recipe])
    data = load_benchmark_data(script)
    kw = eval_kwargs(config, evaluation)
    kw.pop("max_new_tokens")
    forget = eval_sets(data)["forget"]
    tok, cached, metas = benchmark_models(data, bench, ("target", "retain"), config.prompt_format, model_args)
    ref = truth_ratios(cached["retain"], tok, forget, **kw)
    rows = {"recipe": (metas["target"], forget_quality(truth_ratios(cached["target"], tok, forget, **kw), ref))}
    with tempfile.TemporaryDirectory() as tmp:
        lora = dataclasses.replace(bench, finetune_lora_r=a.lora_r, finetune_learning_rate=a.learning_rate, cache_dir=tmp)
        _, models, lora_metas = benchmark_models(data, lora, ("target",), config.prompt_format, model_args)
        rows[f"LoRA r{a.lora_r}, lr {a.learning_rate:g}"] = (
            lora_metas["target"],
            forget_quality(truth_ratios(models["target"], tok, forget, **kw), ref),
        )
    print(f"{a.recipe}: target fine-tuning to accuracy {bench.finetune_target_accuracy} "
          f"(at most {bench.finetune_max_epochs} epochs, checked every {bench.finetune_check_every})")
    print("| fine-tuning | epochs | seconds | answer-token accuracy | target forget quality |")
    print("|---|---|---|---|---|")
    for name, (meta, fq) in rows.items():
        print(f"| {name} | {meta.get('epochs', '?')} | {meta['train_seconds']:.0f} | {meta['final_accuracy']:.4f} | {fq:.2g} |")


if __name__ == "__main__":
    main()
