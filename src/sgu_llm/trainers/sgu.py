"""Selective Gradient Unlearning: separate forget and retain gradients, combined per coordinate.

Per micro-batch the forget and retain batches get their own backward pass. The
forget gradient g_f accumulates in a stash (one gradient-sized buffer, in
`stash_dtype`), the retain gradient g_r in `param.grad` as usual; the two are
swapped by pointer. On the last micro-batch of the accumulation window - after
DDP has reduced each of them once - the selective function overwrites
`param.grad` with the update, and the stock Trainer clips, steps the optimizer
and the scheduler.

Memory over GradDiff: the stash, 1.0x the trainable gradient bytes (0.5x in
bf16). `lean_selection` (one process) goes further: post-accumulate-grad hooks
fold each parameter's forget gradient into the stash as soon as it is complete
and, on the last retain backward, select each parameter as soon as its g_r is
complete and free its stash entry, so the stash shrinks while g_r grows.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import torch

from sgu_llm.objectives import ObjectiveArguments, get_objective
from sgu_llm.selection import (
    ACTION_NAMES,
    THRESHOLD_POPULATIONS,
    THRESHOLD_SCOPES,
    SelectionSettings,
    SelectionStats,
    get_selective_function,
    select_gradients,
)
from sgu_llm.selection.sharded import Shards
from sgu_llm.selection.thresholds import DEFAULT_SAMPLE_BLOCK, DEFAULT_SAMPLE_SIZE, MAX_EXACT_QUANTILE
from sgu_llm.trainers.base import UnlearnTrainer
from sgu_llm.trainers.config import UnlearnConfig
from sgu_llm.trainers.gradient_pairing import DeepSpeedPairing, LeanPairing, StashPairing, ZeRO3Pairing

RULE_STATE_FILE = "sgu_rule_states.pt"


class NonFiniteGradientError(ValueError):
    """Too many optimizer steps in a row with non-finite gradients (see `max_nonfinite_steps`)."""  # in each checkpoint folder, when a stateful rule has state

STASH_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class SGUConfig(UnlearnConfig, ObjectiveArguments):
    """Configuration of Selective Gradient Unlearning.

    g_f is minus the gradient of the forget objective `forget_loss` (any of `sgu_llm.objectives`; 'nll': the
    forget NLL's gradient, 'npo': a bounded one), so the reverse action -g_f descends that objective.

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
    q_d_final: float | None = field(
        default=None,
        metadata={
            "help": "Threshold schedule: q_d moves linearly from q_d (first step) to q_d_final (last step). "
            "None keeps q_d constant."
        },
    )
    q_m_final: float | None = field(
        default=None,
        metadata={"help": "Threshold schedule for q_m, as q_d_final. None keeps q_m constant."},
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
    max_exact_quantile: int = field(
        default=MAX_EXACT_QUANTILE,
        metadata={"help": "Tensors (or populations, for global scope) up to this size get exact quantiles."},
    )
    quantile_sample_size: int = field(
        default=DEFAULT_SAMPLE_SIZE,
        metadata={"help": "Coordinates sampled to estimate a quantile above max_exact_quantile."},
    )
    quantile_sample_block: int = field(
        default=DEFAULT_SAMPLE_BLOCK,
        metadata={
            "help": "Per-tensor samples are stratified blocks of this many contiguous coordinates (16 float32: "
            "one cache line; 1: single coordinates, ~4x slower on a CPU, slightly more accurate)."
        },
    )
    stash_dtype: str = field(
        default="auto",
        metadata={
            "help": "dtype of the stashed forget gradient: 'auto' (the gradient's own), 'float32' or 'bfloat16' "
            "(halves the stash; g_f is rounded to bf16 once per micro-batch, the selection reads it in float32)."
        },
    )
    lean_selection: bool = field(
        default=False,
        metadata={
            "help": "Combine per parameter in post-accumulate-grad hooks: no second full gradient is held on the "
            "last micro-batch. One process only, threshold_scope 'tensor' (or fixed tau_d/tau_m)."
        },
    )
    compile_selection: bool = field(
        default=True,
        metadata={
            "help": "Run the SGU rule through torch.compile'd one-pass kernels (falls back to eager, with a "
            "warning, where compilation is unavailable)."
        },
    )
    log_tensor_actions: bool = field(
        default=False,
        metadata={
            "help": "Append per-parameter-tensor action fractions to output_dir/sgu_actions.jsonl at each log."
        },
    )
    max_nonfinite_steps: int = field(
        default=10,
        metadata={
            "help": "Optimizer steps in a row whose forget or retain gradient is non-finite before the run stops "
            "with an error. Each such step is skipped (without fp16's loss scaler, its gradients are dropped so "
            "no weight moves) and counted in sgu/nonfinite_frac."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        get_selective_function(self.selective_function)  # raises with the registered names
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be at least 1, got {self.max_nonfinite_steps}")
        for name in ("q_d", "q_m", "q_d_final", "q_m_final"):
            q = getattr(self, name)
            if q is not None and not 0.0 < q < 1.0:
                raise ValueError(f"{name} must lie strictly between 0 and 1, got {q}")
        if self.threshold_scope not in THRESHOLD_SCOPES:
            raise ValueError(
                f"threshold_scope must be one of {THRESHOLD_SCOPES}, got {self.threshold_scope!r}"
            )
        if self.threshold_population not in THRESHOLD_POPULATIONS:
            raise ValueError(
                f"threshold_population must be one of {THRESHOLD_POPULATIONS}, got {self.threshold_population!r}"
            )
        get_objective(self.forget_loss)  # raises with the registered names
        self.check_objective()
        if self.maintain_scale < 0 or self.reverse_scale < 0:
            raise ValueError(
                "maintain_scale and reverse_scale must be >= 0 (the sign of each action is fixed)"
            )
        if self.quantile_sample_size < 1 or self.max_exact_quantile < 1:
            raise ValueError("quantile_sample_size and max_exact_quantile must be positive")
        if not 1 <= self.quantile_sample_block <= self.quantile_sample_size:
            raise ValueError(
                f"quantile_sample_block must be between 1 and quantile_sample_size ({self.quantile_sample_size}), "
                f"got {self.quantile_sample_block}"
            )
        if self.stash_dtype not in STASH_DTYPES:
            raise ValueError(f"stash_dtype must be one of {tuple(STASH_DTYPES)}, got {self.stash_dtype!r}")
        if self.lean_selection and self.threshold_scope == "global":
            needs = get_selective_function(self.selective_function)
            if (needs.uses_tau_d and self.tau_d is None) or (needs.uses_tau_m and self.tau_m is None):
                raise ValueError(
                    "lean_selection selects each tensor on its own and cannot compute threshold_scope='global' "
                    "quantiles; use threshold_scope='tensor', fixed tau_d/tau_m, or lean_selection=false"
                )

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
            quantile_sample_block=self.quantile_sample_block,
            compile=self.compile_selection,
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
        return get_objective(args.forget_loss).needs_reference

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._settings = self.args.selection()
        self._named_params: list[tuple[str, torch.nn.Parameter]] | None = None
        self._pairing: StashPairing | LeanPairing | DeepSpeedPairing | ZeRO3Pairing | None = None
        self._rule_states: list[dict] = []  # per parameter: what stateful rules keep across steps
        self._resumed_states: list[dict] | None = None  # read from a checkpoint, taken by _params()
        self._tensor_counts: torch.Tensor | None = None
        self.selection_skipped_steps = 0
        self._nonfinite_in_row = 0  # consecutive skipped (non-finite) optimizer steps
        # Called as fn(step, tensor_names, counts[num_tensors, 3]) after every selection (e.g. by the SAE probe).
        self.selection_observers: list = []
        zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        sharded = zero3 or bool(getattr(self.accelerator, "is_fsdp2", False))
        if sharded and not get_selective_function(self.args.selective_function).runs_sharded:
            raise ValueError(
                f"selective function {self.args.selective_function!r} is per-tensor (a coordinate's update depends "
                "on the rest of its tensor), and under ZeRO-3 and FSDP2 each rank holds only a shard of every "
                "gradient. Use a rule that runs on shards (sgu, sgu_reverse, gru, sign_conflict, sago, ...) or DDP / ZeRO-1/2."
            )
        if self.args.lean_selection and (self.accelerator.num_processes > 1 or self.is_deepspeed_enabled):
            raise ValueError(
                "lean_selection works in one process: under DDP/FSDP a parameter's gradient is only reduced "
                "after its post-accumulate-grad hook has run. Set lean_selection=false (the stash is then "
                "reduced with the gradients), or stash_dtype='bfloat16' to halve it."
            )

    def _params(self) -> list[tuple[str, torch.nn.Parameter]]:
        if self._named_params is None:
            self._named_params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
            self._rule_states = self._resumed_states or [{} for _ in self._named_params]
            if len(self._rule_states) != len(self._named_params):
                raise ValueError(
                    f"the checkpoint holds selection state for {len(self._rule_states)} parameter tensors but this "
                    f"model trains {len(self._named_params)}: resume with the model and config that wrote it"
                )
        return self._named_params

    @property
    def pairing(self) -> StashPairing | LeanPairing | DeepSpeedPairing:
        """How g_f and g_r are held apart (`sgu_llm.trainers.gradient_pairing`), made on first use."""
        if self._pairing is None:
            params = [p for _, p in self._params()]
            stash_dtype = STASH_DTYPES[self.args.stash_dtype]
            if self.is_deepspeed_enabled:
                zero3 = self.accelerator.state.deepspeed_plugin.zero_stage == 3
                self._pairing = (ZeRO3Pairing if zero3 else DeepSpeedPairing)(
                    params, self._backward, self._select_window, self.accelerator, stash_dtype
                )
            elif self.args.lean_selection:
                self._pairing = LeanPairing(params, self._backward, self._select_one, self._record_rows, stash_dtype)
            else:
                fsdp2 = bool(getattr(self.accelerator, "is_fsdp2", False))
                self._pairing = StashPairing(params, self._backward, self._select_window, stash_dtype, fsdp2)
        return self._pairing

    def _save_checkpoint(self, model, trial):
        """The Trainer's checkpoint plus what stateful rules (fisher, gru) keep between steps."""
        super()._save_checkpoint(model, trial)
        if self.args.should_save and any(self._rule_states):
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            names = [n for n, _ in self._params()]
            states = [
                {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in st.items()} for st in self._rule_states
            ]
            torch.save({"names": names, "states": states}, os.path.join(folder, RULE_STATE_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, RULE_STATE_FILE)
        if os.path.exists(path):
            saved = torch.load(path, weights_only=True)
            device = self.args.device
            self._resumed_states = [
                {k: v.to(device) if torch.is_tensor(v) else v for k, v in st.items()} for st in saved["states"]
            ]

    def training_step(self, model, inputs, num_items_in_batch=None):
        """A forget and a retain backward, kept apart by the pairing; the selection on the window's last one."""
        sizes = self._sizes(num_items_in_batch, inputs)
        last = self.accelerator.sync_gradients
        self.pairing.forget_pass(model, inputs["forget"], sizes)
        loss_r = self.pairing.retain_pass(model, inputs["retain"], sizes, last)
        if last:
            self.pairing.select()
        return loss_r

    def _backward(self, model, inputs, sizes):
        """The stock training step (loss, scaling, Accelerate backward) on one split."""
        return super().training_step(model, inputs, sizes)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The retain NLL on retain batches; on forget batches minus the forget objective, whose gradient is g_f
        (the direction that would keep the forget set; the reverse action applies -g_f)."""
        ((split, batch),) = inputs.items()
        sizes = self._sizes(num_items_in_batch, inputs)
        if split == "forget":
            return -self.objective_loss(model, batch, sizes)
        return self.nll_loss(model, inputs, split, sizes)

    def _seed(self) -> int:
        return self.args.seed * 1_000_003 + self.state.global_step

    def _step_settings(self) -> SelectionSettings:
        """The selection settings of this optimizer step (q_d / q_m follow their schedules, if any)."""
        a = self.args
        if a.q_d_final is None and a.q_m_final is None:
            return self._settings
        progress = min(self.state.global_step / max(self.state.max_steps - 1, 1), 1.0)

        def at(start: float, end: float | None) -> float:
            return start if end is None else start + (end - start) * progress

        return dataclasses.replace(self._settings, q_d=at(a.q_d, a.q_d_final), q_m=at(a.q_m, a.q_m_final))

    def _select_window(
        self,
        retain: list[torch.Tensor | None],
        forget: list[torch.Tensor | None],
        zero_dtype: torch.dtype | None,
        shards: Shards | None = None,
    ) -> tuple[list[int], list[torch.Tensor]]:
        """Select over the window's g_r (`retain`) and g_f (`forget`), in place, and record the statistics.

        A parameter with only one of the two gradients gets zeros for the other (in `zero_dtype`, or
        the parameter's dtype). `shards`: the gradients are this rank's partitions (ZeRO-3), of these full
        sizes; every rank must pass the same parameters with a gradient. Returns the selected parameters' indices and their updates, which are
        the g_r tensors themselves. A non-finite input leaves a non-finite update, so a loss scaler
        still skips the step.
        """
        params = self._params()
        live = [i for i, (r, f) in enumerate(zip(retain, forget)) if r is not None or f is not None]
        g_r, g_f = [], []
        for i in live:
            r, f = retain[i], forget[i]
            if r is None:
                r = torch.zeros_like(f, dtype=zero_dtype or params[i][1].dtype)
            g_r.append(r)
            g_f.append(f if f is not None else torch.zeros_like(r))
        _, stats = select_gradients(
            g_r,
            g_f,
            self._step_settings(),
            seed=self._seed(),
            inplace=True,
            states=[self._rule_states[i] for i in live],
            names=[params[i][0] for i in live],
            shards=None if shards is None else Shards([shards.numels[i] for i in live], shards.group),
        )
        if not self._record(stats, [params[i][0] for i in live], live):
            return [], []  # a dropped step: every param.grad is None and stays so
        return live, g_r

    def _select_one(self, i: int, g_r: torch.Tensor, g_f: torch.Tensor) -> SelectionStats:
        """Lean mode: select parameter i in place (its g_r is `param.grad`); its statistics."""
        _, stats = select_gradients(
            [g_r], [g_f], self._step_settings(), seed=self._seed() + i, inplace=True, states=[self._rule_states[i]]
        )
        return stats

    def _record_rows(self, rows: dict[int, SelectionStats]) -> None:
        """Lean mode: record the step from each parameter's statistics."""
        live = sorted(rows)
        parts = [rows[i] for i in live]
        stats = SelectionStats(
            torch.cat([s.counts for s in parts]),
            torch.cat([s.conflicts for s in parts]),
            torch.cat([s.tau_d for s in parts]),
            torch.cat([s.tau_m for s in parts]),
            sum(s.dot for s in parts),
            sum(s.norm_r2 for s in parts),
            sum(s.norm_f2 for s in parts),
        )
        self._record(stats, [self._params()[i][0] for i in live], live)

    def _record(self, stats: SelectionStats, names: list[str], live: list[int]) -> bool:
        """Log a selection's statistics, unless its gradients were non-finite (the step is skipped).

        Returns False when the step's gradients were dropped (non-finite, no loss scaler to skip it).
        """
        if not torch.isfinite(stats.norm_r2 + stats.norm_f2):
            self.selection_skipped_steps += 1
            self._nonfinite_in_row += 1
            self._metrics.add("sgu/nonfinite_frac", 1.0)
            if getattr(self.accelerator, "scaler", None) is None:
                # No loss scaler to skip this step (fp16's does, and lowers its scale): drop the gradients, so
                # the optimizer moves no weight (AdamW skips parameters without a gradient).
                for _, p in self._params():
                    p.grad = None
                dropped = True
            else:
                dropped = False
            if self._nonfinite_in_row >= self.args.max_nonfinite_steps:
                raise NonFiniteGradientError(
                    f"{self._nonfinite_in_row} optimizer steps in a row had non-finite forget or retain gradients "
                    f"(step {self.state.global_step}); each was skipped and the weights are the last finite ones. "
                    "Lower learning_rate, use bf16 rather than fp16, or check the data for empty answers; raise "
                    "max_nonfinite_steps to tolerate more."
                )
            return not dropped
        self._nonfinite_in_row = 0
        for key, value in stats.summary().items():
            self._metrics.add(key, value)
        self._metrics.add("sgu/nonfinite_frac", 0.0)
        if self.selection_observers:
            counts_cpu = stats.counts.cpu()
            for observe in self.selection_observers:
                observe(self.state.global_step, names, counts_cpu)
        if self.args.log_tensor_actions:
            counts = torch.zeros(len(self._params()), 3, dtype=torch.long, device=stats.counts.device)
            counts[live] = stats.counts
            self._tensor_counts = counts if self._tensor_counts is None else self._tensor_counts + counts
        return True

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
