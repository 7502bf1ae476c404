"""Peak memory and time of one full TOFU evaluation (scores, truth ratios, generation, MIA) of a model.

Run in a fresh process so the peak is this evaluation's (weights included):

    python scripts/eval_memory.py --model builtin:smollm2-135m-instruct --num_authors 40

Prints the process's peak resident memory (ru_maxrss) before and after the evaluation; on a GPU it also
prints torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import resource
import time


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--num_authors", type=int, default=40)
    ap.add_argument("--prompt_format", default="chat_template")
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--max_new_tokens", type=int, default=48)
    a = ap.parse_args()

    import torch

    from sgu_llm.data.synthetic import synthetic_tofu
    from sgu_llm.evaluation import evaluate_model
    from sgu_llm.models.pretrained import load_pretrained

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_pretrained(a.model, dtype="float32")
    model.to(device).eval()
    s = synthetic_tofu(num_authors=a.num_authors, seed=0)
    sets = {
        "forget": s["forget10_perturbed"],
        "retain": s["retain_perturbed"],
        "real_authors": s["real_authors_perturbed"],
        "world_facts": s["world_facts_perturbed"],
        "holdout": s["holdout10"],
    }
    before = peak_gib()
    t = time.perf_counter()
    result = evaluate_model(
        model, tok, sets, prompt_format=a.prompt_format, batch_size=a.batch_size, max_new_tokens=a.max_new_tokens
    )
    seconds = time.perf_counter() - t
    rows = sum(len(v) for v in sets.values())
    print(f"{a.model} on {device}: {rows} evaluation questions, {seconds:.0f} s")
    print(f"peak resident memory: {before:.2f} GiB after loading, {peak_gib():.2f} GiB after the evaluation")
    if device == "cuda":
        print(f"peak CUDA memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    agg = result["aggregates"]
    print("model utility {model_utility:.3f}, forget prob {forget_prob:.3f}, world facts rouge {world_facts_rouge:.3f}".format(**agg))


if __name__ == "__main__":
    main()
