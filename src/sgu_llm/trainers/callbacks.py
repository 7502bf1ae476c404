"""Trainer callbacks shared by the trainers and the experiments.

`EpochScoring` is the one callback that scores the model at the start of training and after every epoch:
the holdout stopping rule (`sgu_llm.trainers.stopping`), the benchmark run's per-epoch evaluation
(`EpochEvaluation`) and the sweep's per-epoch record (`sgu_llm.experiments.sweep`) subclass it.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import TrainerCallback

from sgu_llm.data.pairing import ForgetRetainDataset
from sgu_llm.evaluation import evaluate_model
from sgu_llm.evaluation.prefix import FrozenPrefix


class PairingEpochCallback(TrainerCallback):
    """Re-draw the forget/retain pairing at every epoch, on every process.

    accelerate forwards `set_epoch` to the dataset on some data-loader paths and
    not on others (one process vs DDP), so the trainer does it itself.
    """

    def __init__(self, dataset: ForgetRetainDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))


class EpochScoring(TrainerCallback):
    """Score the model at the start of training and after every epoch; keep the records and the time spent.

    Subclasses implement `score(model) -> dict` (in eval mode, without gradients) and may act on each new
    record in `scored(state, model, record)`. `rank_zero_only`: score on the main process alone (a full copy of
    the model); otherwise every rank scores (a sharded model needs all of them for a forward pass).
    `score_start = False` skips the start (a resumed run that read its earlier scores). The frozen lower
    layers' output is recorded on the first scoring and reused after (`FrozenPrefix`: exact, and only the
    trainable layers run when unlearning updates the top ones).
    """

    rank_zero_only = False

    def __init__(self):
        self.records: list[dict] = []
        self.seconds = 0.0
        self.score_start = True
        self.prefix = FrozenPrefix()

    def score(self, model: Any) -> dict:
        raise NotImplementedError

    def scored(self, state: Any, model: Any, record: dict) -> None:
        """Called after each new record (default: nothing)."""

    @torch.no_grad()
    def _score(self, state: Any, model: Any) -> None:
        if self.rank_zero_only and not state.is_world_process_zero:
            return
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            with self.prefix.active(model):
                record = {"step": state.global_step, "epoch": float(state.epoch or 0.0), **self.score(model)}
        finally:
            model.train(was_training)
        self.records.append(record)
        self.scored(state, model, record)
        self.seconds += time.perf_counter() - start

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.score_start:
            self._score(state, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._score(state, model)


class EpochEvaluation(EpochScoring):
    """Forget quality, forget and retain probability and the forget truth ratio, without generation
    (`sgu-llm run`'s per-epoch curve; rank 0)."""

    rank_zero_only = True
    KEYS = ("forget_quality", "forget_prob", "retain_prob", "forget_truth_ratio")

    def __init__(self, tokenizer: Any, sets: dict[str, Any], reference: dict, eval_kwargs: dict):
        super().__init__()
        self.tokenizer, self.reference, self.kw = tokenizer, reference, eval_kwargs
        self.sets = {k: v for k, v in sets.items() if k != "holdout"}

    def score(self, model: Any) -> dict:
        agg = evaluate_model(model, self.tokenizer, self.sets, reference=self.reference, generate=False, **self.kw)
        return {k: agg["aggregates"][k] for k in self.KEYS}
