"""What an unlearning trainer needs to know about the model's task, and nothing else.

A task prepares the forget and retain rows, collates them, and scores each example
(a summed loss and how many units it sums over). Pairing, normalisation over the
accumulation window, the selection layer and every method's loss are shared, so
the same `SGUTrainer` unlearns a causal LM's QA pairs or an image classifier's images.

Example:
    >>> import torch
    >>> task = get_task("classification")
    >>> batch = task.collate([{"pixel_values": torch.zeros(4), "labels": 1}] * 3)
    >>> task.units(batch)
    (3, 3)
    >>> loss, units = task.example_losses(torch.nn.Linear(4, 2), batch)
    >>> loss.shape, units.tolist()
    (torch.Size([3]), [1.0, 1.0, 1.0])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from sgu_llm.core.losses import IGNORE_INDEX, per_example_nll
from sgu_llm.data.pairing import ForgetRetainCollator, ensure_pad_token, prepare_qa_dataset
from sgu_llm.evaluation.suite import check_tokenizer_matches
from sgu_llm.models.checks import check_causal_lm, check_fits_context


class CausalLMTask:
    """QA pairs for a causal LM: summed answer-token NLL per example; the units are answer tokens."""

    name = "causal_lm"

    def prepare(self, model: Any, args: Any, forget: Any, retain: Any, processing_class: Any, answer_sets=()):
        """Tokenize both sets with the recipe's prompt format (and the forget rows' `answer_sets`: alternatives,
        "I don't know" answers); check the model and tokenizer fit them."""
        if processing_class is None:
            raise ValueError(
                "processing_class (the tokenizer) is required: it tokenizes the QA pairs and pads"
            )
        tokenizer = processing_class
        ensure_pad_token(tokenizer)
        check_causal_lm(model)
        check_tokenizer_matches(model, tokenizer)
        fmt = dict(
            prompt_format=args.prompt_format, max_length=args.max_length, system_prompt=args.system_prompt
        )
        forget = prepare_qa_dataset(forget, tokenizer, "forget", answer_sets=tuple(answer_sets), **fmt)
        retain = prepare_qa_dataset(retain, tokenizer, "retain", **fmt)
        check_fits_context(model, {"forget": forget, "retain": retain})
        return forget, retain, ForgetRetainCollator(tokenizer.pad_token_id)

    def example_losses(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return per_example_nll(logits, batch["labels"])

    def units(self, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
        labels = batch["labels"]
        return int(labels[:, 1:].ne(IGNORE_INDEX).sum()), len(labels)


class ClassificationTask:
    """Rows `{"pixel_values": tensor, "labels": int}`: per-example cross-entropy; each example is one unit.

    The model maps a batch of `pixel_values` to logits (a tensor, or an output with `.logits`).
    """

    name = "classification"
    input_key = "pixel_values"

    def prepare(self, model: Any, args: Any, forget: Any, retain: Any, processing_class: Any, answer_sets=()):
        if answer_sets:
            raise ValueError(
                f"the forget objective needs question/answer rows ({list(answer_sets)}); an image classifier "
                "unlearns with forget_loss 'nll' or 'npo'"
            )
        for name, rows in (("forget", forget), ("retain", retain)):
            if len(rows) == 0:
                raise ValueError(f"the {name} set is empty")
            missing = {self.input_key, "labels"} - set(rows[0])
            if missing:
                raise ValueError(
                    f"classification rows need {self.input_key!r} and 'labels'; the {name} set's first row lacks "
                    f"{sorted(missing)} (it has {sorted(rows[0])})"
                )
        if args.stop_on_holdout:
            raise ValueError("stop_on_holdout scores QA answers; it works with the causal_lm task only")
        return forget, retain, ForgetRetainStackCollator(self)

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return {
            self.input_key: torch.stack(
                [torch.as_tensor(r[self.input_key], dtype=torch.float32) for r in rows]
            ),
            "labels": torch.tensor([int(r["labels"]) for r in rows], dtype=torch.long),
        }

    def example_losses(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(batch[self.input_key])
        logits = getattr(out, "logits", out)
        loss = F.cross_entropy(logits.float(), batch["labels"], reduction="none")
        return loss, torch.ones_like(loss)

    def units(self, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
        n = len(batch["labels"])
        return n, n


class ForgetRetainStackCollator:
    """`{"forget": batch, "retain": batch}` from paired items, each split collated by the task."""

    def __init__(self, task: ClassificationTask):
        self.task = task

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, dict[str, torch.Tensor]]:
        return {split: self.task.collate([it[split] for it in items]) for split in ("forget", "retain")}


TASKS = {"causal_lm": CausalLMTask, "classification": ClassificationTask}


def get_task(task: str | Any) -> Any:
    """A task by its lowercase name (or a task object, returned as is)."""
    if not isinstance(task, str):
        return task
    if task.lower() not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    return TASKS[task.lower()]()
