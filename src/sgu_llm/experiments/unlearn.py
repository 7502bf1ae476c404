"""`sgu-llm unlearn`: load a model and a forget/retain pair, unlearn with any registered method, save.

Runs the same under `python -m sgu_llm.unlearn` and `accelerate launch -m sgu_llm.unlearn`:

    accelerate launch --config_file recipes/accelerate/ddp.yaml -m sgu_llm.unlearn \\
        --config recipes/llama-3.2-1b-instruct/sgu.yaml --output_dir runs/llama-sgu
"""

from __future__ import annotations

import os
from typing import Any

from sgu_llm.core.files import write_json
from sgu_llm.evaluation import answer_nll
from sgu_llm.experiments.config import Recipe, check_flags_used, parse_args
from sgu_llm.experiments.shared import (
    load_model_and_tokenizer,
    make_trainer,
    trains_here,
    unlearning_data,
)
from sgu_llm.trainers.outputs import check_output_dir, resume_argument


def answer_nlls(trainer: Any, tokenizer: Any) -> dict[str, float]:
    """Mean forget and retain answer NLL of the trainer's model on its own tokenised sets."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    pairs, pad = trainer.train_dataset, tokenizer.pad_token_id
    return {
        "forget_nll": answer_nll(model, pairs.forget, pad).mean().item(),
        "retain_nll": answer_nll(model, pairs.retain, pad).mean().item(),
    }


def unlearn_from_recipe(recipe: Recipe) -> dict[str, Any]:
    """Unlearn and save; returns (and writes to output_dir/unlearn_summary.json) a summary."""
    script, model_args, bench, config = recipe.script, recipe.model, recipe.bench, recipe.config
    check_output_dir(config)  # before any expensive work
    data = unlearning_data(script, model_args, bench, config)
    model, tokenizer = load_model_and_tokenizer(
        model_args, data if trains_here(model_args, bench) else None, bench, config.prompt_format
    )
    trainer = make_trainer(
        script.method, model, config, data, tokenizer, retain_general=script.retain_general,
        peft_config=model_args.peft_config(), copy_model=False,
    )
    before = answer_nlls(trainer, tokenizer) if script.evaluate_before_after else {}
    result = trainer.train(resume_from_checkpoint=resume_argument(config))
    after = answer_nlls(trainer, tokenizer) if script.evaluate_before_after else {}
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
        write_json(os.path.join(out_dir, "unlearn_summary.json"), summary, indent=2)
    # Destroy the process group under torchrun/accelerate: a live gloo group can abort a rank at exit.
    trainer.accelerator.end_training()
    return summary


def main(argv: list[str]) -> int:
    """The command (errors are ValueErrors; `sgu_llm.cli` prints them)."""
    check_flags_used(argv)
    recipe = parse_args(argv)
    summary = unlearn_from_recipe(recipe)
    b, a = summary["before"], summary["after"]
    if b and a and int(os.environ.get("RANK", "0")) == 0:
        print(
            f"[{recipe.script.method}] forget NLL {b['forget_nll']:.3f} -> {a['forget_nll']:.3f} | "
            f"retain NLL {b['retain_nll']:.3f} -> {a['retain_nll']:.3f} | saved to {summary['output_dir']}"
        )
    return 0
