"""SGU under DeepSpeed ZeRO-3 against ZeRO-2: the time SGU adds to a step, on 2 gloo CPU processes, side by side.

Under ZeRO-2 SGU reads and writes every full gradient (`safe_get_full_grad`, one collective per parameter and
pass) and selects on full tensors on every rank; under ZeRO-3 it reads each rank's partition (no collective),
selects on it and gathers only the thresholds' populations. Each round launches one 2-process run per stage
(the stages interleaved over `--rounds`), a Llama built from config (no download) trained for `--steps` SGU
steps; it reports, per stage, the median over rounds of the per-step time inside SGU's pairing (reading the
gradients after each backward, selecting, writing back) and of the whole step (the first step excluded: it
compiles the kernels), and ends with `ratio=<ZeRO-3 SGU time / ZeRO-2 SGU time>` with its range over rounds.

    python scripts/bench_zero.py [--rounds 3] [--steps 6] [--hidden 256 --layers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from transformers import TrainerCallback

from sgu_llm.data.prompts import build_prompt
from sgu_llm.data.synthetic import synthetic_tofu
from sgu_llm.models.tiny import tiny_llama, train_tokenizer
from sgu_llm.trainers import SGUConfig, SGUTrainer

STAGES = (2, 3)


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t = [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t)


def timed(record: list, fn):
    """`fn`, adding its wall time to the step's entry of `record`."""

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            record[-1] += time.perf_counter() - t

    return wrapper


def worker(stage: int, out: str, steps: int, hidden: int, layers: int) -> None:
    splits = synthetic_tofu(num_authors=40, qa_per_author=10, seed=0)
    tok = train_tokenizer([build_prompt(r["question"]) + r["answer"] for r in splits["full"]], vocab_size=2000)
    model = tiny_llama(tok, hidden_size=hidden, num_layers=layers, num_heads=4, seed=0)
    zero = {"stage": stage}
    if stage == 3:
        zero |= {k: "auto" for k in ("reduce_bucket_size", "stage3_prefetch_bucket_size",
                                     "stage3_param_persistence_threshold")}
    args = SGUConfig(
        output_dir=out + ".run", report_to="none", per_device_train_batch_size=4, max_steps=steps + 1,
        learning_rate=1e-3, logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0, use_cpu=True,
        lr_scheduler_type="constant", dataloader_drop_last=True,
        deepspeed={"train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
                   "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
                   "zero_optimization": zero, "zero_allow_untested_optimizer": True},
    )
    trainer = SGUTrainer(model, args, splits["forget10"], splits["retain90"], processing_class=tok)
    sgu_time = [0.0]
    timer = StepTimer()
    trainer.add_callback(timer)

    class TimeSGU(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # the engine exists now, so can the pairing
            pairing = trainer.pairing
            pairing._take = timed(sgu_time, pairing._take)
            pairing.select = timed(sgu_time, pairing.select)

        def on_step_end(self, args, state, control, **kwargs):
            sgu_time.append(0.0)

    trainer.add_callback(TimeSGU())
    trainer.train()
    if trainer.is_world_process_zero():
        with open(out, "w") as fh:
            json.dump({"sgu": sgu_time[1:-1], "step": timer.times[1:],
                       "params": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel()
                                     for p in trainer.model.parameters())}, fh)
    trainer.accelerator.end_training()
    sys.stdout.flush()
    os._exit(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker is not None:
        return worker(a.worker, a.out, a.steps, a.hidden, a.layers)
    env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1", "OMP_NUM_THREADS": "1"}
    runs: dict[int, list[dict]] = {s: [] for s in STAGES}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for stage in STAGES if r % 2 == 0 else STAGES[::-1]:
                out = os.path.join(tmp, f"z{stage}-{r}.json")
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                       "--master_port", str(29650 + 10 * r + stage), __file__, "--worker", str(stage), "--out", out,
                       "--steps", str(a.steps), "--hidden", str(a.hidden), "--layers", str(a.layers)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0 or not os.path.exists(out):
                    sys.exit(f"ZeRO-{stage} round {r} failed:\n{proc.stderr[-3000:]}")
                with open(out) as fh:
                    runs[stage].append(json.load(fh))
    med = {s: [statistics.median(x["sgu"]) for x in runs[s]] for s in STAGES}
    step = {s: [statistics.median(x["step"]) for x in runs[s]] for s in STAGES}
    print(f"{runs[2][0]['params']:,} parameters, 2 gloo processes, {a.rounds} rounds x {a.steps} steps, torch "
          f"{torch.__version__}")
    for s in STAGES:
        print(f"ZeRO-{s}: SGU {1000 * statistics.median(med[s]):.1f} ms a step (rounds: "
              f"{', '.join(f'{1000 * v:.1f}' for v in med[s])}), whole step {1000 * statistics.median(step[s]):.1f} ms")
    ratios = [z3 / z2 for z3, z2 in zip(med[3], med[2])]
    print(f"ratio={statistics.median(ratios):.2f} (ZeRO-3 / ZeRO-2 SGU time; rounds {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
