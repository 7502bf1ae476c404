"""Plain answer-only fine-tuning: makes the model that will later unlearn."""

from __future__ import annotations

from typing import Any

import torch

from sgu_llm.data.pairing import PadCollator, prepare_qa_dataset


def finetune(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    output_dir: str,
    *,
    epochs: float = 30,
    learning_rate: float = 3e-3,
    batch_size: int = 32,
    prompt_format: str = "phi",
    seed: int = 0,
    callbacks: list | None = None,
    **training_kwargs: Any,
) -> Any:
    """Fine-tune `model` on QA rows with the question masked out of the loss; returns the model.

    Example:
        >>> model = finetune(model, tok, splits["full"], "runs/target", epochs=40)  # doctest: +SKIP
    """
    from transformers import Trainer, TrainingArguments

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    data = prepare_qa_dataset(dataset, tokenizer, "fine-tuning", prompt_format=prompt_format)
    args = TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        lr_scheduler_type=training_kwargs.pop("lr_scheduler_type", "constant"),
        save_strategy="no",
        report_to="none",
        logging_strategy="no",
        seed=seed,
        remove_unused_columns=False,
        disable_tqdm=True,
        dataloader_pin_memory=torch.accelerator.is_available(),
        **training_kwargs,
    )
    collator = PadCollator(tokenizer.pad_token_id)
    Trainer(model=model, args=args, train_dataset=data, data_collator=collator, callbacks=callbacks).train()
    return model
