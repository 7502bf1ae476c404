"""What every unlearning method shares: config, data pairing, PEFT, loss normalisation, metrics.

A method is a config dataclass (subclass of `UnlearnConfig`) plus a trainer
(subclass of `UnlearnTrainer`) that overrides `compute_loss` and, for SGU,
`training_step`. Everything else - optimizer, scheduler, clipping, mixed
precision, Accelerate - is the stock `transformers.Trainer`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import glob
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from sgu_llm.cache import default_cache_dir
from sgu_llm.card import card_tags
from sgu_llm.data.pairing import ForgetRetainDataset, ensure_pad_token, training_view
from sgu_llm.data.prompts import DEFAULT_SYSTEM_PROMPT, PROMPT_FORMATS
from sgu_llm.objectives import ForgetObjective, ObjectiveArguments, ObjectiveContext, get_objective
from sgu_llm.stopping import STOP_METRICS
from sgu_llm.tasks import get_task

SPLITS = ("forget", "retain")
# Files whose presence means output_dir already holds a run we must not overwrite silently.
RUN_MARKERS = (
    "trainer_state.json",
    "config.json",
    "adapter_config.json",
    "model.safetensors",
    "adapter_model.safetensors",
    "pytorch_model.bin",
)


@dataclass
class UnlearnConfig(TrainingArguments):
    """Arguments shared by every unlearning method.

    Defaults that differ from `TrainingArguments` follow the reference TOFU
    framework (learning rate 1e-5, 10 epochs). An epoch is one pass over the
    forget set, each forget batch paired with a retain batch of the same size.

    Example:
        >>> from sgu_llm.trainers import UnlearnConfig
        >>> UnlearnConfig(output_dir="out", report_to="none").prompt_format
        'phi'
    """

    learning_rate: float = field(
        default=1e-5, metadata={"help": "Peak learning rate (reference framework: 1e-5)."}
    )
    num_train_epochs: float = field(
        default=10.0, metadata={"help": "Passes over the forget set (reference framework: 10)."}
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Must stay False: batches are nested {'forget': ..., 'retain': ...}."},
    )
    prompt_format: str = field(
        default="phi",
        metadata={
            "help": f"How questions are framed: one of {PROMPT_FORMATS}. Question tokens are masked (-100)."
        },
    )
    system_prompt: str = field(
        default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "System prompt for prompt_format='chat_template'."}
    )
    max_length: int = field(default=512, metadata={"help": "Sequences are cut at this many tokens."})
    unlearn_params: str | None = field(
        default=None,
        metadata={
            "help": "Regex on parameter names: only matching trainable parameters unlearn, the rest are frozen "
            "(e.g. 'layers\\.(1[2-9]|2[0-9])\\.mlp'). None: all trainable parameters (the LoRA adapters under LoRA)."
        },
    )
    save_merged: bool = field(
        default=False,
        metadata={"help": "Under LoRA, save the merged model instead of the adapter when the run ends."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Allow writing into an output_dir that already holds a run (it is refused otherwise)."
        },
    )
    stop_on_holdout: bool = field(
        default=False,
        metadata={
            "help": "Keep the epoch whose forget set looks most like never-seen data: after every epoch, the KS "
            "statistic between forget-set and holdout-set scores (trainer argument holdout_dataset=, or "
            "holdout_split in a recipe); the best epoch's parameters are restored at the end. Needs no retain model."
        },
    )
    stop_metric: str = field(
        default="truth_ratio",
        metadata={
            "help": "Per-row score for stop_on_holdout: 'truth_ratio' (needs paraphrased_answer and "
            "perturbed_answer, as TOFU's *_perturbed sets) or 'nll' (answer NLL; question/answer only)."
        },
    )

    def __post_init__(self):
        if not self.use_cpu and _launched_world_size() > 1 and not torch.accelerator.is_available():
            # A multi-process launch on a machine without GPUs (e.g. recipes/accelerate/cpu_2proc.yaml):
            # without use_cpu Accelerate would treat every process as a separate single-process run.
            self.use_cpu = True
        if self.use_cpu or not torch.accelerator.is_available():
            self.dataloader_pin_memory = False  # nothing to pin to; torch warns once per DataLoader otherwise
        super().__post_init__()
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")
        if self.stop_metric not in STOP_METRICS:
            raise ValueError(f"stop_metric must be one of {STOP_METRICS}, got {self.stop_metric!r}")
        if self.remove_unused_columns:
            raise ValueError(
                "remove_unused_columns=True would drop the nested 'forget'/'retain' batches; set it to False"
            )
        if self.unlearn_params is not None:
            try:
                re.compile(self.unlearn_params)
            except re.error as err:
                raise ValueError(
                    f"unlearn_params is not a valid regex ({err}): {self.unlearn_params!r}"
                ) from None


def _launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextlib.contextmanager
def tokens_masked(args: Any):
    """Within the block, every `*_token` string field of `args` reads `<FIELD_NAME>` (as `to_dict()` masks
    them), so no file written from `args` (training_args.bin) holds a secret."""
    saved = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(args)
        if f.name.endswith("_token") and isinstance(getattr(args, f.name, None), str)
    }
    try:
        for name in saved:
            object.__setattr__(args, name, f"<{name.upper()}>")
        yield args
    finally:
        for name, value in saved.items():
            object.__setattr__(args, name, value)


def resume_argument(args: Any) -> str | bool | None:
    """`trainer.train(resume_from_checkpoint=...)` from the config field: 'true' or 'last' mean the last
    checkpoint in output_dir, anything else is a checkpoint folder (checked to exist)."""
    value = args.resume_from_checkpoint
    if value is None or value is False or str(value).lower() in ("", "false", "none"):
        return None
    if value is True or str(value).lower() in ("true", "last"):
        if not os.path.isdir(args.output_dir) or get_last_checkpoint(args.output_dir) is None:
            raise ValueError(
                f"resume_from_checkpoint=true but {args.output_dir!r} holds no checkpoint-* folder: set save_strategy "
                "(e.g. 'epoch') on the run to resume, or start without resume_from_checkpoint"
            )
        check_checkpoint_matches(get_last_checkpoint(args.output_dir), args)
        return True
    if not os.path.isdir(value):
        raise ValueError(f"resume_from_checkpoint={value!r} is not a checkpoint folder (nothing was written)")
    check_checkpoint_matches(value, args)
    return value


def check_checkpoint_matches(folder: str, args: Any) -> None:
    """Refuse to resume from a checkpoint written by another method (config class or selective function)."""
    path = os.path.join(folder, "training_args.bin")
    if not os.path.exists(path):
        return
    saved = torch.load(path, weights_only=False)  # the Trainer's own pickle of its arguments
    mine = (type(args).__name__, getattr(args, "selective_function", None))
    theirs = (type(saved).__name__, getattr(saved, "selective_function", None))
    if mine != theirs:
        raise ValueError(
            f"checkpoint {folder!r} was written by {theirs[0]}"
            + (f" (selective_function={theirs[1]!r})" if theirs[1] else "")
            + f", but this run is {mine[0]}"
            + (f" (selective_function={mine[1]!r})" if mine[1] else "")
            + ": resume with the method that wrote it, or start a new run without resume_from_checkpoint"
        )


def _check_writable(folder: str) -> None:
    """Create `folder` if needed and write (then remove) a probe file in it."""
    import tempfile

    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise ValueError(
            f"output_dir {folder!r} cannot be written ({type(err).__name__}: {err.strerror or err}): choose a "
            "folder you can write to"
        ) from err


def check_output_dir(args: UnlearnConfig) -> None:
    """Refuse an output_dir that already holds a run unless asked to overwrite or resume, or that cannot be
    written (checked before any work, so a long run does not fail at its end)."""
    out = args.output_dir
    if out:
        _check_writable(out)
    if not out or not os.path.isdir(out) or args.overwrite_output_dir or args.resume_from_checkpoint:
        return
    found = [m for m in RUN_MARKERS if os.path.exists(os.path.join(out, m))]
    found += sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "checkpoint-*")))
    if found:
        raise ValueError(
            f"output_dir {out!r} already holds a previous run ({', '.join(found[:4])}); nothing was written. "
            "Choose another output_dir, pass overwrite_output_dir=True to replace it, or resume_from_checkpoint."
        )


def check_causal_lm(model: Any) -> None:
    """Unlearning needs next-token logits: refuse a model without a language-model head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ValueError(
            f"the model is a {type(model).__name__}, which has no language-model head (no next-token logits): "
            "load it with AutoModelForCausalLM.from_pretrained (or pass a *ForCausalLM model)"
        )


def check_fits_context(model: Any, sets: dict[str, Any]) -> None:
    """Refuse rows longer than the model's context (position embeddings), naming max_length as the fix."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not limit:
        return
    for name, ds in sets.items():
        longest = max(len(ids) for ids in ds["input_ids"])
        if longest > limit:
            raise ValueError(
                f"the {name} set has rows of {longest} tokens but the model's context is {limit} tokens: set "
                f"max_length to at most {limit} (rows are cut there) or use shorter rows"
            )


def is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def check_lora_targets(model: torch.nn.Module, peft_config: Any) -> None:
    """Name the model's linear layers when LoRA targets a module that does not exist."""
    targets = getattr(peft_config, "target_modules", None)
    if targets is None or isinstance(targets, str):  # a regex or "all-linear": PEFT resolves it
        return
    names = [n for n, _ in model.named_modules()]
    missing = sorted(t for t in targets if not any(n == t or n.endswith("." + t) for n in names))
    if missing:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
        raise ValueError(
            f"LoRA target_modules {missing} match no module of {type(model).__name__}; its linear layers are "
            f"named {linear}. Set target_modules (lora_target_modules in a recipe) to some of those, or 'all-linear'."
        )


def prepare_model(model: Any, peft_config: Any = None, unlearn_params: str | None = None) -> Any:
    """Wrap with LoRA if asked, then freeze every parameter `unlearn_params` does not match."""
    if peft_config is not None:
        if is_peft_model(model):
            raise ValueError("model is already a PeftModel; pass either a PeftModel or peft_config, not both")
        from peft import get_peft_model

        check_lora_targets(model, peft_config)
        model = get_peft_model(model, peft_config)
    if unlearn_params is not None:
        pattern = re.compile(unlearn_params)
        for name, p in model.named_parameters():
            if p.requires_grad and not pattern.search(name):
                p.requires_grad_(False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        sample = [n for n, _ in list(model.named_parameters())[:6]]
        raise ValueError(
            f"no trainable parameter is left (unlearn_params={unlearn_params!r}); parameter names look like "
            f"{sample}. Loosen the regex."
        )
    return model


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


class PairingEpochCallback(TrainerCallback):
    """Re-draw the forget/retain pairing at every epoch, on every process.

    accelerate forwards `set_epoch` to the dataset on some data-loader paths and
    not on others (one process vs DDP), so the trainer does it itself.
    """

    def __init__(self, dataset: ForgetRetainDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))


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
        if kwargs.get("eval_dataset") is not None:
            raise ValueError(
                "eval_dataset is not used by unlearning trainers: evaluate with sgu_llm.evaluation.evaluate_model "
                "(or `sgu-llm run`), and pass holdout_dataset to stop on the forget/holdout gap"
            )
        kwargs.pop("eval_dataset", None)
        if forget_dataset is None or retain_dataset is None:
            raise ValueError(f"{type(self).__name__} needs forget_dataset and retain_dataset")
        if isinstance(model, str):  # a Hub id, a local folder or builtin:NAME, as TRL's trainers take
            from sgu_llm.pretrained import load_pretrained

            model, tokenizer = load_pretrained(model, cache_dir=os.environ.get("SGU_LLM_CACHE"))
            processing_class = processing_class if processing_class is not None else tokenizer
        if args is None:
            name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
            args = self.config_class(output_dir=f"{name.rstrip('/').split('/')[-1]}-{self.method_tag()}")
        if not isinstance(args, self.config_class):
            raise ValueError(
                f"{type(self).__name__} needs args of type {self.config_class.__name__}, got {type(args).__name__}"
            )
        check_output_dir(args)
        self.task = get_task(task)
        self.objective = get_objective(args.forget_loss)(args) if isinstance(args, ObjectiveArguments) else None
        self.objective_ctx = ObjectiveContext(
            args,
            processing_class,
            reference=self.reference_outputs,
            example_losses=lambda m, batch: self.task.example_losses(m, batch),
            reference_losses=lambda m, batch: self.reference_nll(m, batch),
            log=lambda key, total, weight=1.0: self._metrics.add(key, total, weight),
            output_dir=args.output_dir,
            cache_dir=default_cache_dir(),
            is_main_process=int(os.environ.get("RANK", "0")) == 0,
        )
        answer_sets = ()
        if self.objective is not None and type(self.objective).prepare_rows is not ForgetObjective.prepare_rows:
            ensure_pad_token(processing_class)
            forget_dataset = self.objective.prepare_rows(
                self.objective_ctx,
                model,
                training_view(forget_dataset, self.objective),
                training_view(retain_dataset, self.objective),
                training_view(holdout_dataset, self.objective),
            )
            answer_sets = self.objective.answer_sets
        forget, retain, collator = self.task.prepare(
            model, args, forget_dataset, retain_dataset, processing_class, answer_sets=answer_sets
        )
        if self.objective is not None:
            forget = self.objective.prepare_tokenized(self.objective_ctx, model, forget)
        # Seeded as the Trainer seeds itself, but before the LoRA adapters are initialised: otherwise they depend on
        # whatever used the global RNG before (e.g. fine-tuning the target in this process rather than loading it).
        set_seed(args.seed)
        model = prepare_model(model, peft_config, args.unlearn_params)
        # Frozen reference for NPO-style losses; under LoRA it is the base model with adapters disabled.
        needs_ref = self.needs_reference_model(args)
        if needs_ref and ref_model is None and not is_peft_model(model):
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
        if _launched_world_size() != self.accelerator.num_processes:
            raise ValueError(
                f"the launcher started {_launched_world_size()} processes but Accelerate runs "
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
        if self.is_deepspeed_enabled:
            self._check_deepspeed(needs_ref)
        self.add_callback(PairingEpochCallback(self.train_dataset))
        for callback in self.objective.callbacks(self.objective_ctx) if self.objective is not None else []:
            self.add_callback(callback)
        self.stopping = None
        if args.stop_on_holdout:
            from sgu_llm.stopping import HoldoutStoppingCallback

            self.stopping = HoldoutStoppingCallback(
                processing_class,
                forget_eval_dataset if forget_eval_dataset is not None else forget_dataset,
                holdout_dataset,
                args.stop_metric,
                dict(prompt_format=args.prompt_format, system_prompt=args.system_prompt),
            )
            self.add_callback(self.stopping)
        self.ref_model = None
        if needs_ref and ref_model is not None:
            ref_model.requires_grad_(False)
            self.ref_model = self.accelerator.prepare_model(ref_model.eval(), evaluation_mode=True)
        self._metrics = MetricBuffer()
        # The model card: what `sgu-llm run` measured (markdown) and a line about the data; None = defaults.
        self.card_measured: str | None = None
        self.card_data: str | None = None
        if hasattr(self.model, "add_model_tags"):  # push_to_hub carries these tags (as TRL's trainers do)
            self.model.add_model_tags(card_tags(self.method_tag()))

    @classmethod
    def needs_reference_model(cls, args: UnlearnConfig) -> bool:
        return False

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """`Trainer.train`; a resumed run with `stop_on_holdout` also takes the stopping scores and snapshot."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir) or True  # None: HF's own error
        if isinstance(resume_from_checkpoint, str) and self.stopping is not None:
            self.stopping.load(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _save_checkpoint(self, model, trial):
        """The Trainer's checkpoint plus the stopping rule's scores and best snapshot (`stop_on_holdout`)."""
        super()._save_checkpoint(model, trial)
        if self.stopping is not None and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            self.stopping.save(folder, self.state.global_step)

    def _check_deepspeed(self, needs_ref: bool) -> None:
        """DeepSpeed ZeRO stages 0-2 are tested (tests/test_distributed.py); refuse what is not."""
        stage = self.accelerator.state.deepspeed_plugin.zero_stage
        if stage == 3:
            raise ValueError(
                "DeepSpeed ZeRO-3 is not supported (parameters are partitioned; only ZeRO-1/2 are tested). "
                "Use ZeRO-1/2 (recipes/accelerate/deepspeed_zero2.yaml) or FSDP2 (recipes/accelerate/fsdp2.yaml)."
            )
        if needs_ref:
            raise ValueError(
                f"{type(self).__name__} with a reference model is not supported under DeepSpeed yet; "
                "use DDP or FSDP2, or a method without a reference model"
            )

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
        """The forget objective's per-row losses summed and divided by the window's answer tokens or rows."""
        per_row = self.objective.forget_loss(self.objective_ctx, model, batch)
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
        from sgu_llm.card import build_card
        from sgu_llm.files import write_text

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
