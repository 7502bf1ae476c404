"""SGU optimizer-step time against GradDiff's on the same model and batch, full parameters and LoRA.

Builds a Llama of about 25M parameters from config (no download), runs a few optimizer steps of each
method on identical batches, and prints the median step time of each and their ratio. Ends with
`ratio=<SGU / GradDiff, full parameters>`.

    python scripts/bench_step.py [--steps 6] [--hidden 512 --layers 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import TrainerCallback

from sgu_llm.data.prompts import build_prompt
from sgu_llm.data.synthetic import synthetic_tofu
from sgu_llm.models import tiny_llama, train_tokenizer
from sgu_llm.trainers import GradDiffConfig, GradDiffTrainer, SGUConfig, SGUTrainer


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t = [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t)


def run(config_cls, trainer_cls, model, tok, splits, steps, lora, batch):
    from peft import LoraConfig

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = config_cls(
            output_dir=out,
            report_to="none",
            per_device_train_batch_size=batch,
            max_steps=steps,
            learning_rate=1e-4,
            save_strategy="no",
            disable_tqdm=True,
            logging_steps=10**6,
            seed=0,
        )
        peft = LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM") if lora else None
        trainer = trainer_cls(
            model,
            args,
            splits["forget10"],
            splits["retain90"],
            processing_class=tok,
            peft_config=peft,
            callbacks=[timer],
        )
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
    return statistics.median(timer.times[1:]), peak  # the first step includes warm-up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    splits = synthetic_tofu(num_authors=100, seed=0)
    tok = train_tokenizer([build_prompt(r["question"]) + r["answer"] for r in splits["full"]], vocab_size=400)
    ratio = float("nan")
    for lora in (False, True):
        results = {}
        for name, cfg, tr in (("graddiff", GradDiffConfig, GradDiffTrainer), ("sgu", SGUConfig, SGUTrainer)):
            model = tiny_llama(tok, hidden_size=args.hidden, num_layers=args.layers, num_heads=8, seed=0)
            n_params = sum(p.numel() for p in model.parameters())
            results[name] = run(cfg, tr, model, tok, splits, args.steps, lora, args.batch)
        r = results["sgu"][0] / results["graddiff"][0]
        label = "lora" if lora else "full"
        print(
            f"{label}: params={n_params / 1e6:.1f}M graddiff={results['graddiff'][0] * 1e3:.0f} ms "
            f"sgu={results['sgu'][0] * 1e3:.0f} ms ratio={r:.3f} peak_MiB graddiff={results['graddiff'][1]:.0f} "
            f"sgu={results['sgu'][1]:.0f}"
        )
        if not lora:
            ratio = r
    print(f"ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
