"""The TOFU evaluation suite: per-example scores for one model, aggregated into the field's metrics.

`evaluate_model` returns (and `sgu-llm eval` writes) a JSON-able dict:
`{"aggregates": {...}, "per_example": {split: {metric: [...]}}}`, so every
aggregate can be recomputed from the file.
"""

from __future__ import annotations

import os
import sys
import zlib
from typing import Any

import numpy as np
import torch

from sgu_llm.data.prompts import DEFAULT_SYSTEM_PROMPT, build_prompt, tokenize_qa
from sgu_llm.evaluation import metrics as M
from sgu_llm.evaluation.scoring import DEFAULT_TOKEN_BUDGET, score_rows

MIN_K = 0.4  # MUSE's k for Min-K% and Min-K%++
ROUGE_MODULE = os.path.join(os.path.dirname(__file__), "rouge_recall")


def check_tokenizer_matches(model: Any, tokenizer: Any) -> None:
    """A tokenizer with ids beyond the model's embedding table cannot be this model's tokenizer."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model embeds only {rows}: they do not belong "
            "together. Load the tokenizer saved with the model (same folder or cache entry)."
        )


def _quiet() -> bool:
    """Progress bars are hidden when stderr is not a terminal or SGU_LLM_QUIET is set."""
    return bool(os.environ.get("SGU_LLM_QUIET")) or not sys.stderr.isatty()


def _batches(n: int, size: int, desc: str = "evaluating"):
    """Batch index ranges, with a progress bar."""
    from tqdm.auto import tqdm

    starts = range(0, n, size)
    for start in tqdm(starts, desc=desc, leave=False, disable=_quiet() or len(starts) < 2):
        yield range(start, min(start + size, n))


def score_answers(
    model: Any,
    tokenizer: Any,
    questions: list[str],
    answers: list[str],
    *,
    prompt_format: str = "phi",
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    max_length: int = 512,
    batch_size: int = 64,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    token_stats: bool = False,
) -> dict[str, np.ndarray]:
    """Mean answer NLL per (question, answer) pair; with `token_stats`, Min-K% and Min-K%++ scores too.

    Batches hold at most `batch_size` rows and `token_budget` padded tokens (see `scoring.score_rows`).
    """
    from tqdm.auto import tqdm

    rows = [
        tokenize_qa(tokenizer, q, a, prompt_format, max_length, system_prompt)
        for q, a in zip(questions, answers)
    ]

    def progress(batches):
        return tqdm(batches, desc="scoring answers", leave=False, disable=_quiet() or len(batches) < 2)

    return score_rows(
        model,
        rows,
        tokenizer.pad_token_id,
        token_budget=token_budget,
        max_rows=batch_size,
        token_stats=token_stats,
        min_k_fraction=MIN_K,
        progress=progress,
    )


@torch.no_grad()
def generate_answers(
    model: Any,
    tokenizer: Any,
    questions: list[str],
    *,
    prompt_format: str = "phi",
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    max_new_tokens: int = 200,
    batch_size: int = 64,
) -> list[str]:
    """Greedy answers (no sampling, left padding, cut at EOS).

    Trailing spaces are cut from the prompt: sub-word tokenizers (Metaspace,
    byte-level BPE) attach a space to the word after it, so in training the
    answer's first token carried the prompt's trailing space.
    """
    device = next(model.parameters()).device
    add_special = prompt_format != "chat_template"
    prompts = [
        tokenizer(
            build_prompt(q, tokenizer, prompt_format, system_prompt).rstrip(" "),
            add_special_tokens=add_special,
        )["input_ids"]
        for q in questions
    ]
    texts = []
    for idx in _batches(len(prompts), batch_size, "generating"):
        chunk = [prompts[i] for i in idx]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return [t.strip() for t in texts]


def rouge_recall(predictions: list[str], references: list[str]) -> np.ndarray:
    import evaluate

    metric = evaluate.load(ROUGE_MODULE)
    return np.array(metric.compute(predictions=predictions, references=references)["rougeL_recall"])


def wrong_answer_nll(model: Any, tokenizer: Any, ds: Any, **kw: Any) -> np.ndarray:
    """(rows, k) answer NLLs of each row's `perturbed_answer`s (k: the first row's count)."""
    k = len(ds[0]["perturbed_answer"])
    qs = [q for q, ws in zip(ds["question"], ds["perturbed_answer"]) for _ in ws[:k]]
    ans = [w for ws in ds["perturbed_answer"] for w in ws[:k]]
    return score_answers(model, tokenizer, qs, ans, **kw)["nll"].reshape(len(ds), k)


def truth_ratios(model: Any, tokenizer: Any, ds: Any, **kw: Any) -> np.ndarray:
    """Per-row truth ratio P_wrong / P_correct, P_correct from `paraphrased_answer` (TOFU's author sets)."""
    correct = score_answers(model, tokenizer, ds["question"], ds["paraphrased_answer"], **kw)["nll"]
    return M.truth_ratio(correct, wrong_answer_nll(model, tokenizer, ds, **kw))


def forget_diagnostics(correct_nll: np.ndarray, wrong_nll: np.ndarray) -> dict[str, Any]:
    """Undershoot or overshoot on the forget set: `forget_tr_mean`, the mean truth ratio R (a model that never
    saw the rows sits near its priors, about 1; below: it still prefers the true answers), `forget_outrank`,
    the share of rows whose true answer outranks every wrong one, and the per-row `outranks`."""
    outrank = M.outranks(correct_nll, wrong_nll)
    return {
        "forget_tr_mean": float(np.mean(M.truth_ratio(correct_nll, wrong_nll))),
        "forget_outrank": float(np.mean(outrank)),
        "outranks": outrank.tolist(),
    }


def forget_diagnostics_of(model: Any, tokenizer: Any, forget_set: Any, **kw: Any) -> dict[str, Any]:
    """`forget_diagnostics` of a model on a perturbed forget set (for evaluations stored before they existed)."""
    kw = {k: v for k, v in kw.items() if k != "max_new_tokens"}
    correct = score_answers(model, tokenizer, forget_set["question"], forget_set["paraphrased_answer"], **kw)["nll"]
    return forget_diagnostics(correct, wrong_answer_nll(model, tokenizer, forget_set, **kw))


def evaluate_model(
    model: Any,
    tokenizer: Any,
    sets: dict[str, Any],
    *,
    reference: dict | None = None,
    prompt_format: str = "phi",
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    max_new_tokens: int = 200,
    batch_size: int = 64,
    generate: bool = True,
) -> dict[str, Any]:
    """Evaluate one model on the TOFU sets.

    Args:
        sets: `forget` (a `forget*_perturbed` config), `retain` (`retain_perturbed`),
            `real_authors`, `world_facts`, and optionally `holdout` (for membership inference).
        reference: the retain model's result of this function (or its JSON): gives forget
            quality (KS test on forget truth ratios) and the reference AUCs for privleak.

    Returns:
        `{"aggregates": {...}, "per_example": {...}}`.
    """
    check_tokenizer_matches(model, tokenizer)
    was_training = model.training
    model.eval()
    kw = dict(prompt_format=prompt_format, system_prompt=system_prompt, batch_size=batch_size)
    agg: dict[str, float] = {}
    per: dict[str, dict[str, list]] = {}
    for split in ("forget", "retain", "real_authors", "world_facts"):
        per[split] = evaluate_split(model, tokenizer, split, sets[split], agg, kw, max_new_tokens if generate else 0)
    if generate:
        agg["model_utility"] = M.model_utility(agg)
    if reference is not None:
        ours, ref = per["forget"]["truth_ratio"], reference["per_example"]["forget"]["truth_ratio"]
        agg["forget_quality"] = M.forget_quality(ours, ref)
        # The size-free distance to the retain model, with its row-bootstrap CI (forget quality's p-value depends
        # on the forget set's size; D does not).
        agg["forget_ks_d"] = M.ks_d(ours, ref)
        agg["forget_ks_d_ci"] = list(M.ks_d_ci(ours, ref))
    if "holdout" in sets:
        membership_inference(model, tokenizer, sets, per, agg, reference, kw)
    model.train(was_training)
    return {"aggregates": agg, "per_example": per}


def evaluate_split(
    model: Any, tokenizer: Any, split: str, ds: Any, agg: dict, kw: dict, max_new_tokens: int
) -> dict[str, list]:
    """One set's per-example values (adding its aggregates to `agg`): probability (normalised on the general
    sets), truth ratio, ROUGE-L of greedy answers (when `max_new_tokens`), and on the forget set Min-K% scores and
    the undershoot/overshoot diagnostics."""
    is_author_set = split in ("forget", "retain")
    ans = score_answers(model, tokenizer, ds["question"], ds["answer"], token_stats=split == "forget", **kw)
    wrong = wrong_answer_nll(model, tokenizer, ds, **kw)
    correct_for_tr = (
        score_answers(model, tokenizer, ds["question"], ds["paraphrased_answer"], **kw)["nll"]
        if is_author_set
        else ans["nll"]
    )
    tr = M.truth_ratio(correct_for_tr, wrong)
    prob = np.exp(-ans["nll"]) if is_author_set else M.normalised_probability(ans["nll"], wrong)
    entry: dict[str, list] = {"answer_nll": ans["nll"].tolist(), "prob": prob.tolist(), "truth_ratio": tr.tolist()}
    agg[f"{split}_prob"] = float(np.mean(prob))
    agg[f"{split}_truth_ratio"] = M.forget_truth_ratio_score(tr) if split == "forget" else M.retain_truth_ratio_score(tr)
    if max_new_tokens:
        gens = generate_answers(model, tokenizer, ds["question"], max_new_tokens=max_new_tokens, **kw)
        rouge = rouge_recall(gens, ds["answer"])
        entry["generation"] = gens
        entry["rouge"] = rouge.tolist()
        agg[f"{split}_rouge"] = float(np.mean(rouge))
    if split == "forget":
        entry["mink"], entry["minkpp"] = ans["mink"].tolist(), ans["minkpp"].tolist()
        diag = forget_diagnostics(correct_for_tr, wrong)
        entry["outranks"] = diag.pop("outranks")
        agg.update(diag)
    return entry


def membership_inference(
    model: Any, tokenizer: Any, sets: dict, per: dict, agg: dict, reference: dict | None, kw: dict
) -> None:
    """Forget vs holdout AUCs of the LOSS, Min-K%, Min-K%++ and zlib attacks, and privleak against the
    reference's AUCs (added to `per` and `agg`)."""
    ho = sets["holdout"]
    h = score_answers(model, tokenizer, ho["question"], ho["answer"], token_stats=True, **kw)
    per["holdout"] = {"answer_nll": h["nll"].tolist(), "mink": h["mink"].tolist(), "minkpp": h["minkpp"].tolist()}
    f = per["forget"]
    f["zlib"] = [n / len(zlib.compress(a.encode())) for n, a in zip(f["answer_nll"], sets["forget"]["answer"])]
    per["holdout"]["zlib"] = [n / len(zlib.compress(a.encode())) for n, a in zip(h["nll"], ho["answer"])]
    for attack, key in (("loss", "answer_nll"), ("mink", "mink"), ("minkpp", "minkpp"), ("zlib", "zlib")):
        a = M.auc(f[key], per["holdout"][key])  # forget = label 0, holdout = label 1
        agg[f"mia_{attack}_auc"] = a
        ref = reference["aggregates"].get(f"mia_{attack}_auc", 0.5) if reference else 0.5
        agg[f"privleak_{attack}"] = M.privleak(a, ref)
    agg["privleak"] = agg["privleak_mink"]
