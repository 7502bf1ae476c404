"""Selective Gradient Unlearning: separate forget and retain gradients, combined per coordinate.

Per micro-batch the forget and retain batches get their own backward pass. The
forget gradient g_f accumulates in a stash (one gradient-sized buffer), the
retain gradient g_r in `param.grad` as usual; the two are swapped by pointer,
never copied. On the last micro-batch of the accumulation window - after
DDP has reduced each of them once - the selective function turns them into the
update written to `param.grad`, and the stock Trainer clips, steps the
optimizer and the scheduler.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from sgu_llm.losses import npo_loss
from sgu_llm.selection import (
    ACTION_NAMES,
    THRESHOLD_POPULATIONS,
    THRESHOLD_SCOPES,
    SelectionSettings,
    get_selective_function,
    select_gradients,
)
from sgu_llm.selection.thresholds import DEFAULT_SAMPLE_SIZE, MAX_EXACT_QUANTILE
from sgu_llm.trainers.base import UnlearnConfig, UnlearnTrainer

FORGET_LOSSES = ("nll", "npo")


@dataclass
class SGUConfig(UnlearnConfig):
    """Configuration of Selective Gradient Unlearning.

    Example:
        >>> from sgu_llm import SGUConfig
        >>> cfg = SGUConfig(output_dir="out", selective_function="sgu_reverse", q_d=0.8, report_to="none")
        >>> cfg.selection().q_m
        0.9
    """

    selective_function: str = field(
        default="sgu",
        metadata={
            "help": "Registered selective function: 'sgu' (seed rule, no reverse), 'sgu_reverse', "
            "'sign_conflict', 'pcgrad', or one you registered."
        },
    )
    q_d: float = field(
        default=0.9,
        metadata={"help": "Quantile of |g_r| - |g_f| used as tau_d (maintain threshold), in (0, 1)."},
    )
    q_m: float = field(
        default=0.9,
        metadata={"help": "Quantile of |g_f| - |g_r| used as tau_m (reverse threshold), in (0, 1)."},
    )
    tau_d: float | None = field(
        default=None, metadata={"help": "Fixed absolute tau_d; replaces the q_d quantile when set."}
    )
    tau_m: float | None = field(
        default=None, metadata={"help": "Fixed absolute tau_m; replaces the q_m quantile when set."}
    )
    threshold_scope: str = field(
        default="tensor",
        metadata={
            "help": f"Quantiles per parameter tensor or over all unlearned parameters: {THRESHOLD_SCOPES}."
        },
    )
    threshold_population: str = field(
        default="same_sign",
        metadata={
            "help": "Coordinates the quantiles are taken over: 'same_sign' (g_r * g_f >= 0, where the thresholds "
            f"apply) or 'all'. One of {THRESHOLD_POPULATIONS}."
        },
    )
    maintain_scale: float = field(
        default=1.0, metadata={"help": "The maintain action applies maintain_scale * g_r."}
    )
    reverse_scale: float = field(
        default=1.0, metadata={"help": "The reverse action applies -reverse_scale * g_f."}
    )
    forget_loss: str = field(
        default="nll",
        metadata={
            "help": "Loss whose gradient is g_f. 'nll': reverse is gradient ascent on the forget NLL (unbounded). "
            "'npo': g_f is minus the gradient of a length-normalised NPO loss; it equals the NLL gradient at the "
            "start and fades as the forget log-likelihood falls below the reference's, so reverse cannot run away."
        },
    )
    npo_beta: float = field(
        default=1.0, metadata={"help": "Inverse temperature (per token) of forget_loss='npo'."}
    )
    max_exact_quantile: int = field(
        default=MAX_EXACT_QUANTILE,
        metadata={"help": "Tensors (or populations, for global scope) up to this size get exact quantiles."},
    )
    quantile_sample_size: int = field(
        default=DEFAULT_SAMPLE_SIZE,
        metadata={"help": "Coordinates sampled to estimate a quantile above max_exact_quantile."},
    )
    log_tensor_actions: bool = field(
        default=False,
        metadata={
            "help": "Append per-parameter-tensor action fractions to output_dir/sgu_actions.jsonl at each log."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        get_selective_function(self.selective_function)  # raises with the registered names
        for name in ("q_d", "q_m"):
            q = getattr(self, name)
            if not 0.0 < q < 1.0:
                raise ValueError(f"{name} must lie strictly between 0 and 1, got {q}")
        if self.threshold_scope not in THRESHOLD_SCOPES:
            raise ValueError(
                f"threshold_scope must be one of {THRESHOLD_SCOPES}, got {self.threshold_scope!r}"
            )
        if self.threshold_population not in THRESHOLD_POPULATIONS:
            raise ValueError(
                f"threshold_population must be one of {THRESHOLD_POPULATIONS}, got {self.threshold_population!r}"
            )
        if self.forget_loss not in FORGET_LOSSES:
            raise ValueError(f"forget_loss must be one of {FORGET_LOSSES}, got {self.forget_loss!r}")
        if self.npo_beta <= 0:
            raise ValueError(f"npo_beta must be positive, got {self.npo_beta}")
        if self.maintain_scale < 0 or self.reverse_scale < 0:
            raise ValueError(
                "maintain_scale and reverse_scale must be >= 0 (the sign of each action is fixed)"
            )
        if self.quantile_sample_size < 1 or self.max_exact_quantile < 1:
            raise ValueError("quantile_sample_size and max_exact_quantile must be positive")

    def selection(self) -> SelectionSettings:
        return SelectionSettings(
            function=self.selective_function,
            q_d=self.q_d,
            q_m=self.q_m,
            tau_d=self.tau_d,
            tau_m=self.tau_m,
            threshold_scope=self.threshold_scope,
            threshold_population=self.threshold_population,
            maintain_scale=self.maintain_scale,
            reverse_scale=self.reverse_scale,
            max_exact_quantile=self.max_exact_quantile,
            quantile_sample_size=self.quantile_sample_size,
        )


class SGUTrainer(UnlearnTrainer):
    """Trainer for SGU over LoRA adapters or (a regex-chosen subset of) full parameters.

    Logs `loss/forget`, `loss/retain`, `sgu/{prune,maintain,reverse}_frac`,
    `sgu/conflict_frac`, `sgu/tau_d`, `sgu/tau_m` and `sgu/grad_cosine`; the
    Trainer's own `loss` is the retain NLL, the objective SGU descends.

    Example:
        >>> trainer = SGUTrainer(model, SGUConfig(output_dir="out", report_to="none"),  # doctest: +SKIP
        ...                      forget_dataset=forget, retain_dataset=retain, processing_class=tokenizer,
        ...                      peft_config=LoraConfig(target_modules=["q_proj", "v_proj"]))
        >>> trainer.train()  # doctest: +SKIP
    """

    config_class = SGUConfig

    @classmethod
    def needs_reference_model(cls, args):
        return args.forget_loss == "npo"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._settings = self.args.selection()
        self._named_params: list[tuple[str, torch.nn.Parameter]] | None = None
        self._stash: list[torch.Tensor | None] = []
        self._tensor_counts: torch.Tensor | None = None
        self.selection_skipped_steps = 0
        # Called as fn(step, tensor_names, counts[num_tensors, 3]) after every selection (e.g. by the SAE probe).
        self.selection_observers: list = []

    def _params(self) -> list[tuple[str, torch.nn.Parameter]]:
        if self._named_params is None:
            self._named_params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
            self._stash = [None] * len(self._named_params)
        return self._named_params

    def _swap_grads(self) -> None:
        """Exchange `param.grad` with the stash (pointer swap, no copy)."""
        for i, (_, p) in enumerate(self._params()):
            p.grad, self._stash[i] = self._stash[i], p.grad

    def training_step(self, model, inputs, num_items_in_batch=None):
        sizes = self._sizes(num_items_in_batch, inputs)
        self._swap_grads()  # param.grad <- g_f accumulated so far
        super().training_step(model, {"forget": inputs["forget"]}, sizes)
        self._swap_grads()  # param.grad <- g_r; stash <- g_f
        loss_r = super().training_step(model, {"retain": inputs["retain"]}, sizes)
        if self.accelerator.sync_gradients:
            self._select()
        return loss_r

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ((split, batch),) = inputs.items()
        sizes = self._sizes(num_items_in_batch, inputs)
        if split == "forget" and self.args.forget_loss == "npo":
            nll, ntok = self.forward_nll(model, batch, split)
            ref_nll, _ = self.reference_nll(model, batch)
            # Length-normalised NPO; g_f = -grad(L), i.e. the *learning* direction, as for the NLL.
            logp, ref_logp = -nll / ntok.clamp_min(1), -ref_nll / ntok.clamp_min(1)
            return -npo_loss(logp, ref_logp, self.args.npo_beta).sum() / sizes[split][1]
        return self.nll_loss(model, inputs, split, sizes)

    @torch.no_grad()
    def _select(self) -> None:
        params = self._params()
        live = [i for i, (_, p) in enumerate(params) if p.grad is not None or self._stash[i] is not None]
        g_r, g_f = [], []
        for i in live:
            r, f = params[i][1].grad, self._stash[i]
            g_r.append(r if r is not None else torch.zeros_like(f))
            g_f.append(f if f is not None else torch.zeros_like(r))
        updates, stats = select_gradients(
            g_r, g_f, self._settings, seed=self.args.seed * 1_000_003 + self.state.global_step
        )
        if torch.isfinite(stats.norm_r2 + stats.norm_f2):
            for i, u in zip(live, updates):
                params[i][1].grad = u
            for key, value in stats.summary().items():
                self._metrics.add(key, value)
            self._metrics.add("sgu/nonfinite_frac", 0.0)
            if self.selection_observers:
                names = [params[i][0] for i in live]
                counts_cpu = stats.counts.cpu()
                for observe in self.selection_observers:
                    observe(self.state.global_step, names, counts_cpu)
            if self.args.log_tensor_actions:
                counts = torch.zeros(len(params), 3, dtype=torch.long, device=stats.counts.device)
                counts[live] = stats.counts
                self._tensor_counts = counts if self._tensor_counts is None else self._tensor_counts + counts
        else:
            # Overflow (e.g. fp16): keep a non-finite gradient so the loss scaler skips this step
            # instead of the selection silently pruning the inf/nan away.
            for i, r, f in zip(live, g_r, g_f):
                params[i][1].grad = r + f
            self.selection_skipped_steps += 1
            self._metrics.add("sgu/nonfinite_frac", 1.0)
        self._stash = [None] * len(params)

    def log(self, logs, start_time=None):
        if "loss" in logs and self._tensor_counts is not None:
            self._write_tensor_actions()
        super().log(logs, start_time)

    def _write_tensor_actions(self) -> None:
        counts, self._tensor_counts = self._tensor_counts, None
        if not self.is_world_process_zero():
            return
        fracs = (counts.double() / counts.sum(1, keepdim=True).clamp_min(1)).tolist()
        record = {
            "step": self.state.global_step,
            "tensors": {
                name: dict(zip(ACTION_NAMES, f))
                for (name, _), f, c in zip(self._params(), fracs, counts)
                if c.sum()
            },
        }
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(os.path.join(self.args.output_dir, "sgu_actions.jsonl"), "a") as fh:
            fh.write(json.dumps(record) + "\n")
