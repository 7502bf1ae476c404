"""Rank error and cost of sampled per-tensor thresholds on real Llama gradients.

Trains a Llama built from config for a few AdamW steps on the synthetic TOFU data, takes one forget
gradient (forget10) and one retain gradient (retain90), and for every tensor above
`max_exact_quantile` compares the sampled threshold tau_d (`magnitude_thresholds`, per tensor,
same-sign population) with the tensor's exact population: its rank error is
F(tau_d) - q_d, F the population's empirical distribution. Prints, per sampler, the root mean
square of that error over tensors and seeds and the time of all the model's thresholds (median
over seeds). Samplers: independent coordinates (`block=1`) and blocks of 16 contiguous ones (the
default), at 2**12 to 2**14 samples. Ends with `rank_error=<rms of the default sampler>`.

    python scripts/threshold_accuracy.py [--hidden 512 --layers 4] [--seeds 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sgu_llm.selection.thresholds import (
    DEFAULT_SAMPLE_BLOCK,
    DEFAULT_SAMPLE_SIZE,
    MAX_EXACT_QUANTILE,
    magnitude_thresholds,
    same_sign,
)

SAMPLERS = [  # (samples, block)
    (2**14, 1),
    (2**12, 1),
    (DEFAULT_SAMPLE_SIZE, DEFAULT_SAMPLE_BLOCK),
    (2**13, DEFAULT_SAMPLE_BLOCK),
]


def gradients(hidden: int, layers: int, steps: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    from sgu_llm.data.prompts import build_prompt
    from sgu_llm.data.synthetic import synthetic_tofu
    from sgu_llm.models.tiny import tiny_llama, train_tokenizer

    torch.manual_seed(0)
    splits = synthetic_tofu(num_authors=100, seed=0)

    def text(row) -> str:
        return build_prompt(row["question"]) + row["answer"]

    tok = train_tokenizer([text(r) for r in splits["full"]], vocab_size=400)
    model = tiny_llama(tok, hidden_size=hidden, num_layers=layers, num_heads=max(1, hidden // 64), seed=0)

    def grad(rows) -> list[torch.Tensor]:
        model.zero_grad()
        enc = tok([text(r) for r in rows], return_tensors="pt", padding=True)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        model(**enc, labels=labels).loss.backward()
        return [p.grad.detach().clone() for p in model.parameters()]

    # A few steps away from the initialisation, so the gradients have a trained model's structure.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    full = list(splits["full"])
    for step in range(steps):
        grad(full[(step * 16) % len(full) :][:16])
        opt.step()
    return grad(list(splits["retain90"])[:16]), grad(list(splits["forget10"])[:16])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30, help="AdamW steps before the gradients are taken")
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--q", type=float, default=0.9)
    parser.add_argument("--max-exact", type=int, default=MAX_EXACT_QUANTILE)
    args = parser.parse_args()
    g_r, g_f = gradients(args.hidden, args.layers, args.steps)
    big = [i for i, g in enumerate(g_r) if g.numel() > args.max_exact]
    pops = []
    for i in big:
        r, f = g_r[i].flatten(), g_f[i].flatten()
        pops.append((r.abs() - f.abs())[same_sign(r, f)].sort().values)
    print(
        f"{len(g_r)} tensors, {len(big)} above max_exact={args.max_exact}, q={args.q}, seeds={args.seeds}, "
        f"threads={torch.get_num_threads()}"
    )
    default_rms = float("nan")
    for samples, block in SAMPLERS:
        errs, times = [], []
        for seed in range(args.seeds):
            start = time.perf_counter()
            taus, _ = magnitude_thresholds(
                g_r, g_f, args.q, None, max_exact=args.max_exact, sample_size=samples, block=block, seed=seed
            )
            times.append(time.perf_counter() - start)
            for i, pop in zip(big, pops):
                rank = torch.searchsorted(pop, torch.tensor(taus[i]), right=True).item() / pop.numel()
                errs.append(rank - args.q)
        e = torch.tensor(errs, dtype=torch.float64)
        rms = e.pow(2).mean().sqrt().item()
        print(
            f"samples={samples} block={block}: rank error rms={rms:.4f} mean={e.mean().item():+.4f} "
            f"max={e.abs().max().item():.4f}; all thresholds {statistics.median(times) * 1e3:.2f} ms"
        )
        if (samples, block) == (DEFAULT_SAMPLE_SIZE, DEFAULT_SAMPLE_BLOCK):
            default_rms = rms
    print(f"rank_error={default_rms:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
