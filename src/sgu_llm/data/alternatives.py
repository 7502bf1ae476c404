"""Alternative answers sampled from the model being unlearned: what AltPO prefers and the calibrated objective
ranks the true answer against.

Two ways to sample, both from the model itself (never from an evaluation set):

- **diverge** (default; any causal LM, also one that cannot follow an instruction): pick, at random, a token of
  one of the true answer's key terms (below; `diverge_at="word"`: the first token of any word), draw a different
  token there from the model's own distribution (the true token banned, `temperature`), and let the model
  continue (`continue_temperature`) to EOS. The alternative keeps the answer's wording up to the fact and
  states another one from there: "Ada was born in Lisbon." becomes "Ada was born in Quito.".
- **prompt** (`prompt="... {question} ..."`; an instruction-following model): sample whole answers to the
  prompt, e.g. "Answer with different facts: {question}", at `temperature`.

Each row gets `tries` samples; the filter drops empty ones, the true answer itself, repeats and every sample
that still states one of the true answer's **key terms** (its words that are not in the question and are the
rarest in the training answers, within 2x of the rarest: the city, the year, the title). The `k` the model
finds most likely (mean answer-token log-probability) are kept. Sampling is seeded: the same model, rows and
settings give the same alternatives.

Example:
    >>> key_terms("Ada was born in Lisbon.", "Where was Ada born?", {"in": 90, "lisbon": 3})
    ['lisbon']
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import torch

from sgu_llm.core.cache import cached_json, fingerprint, weights_fingerprint
from sgu_llm.core.files import write_json, write_text
from sgu_llm.core.losses import IGNORE_INDEX, per_example_nll
from sgu_llm.data.pairing import pad_batch
from sgu_llm.data.prompts import DEFAULT_SYSTEM_PROMPT, tokenize_qa

ALTERNATIVES_COLUMN = "alternatives"
CACHE_FORMAT = 2  # bump when the same settings would sample other alternatives
DIVERGE_AT = ("key_terms", "word")


def words(text: str) -> list[str]:
    """Lower-case words (letters, digits, inner apostrophes), possessives cut ("Ada's" is "ada").

    Example:
        >>> words("Ada's 3 books, don't.")
        ['ada', '3', 'books', "don't"]
    """
    return [re.sub(r"'s?$", "", w) for w in re.findall(r"\w[\w']*", text.lower())]


def document_frequency(answers: list[str]) -> Counter:
    """How many of `answers` contain each word."""
    return Counter(w for a in answers for w in set(words(a)))


def key_terms(answer: str, question: str, doc_freq: dict[str, int]) -> list[str]:
    """The answer's words that carry its fact: not in the question, and within 2x of the rarest such word in
    the training answers (`doc_freq`; an unseen word counts as rarest). Sorted."""
    asked = set(words(question))
    candidates = {w for w in words(answer) if w not in asked}
    if not candidates:
        return []
    limit = max(2 * min(doc_freq.get(w, 0) for w in candidates), 1)
    return sorted(w for w in candidates if doc_freq.get(w, 0) <= limit)


@dataclass
class AlternativeSettings:
    """How alternatives are sampled (part of their cache key)."""

    k: int = 5
    tries: int = 32
    temperature: float = 1.0
    continue_temperature: float = 0.5
    max_new_tokens: int = 64
    seed: int = 0
    prompt: str | None = None
    diverge_at: str = "key_terms"
    prompt_format: str = "phi"
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT

    def __post_init__(self):
        if self.k < 1 or self.tries < self.k:
            raise ValueError(f"alternatives need k >= 1 and tries >= k, got k={self.k}, tries={self.tries}")
        if self.temperature <= 0 or self.continue_temperature <= 0:
            raise ValueError("alternative sampling temperatures must be positive")
        if self.diverge_at not in DIVERGE_AT:
            raise ValueError(f"diverge_at must be one of {DIVERGE_AT}, got {self.diverge_at!r}")
        if self.prompt is not None and "{question}" not in self.prompt:
            raise ValueError(f"the alternatives prompt must contain '{{question}}', got {self.prompt!r}")


def _word_starts(
    tokenizer: Any, question: str, answer: str, settings: AlternativeSettings
) -> tuple[dict, list[int], list[str]]:
    """The tokenised row, the positions of its answer tokens that start a word (EOS excluded), and the first
    word (`words`) each of those tokens begins."""
    row = tokenize_qa(tokenizer, question, answer, settings.prompt_format, system_prompt=settings.system_prompt)
    labels = row["labels"]
    first = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
    answer_ids = [t for t in labels[first:] if t != tokenizer.eos_token_id]
    starts = [first]
    before = ""
    for j in range(1, len(answer_ids) + 1):
        text = tokenizer.decode(answer_ids[:j])
        if j > 1 and text.startswith(before) and text[len(before) :][:1].isspace():
            starts.append(first + j - 1)
        before = text
    ends = starts[1:] + [first + len(answer_ids)]
    spelled = [words(tokenizer.decode(row["input_ids"][a:b])) for a, b in zip(starts, ends)]
    return row, starts, [w[0] if w else "" for w in spelled]


def _sample(model: Any, prefixes: list[list[int]], pad_id: int, eos_id: int, temperature: float,
            max_new_tokens: int, seed: int) -> list[list[int]]:
    """Seeded sampled continuations of left-padded `prefixes` (the prefixes not included)."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prefixes)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prefixes], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prefixes], device=device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
            max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id,
        )
    return [row[width:].tolist() for row in out]


@torch.no_grad()
def answer_logprobs(model: Any, tokenizer: Any, question: str, answers: list[str], settings: AlternativeSettings) -> list[float]:
    """Mean answer-token log-probability of each of `answers` to `question`."""
    rows = [tokenize_qa(tokenizer, question, a, settings.prompt_format, system_prompt=settings.system_prompt)
            for a in answers]
    batch = pad_batch(rows, tokenizer.pad_token_id)
    device = next(model.parameters()).device
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    nll, n = per_example_nll(logits, batch["labels"].to(device))
    return (-nll / n.clamp_min(1)).tolist()


def _candidates(model: Any, tokenizer: Any, question: str, answer: str, keys: set[str],
                settings: AlternativeSettings, seed: int) -> list[str]:
    """`settings.tries` sampled answers to `question` (decoded, stripped), by the settings' mode."""
    gen = torch.Generator().manual_seed(seed)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if settings.prompt is not None:
        row = tokenize_qa(tokenizer, settings.prompt.format(question=question), "", settings.prompt_format,
                          system_prompt=settings.system_prompt)
        first = next((i for i, t in enumerate(row["labels"]) if t != IGNORE_INDEX), len(row["labels"]) - 1)
        prefixes = [row["input_ids"][:first]] * settings.tries
        outs = _sample(model, prefixes, pad, eos, settings.temperature, settings.max_new_tokens, seed)
        return [tokenizer.decode(o, skip_special_tokens=True).strip() for o in outs]
    row, starts, begun = _word_starts(tokenizer, question, answer, settings)
    ids, labels = row["input_ids"], row["labels"]
    first = starts[0]
    if settings.diverge_at == "key_terms":  # every token of a key-term word
        ends = starts[1:] + [len(ids) - 1]  # the EOS closes the last word
        at_keys = [p for a, b, w in zip(starts, ends, begun) if w in keys for p in range(a, b)]
        starts = at_keys or starts  # an answer with no key term outside the question: any word
    device = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float().cpu()
    prefixes = []
    for _ in range(settings.tries):
        d = starts[int(torch.randint(len(starts), (1,), generator=gen))]
        dist = logits[d - 1] / settings.temperature
        dist[labels[d]] = -float("inf")
        token = int(torch.multinomial(dist.softmax(-1), 1, generator=gen))
        prefixes.append(ids[:d] + [token])
    outs = _sample(model, prefixes, pad, eos, settings.continue_temperature, settings.max_new_tokens, seed)
    return [tokenizer.decode(p[first:] + o, skip_special_tokens=True).strip() for p, o in zip(prefixes, outs)]


def generate_alternatives(
    model: Any,
    tokenizer: Any,
    questions: list[str],
    answers: list[str],
    settings: AlternativeSettings,
    corpus: list[str] | None = None,
) -> list[list[str]]:
    """Up to `settings.k` alternatives per (question, answer) row, sampled from `model` (module docstring).

    `corpus`: the training answers whose word frequencies pick each answer's key terms (default: `answers`).
    """
    doc_freq = document_frequency(corpus if corpus is not None else answers)
    was_training = model.training
    model.eval()
    out = []
    for i, (q, a) in enumerate(zip(questions, answers)):
        keys = set(key_terms(a, q, doc_freq))
        seen = {a.strip().lower()}
        kept = []
        for text in _candidates(model, tokenizer, q, a, keys, settings, seed=settings.seed * 1_000_003 + i):
            if not text or text.lower() in seen or keys & set(words(text)):
                continue
            seen.add(text.lower())
            kept.append(text)
        if kept:
            scores = answer_logprobs(model, tokenizer, q, kept, settings)
            kept = [t for _, t in sorted(zip(scores, kept), key=lambda st: -st[0])]
        out.append(kept[: settings.k])
    model.train(was_training)
    return out


def difference_report(answers: list[str], alternatives: list[list[str]]) -> dict[str, float]:
    """How far the alternatives are from their true answers: rows with none, alternatives per row, and the
    mean share of the true answer's words an alternative keeps (word-level ROUGE-1 recall, 1 = every word)."""
    kept = []
    for a, alts in zip(answers, alternatives):
        true = Counter(words(a))
        for alt in alts:
            got = Counter(words(alt))
            kept.append(sum(min(c, got[w]) for w, c in true.items()) / max(sum(true.values()), 1))
    n_alts = [len(x) for x in alternatives]
    return {
        "rows": len(answers),
        "rows_without": sum(n == 0 for n in n_alts),
        "mean_per_row": sum(n_alts) / max(len(n_alts), 1),
        "mean_word_recall": sum(kept) / max(len(kept), 1),
    }


def settings_key(settings: AlternativeSettings) -> dict:
    return asdict(settings)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the tokenizer's vocabulary and special tokens (what decides how text becomes ids)."""
    return fingerprint({"vocab": sorted(tokenizer.get_vocab().items()), "special": tokenizer.all_special_tokens})


def cached_alternatives(
    model: Any,
    tokenizer: Any,
    rows: Any,
    settings: AlternativeSettings,
    corpus: list[str],
    cache_dir: str,
) -> list[list[str]]:
    """`generate_alternatives` for a `datasets.Dataset` of question/answer rows, cached under
    `cache_dir/alternatives/` by the model's weights, the tokenizer, the rows, the corpus and the settings
    (another model - another fine-tuning, another seed - samples again). Reads only `question` and `answer`."""
    questions, answers = list(rows["question"]), list(rows["answer"])
    material = {
        "format": CACHE_FORMAT,
        "model": weights_fingerprint(model),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "rows": fingerprint([questions, answers]),
        "corpus": fingerprint(sorted(corpus)),
        "settings": settings_key(settings),
    }
    return cached_json(
        cache_dir,
        "alternatives",
        material,
        lambda: generate_alternatives(model, tokenizer, questions, answers, settings, corpus=corpus),
    )


def save_alternatives(folder: str, split: str, rows: Any, alternatives: list[list[str]]) -> dict:
    """`folder/<split>.jsonl` (question, answer, alternatives per row; `datasets.load_dataset("json", ...)`
    reads it) and `folder/<split>_report.json` (`difference_report`). Returns the report."""
    lines = [
        json.dumps({"question": q, "answer": a, ALTERNATIVES_COLUMN: alts})
        for q, a, alts in zip(rows["question"], rows["answer"], alternatives)
    ]
    write_text(os.path.join(folder, f"{split}.jsonl"), "\n".join(lines) + "\n")
    report = difference_report(list(rows["answer"]), alternatives)
    write_json(os.path.join(folder, f"{split}_report.json"), report)
    return report
