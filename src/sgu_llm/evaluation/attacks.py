"""Attacks on the unlearning itself: does what was forgotten come back?

- **Relearning**: fine-tune a copy for a few steps on half of the forget set, then measure the other half.
- **Quantization**: round-to-nearest weight quantization (symmetric, per output channel) of every linear
  layer to 8 or 4 bits, then measure the forget set.

Each attack is run on the unlearned model and on the retain model (which never saw the forget set: what
the attack "recovers" there is the baseline for "nothing to recover"). Measured on the held-out half of
the forget set: answer probability, ROUGE-L recall of greedy answers and forget quality (KS test of the
truth ratios against the retain model's, unattacked, on the same rows).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from sgu_llm.core.losses import per_example_nll
from sgu_llm.data.pairing import pad_batch, prepare_qa_dataset
from sgu_llm.evaluation import metrics as M
from sgu_llm.evaluation.suite import generate_answers, rouge_recall, score_answers, truth_ratios


@torch.no_grad()
def quantize_weights(model: Any, bits: int) -> Any:
    """A copy of `model` whose `nn.Linear` weights are rounded to `bits`-bit integers, per output channel
    (symmetric: scale = max |w| of the row / (2^(bits-1) - 1)), then de-quantized.

    Example:
        >>> q = quantize_weights(torch.nn.Sequential(torch.nn.Linear(64, 2)), 4)[0].weight
        >>> [len(torch.unique(row)) <= 15 for row in q]
        [True, True]
    """
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be between 2 and 16, got {bits}")
    out = copy.deepcopy(model)
    qmax = 2 ** (bits - 1) - 1
    for module in out.modules():
        if isinstance(module, torch.nn.Linear):
            w = module.weight.data
            scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / qmax
            module.weight.data = (w / scale).round().clamp(-qmax, qmax) * scale
    return out


def relearn(model: Any, tokenizer: Any, rows: Any, *, steps: int, learning_rate: float, batch_size: int,
            prompt_format: str, system_prompt: str | None, seed: int = 0) -> Any:
    """A copy of `model` fine-tuned for `steps` AdamW steps on QA `rows` (answer-only NLL)."""
    data = prepare_qa_dataset(rows, tokenizer, "relearning", prompt_format=prompt_format,
                              system_prompt=system_prompt).to_list()
    out = copy.deepcopy(model).train()
    for p in out.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(out.parameters(), lr=learning_rate, weight_decay=0.0)
    device = next(out.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(len(data), generator=gen)[:batch_size].tolist()
        batch = {k: v.to(device) for k, v in pad_batch([data[i] for i in idx], tokenizer.pad_token_id).items()}
        logits = out(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, ntok = per_example_nll(logits, batch["labels"])
        (nll.sum() / ntok.sum().clamp_min(1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return out.eval()


def measure(model: Any, tokenizer: Any, rows: Any, reference_ratios: np.ndarray, kw: dict[str, Any]) -> dict:
    """Probability, ROUGE-L recall and forget quality (against `reference_ratios`) on perturbed-schema `rows`."""
    score_kw = dict(prompt_format=kw["prompt_format"], system_prompt=kw["system_prompt"],
                    batch_size=kw["batch_size"])
    was_training = model.training
    model.eval()
    nll = score_answers(model, tokenizer, rows["question"], rows["answer"], **score_kw)["nll"]
    gens = generate_answers(model, tokenizer, rows["question"], max_new_tokens=kw["max_new_tokens"], **score_kw)
    ratios = truth_ratios(model, tokenizer, rows, **score_kw)
    model.train(was_training)
    return {
        "forget_prob": float(np.mean(np.exp(-nll))),
        "forget_rouge": float(np.mean(rouge_recall(gens, rows["answer"]))),
        "forget_quality": M.forget_quality(ratios, reference_ratios),
    }


def attack_report(
    models: dict[str, Any],
    tokenizer: Any,
    forget_perturbed: Any,
    reference_ratios: list[float],
    kw: dict[str, Any],
    *,
    relearn_steps: int = 10,
    relearn_learning_rate: float = 1e-3,
    relearn_batch_size: int = 8,
    bits: tuple[int, ...] = (8, 4),
    seed: int = 0,
) -> dict[str, Any]:
    """Every attack on every model in `models` (e.g. unlearned, retain), measured before and after.

    The forget set is split in two halves by row order (even / odd rows: each author lands in both).
    Relearning trains on the even rows; every number is measured on the odd rows, so relearning is
    judged on facts it did not see. `reference_ratios` are the retain model's forget truth ratios,
    row-aligned with `forget_perturbed`.
    """
    n = len(forget_perturbed)
    if n < 4:
        raise ValueError(f"the attacks need a forget set of at least 4 rows (two halves), got {n}")
    train_idx, test_idx = list(range(0, n, 2)), list(range(1, n, 2))
    train_rows, test_rows = forget_perturbed.select(train_idx), forget_perturbed.select(test_idx)
    ref = np.asarray(reference_ratios)[test_idx]
    out: dict[str, Any] = {
        "rows_trained": len(train_idx),
        "rows_measured": len(test_idx),
        "relearn": {"steps": relearn_steps, "learning_rate": relearn_learning_rate, "batch_size": relearn_batch_size},
        "models": {},
    }
    for name, model in models.items():
        entry = {"none": measure(model, tokenizer, test_rows, ref, kw)}
        attacked = relearn(
            model, tokenizer, train_rows, steps=relearn_steps, learning_rate=relearn_learning_rate,
            batch_size=relearn_batch_size, prompt_format=kw["prompt_format"], system_prompt=kw["system_prompt"],
            seed=seed,
        )
        entry["relearn"] = measure(attacked, tokenizer, test_rows, ref, kw)
        del attacked
        for b in bits:
            entry[f"int{b}"] = measure(quantize_weights(model, b), tokenizer, test_rows, ref, kw)
        out["models"][name] = entry
    return out
