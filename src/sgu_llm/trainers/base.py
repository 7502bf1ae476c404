"""`UnlearnTrainer`: what every unlearning method shares - data pairing, the forget objective's data, PEFT,
loss normalisation over the accumulation window, metrics, checkpoints and the model card.

A method is a config dataclass (subclass of `UnlearnConfig`, `sgu_llm.trainers.config`) plus a trainer
(subclass of `UnlearnTrainer`) that overrides `compute_loss` and, for SGU, `training_step`. Everything
else - optimizer, scheduler, clipping, mixed precision, Accelerate - is the stock `transformers.Trainer`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from typing import Any

import torch
from transformers import Trainer, set_seed
from transformers.trainer_utils import get_last_checkpoint

from sgu_llm.core.cache import default_cache_dir
from sgu_llm.core.files import write_text
from sgu_llm.data.pairing import ForgetRetainDataset, ensure_pad_token, training_view
from sgu_llm.models.pretrained import load_pretrained
from sgu_llm.objectives import ForgetObjective, ObjectiveArguments, ObjectiveContext, get_objective
from sgu_llm.selection.kernel import arithmetic, kernel_calls
from sgu_llm.trainers.adapters import is_peft_model, prepare_model
from sgu_llm.trainers.callbacks import PairingEpochCallback
from sgu_llm.trainers.card import build_card, card_tags
from sgu_llm.trainers.config import UnlearnConfig, launched_world_size
from sgu_llm.trainers.metrics import MetricBuffer
from sgu_llm.trainers.outputs import check_output_dir, tokens_masked
from sgu_llm.trainers.reference import deepspeed_reference, fsdp2_reference
from sgu_llm.trainers.row_gate import add_row_bands, gate_rows
from sgu_llm.trainers.stopping import HoldoutStoppingCallback
from sgu_llm.trainers.tasks import get_task

SPLITS = ("forget", "retain")


class UnlearnTrainer(Trainer):
    """Base trainer: pairs the forget and retain sets and normalises losses over the accumulation window.

    Subclasses implement `compute_loss(model, inputs, ...)` where `inputs` is
    `{"forget": batch, "retain": batch}` (or one of them, for SGU). Losses are
    normalised over the whole gradient-accumulation window and all processes
    (token-mean NLL, example-mean for per-example losses), so 2 x batch b with
    accumulation 2 gives the gradient of one batch of 2b.

    Example:
        >>> trainer = GradDiffTrainer(model, GradDiffConfig(output_dir="out", report_to="none"),  # doctest: +SKIP
        ...                           forget_dataset=forget, retain_dataset=retain, processing_class=tok)
        >>> trainer.train()  # doctest: +SKIP
    """

    config_class: type[UnlearnConfig] = UnlearnConfig
    loss_is_scaled_for_ga = True  # we normalise over the accumulation window ourselves
    trains_weights = True  # False: the method edits activations (sae_clamp), so there are no updates to probe

    def __init__(
        self,
        model: Any,
        args: UnlearnConfig | None = None,
        forget_dataset: Any = None,
        retain_dataset: Any = None,
        processing_class: Any = None,
        peft_config: Any = None,
        ref_model: Any = None,
        data_collator: Any = None,
        callbacks: list | None = None,
        holdout_dataset: Any = None,
        forget_eval_dataset: Any = None,
        task: str | Any = "causal_lm",
        **kwargs: Any,
    ):
        if kwargs.pop("eval_dataset", None) is not None:
            raise ValueError(
                "eval_dataset is not used by unlearning trainers: evaluate with sgu_llm.evaluation.evaluate_model "
                "(or `sgu-llm run`), and pass holdout_dataset to stop on the forget/holdout gap"
            )
        if forget_dataset is None or retain_dataset is None:
            raise ValueError(f"{type(self).__name__} needs forget_dataset and retain_dataset")
        model, processing_class, args = self._resolve(model, processing_class, args)
        check_output_dir(args)
        self.task = get_task(task)
        self.objective = get_objective(args.forget_loss)(args) if isinstance(args, ObjectiveArguments) else None
        self.objective_ctx = self._objective_context(args, processing_class)
        forget, retain, collator = self._prepare_rows(
            model, args, forget_dataset, retain_dataset, holdout_dataset, processing_class
        )
        # Seeded as the Trainer seeds itself, but before the LoRA adapters are initialised: otherwise they depend on
        # whatever used the global RNG before (e.g. fine-tuning the target in this process rather than loading it).
        set_seed(args.seed)
        model = prepare_model(model, peft_config, args.unlearn_params)
        # Frozen reference for NPO-style losses; under LoRA it is the base model with adapters disabled.
        needs_ref = self.needs_reference_model(args)
        if needs_ref and ref_model is None and not is_peft_model(model):
            if any(hasattr(p, "ds_id") for p in model.parameters()):
                raise ValueError(
                    f"{type(self).__name__} needs a frozen reference model, and this model was partitioned by "
                    "DeepSpeed ZeRO-3 as it loaded (zero3_init_flag: true), so it cannot be copied. Set "
                    "zero3_init_flag: false in the accelerate config (recipes/accelerate/deepspeed_zero3.yaml), "
                    "pass ref_model= (loaded the same way), or use LoRA (the reference is the base model)."
                )
            ref_model = copy.deepcopy(model)
        super().__init__(
            model=model,
            args=args,
            train_dataset=ForgetRetainDataset(forget, retain, seed=args.seed),
            data_collator=data_collator or collator,
            processing_class=processing_class,
            callbacks=callbacks,
            **kwargs,
        )
        self._check_launch()
        self._add_callbacks(forget_eval_dataset if forget_eval_dataset is not None else forget_dataset, holdout_dataset)
        self.ref_model = None
        if needs_ref and ref_model is not None:
            ref_model.requires_grad_(False)
            if self.is_deepspeed_enabled:  # partitioned like the trained model under ZeRO-3
                ds_config = self.accelerator.state.deepspeed_plugin.deepspeed_config
                self.ref_model = deepspeed_reference(ref_model, ds_config, self.args)
            elif getattr(self.accelerator, "is_fsdp2", False):  # sharded like the trained model
                self.ref_model = fsdp2_reference(ref_model, self.accelerator)
            else:
                self.ref_model = self.accelerator.prepare_model(ref_model.eval(), evaluation_mode=True)
        self._metrics = MetricBuffer()
        # The model card: what `sgu-llm run` measured (markdown) and a line about the data; None = defaults.
        self.card_measured: str | None = None
        self.card_data: str | None = None
        if hasattr(self.model, "add_model_tags"):  # push_to_hub carries these tags (as TRL's trainers do)
            self.model.add_model_tags(card_tags(self.method_tag()))

    def _resolve(self, model: Any, processing_class: Any, args: Any) -> tuple[Any, Any, Any]:
        """A model given by name loaded (as TRL's trainers take one); default args named after the model."""
        if isinstance(model, str):  # a Hub id, a local folder or builtin:NAME
            model, tokenizer = load_pretrained(model, cache_dir=os.environ.get("SGU_LLM_CACHE"))
            processing_class = processing_class if processing_class is not None else tokenizer
        if args is None:
            name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
            args = self.config_class(output_dir=f"{name.rstrip('/').split('/')[-1]}-{self.method_tag()}")
        if not isinstance(args, self.config_class):
            raise ValueError(
                f"{type(self).__name__} needs args of type {self.config_class.__name__}, got {type(args).__name__}"
            )
        return model, processing_class, args

    def _objective_context(self, args: Any, tokenizer: Any) -> ObjectiveContext:
        """What the forget objective may use of this trainer (it holds no Trainer itself)."""
        return ObjectiveContext(
            args,
            tokenizer,
            reference=self.reference_outputs,
            example_losses=lambda m, batch: self.task.example_losses(m, batch),
            reference_losses=lambda m, batch: self.reference_nll(m, batch),
            log=lambda key, total, weight=1.0: self._metrics.add(key, total, weight),
            output_dir=args.output_dir,
            cache_dir=default_cache_dir(),
            is_main_process=int(os.environ.get("RANK", "0")) == 0,
        )

    def _prepare_rows(
        self, model: Any, args: Any, forget: Any, retain: Any, holdout: Any, tokenizer: Any
    ) -> tuple[Any, Any, Any]:
        """The forget and retain rows the objective needs (alternatives, "I don't know" answers, generic labels),
        tokenised by the task, and the collator. The objective sees question/answer columns only."""
        answer_sets = ()
        objective = self.objective
        if objective is not None and type(objective).prepare_rows is not ForgetObjective.prepare_rows:
            ensure_pad_token(tokenizer)
            views = [training_view(ds, objective) for ds in (forget, retain, holdout)]
            forget = objective.prepare_rows(self.objective_ctx, model, *views)
            answer_sets = objective.answer_sets
        forget, retain, collator = self.task.prepare(model, args, forget, retain, tokenizer, answer_sets=answer_sets)
        if objective is not None:
            forget = objective.prepare_tokenized(self.objective_ctx, model, forget)
        if getattr(args, "row_gate", False):  # the bands come from the target: before any training
            forget = add_row_bands(self.task, model, args, forget, holdout, tokenizer)
        return forget, retain, collator

    def _check_launch(self) -> None:
        """Refuse a launch Accelerate does not run as asked; warn when FSDP was asked for and not given."""
        if launched_world_size() != self.accelerator.num_processes:
            raise ValueError(
                f"the launcher started {launched_world_size()} processes but Accelerate runs "
                f"{self.accelerator.num_processes}: each process would train alone on all the data. "
                "On CPU pass --use_cpu true; with GPUs check CUDA_VISIBLE_DEVICES and the accelerate config."
            )
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not self.is_fsdp_enabled:
            warnings.warn(
                "the launch asked for FSDP (an FSDP accelerate config) but Accelerate runs this job without it "
                f"({self.accelerator.distributed_type.value}): it enables FSDP on GPUs only. The run is plain data "
                "parallel (every rank holds the whole model); on CPU use recipes/accelerate/cpu_2proc.yaml to say so",
                stacklevel=2,
            )

    def _add_callbacks(self, forget_eval: Any, holdout: Any) -> None:
        """The pairing's epoch, the objective's own callbacks and the holdout stopping rule."""
        self.add_callback(PairingEpochCallback(self.train_dataset))
        for callback in self.objective.callbacks(self.objective_ctx) if self.objective is not None else []:
            self.add_callback(callback)
        self.stopping = None
        if self.args.stop_on_holdout:
            kw = dict(prompt_format=self.args.prompt_format, system_prompt=self.args.system_prompt)
            self.stopping = HoldoutStoppingCallback(self.processing_class, forget_eval, holdout, self.args.stop_metric, kw)
            self.add_callback(self.stopping)

    @classmethod
    def needs_reference_model(cls, args: UnlearnConfig) -> bool:
        return False

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """`Trainer.train`; a resumed run with `stop_on_holdout` also takes the stopping scores and snapshot."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir) or True  # None: HF's own error
        if isinstance(resume_from_checkpoint, str) and self.stopping is not None:
            self.stopping.load(resume_from_checkpoint)
        self._kernel_calls = kernel_calls()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def arithmetic(self) -> dict[str, Any]:
        """What computed this trainer's numbers: torch, the CPU kernels (`ATEN_CPU_CAPABILITY` if forced), the
        GPU, and how each selection kernel ran since `train()` began (compiled, or eager and why)."""
        return arithmetic(since=getattr(self, "_kernel_calls", None))

    def _save_checkpoint(self, model, trial):
        """The Trainer's checkpoint plus the stopping rule's scores and best snapshot (`stop_on_holdout`)."""
        super()._save_checkpoint(model, trial)
        if self.stopping is not None and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            self.stopping.save(folder, self.state.global_step)

    # ---- data-side hooks -------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        return batch_samples, self.window_sizes(batch_samples, device)

    def window_sizes(self, batches: list[dict], device: Any) -> dict[str, torch.Tensor]:
        """Per split: [answer tokens, examples] over the window, summed over processes / num_processes.

        Dividing a per-process sum by this and letting DDP average the
        gradients yields the global mean.
        """
        rows = [[sum(c) for c in zip(*(self.task.units(b[split]) for b in batches))] for split in SPLITS]
        sizes = torch.tensor(rows, dtype=torch.float32, device=device)
        n = self.accelerator.num_processes
        if n > 1:
            sizes = self.accelerator.reduce(sizes, reduction="sum") / n
        return {split: sizes[i] for i, split in enumerate(SPLITS)}

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        return sum(super(UnlearnTrainer, self).floating_point_ops(batch) for batch in inputs.values())

    # ---- loss helpers for subclasses -----------------------------------------------------------
    def _sizes(self, num_items_in_batch: Any, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        if isinstance(num_items_in_batch, dict):
            return num_items_in_batch
        # Called outside the training loop: normalise by this batch, as if every micro-batch matched it.
        steps = getattr(self, "current_gradient_accumulation_steps", 1)
        sizes = {}
        for split, batch in inputs.items():
            units, examples = self.task.units(batch)
            device = batch["labels"].device
            sizes[split] = torch.tensor([float(units) * steps, float(examples) * steps], device=device)
        return sizes

    def forward_nll(
        self, model: Any, batch: dict[str, torch.Tensor], split: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example summed loss (answer NLL for a causal LM) and units; logs `loss/<split>` as the unit mean."""
        nll, ntok = self.task.example_losses(model, batch)
        self._metrics.add(f"loss/{split}", nll.sum(), ntok.sum())
        return nll, ntok

    @torch.no_grad()
    def reference_outputs(
        self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, output_hidden_states: bool = False
    ) -> Any:
        """The frozen reference's output (base model with adapters off under LoRA), without gradients."""
        kw = dict(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states)
        if self.ref_model is not None:
            return self.ref_model(**kw)
        unwrapped = self.accelerator.unwrap_model(model)
        ctx = unwrapped.disable_adapter() if is_peft_model(unwrapped) else contextlib.nullcontext()
        with ctx:
            return unwrapped(**kw)

    def objective_loss(self, model: Any, batch: dict[str, torch.Tensor], sizes: dict[str, torch.Tensor]) -> torch.Tensor:
        """The forget objective's per-row losses (kept, pruned or pulled back by the row gate with `row_gate`)
        summed and divided by the window's answer tokens or rows."""
        per_row = self.objective.forget_loss(self.objective_ctx, model, batch)
        if self.args.row_gate:
            per_row = gate_rows(self.task, model, batch, per_row, self.objective.units, self._metrics.add)
        if self.objective.units == "tokens":
            return per_row.sum() / sizes["forget"][0].clamp_min(1)
        return per_row.sum() / sizes["forget"][1]

    @torch.no_grad()
    def reference_nll(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example NLL under the frozen reference (base model with adapters off under LoRA)."""
        if self.ref_model is not None:
            return self.task.example_losses(self.ref_model, batch)
        unwrapped = self.accelerator.unwrap_model(model)
        ctx = unwrapped.disable_adapter() if is_peft_model(unwrapped) else contextlib.nullcontext()
        with ctx:
            return self.task.example_losses(unwrapped, batch)

    def nll_loss(
        self, model: Any, inputs: dict[str, Any], split: str, sizes: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Token-mean answer NLL of `split`, normalised over the accumulation window."""
        nll, _ = self.forward_nll(model, inputs[split], split)
        return nll.sum() / sizes[split][0].clamp_min(1)

    # ---- logging and saving --------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: merge what the steps since the last one gathered
            logs.update(self._metrics.pop(self.accelerator))
        super().log(logs, start_time)

    @classmethod
    def method_tag(cls) -> str:
        """The method's name in tags and default output folders: SGUTrainer -> "sgu"."""
        return cls.__name__.removesuffix("Trainer").lower() or "unlearn"

    def create_model_card(
        self, model_name: str | None = None, tags: Any = None, output_dir: str | None = None, **kwargs: Any
    ) -> None:
        """README.md in output_dir: method, base model, data, measured numbers (`card_measured`), config, tags."""
        if not self.is_world_process_zero():
            return
        base = getattr(getattr(self.accelerator.unwrap_model(self.model), "config", None), "_name_or_path", None)
        data = f"Forget set: {len(self.train_dataset.forget)} examples; retain set: {len(self.train_dataset.retain)}."
        text = build_card(
            self.method_tag(),
            self.args,
            base_model=base if isinstance(base, str) else None,
            data=self.card_data or data,
            measured=self.card_measured,
            tags=tags,
        )
        write_text(os.path.join(output_dir or self.args.output_dir, "README.md"), text)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model` with `*_token` fields masked in training_args.bin; a user's call also writes the
        model card, and under LoRA with `save_merged=True` saves the merged model instead of the adapter."""
        output_dir = output_dir or self.args.output_dir
        unwrapped = self.accelerator.unwrap_model(self.model)
        if not _internal_call and is_peft_model(unwrapped) and self.args.save_merged:
            # Merging modifies the trained model in place: call it last.
            self.accelerator.wait_for_everyone()
            if self.is_world_process_zero():
                unwrapped.merge_and_unload().save_pretrained(output_dir)
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(output_dir)
            self.accelerator.wait_for_everyone()
        else:
            with tokens_masked(self.args):
                super().save_model(output_dir, _internal_call)
        if not _internal_call:
            self.create_model_card(output_dir=output_dir)

    def save_unlearned_model(self, output_dir: str | None = None) -> str:
        """Save the unlearned model (the merged one under LoRA with `save_merged`), tokenizer and model card."""
        output_dir = output_dir or self.args.output_dir
        self.save_model(output_dir)
        return output_dir
