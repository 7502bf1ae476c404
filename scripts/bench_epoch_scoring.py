"""Where a SmolLM2 sweep run's scoring time goes, and what reusing the frozen lower layers saves, side by side.

    python scripts/bench_epoch_scoring.py                       # recipes/sweeps/smollm2.yaml, forget10, seed 0

Loads the seed's cached models (fine-tuned when missing), freezes what the sweep's `unlearn_params` freezes,
perturbs the trainable layers once (as an unlearning step would) and times, on the same model:
the per-epoch stopping statistics (`EpochRecorder.score`: forget and holdout truth ratios) and the full
evaluation (`evaluate_model`, with and without generation), each as a plain forward and through
`FrozenPrefix` (recorded on a first pass, as at epoch 0, then reused). Prints seconds, the ratios and the
largest difference between the two paths' numbers (0 up to float32 rounding: the reuse is exact).
"""

from __future__ import annotations

import argparse
import os
import re
import time

import numpy as np
import torch

from sgu_llm.evaluation import evaluate_model
from sgu_llm.evaluation.prefix import FrozenPrefix, first_trainable_layer
from sgu_llm.experiments.sweep import Sweep, load_sweep
from sgu_llm.experiments.sweep.runner import EpochRecorder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def flat(agg: dict) -> np.ndarray:
    return np.array([v for k, v in sorted(agg.items()) if isinstance(v, float) and np.isfinite(v)])


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sweep", default=os.path.join(ROOT, "recipes", "sweeps", "smollm2.yaml"))
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    os.environ.setdefault("SGU_LLM_QUIET", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_sweep(args.sweep)
    sweep = Sweep(cfg, log=lambda m: None)
    ctx = sweep.baselines(args.split, args.seed, keep=True)
    model = ctx.models["target"]
    pattern = re.compile(cfg.base["unlearn_params"])
    for name, p in model.named_parameters():
        p.requires_grad_(bool(pattern.search(name)))
    layer = first_trainable_layer(model)
    n_layers = len(model.get_decoder().layers)
    torch.manual_seed(0)
    with torch.no_grad():  # what an unlearning step does: the trainable layers move
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1e-3 * torch.randn_like(p))
    print(f"model {cfg.model_name}: trainable from layer {layer} of {n_layers} ({cfg.base['unlearn_params']}); torch threads {torch.get_num_threads()}")

    recorder = EpochRecorder(ctx.tokenizer, ctx.sets, ctx.evals["retain"], ctx.kw)
    model.eval()
    with torch.no_grad():
        plain, t_plain = timed(lambda: recorder.score(model))
        prefix = FrozenPrefix()
        with prefix.active(model):
            _, t_record = timed(lambda: recorder.score(model))
            reused, t_reuse = timed(lambda: recorder.score(model))
    gap = max(abs(plain[k] - reused[k]) for k in plain)
    print(f"epoch scoring: plain {t_plain:.1f} s, recording {t_record:.1f} s, reused {t_reuse:.1f} s; ratio plain/reused {t_plain / t_reuse:.2f}x; max |difference| {gap:.3g}")

    kw = ctx.kw
    teacher, t_teacher = timed(lambda: evaluate_model(model, ctx.tokenizer, ctx.sets, reference=ctx.evals["retain"], generate=False, **kw))
    full, t_full = timed(lambda: evaluate_model(model, ctx.tokenizer, ctx.sets, reference=ctx.evals["retain"], **kw))
    with prefix.active(model):
        timed(lambda: evaluate_model(model, ctx.tokenizer, ctx.sets, reference=ctx.evals["retain"], generate=False, **kw))
        full_r, t_full_r = timed(lambda: evaluate_model(model, ctx.tokenizer, ctx.sets, reference=ctx.evals["retain"], **kw))
    gen = t_full - t_teacher
    diff = float(np.max(np.abs(flat(full["aggregates"]) - flat(full_r["aggregates"]))))
    print(f"full evaluation: plain {t_full:.1f} s (generation {gen:.1f} s, teacher-forced {t_teacher:.1f} s), reused {t_full_r:.1f} s; ratio {t_full / t_full_r:.2f}x; max |difference| of the aggregates {diff:.3g}")
    print(f"stored states: {len(prefix.states)} batches, {sum(s.numel() for s in prefix.states.values()) * 4 / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
