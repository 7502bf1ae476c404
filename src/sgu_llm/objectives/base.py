"""What a forget objective is: a per-example loss to minimise on the forget rows, plus what it needs first.

An objective never holds Trainer state. The trainer hands it an `ObjectiveContext` (how to run the frozen
reference model, the tokenizer, the run's settings) and a collated forget batch; it returns one loss per
forget row. The same objective serves two trainers:

- on its own (`ObjectiveTrainer`, `method: altpo` etc.): gamma * mean forget loss + alpha * retain term;
- inside SGU (`SGUConfig(forget_loss="altpo")`): g_f is minus its gradient, so SGU's reverse action,
  -g_f, descends it, and maintain / prune gate it against the retain gradient like any other g_f.

Data an objective needs beyond (question, answer) - alternatives, "I don't know" answers, generic labels -
is added to the forget rows once, before tokenisation (`prepare_rows`) or after it (`prepare_tokenized`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from sgu_llm.core.cache import default_cache_dir
from sgu_llm.core.losses import per_example_nll
from sgu_llm.data.alternatives import (
    ALTERNATIVES_COLUMN,
    DIVERGE_AT,
    AlternativeSettings,
    cached_alternatives,
    save_alternatives,
)
from sgu_llm.data.idk import assign_idk, idk_answers

UNITS = ("tokens", "examples")


@dataclass
class ObjectiveArguments:
    """The forget objectives' settings: fields of `ObjectiveConfig` (standalone methods) and `SGUConfig`."""

    forget_loss: str = field(
        default="nll",
        metadata={
            "help": "The forget objective (sgu-llm methods lists them): 'nll' (gradient ascent), 'npo', 'altpo', "
            "'idknll', 'idkdpo', 'undial', 'rmu', 'whp' or 'calibrated'. Under SGU its negative gradient is g_f."
        },
    )
    npo_beta: float = field(
        default=1.0, metadata={"help": "Inverse temperature (per token) of forget_loss='npo'."}
    )
    pref_beta: float = field(
        default=0.1, metadata={"help": "Inverse temperature of the preference losses (altpo, idkdpo)."}
    )
    num_alternatives: int = field(
        default=5, metadata={"help": "Alternatives sampled per forget row (altpo, calibrated; AltPO: 5)."}
    )
    alternatives_tries: int = field(
        default=32, metadata={"help": "Samples drawn per row before filtering down to num_alternatives."}
    )
    alternatives_temperature: float = field(
        default=1.0, metadata={"help": "Temperature of the token where an alternative leaves the true answer."}
    )
    alternatives_continue_temperature: float = field(
        default=0.5, metadata={"help": "Temperature of the model's continuation after that token."}
    )
    alternatives_diverge_at: str = field(
        default="key_terms",
        metadata={
            "help": "Where alternatives leave the true answer: 'key_terms' (a token of the answer's rarest words "
            "outside the question: the fact) or 'word' (any word)."
        },
    )
    alternatives_prompt: str | None = field(
        default=None,
        metadata={
            "help": "For instruction-following models: sample whole alternatives to this prompt, which must hold "
            "'{question}' (e.g. 'Answer with different, made-up facts: {question}'). None: diverge sampling."
        },
    )
    alternatives_max_new_tokens: int = field(
        default=64, metadata={"help": "Most tokens an alternative's continuation may add."}
    )
    idk_file: str | None = field(
        default=None,
        metadata={
            "help": "A text file of 'I don't know' answers, one per line (idknll, idkdpo). None: the shipped list."
        },
    )
    undial_beta: float = field(
        default=10.0, metadata={"help": "UNDIAL: the true token's logit is lowered by this (reference: 10)."}
    )
    rmu_layer: int | None = field(
        default=None,
        metadata={"help": "RMU: the decoder layer (0-based) whose output is steered. None: the middle layer."},
    )
    rmu_coeff: float = field(
        default=2.0, metadata={"help": "RMU: forget activations are pushed to rmu_coeff * u (reference: 2)."}
    )
    whp_alpha: float = field(
        default=1.0, metadata={"help": "WHP: generic logits v_base - whp_alpha * ReLU(v_reinforced - v_base)."}
    )
    whp_reinforce_epochs: int = field(
        default=3, metadata={"help": "WHP: epochs the reinforced model trains further on the forget set."}
    )
    whp_reinforce_learning_rate: float = field(
        default=1e-3, metadata={"help": "WHP: AdamW learning rate of the reinforced model."}
    )
    row_gate: bool = field(
        default=False,
        metadata={
            "help": "SGU's three actions over forget rows (any objective, any selective function): a row's loss is "
            "kept (+1) while its answer NLL is below its band, pruned (0) inside it, reversed (-1) past it. The "
            "bands: holdout rows' answer NLL under the frozen target, assigned by rank. Needs holdout rows."
        },
    )
    row_gate_width: float = field(
        default=0.2,
        metadata={"help": "Row gate: each row's band spans this much of the holdout distribution (quantile levels)."},
    )

    def check_objective(self) -> None:
        """ValueErrors for settings no objective can use (the configs' __post_init__ calls it, and checks
        `forget_loss` against the registry)."""
        if self.npo_beta <= 0:
            raise ValueError(f"npo_beta must be positive, got {self.npo_beta}")
        if self.pref_beta <= 0:
            raise ValueError(f"pref_beta must be positive, got {self.pref_beta}")
        if self.num_alternatives < 1 or self.alternatives_tries < self.num_alternatives:
            raise ValueError(
                f"need num_alternatives >= 1 and alternatives_tries >= num_alternatives, got "
                f"{self.num_alternatives} and {self.alternatives_tries}"
            )
        if self.alternatives_temperature <= 0 or self.alternatives_continue_temperature <= 0:
            raise ValueError("alternatives_temperature and alternatives_continue_temperature must be positive")
        if self.alternatives_diverge_at not in DIVERGE_AT:
            raise ValueError(f"alternatives_diverge_at must be one of {DIVERGE_AT}, got {self.alternatives_diverge_at!r}")
        if self.alternatives_prompt is not None and "{question}" not in self.alternatives_prompt:
            raise ValueError(f"alternatives_prompt must contain '{{question}}', got {self.alternatives_prompt!r}")
        if self.undial_beta < 0:
            raise ValueError(f"undial_beta must be >= 0, got {self.undial_beta}")
        if self.rmu_coeff <= 0 or (self.rmu_layer is not None and self.rmu_layer < 0):
            raise ValueError("rmu_coeff must be positive and rmu_layer >= 0")
        if self.whp_alpha < 0 or self.whp_reinforce_epochs < 1 or self.whp_reinforce_learning_rate <= 0:
            raise ValueError("whp_alpha must be >= 0, whp_reinforce_epochs >= 1, whp_reinforce_learning_rate > 0")
        if not 0 < self.row_gate_width <= 1:
            raise ValueError(f"row_gate_width is a span of quantile levels: pass 0 < row_gate_width <= 1, got {self.row_gate_width}")
        if self.idk_file is not None and not _readable(self.idk_file):
            raise ValueError(f"idk_file {self.idk_file!r} is not a readable file of answers, one per line")


def _readable(path: str) -> bool:
    try:
        with open(path) as fh:
            return any(line.strip() for line in fh)
    except OSError:
        return False


@dataclass
class ObjectiveContext:
    """What an objective may use from the run (filled by the trainer; no Trainer inside).

    - `reference(model, input_ids, attention_mask, output_hidden_states=False)`: the frozen starting model's
      output (the base model with adapters off under LoRA), without gradients;
    - `example_losses(model, batch)` / `reference_losses(model, batch)`: the task's per-row loss (answer NLL)
      and units, under the model or the frozen reference;
    - `log(key, total, weight)`: a metric, averaged between logging steps (`loss/<name>`);
    - `output_dir`: where the run saves what the objective made (alternatives); `cache_dir`: where it caches;
    - `state`: the objective's own state across steps (e.g. the calibrated objective's holdout margins).
    """

    args: Any
    tokenizer: Any
    reference: Any = None
    example_losses: Any = None
    reference_losses: Any = None
    log: Any = lambda key, total, weight=1.0: None
    output_dir: str | None = None
    cache_dir: str | None = None
    is_main_process: bool = True
    state: dict = field(default_factory=dict)

    def reference_logps(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed answer-token log-probabilities of `batch` under the frozen reference."""
        with torch.no_grad():
            logits = self.reference(model, batch["input_ids"], batch["attention_mask"]).logits
            nll, _ = per_example_nll(logits, batch["labels"])
        return -nll

    def alternative_settings(self) -> AlternativeSettings:
        a = self.args
        return AlternativeSettings(
            k=a.num_alternatives,
            tries=a.alternatives_tries,
            temperature=a.alternatives_temperature,
            continue_temperature=a.alternatives_continue_temperature,
            max_new_tokens=a.alternatives_max_new_tokens,
            seed=a.seed,
            prompt=a.alternatives_prompt,
            diverge_at=a.alternatives_diverge_at,
            prompt_format=a.prompt_format,
            system_prompt=a.system_prompt,
        )


class ForgetObjective:
    """Base class: subclass, set the class attributes, implement `forget_loss`, register with
    `sgu_llm.objectives.register_objective`.

    - `units`: what the trainer divides the summed per-example losses by over the accumulation window
      ("tokens": answer tokens, a token mean; "examples": rows);
    - `answer_sets`: extra answer columns of the forget rows, tokenised as (question, answer) pairs and
      collated as `<name>_input_ids` / `_attention_mask` / `_labels` with `<name>_row` (the forget row each
      belongs to);
    - `needs_reference`: a frozen copy of the starting model is kept (`ObjectiveContext.reference`).
    """

    name: str = ""
    units: str = "examples"
    answer_sets: tuple[str, ...] = ()
    needs_reference: bool = False
    needs_holdout: bool = False

    def __init__(self, args: Any):
        self.args = args

    def prepare_rows(self, ctx: ObjectiveContext, model: Any, forget: Any, retain: Any, holdout: Any) -> Any:
        """The forget rows (a `datasets.Dataset` of question/answer) with the columns this objective needs."""
        return forget

    def prepare_tokenized(self, ctx: ObjectiveContext, model: Any, forget: Any) -> Any:
        """The tokenised forget rows with anything computed from their tokens (e.g. WHP's generic labels)."""
        return forget

    def callbacks(self, ctx: ObjectiveContext) -> list:
        """Trainer callbacks the objective needs (e.g. the calibrated objective's holdout refresh)."""
        return []

    def forget_loss(self, ctx: ObjectiveContext, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-example loss (shape (batch,)) whose descent forgets; summed, then divided by the window's units."""
        raise NotImplementedError

    def retain_loss(self, ctx: ObjectiveContext, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The standalone method's per-example retain term (shape (batch,), divided by retain examples);
        None: the answer NLL (token mean), as GradDiff and NPO."""
        return None


def sequence_logps(model: Any, batch: dict[str, torch.Tensor], prefix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer-token log-probabilities and answer-token counts of the sequences `batch[prefix + "input_ids"]`."""
    logits = model(input_ids=batch[prefix + "input_ids"], attention_mask=batch[prefix + "attention_mask"]).logits
    nll, n = per_example_nll(logits, batch[prefix + "labels"])
    return -nll, n


def sub_batch(batch: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The `<prefix>input_ids` / `_attention_mask` / `_labels` tensors of `batch`, unprefixed."""
    return {k: batch[prefix + k] for k in ("input_ids", "attention_mask", "labels")}


def row_mean(values: torch.Tensor, row: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Mean of `values` per row (`row[j]`: the row value j belongs to); 0 for a row with none.

    Example:
        >>> row_mean(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 2]), 3).tolist()
        [2.0, 0.0, 5.0]
    """
    sums = torch.zeros(num_rows, dtype=values.dtype, device=values.device).index_add(0, row, values)
    return sums / torch.bincount(row, minlength=num_rows).clamp_min(1).to(values.dtype)


def training_answers(*sets: Any) -> list[str]:
    """The `answer`s of the sets that have one (the corpus whose word frequencies pick key terms)."""
    return [a for ds in sets if ds is not None and "answer" in ds.column_names for a in ds["answer"]]


def with_alternatives(ctx: ObjectiveContext, model: Any, rows: Any, corpus: list[str], split: str) -> Any:
    """`rows` with an `alternatives` column: kept if it has one, else sampled from `model`
    (`sgu_llm.data.alternatives`, cached), and saved to `<output_dir>/alternatives/<split>.jsonl`.
    `corpus`: the training answers whose word frequencies pick each answer's key terms."""
    if ALTERNATIVES_COLUMN in rows.column_names:
        return rows
    alternatives = cached_alternatives(
        model, ctx.tokenizer, rows, ctx.alternative_settings(), corpus, ctx.cache_dir or default_cache_dir()
    )
    if ctx.is_main_process and ctx.output_dir:
        report = save_alternatives(os.path.join(ctx.output_dir, "alternatives"), split, rows, alternatives)
        ctx.state.setdefault("alternatives_report", {})[split] = report
    return rows.add_column(ALTERNATIVES_COLUMN, alternatives)


def with_idk(ctx: ObjectiveContext, rows: Any) -> Any:
    """`rows` with an `idk` column (one "I don't know" answer per row, drawn with the run's seed)."""
    if "idk" in rows.column_names:
        return rows
    return rows.add_column("idk", assign_idk(len(rows), idk_answers(ctx.args.idk_file), ctx.args.seed))
