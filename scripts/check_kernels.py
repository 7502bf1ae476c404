"""The compiled selection kernels against the readable rule, on one device and several dtypes.

`sgu_llm.selection.sgu_select` is the contract; `sgu_llm.selection.fused.sgu_select_` (torch.compile:
C++ on CPU, Triton on GPU, used only once it agreed with the eager function on a probe) must give the
same update and the same action counts. For each (dtype, rule) it prints two verdicts:

- `compiled`: the compiled code alone (what the compiler made on this machine): ok, MISMATCH, or
  unavailable (it did not compile);
- `used`: what SGU computes here, compiled or the eager fallback the guard chose.

and the same for the thresholds' row kernel. Exits non-zero when what SGU uses disagrees with the rule;
`--strict` also when the compiled code alone does (a miscompilation the guard caught).

    python scripts/check_kernels.py [--device cuda] [--numel 1000003] [--strict]
    ATEN_CPU_CAPABILITY=avx2 python scripts/check_kernels.py   # another machine's kernels
"""

from __future__ import annotations

import argparse
import sys

import torch

from sgu_llm.selection import Action, sgu_select
from sgu_llm.selection.fused import STAT_COLUMNS, _select_kernel, sgu_select_
from sgu_llm.selection.kernel import describe_cpu, differences
from sgu_llm.selection.thresholds import _row_values, _row_values_kernel


def inputs(device: str, dtype: torch.dtype, numel: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    g_r = torch.randn(numel, generator=gen).to(device=device, dtype=dtype)
    g_f = torch.randn(numel, generator=gen).to(device=device, dtype=dtype)
    g_f[::7] = 0  # exact zeros: same-sign by the package's convention
    return g_r, g_f


def compare(out: torch.Tensor, stats: torch.Tensor, ref_update: torch.Tensor, ref_actions: torch.Tensor) -> tuple[float, int]:
    """Largest update difference and action-count mismatch against the readable rule."""
    diff = (out.float() - ref_update.to(out.dtype).float()).abs().max().item()
    counts = dict(zip(STAT_COLUMNS, stats.tolist()))
    wrong = abs(counts["maintain"] - (ref_actions == int(Action.MAINTAIN)).sum().item())
    wrong += abs(counts["reverse"] - (ref_actions == int(Action.REVERSE)).sum().item())
    return diff, int(wrong)


def verdict(diff: float, wrong: int) -> str:
    ok = diff == 0.0 and wrong == 0
    return f"max|update diff|={diff:.3g} action-count mismatch={wrong} {'ok' if ok else 'MISMATCH'}"


def check_rule(device: str, dtype: torch.dtype, numel: int, reverse: bool) -> tuple[str, bool | None, bool]:
    """(line, compiled code alone agrees (None: unavailable), what SGU uses agrees)."""
    g_r, g_f = inputs(device, dtype, numel)
    tau_d = torch.tensor(0.5, device=device)
    tau_m = torch.tensor(0.4 if reverse else float("inf"), device=device)
    ref_update, ref_actions = sgu_select(
        g_r.float(), g_f.float(), 0.5, 0.4 if reverse else None, maintain_scale=1.0, reverse_scale=1.0
    )
    used = g_r.clone()
    used_stats = sgu_select_(used, g_f, tau_d, tau_m, 1.0, 1.0, compile=True)
    used_diff, used_wrong = compare(used, used_stats, ref_update, ref_actions)
    if _select_kernel.compiled_code is None:
        raw_line, raw_ok = "compiled: unavailable", None
    else:
        raw = g_r.clone()
        raw_stats = _select_kernel.compiled_code(raw, g_f, tau_d, tau_m, 1.0, 1.0)
        diff, wrong = compare(raw, raw_stats, ref_update, ref_actions)
        raw_line, raw_ok = f"compiled: {verdict(diff, wrong)}", diff == 0.0 and wrong == 0
    rule = "sgu_reverse" if reverse else "sgu"
    line = (
        f"{device} {str(dtype):15s} {rule:12s} {raw_line} | used ({_select_kernel.mode}): "
        f"{verdict(used_diff, used_wrong)}"
    )
    return line, raw_ok, used_diff == 0.0 and used_wrong == 0


def check_rows(device: str, numel: int) -> tuple[str, bool | None, bool]:
    """The thresholds' row kernel (|g_r| - |g_f| of each row's population, member counts) against eager."""
    width = max(2, numel // 4)
    g_r, g_f = inputs(device, torch.float32, 4 * width, seed=1)
    args = (g_r.view(4, width), g_f.view(4, width), torch.tensor([width, width // 2, 1, 0], device=device), True)
    expected = _row_values(*args)
    used_ok = not differences(expected, _row_values_kernel(*args, compile=True))
    if _row_values_kernel.compiled_code is None:
        raw_line, raw_ok = "compiled: unavailable", None
    else:
        found = differences(expected, _row_values_kernel.compiled_code(*args))
        raw_line, raw_ok = f"compiled: {'; '.join(found[:2]) or 'ok'}", not found
    line = (
        f"{device} torch.float32   threshold_rows {raw_line} | used ({_row_values_kernel.mode}): "
        f"{'ok' if used_ok else 'MISMATCH'}"
    )
    return line, raw_ok, used_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--numel", type=int, default=1_000_003)
    parser.add_argument("--strict", action="store_true", help="also fail when the compiled code alone is wrong")
    args = parser.parse_args()
    print(describe_cpu())
    results = [
        check_rule(args.device, dtype, args.numel, reverse)
        for dtype in (torch.float32, torch.bfloat16, torch.float16)
        for reverse in (False, True)
    ]
    results.append(check_rows(args.device, args.numel))
    for line, _, _ in results:
        print(line)
    for name, fallback in (("sgu_select", _select_kernel.fallback), ("threshold_rows", _row_values_kernel.fallback)):
        if fallback:
            print(f"{name} runs eagerly here: {fallback}")
    failed = not all(used for _, _, used in results)
    failed |= args.strict and any(raw is False for _, raw, _ in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
