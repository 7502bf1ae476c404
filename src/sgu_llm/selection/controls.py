"""Controls for the selection: do SGU's choices matter, or only that something is left out?

- `retain_only`: maintain g_r everywhere: retain fine-tuning with the forget pass wasted (the
  forget gradient is computed and ignored). Anything a rule forgets beyond this control comes
  from the rule.
- `random_mask`: maintain g_r on as many coordinates of each tensor as the seed SGU rule would
  (the same `q_d`, the same tensor's thresholds), but chosen uniformly at random instead of by
  sign and magnitude; prune the rest. Same sparsity, no selection.
"""

from __future__ import annotations

import torch

from sgu_llm.selection.actions import Action
from sgu_llm.selection.rules import register_selective_function, sgu_select


@register_selective_function("retain_only")
def retain_only(g_r, g_f, tau_d=None, tau_m=None, *, maintain_scale=1.0, reverse_scale=1.0):
    """Maintain g_r on every coordinate (a control: no forgetting from the rule itself)."""
    return g_r * maintain_scale, torch.full_like(g_r, int(Action.MAINTAIN), dtype=torch.int8)


@register_selective_function("random_mask", thresholds=("d",), extras=("seed",))
def random_mask(g_r, g_f, tau_d, tau_m=None, *, maintain_scale=1.0, reverse_scale=1.0, seed=0):
    """Maintain g_r on k random coordinates, k = how many the seed SGU rule maintains here.

    Example:
        >>> import torch
        >>> g_r, g_f = torch.tensor([1.0, 3.0, 1.0, 1.0]), torch.tensor([-1.0, 1.0, 1.0, 4.0])
        >>> update, actions = random_mask(g_r, g_f, tau_d=1.0, seed=0)
        >>> int(actions.sum())  # SGU maintains 2 of these 4 coordinates
        2
    """
    _, sgu_actions = sgu_select(g_r, g_f, tau_d, None)
    k = int(sgu_actions.sum())
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    chosen = torch.randperm(g_r.numel(), generator=gen)[:k].to(g_r.device)
    keep = torch.zeros(g_r.numel(), dtype=torch.bool, device=g_r.device)
    keep[chosen] = True
    keep = keep.view_as(g_r)
    zero = torch.zeros((), dtype=g_r.dtype, device=g_r.device)
    return torch.where(keep, g_r * maintain_scale, zero), keep.to(torch.int8)
