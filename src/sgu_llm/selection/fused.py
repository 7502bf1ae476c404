"""The SGU rule as one compiled call per tensor: statistics and the update, in place.

Eager PyTorch runs the rule as a dozen elementwise kernels, each a full pass over
g_r and g_f. Compiled (`torch.compile`, inductor: C++/OpenMP on CPU, Triton on
GPU), `sgu_select_` reads g_r and g_f once for all its reductions and once more
(from cache, a tensor at a time) to overwrite g_r with the update, so no new
gradient-sized tensor is allocated. Thresholds arrive as 0-d tensors: a Python
float would be baked into the compiled code and recompile every step.

A non-finite g_r or g_f coordinate makes that update coordinate non-finite (even
where the rule prunes), so a loss scaler still sees the overflow and skips the step.

If compilation is unavailable (no C++ compiler, an unsupported platform), the
same functions run eagerly after one warning: same numbers, slower.

Example:
    >>> import torch
    >>> g_r, g_f = torch.tensor([2.0, 3.0, 1.0]), torch.tensor([-1.0, 1.0, 4.0])
    >>> tau = torch.tensor(1.0)
    >>> stats = sgu_select_(g_r, g_f, tau, tau, 1.0, 1.0, compile=False)
    >>> stats[:3].tolist(), g_r.tolist()  # (maintained, reversed, conflicts), the update
    ([2.0, 1.0, 1.0], [2.0, 3.0, -4.0])
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

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


class Kernel:
    """`fn`, compiled on first use with dynamic shapes (one compilation serves every tensor size)."""

    def __init__(self, fn):
        self.fn = fn
        self.compiled = None
        self.broken = False

    def __call__(self, *args, compile: bool = True):
        if compile and not self.broken:
            if self.compiled is None:
                self.compiled = torch.compile(self.fn, dynamic=True)
            try:
                return self.compiled(*args)
            except Exception as err:  # compiler missing or backend failure: same maths, eagerly
                self.broken = True
                logger.warning("torch.compile failed for %s (%s); running it eagerly.", self.fn.__name__, err)
        return self.fn(*args)


_select_kernel = Kernel(_select_)


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
