"""Group rules: SGU decided per output neuron instead of per coordinate.

The coordinates of one row of a weight matrix (everything feeding one output neuron; for a LoRA A
matrix of shape (r, in), one rank component) act together: the neuron's output moves with the inner
product of the whole row with its input, so what matters is whether the row as a whole serves the
retain or the forget set. A per-coordinate rule can keep half of a row and drop the other half,
a change whose effect on the neuron is neither the retain step nor zero. The rules here apply the
SGU test to groups:

- a group is one row along dim 0 (the tensor viewed as (shape[0], -1)); a tensor with fewer than
  two dimensions (bias, norm weight) has one group per coordinate, so there the rules are
  per-coordinate SGU;
- per group: dot = <g_r, g_f>, |r| = |g_r|, |f| = |g_f| (float32, Euclidean norms over the group);
  the group conflicts when dot < 0 (for one-coordinate groups, when the signs differ, as in
  `sgu_select`, which cannot underflow);
- diff = |r| - |f|; tau_d is the `q_d` quantile (linear interpolation) of diff over the
  non-conflicting groups, +inf when there are none; maintain = conflict | (diff > tau_d);
- `sgu_row_reverse` also reverses: tau_m is the `q_m` quantile of -diff over the non-conflicting
  groups, reverse = ~maintain & (-diff > tau_m);
- maintained rows get `maintain_scale * g_r`, reversed rows `-reverse_scale * g_f`, the rest 0;
  the group's action is written to every coordinate of the group.

The thresholds are quantile levels over groups (`extras=("q",)`): the fixed `tau_d` / `tau_m` of
the selection settings, thresholds on coordinates, do not apply.
"""

from __future__ import annotations

import torch

from sgu_llm.selection.actions import Action
from sgu_llm.selection.rules import register_selective_function
from sgu_llm.selection.thresholds import quantiles, same_sign

# torch.quantile refuses inputs above 2**24 elements; larger populations go through `quantiles`.
_TORCH_QUANTILE_MAX = 2**24


def quantile_or_inf(values: torch.Tensor, q: float) -> torch.Tensor:
    """The `q` quantile of a 1-D float tensor (linear interpolation, as `torch.quantile`), 0-d float32.

    An empty population gives +inf: no value is above the threshold.

    Example:
        >>> quantile_or_inf(torch.tensor([4.0, 1.0, 3.0, 2.0]), 0.5).item(), quantile_or_inf(torch.zeros(0), 0.5)
        (2.5, tensor(inf))
    """
    values = values.reshape(-1).float()
    if values.numel() == 0:
        return torch.tensor(float("inf"), dtype=torch.float32, device=values.device)
    if values.numel() <= _TORCH_QUANTILE_MAX:
        return torch.quantile(values, q)
    return torch.tensor(quantiles(values, [q])[0], dtype=torch.float32, device=values.device)


def masked_update(
    g_r: torch.Tensor,
    g_f: torch.Tensor,
    maintain: torch.Tensor,
    reverse: torch.Tensor | None,
    maintain_scale: float,
    reverse_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(update, actions)` from maintain / reverse masks broadcastable to g_r (reverse wins nowhere
    maintain holds: the callers make them disjoint). Same arithmetic as `sgu_select`: the update is
    computed in g_r's dtype."""
    zero = torch.zeros((), dtype=g_r.dtype, device=g_r.device)
    update = torch.where(maintain, g_r * maintain_scale, zero)
    actions = maintain.to(torch.int8)  # MAINTAIN = 1, PRUNE = 0
    if reverse is not None:
        update = torch.where(reverse, g_f.to(update.dtype) * -reverse_scale, update)
        code = torch.tensor(int(Action.REVERSE), dtype=torch.int8, device=g_r.device)
        actions = torch.where(reverse, code, actions)
    return update, actions


def _row_select(
    g_r: torch.Tensor,
    g_f: torch.Tensor,
    q_d: float,
    q_m: float | None,
    maintain_scale: float,
    reverse_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The group SGU rule (see the module docstring); `q_m=None` never reverses."""
    shape = g_r.shape
    if g_r.numel() == 0:
        return g_r * maintain_scale, torch.zeros(shape, dtype=torch.int8, device=g_r.device)
    groups = shape[0] if g_r.dim() >= 2 else g_r.numel()
    r_rows = g_r.reshape(groups, -1)
    f_rows = g_f.reshape(groups, -1)
    r, f = r_rows.float(), f_rows.float()
    if r.shape[1] == 1:
        conflict = ~same_sign(r[:, 0], f[:, 0])
        diff = r[:, 0].abs() - f[:, 0].abs()
    else:
        conflict = (r * f).sum(1) < 0
        diff = torch.linalg.vector_norm(r, dim=1) - torch.linalg.vector_norm(f, dim=1)
    agree = ~conflict
    population = diff[agree]
    maintain = conflict | (diff > quantile_or_inf(population, q_d))
    reverse = None
    if q_m is not None:
        reverse = ~maintain & (-diff > quantile_or_inf(-population, q_m))
        reverse = reverse[:, None]
    update, actions = masked_update(r_rows, f_rows, maintain[:, None], reverse, maintain_scale, reverse_scale)
    return update.reshape(shape), actions.expand(r_rows.shape).reshape(shape)


@register_selective_function("sgu_row", extras=("q",), per_tensor=True)
def sgu_row(g_r, g_f, tau_d=None, tau_m=None, *, maintain_scale=1.0, reverse_scale=1.0, q_d=0.9, q_m=0.9):
    """SGU per row (output neuron): maintain conflicting or retain-dominated rows, prune the rest."""
    return _row_select(g_r, g_f, q_d, None, maintain_scale, reverse_scale)


@register_selective_function("sgu_row_reverse", extras=("q",), per_tensor=True)
def sgu_row_reverse(
    g_r, g_f, tau_d=None, tau_m=None, *, maintain_scale=1.0, reverse_scale=1.0, q_d=0.9, q_m=0.9
):
    """`sgu_row`, and reverse (-g_f) the rows where |g_f| - |g_r| exceeds its `q_m` quantile."""
    return _row_select(g_r, g_f, q_d, q_m, maintain_scale, reverse_scale)
