"""A SAGO-style rule (ACL 2026): gate the two gradients per coordinate on their signs alone.

Where g_r and g_f conflict in sign, apply `maintain_scale * g_r` (descending the retain loss
there also raises the forget loss); elsewhere apply the forget-ascent direction
`-reverse_scale * g_f`. No magnitude test and no pruning: the comparison with `sgu` /
`sgu_reverse` shows what SGU's magnitude test and pruning add to sign gating.
"""

from __future__ import annotations

import torch

from sgu_llm.selection.actions import Action
from sgu_llm.selection.rules import register_selective_function
from sgu_llm.selection.thresholds import same_sign


@register_selective_function("sago")
def sago(g_r, g_f, tau_d=None, tau_m=None, *, maintain_scale=1.0, reverse_scale=1.0):
    """Conflict: `maintain_scale * g_r`; otherwise `-reverse_scale * g_f`.

    Example:
        >>> import torch
        >>> update, actions = sago(torch.tensor([1.0, 2.0]), torch.tensor([-3.0, 0.5]))
        >>> update.tolist(), actions.tolist()
        ([1.0, -0.5], [1, 2])
    """
    conflict = ~same_sign(g_r, g_f)
    update = torch.where(conflict, g_r * maintain_scale, g_f.to(g_r.dtype) * -reverse_scale)
    reverse = torch.tensor(int(Action.REVERSE), dtype=torch.int8, device=g_r.device)
    return update, torch.where(conflict, torch.ones_like(reverse), reverse)
