"""The SGU rule as one compiled call per tensor: statistics and the update, in place.

Eager PyTorch runs the rule as a dozen elementwise kernels, each a full pass over
g_r and g_f. Compiled (`torch.compile`, inductor: C++/OpenMP on CPU, Triton on
GPU), `sgu_select_` reads g_r and g_f once for all its reductions and once more
(from cache, a tensor at a time) to overwrite g_r with the update, so no new
gradient-sized tensor is allocated. Thresholds arrive as 0-d tensors: a Python
float would be baked into the compiled code and recompile every step.

A non-finite g_r or g_f coordinate makes that update coordinate non-finite (even
where the rule prunes), so a loss scaler still sees the overflow and skips the step.

The compiled kernel is used only after it agreed with `_select_` run eagerly on probe
inputs (`sgu_llm.selection.kernel`); where it does not, or compilation is unavailable
(no C++ compiler, an unsupported platform), the same function runs eagerly after one
warning: same numbers, slower.

Example:
    >>> import torch
    >>> g_r, g_f = torch.tensor([2.0, 3.0, 1.0]), torch.tensor([-1.0, 1.0, 4.0])
    >>> tau = torch.tensor(1.0)
    >>> stats = sgu_select_(g_r, g_f, tau, tau, 1.0, 1.0, compile=False)
    >>> stats[:3].tolist(), g_r.tolist()  # (maintained, reversed, conflicts), the update
    ([2.0, 1.0, 1.0], [2.0, 3.0, -4.0])
"""

from __future__ import annotations

import torch

from sgu_llm.selection.kernel import Kernel, probe_size, probe_values

STAT_COLUMNS = ("maintain", "reverse", "conflict", "dot", "norm_r2", "norm_f2")


def _masks(r: torch.Tensor, f: torch.Tensor, tau_d: torch.Tensor, tau_m: torch.Tensor):
    conflict = ((r > 0) & (f < 0)) | ((r < 0) & (f > 0))
    diff = r.abs() - f.abs()
    maintain = conflict | (diff > tau_d)
    reverse = ~maintain & (-diff > tau_m)
    return conflict, maintain, reverse


def _select_(
    g_r: torch.Tensor,
    g_f: torch.Tensor,
    tau_d: torch.Tensor,
    tau_m: torch.Tensor,
    maintain_scale: float,
    reverse_scale: float,
) -> torch.Tensor:
    r, f = g_r.float(), g_f.float()
    conflict, maintain, reverse = _masks(r, f, tau_d, tau_m)
    # Float sums: int64 reductions vectorise poorly on CPU (5x slower here); counts stay exact
    # while each partial sum is below 2**24.
    stats = torch.stack(
        [
            maintain.float().sum(),
            reverse.float().sum(),
            conflict.float().sum(),
            (r * f).sum(),
            (r * r).sum(),
            (f * f).sum(),
        ]
    )
    update = torch.where(maintain, r * maintain_scale, torch.where(reverse, f * -reverse_scale, 0.0))
    # + 0 * (r + f): nan where an input is inf or nan, +-0 elsewhere.
    g_r.copy_((update + (r + f) * 0.0).to(g_r.dtype))
    return stats


def _select_probes(args: tuple) -> list[tuple]:
    """Probe inputs for `_select_` like `args` (dtypes, device, scales): finite and non-finite gradients with
    ties |g_r| = |g_f| of both signs, against thresholds that test each branch (and +inf, which disables one)."""
    g_r, g_f, tau_d, tau_m, maintain_scale, reverse_scale = args
    n = probe_size(g_r.numel())
    r = probe_values(n, g_r.dtype, g_r.device, seed=0)
    f = probe_values(n, g_f.dtype, g_f.device, seed=1)
    f[2::5], f[4::5] = r[2::5].to(f.dtype), -r[4::5].to(f.dtype)  # ties, agreeing and conflicting
    finite_r, finite_f = r.nan_to_num(0.0, 0.0, 0.0), f.nan_to_num(0.0, 0.0, 0.0)
    inf = float("inf")
    out = []
    for d, m in ((0.5, 0.4), (0.0, 0.0), (-0.25, inf), (inf, 0.3), (inf, inf)):
        taus = [torch.tensor(t, dtype=tau_d.dtype, device=tau_d.device) for t in (d, m)]
        out.append((finite_r, finite_f, *taus, maintain_scale, reverse_scale))
    out.append((r, f, out[0][2], out[0][3], maintain_scale, reverse_scale))
    return out


def _select_close(args: tuple, leaf: int) -> tuple | None:
    """The update and the three counts bit for bit; the sums (dot, squared norms) may add in another order."""
    if leaf != 0:
        return None  # leaf 1 on: the update written into g_r, the other arguments
    r, f = args[0].float(), args[1].float()
    scale = (r * f).abs().sum() + (r * r).sum() + (f * f).sum()
    atol = torch.cat([torch.zeros(3), torch.full((3,), 1e-5 * scale.item())])
    return torch.cat([torch.zeros(3), torch.full((3,), 1e-5)]), atol


_select_kernel = Kernel(_select_, probe=_select_probes, close=_select_close, name="sgu_select")


def sgu_select_(
    g_r: torch.Tensor,
    g_f: torch.Tensor,
    tau_d: torch.Tensor,
    tau_m: torch.Tensor,
    maintain_scale: float,
    reverse_scale: float,
    *,
    compile: bool = True,
) -> torch.Tensor:
    """Overwrite g_r with the SGU update and return the rule's statistics on the inputs.

    The statistics are a float32 vector in `STAT_COLUMNS` order. `tau_d` / `tau_m`
    are 0-d tensors; +inf disables the magnitude test (maintain only conflicts) or
    the reverse action. The update is `sgu_llm.selection.sgu_select`'s.
    """
    if not g_r.is_contiguous():
        raise ValueError("sgu_select_ writes in place and needs a contiguous g_r")
    return _select_kernel(
        g_r.view(-1),
        g_f.reshape(-1),
        tau_d,
        tau_m,
        float(maintain_scale),
        float(reverse_scale),
        compile=compile,
    )
