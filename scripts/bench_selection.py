"""Selection time against the memory-bandwidth floor.

For n coordinates, times `select_gradients` (the default `sgu` rule: thresholds, update, actions and
statistics) and an elementwise pass over the same bytes (read g_r and g_f, write the update:
`torch.add(g_r, g_f, out=update)`), and prints their ratio. Ends with `ratio=<number>` for the largest n.

    python scripts/bench_selection.py [--sizes 1e6 1e7 1e8] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch

from sgu_llm.selection import SelectionSettings, select_gradients


def timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def measure(n: int, device: str, settings: SelectionSettings, repeats: int) -> tuple[float, float]:
    gen = torch.Generator(device=device).manual_seed(0)
    g_r = torch.randn(n, device=device, generator=gen)
    g_f = torch.randn(n, device=device, generator=gen)
    out = torch.empty_like(g_r)
    floor = timed(lambda: torch.add(g_r, g_f, out=out), device, repeats)
    select = timed(lambda: select_gradients([g_r], [g_f], settings), device, repeats)
    return floor, select


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="*", type=float, default=[1e6, 1e7, 1e8])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--function", default="sgu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = SelectionSettings(function=args.function)
    print(
        f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} function={args.function}"
    )
    ratio = float("nan")
    for size in args.sizes:
        n = int(size)
        floor, select = measure(n, args.device, settings, args.repeats)
        ratio = select / floor
        gbps = 3 * 4 * n / floor / 1e9
        print(
            f"n={n:.0e} floor={floor * 1e3:.2f} ms ({gbps:.1f} GB/s) select={select * 1e3:.2f} ms ratio={ratio:.2f}"
        )
    print(f"ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
