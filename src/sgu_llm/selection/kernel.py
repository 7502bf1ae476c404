"""Compiled kernels that are trusted only after they agree with their own eager function.

`Kernel(fn, probe)` compiles `fn` (`torch.compile`, dynamic shapes) on first use. Before the compiled code
computes anything that counts, it runs on probe inputs built like the call's (same devices, dtypes, flags and
0/1 sizes, other sizes large enough for every vector and thread path) and must give what `fn` gives eagerly:
bit for bit, except where a kernel names a tolerance (reductions in another order). A compiler can be wrong
on a platform nobody tried, and its cache can serve code built for another instruction set (inductor's did:
`isa_keyed`, `docs/reliability.md`), so this runs once per process and per kind of call. Where the compiled
kernel disagrees, or does not compile, the same `fn` runs eagerly from then on, after one warning that says
why: same numbers, slower.

`kernel_calls()` and `arithmetic()` say which path ran and on what arithmetic, for a run's records.

Example:
    >>> import torch
    >>> k = Kernel(lambda x: x * 2, name="double")
    >>> k(torch.ones(3), compile=False).tolist(), k.mode
    ([2.0, 2.0, 2.0], 'eager')
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

logger = logging.getLogger(__name__)

KERNELS: dict[str, Kernel] = {}
PROBE_NUMEL = 2**16 + 37  # past inductor's 4096-wide cascade sums and any thread split, with a vector tail


class KernelMismatch(RuntimeError):
    """The compiled kernel gave other numbers than its eager function on a probe."""


def probe_values(numel: int, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
    """Gradient-like values that meet every branch of a sign / magnitude rule: both signs, exact and signed
    zeros, values far below and far above the rest, and one inf, -inf and nan (where `numel` allows)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(numel, generator=gen)
    x[seed % 11 :: 11] = 0.0
    x[3::17] = -0.0
    x[5::19] *= 1e-30  # underflows where the dtype cannot hold it: still a zero of some sign
    x[7::23] *= 1e4
    for i, v in zip((9 + seed, 10 + seed, 12 + seed), (float("inf"), float("-inf"), float("nan"))):
        if i < numel:
            x[i] = v
    return x.to(device=device, dtype=dtype)


def probe_size(n: int, large: int = PROBE_NUMEL) -> int:
    """A probe size in the same class as `n` for dynamic shapes: 0 and 1 are specialised, the rest are not."""
    return n if n < 2 else large


def differences(expected: Any, got: Any, close: Callable[[int], Any] | None = None) -> list[str]:
    """Where two results (tensors or nested tuples of them) differ: NaN matches NaN, -0 matches +0; leaf i
    (in depth-first order) is compared within `close(i)` = (rtol, atol) when that is given (floats, or
    tensors of one value per element), else exactly."""
    a, b = _leaves(expected), _leaves(got)
    if len(a) != len(b):
        return [f"{len(b)} outputs where {len(a)} were expected"]
    out = []
    for i, (x, y) in enumerate(zip(a, b)):
        if not isinstance(x, torch.Tensor):
            if x != y:
                out.append(f"output {i}: {y!r} where {x!r} was expected")
            continue
        if x.shape != y.shape or x.dtype != y.dtype:
            out.append(f"output {i}: {tuple(y.shape)} {y.dtype} where {tuple(x.shape)} {x.dtype} was expected")
            continue
        x, y = x.detach().double().cpu().reshape(-1), y.detach().double().cpu().reshape(-1)
        tol = close(i) if close else None
        nan_x, nan_y = x.isnan(), y.isnan()
        bad = (nan_x != nan_y) | (~nan_x & ~nan_y & (x != y))
        if tol is not None:  # within tolerance where both are finite; non-finite values still exactly
            rtol, atol = (torch.as_tensor(t, dtype=torch.float64).reshape(-1) for t in tol)
            near = (x - y).abs() <= atol + rtol * x.abs()
            bad &= ~(near & x.isfinite() & y.isfinite())
        if bad.any():
            finite = bad & x.isfinite() & y.isfinite()
            worst = (x[finite] - y[finite]).abs().max().item() if finite.any() else float("nan")
            out.append(
                f"output {i}: {int(bad.sum())} of {x.numel()} values differ (largest finite difference {worst:.3g}; "
                f"first at index {int(bad.nonzero()[0])}: {y[bad][0].item():.6g} where {x[bad][0].item():.6g} was "
                "expected)"
            )
    return out


def _leaves(x: Any) -> list:
    if isinstance(x, (tuple, list)):
        return [leaf for item in x for leaf in _leaves(item)]
    return [x]


def _clone(args: Sequence) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _signature(args: Sequence) -> tuple:
    """What makes torch.compile build another graph: devices, dtypes, ranks, 0/1 sizes, non-tensor values."""
    return tuple(
        (a.device.type, a.dtype, tuple(min(s, 2) for s in a.shape)) if isinstance(a, torch.Tensor) else ("py", a)
        for a in args
    )


class Kernel:
    """`fn`, compiled on first use with dynamic shapes (one compilation serves every tensor size), used only
    after it agreed with `fn` on `probe(args)`: a list of argument tuples built like `args`.

    `fn` may write into its tensor arguments: those are compared too. `close(i)` gives the (rtol, atol) for
    output leaf i where the compiled code may sum in another order (None: bit for bit). Without a `probe` the
    call's own arguments (cloned) are the probe. A `name` registers it for `kernel_calls` and `arithmetic`.
    """

    def __init__(
        self,
        fn: Callable,
        probe: Callable[[tuple], list[tuple]] | None = None,
        close: Callable[[tuple, int], Any] | None = None,
        name: str | None = None,
    ):
        self.fn = fn
        self.probe = probe
        self.close = close
        self.name = name or fn.__name__
        self.compiled: Callable | None = None
        self.fallback: str | None = None  # why it runs eagerly, once it does
        self.checked: set[tuple] = set()
        self.calls = {"compiled": 0, "eager": 0}
        if name is not None:  # the package's kernels, for `arithmetic`
            KERNELS[name] = self

    @property
    def mode(self) -> str:
        """How its calls so far ran: 'compiled', 'eager', 'compiled, then eager', or 'unused'."""
        return _mode(self.calls)

    @property
    def compiled_code(self) -> Callable | None:
        """The compiled function, where compilation succeeded (trusted or not); None otherwise."""
        compile_failed = self.fallback is not None and self.fallback.startswith("torch.compile failed")
        return None if compile_failed else self.compiled

    def __call__(self, *args, compile: bool = True):
        if compile and self.fallback is None:
            try:
                fn = self._trusted(args)
            except KernelMismatch as err:
                self._fall_back(f"the compiled kernel disagrees with the eager function on a probe: {err}")
            except Exception as err:  # compiler missing or backend failure: same maths, eagerly
                self._fall_back(f"torch.compile failed ({_first_lines(err)})")
            else:
                self.calls["compiled"] += 1
                return fn(*args)
        self.calls["eager"] += 1
        return self.fn(*args)

    def check(self, args: tuple) -> list[str]:
        """The compiled kernel against `fn` on the probes for `args`: the differences found (none: agreed).
        Raises what compilation raises."""
        if self.compiled is None:
            self.compiled = isa_keyed(torch.compile(self.fn, dynamic=True))
        found = []
        for probe_args in self.probe(args) if self.probe else [_clone(args)]:
            eager_args, compiled_args = _clone(probe_args), _clone(probe_args)
            expected = (self.fn(*eager_args), *[a for a in eager_args if isinstance(a, torch.Tensor)])
            got = (self.compiled(*compiled_args), *[a for a in compiled_args if isinstance(a, torch.Tensor)])
            close = (lambda i: self.close(probe_args, i)) if self.close else None  # noqa: B023 (used right away)
            found += differences(expected, got, close)
        return found

    def _trusted(self, args: tuple) -> Callable:
        key = _signature(args)
        if key not in self.checked:
            found = self.check(args)
            if found:
                raise KernelMismatch("; ".join(found[:3]))
            self.checked.add(key)
        return self.compiled  # type: ignore[return-value]

    def _fall_back(self, why: str) -> None:
        self.fallback = why
        logger.warning(
            "%s: %s (%s). Running it eagerly from now on: the same numbers, slower.", self.name, why, describe_cpu()
        )


@functools.cache
def isa_tag() -> str:
    """What inductor's generated C++ depends on that its on-disk cache key leaves out (torch 2.13): the vector
    instruction set it picked (`ATEN_CPU_CAPABILITY`, then what the CPU has)."""
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        picked = str(pick_vec_isa()) or "none"
    except Exception:  # inductor's private module moved: the capability alone still separates the kernel sets
        picked = "unknown"
    return f"sgu-llm: cpu capability {torch.backends.cpu.get_cpu_capability()}, inductor vec isa {picked}"


def isa_keyed(compiled: Callable) -> Callable:
    """`compiled`, called with the vector instruction set in torch.compile's cache key tag.

    Inductor caches a compiled graph's generated C++ on disk (`/tmp/torchinductor_$USER`) under a key without
    the vector ISA it generated for, and rebuilds it with the current one's flags: code generated for AVX-512
    (16 floats a step) built for AVX2 (8) computes half the lanes, and AVX2 code built for AVX-512 reads past
    its buffers and aborts the process. Any process that shares the cache with another kernel set (a forced
    `ATEN_CPU_CAPABILITY`, a cache directory shared by unlike machines) hits it; keyed by the ISA, each set
    builds its own."""

    def run(*args, **kwargs):
        tag = torch.compiler.config.cache_key_tag
        with torch.compiler.config.patch(cache_key_tag=f"{tag}|{isa_tag()}" if tag else isa_tag()):
            return compiled(*args, **kwargs)

    return run



def _mode(calls: dict[str, int]) -> str:
    used = [m for m in ("compiled", "eager") if calls[m]]
    return ", then ".join(used) if used else "unused"


def _first_lines(err: Exception) -> str:
    """An exception in a line or two: its first line and a compiler's first `error:` line."""
    lines = [x.strip() for x in str(err).splitlines() if x.strip()]
    picked = lines[:1] + [x for x in lines[1:] if "error:" in x][:1]
    return f"{type(err).__name__}: " + " ... ".join(x[:240] for x in picked)


def describe_cpu() -> str:
    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    return f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}" + (
        f" (ATEN_CPU_CAPABILITY={forced})" if forced else ""
    )


def kernel_calls() -> dict[str, dict[str, int]]:
    """Each kernel's calls so far, by path: a snapshot to pass to `arithmetic(since=...)`."""
    return {name: dict(k.calls) for name, k in KERNELS.items()}


def arithmetic(since: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    """What computed a run's numbers: torch's version, the CPU kernels in use (and a forced capability), the
    GPU if one is used, and per kernel called since the `kernel_calls()` snapshot `since` how its calls ran
    ('compiled' / 'eager' / 'compiled, then eager', with why where it fell back)."""
    since = since or {}
    kernels = {}
    for name, k in KERNELS.items():
        before = since.get(name, {"compiled": 0, "eager": 0})
        delta = {m: k.calls[m] - before.get(m, 0) for m in ("compiled", "eager")}
        if any(delta.values()):
            kernels[name] = {"mode": _mode(delta), **delta, "fallback": k.fallback}
    out: dict[str, Any] = {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY"),
        "selection_kernels": kernels,
    }
    if torch.cuda.is_available():
        out["cuda"] = {"version": torch.version.cuda, "device": torch.cuda.get_device_name()}
    return out
