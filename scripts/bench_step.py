"""SGU optimizer-step time and peak memory against GradDiff's, same model and batches, full and LoRA.

GradDiff does the same forward and backward work as SGU (a forget and a retain pass), so the
difference is the cost of keeping g_f apart and selecting. Builds a Llama of about 30M parameters
from config (no download). Each configuration runs in a fresh process, the variants interleaved over `--repeats` rounds in this
run (medians over rounds are reported): its median step time (the first step, which compiles the selection kernels, excluded) and its
peak memory above the start of training (GPU: `torch.cuda.max_memory_allocated`; CPU: peak RSS,
after the same warm-up in every process). Extra memory is reported in units of the trainable
parameters' gradient bytes. Ends with `ratio=<SGU step time / GradDiff step time, full parameters>`.

    python scripts/bench_step.py [--steps 8] [--hidden 512 --layers 7] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from transformers import TrainerCallback

VARIANTS = {
    "graddiff": {},
    "sgu": {},
    "sgu_bf16_stash": {"stash_dtype": "bfloat16"},
    "sgu_lean": {"lean_selection": True},
    "sgu_lean_bf16": {"lean_selection": True, "stash_dtype": "bfloat16"},
}


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t = [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(args) -> dict:
    from peft import LoraConfig

    from sgu_llm.data.prompts import build_prompt
    from sgu_llm.data.synthetic import synthetic_tofu
    from sgu_llm.models.tiny import tiny_llama, train_tokenizer
    from sgu_llm.selection import SelectionSettings, select_gradients
    from sgu_llm.trainers import GradDiffConfig, GradDiffTrainer, SGUConfig, SGUTrainer

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Same warm-up in every process (GradDiff too): compile the selection kernels for both stash dtypes.
    for dtype in (torch.float32, torch.bfloat16):
        g = torch.randn(4096, device=device)
        select_gradients([g.clone()], [g.to(dtype)], SelectionSettings(), inplace=True)
    splits = synthetic_tofu(num_authors=100, seed=0)
    tok = train_tokenizer([build_prompt(r["question"]) + r["answer"] for r in splits["full"]], vocab_size=400)
    model = tiny_llama(tok, hidden_size=args.hidden, num_layers=args.layers, num_heads=8, seed=0)
    config_cls, trainer_cls = (
        (GradDiffConfig, GradDiffTrainer) if args.variant == "graddiff" else (SGUConfig, SGUTrainer)
    )
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        cfg = config_cls(
            output_dir=out,
            report_to="none",
            per_device_train_batch_size=args.batch,
            max_steps=args.steps,
            learning_rate=1e-4,
            save_strategy="no",
            disable_tqdm=True,
            logging_steps=10**6,
            seed=0,
            bf16=args.bf16,
            **VARIANTS[args.variant],
        )
        peft = LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM") if args.lora else None
        trainer = trainer_cls(
            model,
            cfg,
            splits["forget10"],
            splits["retain90"],
            processing_class=tok,
            peft_config=peft,
            callbacks=[timer],
        )
        trainable = [p for p in trainer.model.parameters() if p.requires_grad]
        grad_mib = sum(p.numel() * p.element_size() for p in trainable) / 2**20
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() / 2**20
        else:
            base = current_rss_mib()
        trainer.train()
        peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mib()
    return {
        "step_ms": statistics.median(timer.times[1:]) * 1e3,
        "peak_over_start_mib": peak - base,
        "grad_mib": grad_mib,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "trainable_m": sum(p.numel() for p in trainable) / 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (autocast)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument(
        "--repeats", type=int, default=2, help="rounds over all variants (interleaved); medians are reported"
    )
    parser.add_argument(
        "--modes", nargs="*", choices=("full", "lora"), default=["full", "lora"], help="full parameters and/or LoRA"
    )
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--lora", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.variant = args.worker
        print("RESULT " + json.dumps(worker(args)))
        return 0

    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu x{os.cpu_count()}"
    memory = "max_memory_allocated" if device == "cuda" else "peak RSS"
    print(f"device={name} torch={torch.__version__} memory={memory} steps={args.steps} batch={args.batch}")
    ratio = float("nan")
    for lora in [mode == "lora" for mode in args.modes]:
        rounds: dict[str, list[dict]] = {v: [] for v in args.variants}
        for _ in range(args.repeats):  # interleaved, so slow drift on a shared machine hits every variant
            for variant in args.variants:
                cmd = [
                    sys.executable,
                    __file__,
                    "--worker",
                    variant,
                    "--steps",
                    str(args.steps),
                    "--hidden",
                    str(args.hidden),
                    "--layers",
                    str(args.layers),
                    "--batch",
                    str(args.batch),
                ]
                cmd += ["--lora"] if lora else []
                cmd += ["--bf16"] if args.bf16 else []
                proc = subprocess.run(cmd, capture_output=True, text=True)
                lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode or not lines:
                    print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                    raise SystemExit(f"{variant} (lora={lora}) failed")
                rounds[variant].append(json.loads(lines[-1][len("RESULT ") :]))
        results = {
            v: {
                **rs[0],
                **{k: statistics.median(r[k] for r in rs) for k in ("step_ms", "peak_over_start_mib")},
            }
            for v, rs in rounds.items()
        }
        if "graddiff" in rounds and "sgu" in rounds:
            per_round = [s["step_ms"] / g["step_ms"] for s, g in zip(rounds["sgu"], rounds["graddiff"])]
            print(
                f"{'lora' if lora else 'full'}: sgu/graddiff per round: "
                + " ".join(f"{r:.3f}" for r in per_round)
            )
        base = results.get("graddiff")
        label = "lora" if lora else "full"
        first = next(iter(results.values()))
        print(
            f"{label}: params={first['params_m']:.1f}M trainable={first['trainable_m']:.2f}M "
            f"grad={first['grad_mib']:.1f} MiB"
        )
        for variant, r in results.items():
            line = f"  {variant:15s} step={r['step_ms']:8.1f} ms  peak_over_start={r['peak_over_start_mib']:8.1f} MiB"
            if base is not None and variant != "graddiff":
                extra = (r["peak_over_start_mib"] - base["peak_over_start_mib"]) / r["grad_mib"]
                line += f"  time_ratio={r['step_ms'] / base['step_ms']:.3f}  extra_memory={extra:+.2f}x grad"
            print(line)
        if base is not None and "sgu" in results and not lora:
            ratio = results["sgu"]["step_ms"] / base["step_ms"]
    print(f"ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
