"""Metrics between two logging steps: weighted sums, reduced over processes when the Trainer logs."""

from __future__ import annotations

from typing import Any

import torch


class MetricBuffer:
    """Weighted sums of metrics between two logging steps, reduced over processes on `pop`."""

    def __init__(self):
        self._sums: dict[str, torch.Tensor] = {}
        self._weights: dict[str, torch.Tensor] = {}

    def add(self, key: str, total: torch.Tensor | float, weight: torch.Tensor | float = 1.0) -> None:
        total = torch.as_tensor(total, dtype=torch.float64).detach()
        weight = torch.as_tensor(weight, dtype=torch.float64).detach()
        if key in self._sums:
            self._sums[key] = self._sums[key] + total.to(self._sums[key].device)
            self._weights[key] = self._weights[key] + weight.to(self._weights[key].device)
        else:
            self._sums[key], self._weights[key] = total, weight

    def pop(self, accelerator: Any) -> dict[str, float]:
        """Global weighted means; every process must call this at the same point (it is a collective)."""
        keys = sorted(self._sums)
        if not keys:
            return {}
        device = accelerator.device
        packed = torch.stack(
            [
                torch.stack([self._sums[k].to(device) for k in keys]),
                torch.stack([self._weights[k].to(device) for k in keys]),
            ]
        )
        if accelerator.num_processes > 1:
            packed = accelerator.reduce(packed.float(), reduction="sum").double()
        self._sums.clear()
        self._weights.clear()
        return {k: (s / w).item() if w > 0 else float("nan") for k, s, w in zip(keys, packed[0], packed[1])}


