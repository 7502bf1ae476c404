"""Peak GPU memory of a few SGU steps on a randomly initialised model of a real shape, beside the memory model.

Builds the model from its published shape (`sgu_llm.models.memory`: llama-3.2-1b, llama-3.1-8b, ...; no
download), random weights in float32 with bf16 autocast (the Trainer's `bf16: true`), rows of `--seq_len` tokens,
and runs `--steps` SGU steps through `SGUTrainer`; prints the peak of `torch.cuda.max_memory_allocated` per
process next to `scripts/memory_model.py`'s figure for the same engine, world size and settings, component by
component. The engine is what Accelerate runs (one GPU, DDP, FSDP2 or DeepSpeed ZeRO):

    python scripts/gpu_memory_check.py --model llama-3.2-1b --steps 3
    accelerate launch --config_file recipes/accelerate/fsdp2.yaml --num_processes 2 scripts/gpu_memory_check.py
    accelerate launch --config_file recipes/accelerate/deepspeed_zero3.yaml --num_processes 2 \
        scripts/gpu_memory_check.py --model llama-3.2-1b

Without a GPU it runs on the CPU and prints the prediction only (no peak to compare).
"""

from __future__ import annotations

import argparse
import os
import tempfile

import datasets
import torch
from transformers import AutoModelForCausalLM

from sgu_llm.models.memory import COMPONENTS, GiB, Setup, estimate, load_config, model_shape
from sgu_llm.models.tiny import train_tokenizer
from sgu_llm.trainers import SGUConfig, SGUTrainer


def rows(n: int, words: int, seed: int) -> datasets.Dataset:
    """`n` question/answer rows whose answers run past `words` tokens (truncated to max_length)."""
    g = torch.Generator().manual_seed(seed)
    vocab = [f"w{i}" for i in range(500)]
    return datasets.Dataset.from_list([
        {"question": f"Question {i}?",
         "answer": " ".join(vocab[j] for j in torch.randint(0, len(vocab), (words,), generator=g).tolist())}
        for i in range(n)
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.2-1b", help="a built-in shape or a config.json")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--micro_batch", type=int, default=4)
    ap.add_argument("--seq_len", type=int, default=512)
    ap.add_argument("--stash_dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--checkpointing", action="store_true")
    a = ap.parse_args()
    gpu = torch.cuda.is_available()
    config = load_config(a.model)
    texts = [f"Question {i}? " + " ".join(f"w{j}" for j in range(500)) for i in range(4)]
    tokenizer = train_tokenizer(texts, vocab_size=1000)  # ids below 1000; the model keeps its own vocabulary
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    n = a.micro_batch * (a.steps + 1) * int(os.environ.get("WORLD_SIZE", "1"))
    args = SGUConfig(
        output_dir=tempfile.mkdtemp(), report_to="none", max_steps=a.steps, per_device_train_batch_size=a.micro_batch,
        max_length=a.seq_len, learning_rate=1e-5, bf16=gpu, use_cpu=not gpu, save_strategy="no", logging_steps=1,
        disable_tqdm=True, gradient_checkpointing=a.checkpointing, stash_dtype=a.stash_dtype,
        prompt_format="phi", dataloader_drop_last=True,
    )
    trainer = SGUTrainer(model, args, rows(n, a.seq_len, 0), rows(n, a.seq_len, 1), processing_class=tokenizer)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    acc = trainer.accelerator
    if trainer.is_deepspeed_enabled:
        engine = f"zero{acc.state.deepspeed_plugin.zero_stage}"
    else:
        engine = "fsdp2" if getattr(acc, "is_fsdp2", False) else "ddp"
    if engine == "zero1":
        engine = "zero2"  # the memory model's ZeRO-2 row: SGU holds the same full gradients
    setup = Setup(engine=engine, world_size=acc.num_processes, stash=a.stash_dtype, method="sgu", precision="amp",
                  micro_batch=a.micro_batch, seq_len=a.seq_len, checkpointing=a.checkpointing)
    predicted = estimate(model_shape(config), setup, a.model)
    peak = torch.tensor([torch.cuda.max_memory_allocated() if gpu else 0], dtype=torch.float64,
                        device=acc.device)
    peak = acc.gather(peak).max().item() if acc.num_processes > 1 else peak.item()
    if trainer.is_world_process_zero():
        parts = ", ".join(f"{c} {getattr(predicted, c) / GiB:.2f}" for c in COMPONENTS)
        print(f"{a.model}: {engine} x {acc.num_processes}, micro-batch {a.micro_batch} x {a.seq_len}, stash "
              f"{a.stash_dtype}, checkpointing {a.checkpointing}, {a.steps} SGU steps")
        print(f"predicted {predicted.total / GiB:.2f} GiB per GPU ({parts})")
        if gpu:
            print(f"measured  {peak / GiB:.2f} GiB per GPU (peak torch.cuda.max_memory_allocated over ranks); "
                  f"measured / predicted = {peak / predicted.total:.2f}")
        else:
            print("no GPU: no peak measured")


if __name__ == "__main__":
    main()
