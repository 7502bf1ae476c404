"""Selective functions: map (g_r, g_f) to the update the optimizer receives.

Each function is pure: tensors in, `(update, actions)` out, no Trainer state.
Register a new one with one decorator line; the trainer finds it by name
(`SGUConfig.selective_function`).

Example:
    >>> import torch
    >>> from sgu_llm.selection import Action, register_selective_function
    >>> @register_selective_function("retain_only_doc_example")
    ... def retain_only(g_r, g_f, tau_d, tau_m, *, maintain_scale=1.0, reverse_scale=1.0):
    ...     return maintain_scale * g_r, torch.full_like(g_r, int(Action.MAINTAIN), dtype=torch.int8)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sgu_llm.selection.actions import Action
from sgu_llm.selection.thresholds import same_sign

SelectFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class SelectiveFunction:
    """A registered selective function and the thresholds it needs computed."""

    name: str
    fn: SelectFn
    uses_tau_d: bool = False
    uses_tau_m: bool = False
    # Extra keyword arguments the rule receives (see `register_selective_function`).
    extras: tuple[str, ...] = ()
    # A coordinate's update depends on other coordinates of its tensor (dot products, rows, own
    # quantiles): such a rule cannot run on shards (FSDP2, ZeRO-3), which hold part of each tensor,
    # unless it takes the "group" extra and reduces its per-tensor sums over the shards itself.
    per_tensor: bool = False

    @property
    def runs_sharded(self) -> bool:
        """Whether the rule gives the unsharded update when each rank applies it to its shard."""
        return not self.per_tensor or "group" in self.extras


RULE_EXTRAS = ("state", "q", "seed", "name", "group")


_REGISTRY: dict[str, SelectiveFunction] = {}


def register_selective_function(
    name: str, *, thresholds: tuple[str, ...] = (), extras: tuple[str, ...] = (), per_tensor: bool = False
) -> Callable[[SelectFn], SelectFn]:
    """Register `fn(g_r, g_f, tau_d, tau_m, *, maintain_scale, reverse_scale) -> (update, actions)`.

    Args:
        name: lowercase registry key, used as `SGUConfig.selective_function`.
        thresholds: which adaptive thresholds the function reads: `"d"` (tau_d),
            `"m"` (tau_m). Those not named are passed as None and not computed.
        extras: more keyword arguments the rule wants, from `RULE_EXTRAS`:
            `"state"` a dict kept per parameter tensor across steps (running averages; the
            trainer owns it), `"q"` the quantile levels `q_d` and `q_m` (for rules that take
            their own quantiles, e.g. over groups), `"seed"` an int that differs per tensor and
            step and is equal on every rank, `"name"` the parameter's name, `"group"` the process
            group the tensor is sharded over (None when the rule sees the whole tensor).
        per_tensor: the update of a coordinate depends on other coordinates of the same tensor
            (dot products, rows, quantiles the rule takes itself). Such a rule is refused on
            sharded gradients (FSDP2, ZeRO-3) instead of silently running per shard, unless it takes
            `"group"` and all-reduces its per-tensor quantities over it.

    The registered `fn` is what runs: the selection layer uses its fused kernels only for the
    built-in functions it knows they implement (`FUSED_IMPLEMENTATIONS`), never for a user's rule.
    """
    key = name.lower()
    unknown = set(thresholds) - {"d", "m"}
    if unknown:
        raise ValueError(f"thresholds may name 'd' and 'm', got {sorted(unknown)}")
    bad = set(extras) - set(RULE_EXTRAS)
    if bad:
        raise ValueError(f"extras may name {RULE_EXTRAS}, got {sorted(bad)}")

    def decorator(fn: SelectFn) -> SelectFn:
        if key in _REGISTRY:
            raise ValueError(f"a selective function named {key!r} is already registered")
        _REGISTRY[key] = SelectiveFunction(
            key, fn, "d" in thresholds, "m" in thresholds, tuple(extras), per_tensor
        )
        return fn

    return decorator


def get_selective_function(name: str) -> SelectiveFunction:
    """Look up a selective function by name, with a helpful error."""
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown selective function {name!r}; registered: {sorted(_REGISTRY)}. "
            "Add one with @sgu_llm.selection.register_selective_function."
        ) from None


def list_selective_functions() -> list[str]:
    return sorted(_REGISTRY)


def _conflict(g_r: torch.Tensor, g_f: torch.Tensor) -> torch.Tensor:
    return ~same_sign(g_r, g_f)


def sgu_select(
    g_r: torch.Tensor,
    g_f: torch.Tensor,
    tau_d: float | torch.Tensor,
    tau_m: float | torch.Tensor | None = None,
    *,
    maintain_scale: float = 1.0,
    reverse_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed SGU rule, per coordinate.

    - maintain (`maintain_scale * g_r`) where g_r * g_f < 0, or where
      g_r * g_f >= 0 and |g_r| - |g_f| > tau_d;
    - reverse (`-reverse_scale * g_f`) where tau_m is not None, the maintain
      test failed, g_r * g_f >= 0 and |g_f| - |g_r| > tau_m;
    - prune (0) elsewhere.

    Both comparisons are strict, so a coordinate exactly at a threshold is
    pruned. Signs are compared directly rather than through the product, which
    could underflow to 0 for tiny gradients.

    Returns:
        `(update, actions)`: the update in g_r's dtype and an int8 tensor of
        `Action` codes, both of g_r's shape.

    Example:
        >>> import torch
        >>> g_r = torch.tensor([1.0, 3.0, 1.0, 1.0])
        >>> g_f = torch.tensor([-1.0, 1.0, 1.0, 4.0])
        >>> update, actions = sgu_select(g_r, g_f, tau_d=1.0, tau_m=2.0)
        >>> update.tolist(), actions.tolist()
        ([1.0, 3.0, 0.0, -4.0], [1, 1, 0, 2])
    """
    diff = g_r.abs() - g_f.abs()
    maintain = _conflict(g_r, g_f) | (diff > tau_d)
    update = torch.where(maintain, g_r * maintain_scale, torch.zeros((), dtype=g_r.dtype, device=g_r.device))
    actions = maintain.to(torch.int8)  # MAINTAIN = 1, PRUNE = 0
    if tau_m is not None:
        # -diff > tau_m  <=>  |g_f| - |g_r| > tau_m; conflicts are already in `maintain`.
        reverse = ~maintain & (-diff > tau_m)
        update = torch.where(reverse, g_f.to(update.dtype) * -reverse_scale, update)
        actions = torch.where(
            reverse, torch.tensor(int(Action.REVERSE), dtype=torch.int8, device=g_r.device), actions
        )
    return update, actions


@register_selective_function("sgu", thresholds=("d",))
def _sgu(g_r, g_f, tau_d, tau_m, *, maintain_scale=1.0, reverse_scale=1.0):
    return sgu_select(g_r, g_f, tau_d, None, maintain_scale=maintain_scale)


@register_selective_function("sgu_reverse", thresholds=("d", "m"))
def _sgu_reverse(g_r, g_f, tau_d, tau_m, *, maintain_scale=1.0, reverse_scale=1.0):
    return sgu_select(g_r, g_f, tau_d, tau_m, maintain_scale=maintain_scale, reverse_scale=reverse_scale)


@register_selective_function("sign_conflict")
def sign_conflict(g_r, g_f, tau_d=None, tau_m=None, *, maintain_scale=1.0, reverse_scale=1.0):
    """Keep g_r only where it conflicts in sign with g_f; prune everywhere else."""
    conflict = _conflict(g_r, g_f)
    update = torch.where(conflict, g_r * maintain_scale, torch.zeros((), dtype=g_r.dtype, device=g_r.device))
    return update, conflict.to(torch.int8)


@register_selective_function("pcgrad", per_tensor=True)
def pcgrad(g_r, g_f, tau_d=None, tau_m=None, *, maintain_scale=1.0, reverse_scale=1.0):
    """Per tensor, remove from g_r its component along g_f when they agree.

    Where g_r . g_f > 0, descending g_r would also descend the forget loss
    (relearn); the projection g_r - (g_r . g_f / |g_f|^2) g_f leaves the forget
    loss unchanged to first order. Where they already conflict g_r is kept.
    The whole tensor counts as maintained: the rule sees directions, not
    coordinates.
    """
    r, f = g_r.float(), g_f.float()
    dot = (r * f).sum()
    norm_f = (f * f).sum()
    coef = torch.where((dot > 0) & (norm_f > 0), dot / norm_f.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    update = ((r - coef * f) * maintain_scale).to(g_r.dtype)
    return update, torch.full_like(g_r, int(Action.MAINTAIN), dtype=torch.int8)


# The functions above that equal `sgu_select(g_r, g_f, tau_d or inf, tau_m or inf)` for the thresholds they
# read: the selection layer may run these (and only these) through the one-pass kernels of
# `sgu_llm.selection.fused`; tests/test_selection.py checks that the two agree on every dtype.
FUSED_IMPLEMENTATIONS = frozenset({_sgu, _sgu_reverse, sign_conflict})
