"""Collectives for sharded gradients (FSDP2 DTensors, DeepSpeed ZeRO-3 partitions): the selection rule is
local, thresholds are not.

The per-coordinate rule only needs the two gradient values at a coordinate, so
each rank applies it to its own shard. A quantile threshold needs the whole
population; `all_gather_ragged` collects each rank's (exact or sampled) part of
it in two collectives per step, whatever the number of tensors. FSDP2's shards
arrive as DTensors; ZeRO-3's as plain local tensors described by a `Shards`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def all_gather_ragged(parts: list[torch.Tensor], group) -> list[torch.Tensor]:
    """All-gather a list of 1-D tensors of rank-dependent lengths; returns the concatenation over ranks.

    Element i of the result holds every rank's `parts[i]`, rank 0 first, so all
    ranks get identical tensors.
    """
    world = dist.get_world_size(group)
    device = parts[0].device if parts else torch.device("cpu")
    lengths = torch.tensor([p.numel() for p in parts], dtype=torch.long, device=device)
    all_lengths = [torch.empty_like(lengths) for _ in range(world)]
    dist.all_gather(all_lengths, lengths, group=group)
    totals = [int(t.sum()) for t in all_lengths]
    flat = torch.cat([p.float().reshape(-1) for p in parts]) if parts else torch.zeros(0, device=device)
    padded = torch.zeros(max(totals), dtype=torch.float32, device=device)
    padded[: flat.numel()] = flat
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    per_rank = [g[:t].split(lens.tolist()) for g, t, lens in zip(gathered, totals, all_lengths)]
    return [torch.cat([chunks[i] for chunks in per_rank]) for i in range(len(parts))]


@dataclass(frozen=True)
class Shards:
    """Plain tensors that are each rank's part of larger ones (DeepSpeed ZeRO-3 gradient partitions).

    `numels[i]` is the full size of tensor i; every rank of `group` holds a disjoint part of it (padding
    excluded), rank 0's first, so the concatenation over ranks is the full tensor's population.
    """

    numels: list[int]
    group: Any


def local_shards(
    grads: list[torch.Tensor], shards: Shards | None = None
) -> tuple[list[torch.Tensor], list[int], object]:
    """Local tensors, full sizes and process group of a list of gradients: DTensors, plain tensors described by
    `shards`, or unsharded ones.

    Returns group None when the gradients are not sharded. Mixing DTensors and plain tensors, or a DTensor
    over a multi-dimensional mesh (HSDP), raises: the thresholds would be gathered over the wrong ranks.
    """
    if shards is not None:
        if len(shards.numels) != len(grads) or any(isinstance(g, DTensor) for g in grads):
            raise ValueError("Shards describes plain local tensors, one full size per gradient")
        return grads, list(shards.numels), shards.group
    is_dtensor = [isinstance(g, DTensor) for g in grads]
    if not any(is_dtensor):
        return grads, [g.numel() for g in grads], None
    if not all(is_dtensor):
        raise ValueError(
            "some gradients are sharded DTensors and some are not; shard every trained parameter "
            "with fully_shard (FSDP2) or none"
        )
    mesh = grads[0].device_mesh
    if mesh.ndim != 1:
        raise ValueError(
            f"SGU selection supports a 1-D device mesh (FSDP2 fully_shard), got a {mesh.ndim}-D mesh (HSDP/TP)"
        )
    return [g.to_local() for g in grads], [g.numel() for g in grads], mesh.get_group()
