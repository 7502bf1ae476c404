"""The compiled SGU kernel against the readable rule, on one device and several dtypes.

`sgu_llm.selection.sgu_select` is the contract; `sgu_llm.selection.fused.sgu_select_` (torch.compile:
C++ on CPU, Triton on GPU) must give the same update and the same action counts. Prints one line per
(dtype, rule) with the largest update difference and the number of coordinates whose action differs;
exits non-zero on a mismatch.

    python scripts/check_kernels.py [--device cuda] [--numel 1000003]
"""

from __future__ import annotations

import argparse
import sys

import torch

from sgu_llm.selection import Action, sgu_select
from sgu_llm.selection.fused import STAT_COLUMNS, sgu_select_


def check(device: str, dtype: torch.dtype, numel: int, reverse: bool, seed: int = 0) -> tuple[float, int]:
    gen = torch.Generator().manual_seed(seed)
    g_r = torch.randn(numel, generator=gen).to(device=device, dtype=dtype)
    g_f = torch.randn(numel, generator=gen).to(device=device, dtype=dtype)
    g_f[::7] = 0  # exact zeros: same-sign by the package's convention
    tau_d = torch.tensor(0.5, device=device)
    tau_m = torch.tensor(0.4 if reverse else float("inf"), device=device)
    ref_update, ref_actions = sgu_select(
        g_r.float(), g_f.float(), 0.5, 0.4 if reverse else None, maintain_scale=1.0, reverse_scale=1.0
    )
    out = g_r.clone()
    stats = sgu_select_(out, g_f, tau_d, tau_m, 1.0, 1.0, compile=True)
    diff = (out.float() - ref_update.to(dtype).float()).abs().max().item()
    counts = dict(zip(STAT_COLUMNS, stats.tolist()))
    wrong = abs(counts["maintain"] - (ref_actions == int(Action.MAINTAIN)).sum().item())
    wrong += abs(counts["reverse"] - (ref_actions == int(Action.REVERSE)).sum().item())
    return diff, int(wrong)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--numel", type=int, default=1_000_003)
    args = parser.parse_args()
    failed = False
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for reverse in (False, True):
            diff, wrong = check(args.device, dtype, args.numel, reverse)
            ok = diff == 0.0 and wrong == 0
            failed |= not ok
            rule = "sgu_reverse" if reverse else "sgu"
            print(
                f"{args.device} {str(dtype):15s} {rule:12s} max|update diff|={diff:.3g} "
                f"action-count mismatch={wrong} {'ok' if ok else 'MISMATCH'}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
