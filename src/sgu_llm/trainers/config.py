"""`UnlearnConfig`: the arguments every unlearning method shares (a `TrainingArguments`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from sgu_llm.data.prompts import DEFAULT_SYSTEM_PROMPT, PROMPT_FORMATS
from sgu_llm.trainers.stopping import STOP_METRICS


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
        if not self.use_cpu and launched_world_size() > 1 and not torch.accelerator.is_available():
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


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


