"""Selection time against the memory-bandwidth floor.

For n coordinates in one tensor, times `select_gradients` as the trainer calls it (the default `sgu`
rule, in place: sampled threshold, then one compiled call for the statistics and the update) and an
elementwise pass over the same bytes (read g_r and g_f, write the update:
`torch.add(g_r, g_f, out=update)`), interleaved over `--repeats` rounds, and prints the ratio of their
medians, plus the eager (uncompiled) selection for comparison. Ends with `ratio=<number>` for the
largest n. At 1e6 float32 coordinates (12 MB) the floor runs from cache on most CPUs, while the
selection pays fixed per-call costs (~0.6 ms on a CPU), so the ratio there says more about the cache
than about the selection. `--model` does the same over a 29.6M-parameter Llama's 65 tensors.

    python scripts/bench_selection.py [--sizes 1e6 1e7 1e8] [--device cuda] [--model]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from sgu_llm.selection import SelectionSettings, select_gradients


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    """Best of `repeats` (for the slow eager reference only)."""
    fn()  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def interleaved(fns: dict, device: str, repeats: int) -> dict[str, float]:
    """Median time of each function, the functions run in turn `repeats` times.

    Interleaving and medians: on a shared machine the memory bandwidth drifts by tens of per cent
    between seconds, which would bias a ratio of separately timed best cases.
    """
    for fn in fns.values():
        fn()  # warm-up (compilation, allocator)
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(n: int, device: str, settings: SelectionSettings, repeats: int) -> tuple[float, float, float]:
    gen = torch.Generator(device=device).manual_seed(0)
    g_r = torch.randn(n, device=device, generator=gen)
    g_f = torch.randn(n, device=device, generator=gen)
    out = torch.empty_like(g_r)
    work = g_r.clone()

    def select(s: SelectionSettings) -> None:
        work.copy_(g_r)  # timed separately and subtracted: the trainer selects on param.grad in place
        select_gradients([work], [g_f], s, inplace=True)

    t = interleaved(
        {
            "floor": lambda: torch.add(g_r, g_f, out=out),
            "copy": lambda: work.copy_(g_r),
            "select": lambda: select(settings),
        },
        device,
        repeats,
    )
    eager = timed(lambda: select(replace(settings, fused=False)), device, 1) - t["copy"]
    return t["floor"], t["select"] - t["copy"], eager


def measure_model(device: str, settings: SelectionSettings, repeats: int) -> tuple[float, float, int, int]:
    """The same, over the parameter tensors of bench_step.py's 29.6M-parameter Llama (random gradients)."""
    from sgu_llm.models.tiny import tiny_llama, train_tokenizer

    tok = train_tokenizer(["a tokenizer only needs some text to train on"] * 8, vocab_size=400)
    shapes = [
        p.shape for p in tiny_llama(tok, hidden_size=512, num_layers=7, num_heads=8, seed=0).parameters()
    ]
    gen = torch.Generator(device=device).manual_seed(0)
    g_r = [torch.randn(s, device=device, generator=gen) for s in shapes]
    g_f = [torch.randn(s, device=device, generator=gen) for s in shapes]
    out = [torch.empty_like(r) for r in g_r]
    work = [r.clone() for r in g_r]

    def copy() -> None:
        for w, r in zip(work, g_r):
            w.copy_(r)

    def select() -> None:
        copy()
        select_gradients(work, g_f, settings, inplace=True)

    t = interleaved(
        {
            "floor": lambda: [torch.add(r, f, out=o) for r, f, o in zip(g_r, g_f, out)],
            "copy": copy,
            "select": select,
        },
        device,
        repeats,
    )
    return t["floor"], t["select"] - t["copy"], len(shapes), sum(r.numel() for r in g_r)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="*", type=float, default=[1e6, 1e7, 1e8])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--function", default="sgu")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds (medians are reported)")
    parser.add_argument(
        "--model", action="store_true", help="also time a whole model's tensors (29.6M Llama)"
    )
    args = parser.parse_args()
    settings = SelectionSettings(function=args.function)
    print(
        f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} function={args.function}"
    )
    ratio = float("nan")
    for size in args.sizes:
        n = int(size)
        floor, select, eager = measure(n, args.device, settings, args.repeats)
        ratio = select / floor
        gbps = 3 * 4 * n / floor / 1e9
        print(
            f"n={n:.0e} floor={floor * 1e3:.2f} ms ({gbps:.1f} GB/s) select={select * 1e3:.2f} ms "
            f"ratio={ratio:.2f} eager={eager * 1e3:.1f} ms ({eager / floor:.1f}x)"
        )
    if args.model:
        # Per-tensor thresholds (the default) pay a fixed sampling cost per tensor; one global threshold
        # samples 2**14 coordinates across the whole model.
        for scope in ("tensor", "global"):
            floor, select, tensors, n = measure_model(
                args.device, replace(settings, threshold_scope=scope), args.repeats
            )
            print(
                f"model ({scope} thresholds): {tensors} tensors, {n / 1e6:.1f}M coordinates: "
                f"floor={floor * 1e3:.2f} ms select={select * 1e3:.2f} ms ratio={select / floor:.2f}"
            )
    print(f"ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
