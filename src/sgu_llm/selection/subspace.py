"""A retain-subspace rule (H3 of the rules issue): forget by ascent, outside the span of recent retain gradients.

Coordinates are not independent, and one batch's g_r (or GRU's one averaged direction) describes the retain
set's sensitivity poorly. `retain_subspace` keeps, per parameter tensor, the last `SUBSPACE_SIZE` retain
gradients (flattened, float32) and removes from the forget ascent u = -g_f its component in their span, as
gradient-projection memory does for continual learning (orthonormal basis Q: the left singular vectors of the
stored gradients; u <- u - Q Q^T u). To first order the step then changes none of the last K batches' retain losses.

- the current g_r joins the buffer BEFORE projecting (the first step projects off g_r itself); a non-finite
  g_r is not stored;
- update = maintain_scale * g_r + reverse_scale * u;
- actions, a display convention as for `gru`: REVERSE where the forget term dominates the coordinate,
  MAINTAIN elsewhere; nothing is pruned.

The state (one dict per parameter tensor, owned by the caller) holds the (K, numel) buffer `retain_grads`
and the ring position `next`. Memory: K float32 copies of every trained tensor (LoRA: of the adapters).
"""

from __future__ import annotations

import torch

from sgu_llm.selection.actions import Action
from sgu_llm.selection.rules import register_selective_function

SUBSPACE_SIZE = 8


def store_retain_gradient(state: dict, g_r: torch.Tensor, size: int = SUBSPACE_SIZE) -> torch.Tensor:
    """Add the flattened float32 `g_r` to the ring buffer `state["retain_grads"]` (restarted when the tensor's
    shape changed; skipped when it is not finite) and return the filled rows (at most `size`)."""
    flat = g_r.detach().float().flatten()
    buf = state.get("retain_grads")
    if buf is None or buf.shape[1] != flat.numel() or buf.device != flat.device:
        buf = state["retain_grads"] = torch.zeros(size, flat.numel(), device=flat.device)
        state["next"], state["filled"] = 0, 0
    if bool(torch.isfinite(flat).all()):
        buf[state["next"]] = flat
        state["next"] = (state["next"] + 1) % size
        state["filled"] = min(state["filled"] + 1, size)
    return buf[: state["filled"]]


def project_off(u: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`u` (flat) minus its orthogonal projection onto the span of `rows` (k, numel); zero rows add nothing.

    Example:
        >>> project_off(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0]])).round().tolist()
        [0.0, 0.0, 3.0]
    """
    if rows.shape[0] == 0:
        return u
    basis, sv, _ = torch.linalg.svd(rows.T, full_matrices=False)  # (numel, k); the span's directions have sv > 0
    if not bool(sv.max() > 0):
        return u
    q = basis[:, sv > sv.max() * 1e-6]
    return u - q @ (q.T @ u)


@register_selective_function("retain_subspace", extras=("state",), per_tensor=True)
def retain_subspace(g_r, g_f, tau_d=None, tau_m=None, *, maintain_scale=1.0, reverse_scale=1.0, state=None):
    """Retain descent plus forget ascent projected off the span of the last `SUBSPACE_SIZE` retain gradients."""
    state = {} if state is None else state
    rows = store_retain_gradient(state, g_r)
    u = project_off(-g_f.detach().float().flatten(), rows).view_as(g_f)
    retain, forget = maintain_scale * g_r.float(), reverse_scale * u
    update = (retain + forget).to(g_r.dtype)
    actions = torch.where(
        forget.abs() > retain.abs(),
        torch.tensor(int(Action.REVERSE), dtype=torch.int8, device=g_r.device),
        torch.tensor(int(Action.MAINTAIN), dtype=torch.int8, device=g_r.device),
    )
    return update, actions
