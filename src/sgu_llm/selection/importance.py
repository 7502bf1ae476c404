"""Importance-weighted rules: SGU decided on running gradient magnitudes, not one batch.

A single batch's |g_r| - |g_f| is noisy: a coordinate that matters to the retain set can get a tiny
retain gradient from one batch and be pruned (or reversed) that step. These rules decide on a
coordinate's history instead: per tensor they keep exponential moving averages of g_r**2 and g_f**2
(a diagonal Fisher estimate, `BETA` = 0.9, bias-corrected so that the first step uses exactly g**2)
and compare the importances I_r = sqrt(avg g_r**2) and I_f = sqrt(avg g_f**2):

- conflict: the CURRENT gradients disagree in sign (`same_sign`), and the coordinate is maintained;
- d = I_r - I_f; tau_d is the `q_d` quantile of d over the same-sign coordinates (exact up to 2**16
  of them, else over 2**16 drawn with replacement by a generator seeded with the step's `seed`);
  maintain = conflict | (d > tau_d);
- `fisher_reverse` also reverses: tau_m is the `q_m` quantile of -d over the same population,
  reverse = ~maintain & (-d > tau_m).

Only the decision uses the history: the update is the current gradient (`maintain_scale * g_r`
where maintained, `-reverse_scale * g_f` where reversed, 0 elsewhere). On the first step the rules
equal per-coordinate SGU with the quantile thresholds of that step. A step whose gradients hold an
inf or nan (its update is non-finite, and a loss scaler skips it) leaves the averages unchanged.

The state (one dict per parameter tensor, owned by the caller) holds `step` and the float32
bias-corrected averages `sq_r`, `sq_f`. They are stored corrected, updated as
avg <- avg + w_t (g**2 - avg) with w_t = (1 - BETA) / (1 - BETA**t), which equals
ema_t / (1 - BETA**t) for ema_t = BETA * ema_{t-1} + (1 - BETA) * g**2, ema_0 = 0.
"""

from __future__ import annotations

import torch

from sgu_llm.selection.group import masked_update, quantile_or_inf
from sgu_llm.selection.rules import register_selective_function
from sgu_llm.selection.thresholds import same_sign

BETA = 0.9
# Above this many same-sign coordinates the thresholds come from a sample of this size.
MAX_EXACT = 2**16


def update_average(
    state: dict,
    key: str,
    value: torch.Tensor,
    step: int,
    beta: float = BETA,
    finite: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fold `value` (float32) into the bias-corrected EMA `state[key]` at step `step` (1-based); return it.

    An average of another shape or device (the tensor changed) is restarted. Where `finite` (a 0-d
    bool tensor) is False the average is left as it was, with no host sync: a step with a non-finite
    gradient, which a loss scaler skips, must not poison the history (a restart then starts from 0).
    """
    avg = state.get(key)
    if step == 1 or avg is None or avg.shape != value.shape or avg.device != value.device:
        avg = value.clone() if finite is None else torch.where(finite, value, 0.0)
    else:
        if finite is not None:
            value = torch.where(finite, value, avg)
        avg.lerp_(value, (1.0 - beta) / (1.0 - beta**step))
    state[key] = avg
    return avg


def next_step(state: dict, keys: tuple[str, ...], like: torch.Tensor) -> int:
    """Advance `state["step"]`, restarting at 1 when a stored average no longer fits `like`."""
    fits = all(k in state and state[k].shape == like.shape and state[k].device == like.device for k in keys)
    step = state.get("step", 0) + 1 if fits else 1
    state["step"] = step
    return step


def _threshold_population(d: torch.Tensor, agree: torch.Tensor, seed: int) -> torch.Tensor:
    values = torch.masked_select(d, agree)
    if values.numel() <= MAX_EXACT:
        return values
    gen = torch.Generator(device=values.device)
    gen.manual_seed(seed)
    idx = torch.randint(values.numel(), (MAX_EXACT,), generator=gen, device=values.device)
    return values[idx]


def _fisher_select(g_r, g_f, state, q_d, q_m, seed, maintain_scale, reverse_scale):
    state = {} if state is None else state
    r, f = g_r.float(), g_f.float()
    step = next_step(state, ("sq_r", "sq_f"), r)
    finite = torch.isfinite(r).all() & torch.isfinite(f).all()
    importance_r = update_average(state, "sq_r", r * r, step, finite=finite).sqrt()
    importance_f = update_average(state, "sq_f", f * f, step, finite=finite).sqrt()
    d = importance_r - importance_f
    agree = same_sign(g_r, g_f)
    population = _threshold_population(d, agree, seed)
    maintain = ~agree | (d > quantile_or_inf(population, q_d))
    reverse = None
    if q_m is not None:
        reverse = ~maintain & (-d > quantile_or_inf(-population, q_m))
    return masked_update(g_r, g_f, maintain, reverse, maintain_scale, reverse_scale)


@register_selective_function("fisher", extras=("state", "q", "seed"), per_tensor=True)
def fisher(
    g_r,
    g_f,
    tau_d=None,
    tau_m=None,
    *,
    maintain_scale=1.0,
    reverse_scale=1.0,
    state=None,
    q_d=0.9,
    q_m=0.9,
    seed=0,
):
    """SGU on running importances: maintain conflicts and retain-important coordinates, prune the rest."""
    return _fisher_select(g_r, g_f, state, q_d, None, seed, maintain_scale, reverse_scale)


@register_selective_function("fisher_reverse", extras=("state", "q", "seed"), per_tensor=True)
def fisher_reverse(
    g_r,
    g_f,
    tau_d=None,
    tau_m=None,
    *,
    maintain_scale=1.0,
    reverse_scale=1.0,
    state=None,
    q_d=0.9,
    q_m=0.9,
    seed=0,
):
    """`fisher`, and reverse (-g_f) where I_f - I_r exceeds its `q_m` quantile."""
    return _fisher_select(g_r, g_f, state, q_d, q_m, seed, maintain_scale, reverse_scale)
