"""How SGU holds the forget and the retain gradient of one optimizer step side by side.

Three strategies, each owning its buffers, with the same three operations:

- `forget_pass(model, batch, sizes)`: one forget micro-batch's backward, its gradient g_f kept
  apart from the g_r that `param.grad` accumulates;
- `retain_pass(model, batch, sizes, last)`: one retain micro-batch's backward (`last`: the final
  micro-batch of the accumulation window); returns its loss;
- `select()`: at the end of the window, `param.grad` <- the selective function of (g_r, g_f).

They get from the trainer `backward(model, {split: batch}, sizes) -> loss` (the stock
`Trainer.training_step`: loss, scaling and Accelerate's backward) and the selection over the
window, so the same code runs in `SGUTrainer` and in the FSDP2 test worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from sgu_llm.selection.sharded import Shards

Backward = Callable[[Any, dict, Any], torch.Tensor]
# select(g_r per parameter, g_f per parameter, dtype for a missing one[, shards]) -> (indices selected, updates);
# shards (sgu_llm.selection.sharded.Shards): the inputs are each rank's parts of the parameters' gradients.
SelectWindow = Callable[..., tuple[list[int], list[torch.Tensor]]]


def accumulate(buffer: torch.Tensor | None, grad: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Add `grad` into a stash entry (created in `dtype`, None = the gradient's own)."""
    if buffer is not None:
        return buffer.add_(grad)
    return grad if dtype in (None, grad.dtype) else grad.to(dtype)


class StashPairing:
    """Pointer swaps of `param.grad`: during a forget pass g_r is held aside and the stash (g_f so far) is
    put back in `param.grad`, so the backward accumulates g_f there; afterwards g_f returns to the stash.
    DDP reduces each gradient once, on the window's last backward. Memory: the stash, 1x the trainable
    gradient bytes (0.5x in bf16).

    With `fsdp2`, every backward reduce-scatters into `param.grad`: FSDP2 accumulates unsynced micro-batches
    in its own unsharded buffers, where g_f and g_r would mix.
    """

    def __init__(
        self,
        params: list[torch.nn.Parameter],
        backward: Backward,
        select_window: SelectWindow,
        stash_dtype: torch.dtype | None = None,
        fsdp2: bool = False,
    ):
        self.params, self.backward, self.select_window = params, backward, select_window
        self.stash_dtype, self.fsdp2 = stash_dtype, fsdp2
        self.stash: list[torch.Tensor | None] = [None] * len(params)

    def _sync_every_backward(self, model: Any) -> None:
        if self.fsdp2 and hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(True)

    def forget_pass(self, model: Any, batch: dict, sizes: Any) -> None:
        self._sync_every_backward(model)
        held = [p.grad for p in self.params]
        for i, p in enumerate(self.params):
            s, self.stash[i] = self.stash[i], None
            p.grad = s if s is None or s.dtype == p.dtype else s.to(p.dtype)
        self.backward(model, {"forget": batch}, sizes)
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self.stash[i] = accumulate(None, p.grad, self.stash_dtype)
            p.grad = held[i]

    def retain_pass(self, model: Any, batch: dict, sizes: Any, last: bool) -> torch.Tensor:
        self._sync_every_backward(model)
        return self.backward(model, {"retain": batch}, sizes)

    @torch.no_grad()
    def select(self) -> None:
        stash, self.stash = self.stash, [None] * len(self.params)
        live, updates = self.select_window([p.grad for p in self.params], stash, None)
        for i, update in zip(live, updates):
            self.params[i].grad = update  # the same tensor unless param.grad was None


class LeanPairing:
    """One process, less memory: post-accumulate-grad hooks move each parameter's g_f into the stash as soon
    as it is complete and, during the window's last retain backward, select each parameter as soon as its
    g_r is complete and free its stash entry, so the stash shrinks while g_r grows.

    `select_one(i, g_r, g_f)` selects parameter i in place and returns its statistics; `record(stats by
    parameter index)` logs the step's.
    """

    def __init__(
        self,
        params: list[torch.nn.Parameter],
        backward: Backward,
        select_one: Callable[[int, torch.Tensor, torch.Tensor], Any],
        record: Callable[[dict[int, Any]], None],
        stash_dtype: torch.dtype | None = None,
    ):
        self.params, self.backward, self.select_one, self.record = params, backward, select_one, record
        self.stash_dtype = stash_dtype
        self.stash: list[torch.Tensor | None] = [None] * len(params)
        self.phase: str | None = None  # "forget" or "select" while a hooked backward runs
        self.rows: dict[int, Any] = {}  # this step's selection statistics, by parameter index
        for i, p in enumerate(params):
            p.register_post_accumulate_grad_hook(self._hook(i))

    def _hook(self, i: int) -> Callable[[torch.nn.Parameter], None]:
        @torch.no_grad()
        def hook(param: torch.nn.Parameter) -> None:
            if self.phase == "forget":
                self.stash[i] = accumulate(self.stash[i], param.grad, self.stash_dtype)
                param.grad = None
            elif self.phase == "select":
                g_f = self.stash[i] if self.stash[i] is not None else torch.zeros_like(param.grad)
                self.rows[i] = self.select_one(i, param.grad, g_f)
                self.stash[i] = None  # freed while the backward goes on

        return hook

    @contextlib.contextmanager
    def _phase(self, phase: str | None):
        self.phase = phase
        try:
            yield
        finally:
            self.phase = None

    def forget_pass(self, model: Any, batch: dict, sizes: Any) -> None:
        held = [p.grad for p in self.params]  # g_r of earlier micro-batches, aside while the hooks take g_f
        for p in self.params:
            p.grad = None
        with self._phase("forget"):
            self.backward(model, {"forget": batch}, sizes)
        for p, g in zip(self.params, held):
            p.grad = g

    def retain_pass(self, model: Any, batch: dict, sizes: Any, last: bool) -> torch.Tensor:
        with self._phase("select" if last else None):
            return self.backward(model, {"retain": batch}, sizes)

    @torch.no_grad()
    def select(self) -> None:
        # Parameters that got a forget gradient but no retain gradient this step.
        for i, p in enumerate(self.params):
            if self.stash[i] is not None and i not in self.rows:
                p.grad = torch.zeros_like(p)
                self.rows[i] = self.select_one(i, p.grad, self.stash[i])
                self.stash[i] = None
        rows, self.rows = self.rows, {}
        if rows:
            self.record(rows)


class DeepSpeedPairing:
    """DeepSpeed ZeRO-0/1/2, through DeepSpeed's safe full-gradient accessors (ZeRO-3: `ZeRO3Pairing`).

    After each backward the full (reduced) gradient of every parameter is read with `safe_get_full_grad`
    and accumulated here (g_f in the stash, g_r beside it); the engine's gradients are then zeroed. At the
    end of the window the update is selected on the full tensors (identically on every rank), written
    back with `safe_set_full_grad`, and the engine steps (clipping, optimizer, scheduler). Both full
    gradients live on every rank: ZeRO partitions the optimizer state, not SGU's gradients.
    """

    def __init__(
        self,
        params: list[torch.nn.Parameter],
        backward: Backward,
        select_window: SelectWindow,
        accelerator: Any,
        stash_dtype: torch.dtype | None = None,
    ):
        self.params, self.backward, self.select_window = params, backward, select_window
        self.accelerator, self.stash_dtype = accelerator, stash_dtype
        self.stash: list[torch.Tensor | None] = [None] * len(params)
        self.retain: list[torch.Tensor | None] = [None] * len(params)

    @contextlib.contextmanager
    def _backward_only(self):
        """Accelerate steps the engine inside `backward` on the last micro-batch; SGU must read both gradients
        and select first. Every pass is marked a boundary so ZeRO reduces it."""
        wrapper = self.accelerator.deepspeed_engine_wrapped

        def backward(loss, sync_gradients=True, **kwargs):
            wrapper.engine.set_gradient_accumulation_boundary(is_boundary=True)
            wrapper.engine.backward(loss, **kwargs)

        wrapper.backward = backward  # instance attribute: shadows the method while SGU runs
        try:
            yield
        finally:
            del wrapper.backward

    def _take(self, into: list[torch.Tensor | None], dtype: torch.dtype | None) -> None:
        """Every parameter's reduced full gradient (a collective per parameter), added to `into`; the engine's
        gradients are zeroed."""
        from deepspeed.utils import safe_get_full_grad, safe_set_full_grad

        for i, p in enumerate(self.params):
            g = safe_get_full_grad(p)
            if g is not None:
                g = g.clone()
                safe_set_full_grad(p, torch.zeros_like(g))
                into[i] = accumulate(into[i], g, dtype)

    def forget_pass(self, model: Any, batch: dict, sizes: Any) -> None:
        with self._backward_only():
            self.backward(model, {"forget": batch}, sizes)
            self._take(self.stash, self.stash_dtype)

    def retain_pass(self, model: Any, batch: dict, sizes: Any, last: bool) -> torch.Tensor:
        with self._backward_only():
            loss = self.backward(model, {"retain": batch}, sizes)
            self._take(self.retain, None)
        return loss

    @torch.no_grad()
    def select(self) -> None:
        from deepspeed.utils import safe_set_full_grad

        retain, self.retain = self.retain, [None] * len(self.params)
        stash, self.stash = self.stash, [None] * len(self.params)
        live, updates = self.select_window(retain, stash, torch.float32)
        engine = self.accelerator.deepspeed_engine_wrapped.engine
        if not live:
            # A skipped step (non-finite gradients, see SGUTrainer._record): the engine's gradients are already
            # zero, but its optimizer would still move the weights (AdamW's momentum). Only the schedule advances,
            # as in the Trainer's own loop when no parameter has a gradient.
            if engine.lr_scheduler is not None:
                engine.lr_scheduler.step()
            return
        for i, update in zip(live, updates):
            safe_set_full_grad(self.params[i], update)
        engine.set_gradient_accumulation_boundary(is_boundary=True)
        engine.step()


class ZeRO3Pairing(DeepSpeedPairing):
    """DeepSpeed ZeRO-3: each rank keeps and selects only its partition of every gradient.

    After each backward every parameter's reduced gradient partition is read with `safe_get_local_grad`
    (fp32, this rank's slice of the flattened parameter), accumulated here (g_f in the stash, g_r beside
    it) and zeroed in the engine. At the end of the window the rule runs on the partitions, the quantile
    thresholds are gathered over the ranks (exact up to `max_exact_quantile` coordinates per tensor, a
    stratified sample above: the code FSDP2's shards use, `sgu_llm.selection.sharded`), the update is
    written back with `safe_set_local_grad`, and the engine steps. No rank holds a full gradient: SGU adds
    two fp32 partitions (g_f and g_r) per parameter, 2 x 4 bytes x trainable parameters / world size.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = self.params[0].ds_process_group if self.params else None
        if self.group is None:  # DeepSpeed's default: the world
            self.group = dist.group.WORLD
        rank = dist.get_rank(self.group)
        self.numels = [int(p.ds_numel) for p in self.params]
        # This rank's partition of the flattened parameter: [rank * size, (rank + 1) * size), padded at the end.
        self.valid = [
            max(0, min(p.ds_tensor.numel(), p.ds_numel - rank * p.ds_tensor.numel())) for p in self.params
        ]
        if len({id(getattr(p, "ds_process_group", None)) for p in self.params}) > 1:
            raise ValueError(
                "SGU under ZeRO-3 needs every trained parameter partitioned over one process group (no MiCS or "
                "sequence-parallel groups): its thresholds are gathered over that group"
            )

    def _take(self, into: list[torch.Tensor | None], dtype: torch.dtype | None) -> None:
        """Every parameter's reduced local gradient partition (no collective), added to `into`; the engine's
        partitions are zeroed."""
        from deepspeed.utils import safe_get_local_grad, safe_set_local_grad

        for i, p in enumerate(self.params):
            g = safe_get_local_grad(p)
            if g is not None:
                g = g.clone()
                safe_set_local_grad(p, torch.zeros_like(g))
                into[i] = accumulate(into[i], g[: self.valid[i]], dtype)

    @torch.no_grad()
    def select(self) -> None:
        from deepspeed.utils import safe_set_local_grad

        retain, self.retain = self.retain, [None] * len(self.params)
        stash, self.stash = self.stash, [None] * len(self.params)
        live, updates = self.select_window(retain, stash, torch.float32, Shards(self.numels, self.group))
        engine = self.accelerator.deepspeed_engine_wrapped.engine
        if not live:  # a skipped step, as in DeepSpeedPairing
            if engine.lr_scheduler is not None:
                engine.lr_scheduler.step()
            return
        for i, update in zip(live, updates):
            p = self.params[i]
            full = torch.zeros(p.ds_tensor.numel(), dtype=torch.float32, device=update.device)
            full[: self.valid[i]] = update
            safe_set_local_grad(p, full)
        engine.set_gradient_accumulation_boundary(is_boundary=True)
        engine.step()
