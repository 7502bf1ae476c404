"""Seconds per fine-tuning step of a pretrained model in each mode the benchmark offers, side by side.

Full fine-tuning, full fine-tuning of the top N layers, and LoRA (all layers, top N layers), on
batches of the synthetic TOFU set in the recipe's prompt format. The ratios to full fine-tuning are
what carries across machines.

    python scripts/bench_finetune_modes.py --model builtin:smollm2-135m-instruct --top_layers 8
"""

from __future__ import annotations

import argparse
import copy
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--prompt_format", default="chat_template")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per mode (after one warm-up step)")
    ap.add_argument("--top_layers", type=int, default=8)
    ap.add_argument("--lora_r", type=int, default=16)
    a = ap.parse_args()

    from sgu_llm.core.losses import per_example_nll
    from sgu_llm.data.pairing import pad_batch
    from sgu_llm.data.prompts import tokenize_qa
    from sgu_llm.data.synthetic import synthetic_tofu
    from sgu_llm.models.benchmark import _trainable_part
    from sgu_llm.models.pretrained import load_pretrained

    base, tok = load_pretrained(a.model, dtype="float32")
    qa = synthetic_tofu(num_authors=40, seed=0)["full"]
    rows = [tokenize_qa(tok, r["question"], r["answer"], a.prompt_format) for r in qa]
    batches = [pad_batch(rows[i : i + a.batch_size], tok.pad_token_id) for i in range(0, len(rows), a.batch_size)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[: a.steps + 1]) / (a.steps + 1)
    modes = {
        "full": (None, 0),
        f"full, top {a.top_layers} layers": (a.top_layers, 0),
        f"LoRA r{a.lora_r}, all layers": (None, a.lora_r),
        f"LoRA r{a.lora_r}, top {a.top_layers} layers": (a.top_layers, a.lora_r),
    }
    print(f"{a.model}: batch {a.batch_size}, {tokens:.0f} tokens per batch, {torch.get_num_threads()} threads")
    results = {}
    for name, (layers, r) in modes.items():
        model = _trainable_part(copy.deepcopy(base), layers, r)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        times = []
        for i, b in enumerate(batches[: a.steps + 1]):
            t = time.perf_counter()
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            nll, n = per_example_nll(logits, b["labels"])
            (nll.sum() / n.sum()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:  # the first step warms up
                times.append(time.perf_counter() - t)
        results[name] = sum(times) / len(times)
        trained = sum(p.numel() for p in params)
        print(f"  {name:28s} {results[name]:6.2f} s/step  {results[name] / results['full']:.2f}x full  "
              f"{trained / 1e6:6.1f}M trained parameters")


if __name__ == "__main__":
    main()
