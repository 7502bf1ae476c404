"""A GRU-style direction rule: forget by ascent, projected off the average retain direction.

In the spirit of GRU (Gradient Rectified Unlearning, ICML 2025): the update adds the forget-ascent
direction u = -g_f to the retain descent g_r, but where the ascent would raise the retain loss
it is first projected onto the plane orthogonal to the retain direction. The retain direction is
a bias-corrected exponential moving average m of g_r (`BETA` = 0.9) rather than one batch's
gradient, so one noisy retain batch does not steer the projection. Per tensor:

- m <- EMA of g_r, updated with the current g_r BEFORE projecting (the first step projects on
  g_r itself);
- u = -g_f; if <u, m> < 0 (the optimizer steps p <- p - lr * u, which changes the retain loss by
  about -lr <u, m> > 0) then u <- u - (<u, m> / |m|^2) m, skipped when |m| = 0;
- update = maintain_scale * g_r + reverse_scale * u, in g_r's dtype.

The rule is a direction rule: every coordinate gets both terms. The actions are a display
convention for the statistics: REVERSE where |reverse_scale * u| > |maintain_scale * g_r| (the
forget term dominates that coordinate), MAINTAIN elsewhere; nothing is pruned.

The state (one dict per parameter tensor, owned by the caller) holds `step` and the float32
bias-corrected average `mean_r` (see `sgu_llm.selection.importance`); a non-finite g_r leaves it
unchanged.

On shards (FSDP2, ZeRO-3) each rank keeps the average of its shard and the two inner products and
the finiteness test are all-reduced over the shards' process group, so every rank applies the
unsharded update to its part (two small collectives per tensor and step).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from sgu_llm.selection.actions import Action
from sgu_llm.selection.importance import BETA, next_step, update_average
from sgu_llm.selection.rules import register_selective_function


@register_selective_function("gru", extras=("state", "group"), per_tensor=True)
def gru(g_r, g_f, tau_d=None, tau_m=None, *, maintain_scale=1.0, reverse_scale=1.0, state=None, group=None):
    """Retain descent plus forget ascent, the ascent projected off the average retain gradient on conflict."""
    state = {} if state is None else state
    r = g_r.float()
    step = next_step(state, ("mean_r",), r)
    finite = torch.isfinite(r).all()
    if group is not None:  # finite on every shard
        bad = (~finite).float()
        dist.all_reduce(bad, group=group)
        finite = bad == 0
    m = update_average(state, "mean_r", r, step, BETA, finite=finite)
    u = -g_f.float()
    sums = torch.stack([(u * m).sum(), (m * m).sum()])
    if group is not None:
        dist.all_reduce(sums, group=group)
    dot, norm_m = sums[0], sums[1]
    # No host sync: the coefficient is 0 unless the ascent conflicts with m and m is not zero.
    coef = torch.where((dot < 0) & (norm_m > 0), dot / norm_m.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    u = u - coef * m
    retain, forget = maintain_scale * r, reverse_scale * u
    update = (retain + forget).to(g_r.dtype)
    actions = torch.where(
        forget.abs() > retain.abs(),
        torch.tensor(int(Action.REVERSE), dtype=torch.int8, device=g_r.device),
        torch.tensor(int(Action.MAINTAIN), dtype=torch.int8, device=g_r.device),
    )
    return update, actions
