"""The frozen reference model of NPO-style objectives, placed the way the trained model is.

Under DDP (and one process) the reference is a plain copy on the device. Under FSDP2 it is sharded with
`fully_shard` by Accelerate's own FSDP2 preparation, as the trained model is (each rank holds 1/N; layers
are all-gathered in the forward). Under DeepSpeed it is an inference-only DeepSpeed engine: with ZeRO-3 its
parameters are partitioned over the ranks like the trained model's, with ZeRO-0/1/2 it is a whole copy on
every rank in the engine's precision. Under LoRA there is no copy: the reference is the base model with its
adapters disabled (`UnlearnTrainer.reference_outputs`).
"""

from __future__ import annotations

from typing import Any


def _enabled(section: Any, fallback: bool) -> bool:
    """A DeepSpeed precision section's `enabled`, with "auto" resolved to the Trainer's own flag."""
    value = (section or {}).get("enabled", False)
    return fallback if value == "auto" else value in (True, "true", "True")


def deepspeed_reference_config(ds_config: dict, micro_batch: int, bf16: bool, fp16: bool, hidden_size: int | None):
    """The reference engine's DeepSpeed config: the trained engine's ZeRO-3 (or stage 0: a whole copy) and
    precision, no optimizer.

    Example:
        >>> deepspeed_reference_config({"zero_optimization": {"stage": 2}, "bf16": {"enabled": "auto"}}, 4, True, False, 64)
        {'train_micro_batch_size_per_gpu': 4, 'zero_optimization': {'stage': 0}, 'bf16': {'enabled': True}}
    """
    stage = int((ds_config.get("zero_optimization") or {}).get("stage", 0))
    zero: dict[str, Any] = {"stage": 3 if stage == 3 else 0}
    if stage == 3 and hidden_size:
        # What the trained engine's "auto" values resolve to for this model (transformers' deepspeed integration).
        zero.update(
            reduce_bucket_size=hidden_size * hidden_size,
            stage3_prefetch_bucket_size=int(0.9 * hidden_size * hidden_size),
            stage3_param_persistence_threshold=10 * hidden_size,
        )
    config: dict[str, Any] = {"train_micro_batch_size_per_gpu": micro_batch, "zero_optimization": zero}
    if _enabled(ds_config.get("bf16"), bf16):
        config["bf16"] = {"enabled": True}
    elif _enabled(ds_config.get("fp16"), fp16):
        config["fp16"] = {"enabled": True}
    return config


def deepspeed_reference(model: Any, ds_config: dict, args: Any) -> Any:
    """`model` (frozen, not yet placed) wrapped as an inference-only DeepSpeed engine in eval mode."""
    import deepspeed

    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    config = deepspeed_reference_config(ds_config, args.per_device_train_batch_size, args.bf16, args.fp16, hidden)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


def fsdp2_reference(model: Any, accelerator: Any) -> Any:
    """`model` (frozen) sharded by Accelerate's FSDP2 preparation (the trained model's wrap policy and mixed
    precision), in eval mode."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    return fsdp2_prepare_model(accelerator, model.eval()).eval()

