"""Worker for tests/test_distributed.py: a few SGU steps from a fixed start, final weights saved by rank 0.

accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml tests/ddp_worker.py OUT.pt PER_DEVICE_BATCH \
    [METHOD] [ACCUMULATION] [ZERO_STAGE]

With ZERO_STAGE (0 to 3) the run uses DeepSpeed with that ZeRO stage (launch with torchrun, or with
recipes/accelerate/deepspeed_zero2.yaml for stage 2). With SGU_TEST_FSDP2_ON_CPU=1 (under torchrun) the Trainer runs
Accelerate's FSDP2 on the CPU processes (`fsdp2_on_cpu`). Under ZeRO-3 and FSDP2 every SGU selection is also
computed on the full gradients (the shards gathered) and both steps' action counts are saved.
"""

import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.distributed.tensor import DTensor
from transformers import TrainerCallback

from sgu_llm.data.prompts import build_prompt
from sgu_llm.data.synthetic import synthetic_tofu
from sgu_llm.models.tiny import tiny_llama, train_tokenizer
from sgu_llm.selection import select_gradients
from sgu_llm.trainers import get_method


def main(
    out_path: str,
    per_device: int,
    method: str = "sgu",
    accumulation: int = 1,
    zero_stage: int | None = None,
    launched: bool = True,
) -> None:
    """Train and save. `launched` (the script): leave the process with `os._exit` once done (see below); called
    in the test process (`launched=False`, one process), just return."""
    splits = synthetic_tofu(num_authors=20, qa_per_author=10, seed=0)
    tok = train_tokenizer([build_prompt(r["question"]) + r["answer"] for r in splits["full"]], vocab_size=400)
    model = tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    config_cls, trainer_cls = get_method(method)
    poisoned = {int(x) for x in os.environ.get("SGU_TEST_POISON_STEPS", "").split(",") if x}
    if poisoned:
        trainer_cls = poisoned_trainer(trainer_cls, poisoned)
    if os.environ.get("SGU_TEST_FSDP2_ON_CPU") == "1":
        trainer_cls = fsdp2_on_cpu(trainer_cls)
    rule = os.environ.get("SGU_TEST_RULE")  # a selective function other than the default
    args = config_cls(
        **({"selective_function": rule} if rule else {}),
        output_dir=out_path + ".run",
        overwrite_output_dir=True,
        report_to="none",
        per_device_train_batch_size=per_device,
        max_steps=3,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        use_cpu=True,
        lr_scheduler_type="constant",
        dataloader_drop_last=True,
        gradient_accumulation_steps=accumulation,
        max_grad_norm=1.0,
        deepspeed=None if zero_stage is None else deepspeed_config(zero_stage),
    )
    trainer = trainer_cls(model, args, splits["forget10"], splits["retain90"], processing_class=tok)
    reductions = []  # (optimizer step, DDP bucket index) of every gradient all-reduce
    trainer.add_callback(CountReductions(trainer, reductions))
    steps = []  # weights after every optimizer step
    trainer.add_callback(RecordSteps(trainer, steps))
    counts = []  # ZeRO-3, FSDP2: per selection, (action counts on the shards, on the gathered full gradients)
    held_bytes = {}  # SGU: what this rank holds at the first selection (parameters, g_r, stash)
    if hasattr(trainer, "_select_window"):
        trainer._select_window = compare_unsharded(trainer, trainer._select_window, counts)
        trainer.add_callback(MeasureHeld(trainer, held_bytes))
    trainer.train()
    engine = "ddp" if trainer.accelerator.num_processes > 1 else "single"
    if getattr(trainer.accelerator, "is_fsdp2", False):
        engine = "fsdp2"
    if trainer.is_deepspeed_enabled:
        engine = f"zero{trainer.accelerator.state.deepspeed_plugin.zero_stage}"
    held = {"model": held_fraction(trainer.model), "reference": held_fraction(trainer.ref_model)}
    state = full_state(trainer)
    if trainer.is_world_process_zero():
        logs = [h for h in trainer.state.log_history if "loss" in h]
        torch.save(
            {"state": state, "logs": logs, "engine": engine, "reductions": reductions, "steps": steps,
             "skipped": getattr(trainer, "selection_skipped_steps", None), "counts": counts,
             "held": held, "reference": type(trainer.ref_model).__name__ if trainer.ref_model is not None else None,
             "held_bytes": held_bytes, "config": model.config.to_dict()},
            out_path,
        )
    # Tear the process group down before exit: a gloo group left alive can abort a rank at interpreter exit.
    trainer.accelerator.end_training()
    if not launched:
        return
    # If a rank dies after this line, training and saving were complete (a teardown crash, not a wrong result).
    print(
        f"rank {trainer.args.process_index}: trained, saved, process group closed",
        file=sys.stderr,
        flush=True,
    )
    # Leave without running C++ static destructors: 2-rank CPU runs occasionally abort in them
    # ("terminate called without an active exception", after the line above, with the results already
    # saved). That teardown crash is open in the reliability issue; these tests check the results.
    sys.stdout.flush()
    os._exit(0)


class CountReductions(TrainerCallback):
    """Wrap DDP's all-reduce in a comm hook that records which bucket is reduced at which step."""

    def __init__(self, trainer, record):
        self.trainer, self.record = trainer, record

    def on_train_begin(self, args, state, control, **kwargs):
        ddp = self.trainer.model_wrapped
        if not isinstance(ddp, torch.nn.parallel.DistributedDataParallel):
            return

        def hook(process_group, bucket):
            self.record.append((self.trainer.state.global_step, bucket.index()))
            return allreduce_hook(process_group, bucket)

        ddp.register_comm_hook(None, hook)


def held_fraction(model) -> float | None:
    """The fraction of the model's parameters this rank holds between forwards (ZeRO-3 keeps its partition
    apart; parameters below the persistence threshold stay whole); 1.0 unpartitioned, None without a model."""
    if model is None:
        return None
    params = list(model.parameters())
    held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
    return held / sum(getattr(p, "ds_numel", p.numel()) for p in params)


def full_state(trainer) -> dict:
    """The model's whole weights on every rank (ZeRO-3's partitions gathered)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if params:
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    # FSDP2: DTensor shards, gathered whole (a collective every rank joins)
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu().clone()
            for k, v in model.state_dict().items()}


class RecordSteps(TrainerCallback):
    def __init__(self, trainer, record):
        self.trainer, self.record = trainer, record

    def on_step_end(self, args, state, control, **kwargs):
        self.record.append(full_state(self.trainer))


def local_bytes(t) -> int:
    """Bytes this rank stores of a parameter or gradient: a DTensor's local shard, a ZeRO-3 partition."""
    if isinstance(t, DTensor):
        t = t.to_local()
    if hasattr(t, "ds_tensor"):
        t = t.ds_tensor
    return t.numel() * t.element_size()


class MeasureHeld(TrainerCallback):
    """At the first selection, the bytes this rank holds of the parameters, of g_r (`param.grad`, or SGU's own
    copies under DeepSpeed) and of SGU's stash: what the memory model's `params`, `gradients` and `stash`
    count (`tests/test_distributed.py` compares them)."""

    def __init__(self, trainer, record):
        self.trainer, self.record = trainer, record

    def on_train_begin(self, args, state, control, **kwargs):
        pairing = self.trainer.pairing
        select = pairing.select

        def measured():
            if not self.record:
                params = [p for _, p in self.trainer._params()]
                self.record["params"] = sum(local_bytes(p) for p in self.trainer.model.parameters())
                self.record["grad"] = sum(local_bytes(p.grad) for p in params if p.grad is not None)
                retain = getattr(pairing, "retain", [])
                self.record["sgu_retain"] = sum(t.numel() * t.element_size() for t in retain if t is not None)
                self.record["stash"] = sum(local_bytes(t) for t in pairing.stash if t is not None)
            return select()

        pairing.select = measured


def compare_unsharded(trainer, select_window, record):
    """Wrap SGUTrainer._select_window: on sharded inputs (ZeRO-3 partitions) first run the same selection on
    the gathered full gradients, then the sharded one; record both steps' action counts."""

    def gather(parts, numel, group):
        world = dist.get_world_size(group)
        sizes = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([parts.numel()]), group=group)
        padded = torch.zeros(max(int(s) for s in sizes), dtype=parts.dtype)
        padded[: parts.numel()] = parts
        out = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(out, padded, group=group)
        full = torch.cat([o[: int(s)] for o, s in zip(out, sizes)])
        assert full.numel() == numel
        return full

    ref_states = {}  # the unsharded selection's own rule states (running averages), by parameter index

    def full(tensors, shards):
        if shards is not None:
            return [gather(t.float(), n, shards.group) for t, n in zip(tensors, shards.numels)]
        return [t.full_tensor().float() for t in tensors]  # FSDP2: DTensor shards

    def wrapped(retain, forget, zero_dtype, shards=None):
        sharded = shards is not None or any(isinstance(g, DTensor) for g in retain)
        if sharded:
            full_r, full_f = full(retain, shards), full(forget, shards)
            states = [ref_states.setdefault(i, {}) for i in range(len(full_r))]
            reference, stats = select_gradients(full_r, full_f, trainer._step_settings(), seed=trainer._seed(),
                                                states=states)
            unsharded = stats.counts.sum(0).tolist()
        live, updates = select_window(retain, forget, zero_dtype, shards)
        if sharded and live:  # the sharded step's counts (summed over ranks, as the observers saw) and update
            got = full(updates, shards)
            diff = max(float((g - r.float()).abs().max()) for g, r in zip(got, reference))
            record.append({"unsharded": unsharded, "sharded": trainer._last_counts, "update_max_diff": diff})
        return live, updates

    trainer.selection_observers.append(lambda step, names, counts: setattr(trainer, "_last_counts",
                                                                           counts.sum(0).tolist()))
    return wrapped


def fsdp2_on_cpu(trainer_cls):
    """The method's trainer with Accelerate's FSDP2 plugin on CPU processes.

    Accelerate enables FSDP for GPU distributed types only: on a multi-CPU launch it keeps MULTI_CPU (DDP) even
    with an FSDP config. This sets the plugin and the distributed type right after the Trainer built its
    Accelerator, the one thing a GPU launch does differently; from there on everything is Accelerate's and the
    Trainer's own FSDP2 path (`fsdp2_prepare_model`: `fully_shard` of each decoder layer and the root, over gloo).
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    class OnCPU(trainer_cls):
        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            state = self.accelerator.state
            state.fsdp_plugin = FullyShardedDataParallelPlugin(
                fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                transformer_cls_names_to_wrap=["LlamaDecoderLayer"], reshard_after_forward=True,
                state_dict_type="FULL_STATE_DICT", cpu_ram_efficient_loading=False,
            )
            # AcceleratorState() copies PartialState's fields each time it is constructed: set both.
            PartialState().distributed_type = state.distributed_type = DistributedType.FSDP
            self.is_fsdp_enabled = True

    return OnCPU


def poisoned_trainer(trainer_cls, steps: set):
    """The method's trainer with a NaN forget loss at the given optimizer steps (an overflow, a bad batch)."""

    class Poisoned(trainer_cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if "forget" in inputs and self.state.global_step in steps:
                return loss * float("nan")
            return loss

    return Poisoned


def deepspeed_config(stage: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        # ZeRO-3's bucket and persistence sizes as the recipes leave them: "auto", set from the model's hidden size
        "zero_optimization": {"stage": stage} | (
            {k: "auto" for k in ("reduce_bucket_size", "stage3_prefetch_bucket_size",
                                 "stage3_param_persistence_threshold")} if stage == 3 else {}
        ),
        "zero_allow_untested_optimizer": True,
    }


if __name__ == "__main__":
    argv = sys.argv[1:]
    main(
        argv[0],
        int(argv[1]),
        argv[2] if len(argv) > 2 else "sgu",
        int(argv[3]) if len(argv) > 3 else 1,
        int(argv[4]) if len(argv) > 4 else None,
    )
