"""GiB per GPU of SGU training (or a baseline) for a model, by training mode, engine, stash mode and GPU count.

    python scripts/memory_model.py --model llama-3.1-8b
    python scripts/memory_model.py --model path/to/config.json --method npo --micro_batch 8 --seq_len 1024
    python scripts/memory_model.py --model llama-3.1-70b --checkpointing --grad_accum 4 --precision bf16

--model is a config.json, a model folder or a built-in shape (llama-3.2-1b, llama-3.1-8b, llama-3.1-70b,
smollm2-135m); nothing is downloaded. Prints the parameter counts, a table of the total GiB per GPU at
N = 1, 2, 4, 8 with the fewest GPUs of 80 GB and 141 GB that hold it (keeping --headroom free), then every
component of every configuration. What each component counts: `sgu_llm.models.memory`.
"""

from __future__ import annotations

import argparse

from sgu_llm.models.memory import (
    BUILTIN_SHAPES,
    ENGINES,
    GPUS,
    HEADROOM,
    LORA_TARGETS,
    METHODS,
    PRECISIONS,
    STASH_MODES,
    WORLD_SIZES,
    Grid,
    Setup,
    Training,
    grid_estimates,
    load_config,
    markdown_tables,
    model_shape,
)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help=f"config.json, model folder or one of {list(BUILTIN_SHAPES)}")
    ap.add_argument("--method", default="sgu", choices=list(METHODS))
    ap.add_argument("--micro_batch", type=int, default=4, help="sequences per split per micro-batch")
    ap.add_argument("--seq_len", type=int, default=512)
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing of every layer")
    ap.add_argument("--grad_accum", type=int, default=1)
    ap.add_argument("--precision", default="amp", choices=PRECISIONS, help="of DDP and FSDP2 (ZeRO: DeepSpeed bf16)")
    ap.add_argument("--lora_r", type=int, default=16)
    ap.add_argument("--lora_targets", nargs="+", default=list(LORA_TARGETS))
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--stash_modes", nargs="+", default=list(STASH_MODES), choices=STASH_MODES)
    ap.add_argument("--world_sizes", nargs="+", type=int, default=list(WORLD_SIZES))
    ap.add_argument("--headroom", type=float, default=HEADROOM, help="fraction of each GPU kept free")
    a = ap.parse_args(argv)

    config = load_config(a.model)
    shapes = [model_shape(config, Training(mode, a.lora_r, tuple(a.lora_targets))) for mode in ("full", "lora")]
    setup = Setup(method=a.method, precision=a.precision, micro_batch=a.micro_batch, seq_len=a.seq_len,
                  checkpointing=a.checkpointing, grad_accum=a.grad_accum)
    grid = Grid(engines=tuple(a.engines), stash_modes=tuple(a.stash_modes), world_sizes=tuple(a.world_sizes),
                setup=setup)
    full, lora = shapes
    title = (
        f"# {a.model}: {full.total:,} parameters ({full.total:.4g}); LoRA r={a.lora_r} on "
        f"{','.join(a.lora_targets)}: {lora.trainable:,} trainable"
    )
    settings = (
        f"method {a.method}, micro-batch {a.micro_batch} x {a.seq_len} tokens per split, gradient accumulation "
        f"{a.grad_accum}, checkpointing {'on' if a.checkpointing else 'off'}, precision {a.precision} "
        f"(DDP, FSDP2; ZeRO: DeepSpeed bf16). GiB = 2**30 bytes per GPU; fits: total <= "
        f"{1 - a.headroom:.0%} of {', '.join(GPUS)} (read as {', '.join(str(v // 2**30) for v in GPUS.values())} GiB)."
    )
    text = "\n\n".join([title, settings, markdown_tables(grid_estimates(shapes, grid, a.model), GPUS, a.headroom)])
    print(text)
    return text


if __name__ == "__main__":
    main()
