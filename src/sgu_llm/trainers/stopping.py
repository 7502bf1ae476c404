"""Where to stop unlearning without a retain model: when the forget set looks like never-seen data.

Forget quality compares the unlearned model's forget-set truth ratios with those of a retain model,
which a real user does not have. What a user can have is a *holdout* set: rows of the same kind
that no model ever trained on (TOFU-style: other fictitious authors). After unlearning, the forget
rows should look to the model the way holdout rows do. The distance used here is the two-sample
Kolmogorov-Smirnov statistic between per-row scores of the forget and the holdout set under the
current model (`stop_metric`):

- `truth_ratio`: P_wrong / P_correct per row (needs `paraphrased_answer` and `perturbed_answer`,
  as TOFU's perturbed configs have): the statistic forget quality itself tests;
- `nll`: the answer's mean NLL (needs only question and answer): a loss-based membership test.

`HoldoutStoppingCallback` scores the model at the start and after every epoch and, when training
ends, restores the trainable parameters of the epoch with the smallest statistic (the earliest on
ties). The snapshots are CPU copies of the trainable parameters (the LoRA adapters under LoRA). A
checkpoint carries the scores so far and the best snapshot (`holdout_stopping.pt`), so a resumed run
chooses among all its epochs, as the uninterrupted run does.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import torch

from sgu_llm.evaluation.suite import score_answers, truth_ratios
from sgu_llm.trainers.callbacks import EpochScoring

STOP_METRICS = ("truth_ratio", "nll")
STATE_FILE = "holdout_stopping.pt"  # in each checkpoint folder of a run with stop_on_holdout
TRUTH_RATIO_FIELDS = ("paraphrased_answer", "perturbed_answer")


def check_stop_sets(forget_set: Any, holdout_set: Any, metric: str) -> None:
    """Raise a ValueError naming what is missing for `metric`."""
    if metric not in STOP_METRICS:
        raise ValueError(f"stop_metric must be one of {STOP_METRICS}, got {metric!r}")
    if holdout_set is None or len(holdout_set) == 0:
        raise ValueError(
            "stop_on_holdout needs a holdout set: rows of the same kind no model trained on (trainer "
            "argument holdout_dataset=, or holdout_split in a recipe)"
        )
    if metric == "truth_ratio":
        for name, ds in (("forget", forget_set), ("holdout", holdout_set)):
            missing = [f for f in TRUTH_RATIO_FIELDS if f not in ds.column_names]
            if missing:
                raise ValueError(
                    f"stop_metric='truth_ratio' needs {list(TRUTH_RATIO_FIELDS)} in the {name} set, which lacks "
                    f"{missing}: pass forget_eval_dataset= (e.g. TOFU's forget10_perturbed) and a perturbed "
                    "holdout set, or use stop_metric='nll'"
                )


def row_scores(model: Any, tokenizer: Any, ds: Any, metric: str, **eval_kwargs: Any) -> np.ndarray:
    """Per-row scores of `ds` under `model` for `metric` (see the module docstring)."""
    if metric == "truth_ratio":
        return truth_ratios(model, tokenizer, ds, **eval_kwargs)
    return score_answers(model, tokenizer, ds["question"], ds["answer"], **eval_kwargs)["nll"]


def ks_distance(forget_scores: np.ndarray, holdout_scores: np.ndarray) -> float:
    """Two-sample KS statistic (0: the same distribution, 1: disjoint).

    Example:
        >>> ks_distance(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]))
        0.0
    """
    from scipy.stats import ks_2samp

    return float(ks_2samp(forget_scores, holdout_scores).statistic)


def pick_checkpoint(distances: list[float]) -> int:
    """Index of the smallest distance, the earliest among ties (nan counts as worst).

    Example:
        >>> pick_checkpoint([0.9, 0.3, 0.5, 0.3])
        1
    """
    values = np.array([np.inf if d is None or np.isnan(d) else d for d in distances])
    return int(np.argmin(values))


class HoldoutStoppingCallback(EpochScoring):
    """Score after every epoch, restore the epoch whose forget set looks most like the holdout set."""

    def __init__(self, tokenizer: Any, forget_set: Any, holdout_set: Any, metric: str, eval_kwargs: dict):
        super().__init__()
        check_stop_sets(forget_set, holdout_set, metric)
        self.tokenizer, self.forget, self.holdout = tokenizer, forget_set, holdout_set
        self.metric, self.kw = metric, eval_kwargs
        self.best: int | None = None
        self._snapshot: list[torch.Tensor] | None = None
        self._saved: tuple[int, str] | None = None  # (step, folder) of the last checkpoint written

    @staticmethod
    def _trainable(model: Any) -> list[torch.nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def score(self, model: Any) -> dict:
        f = row_scores(model, self.tokenizer, self.forget, self.metric, **self.kw)
        h = row_scores(model, self.tokenizer, self.holdout, self.metric, **self.kw)
        return {"ks": ks_distance(f, h)}

    def scored(self, state: Any, model: Any, record: dict) -> None:
        best = pick_checkpoint([r["ks"] for r in self.records])
        if best == len(self.records) - 1:
            self.best = best
            self._snapshot = [p.detach().to("cpu", copy=True) for p in self._trainable(model)]

    def save(self, folder: str, step: int) -> None:
        """Write the scores so far and the best snapshot into the checkpoint folder of `step`."""
        self._saved = (step, folder)
        path = os.path.join(folder, STATE_FILE)
        torch.save({"records": self.records, "best": self.best, "snapshot": self._snapshot}, path + ".tmp")
        os.replace(path + ".tmp", path)

    def load(self, folder: str) -> None:
        """Take the scores and the best snapshot from a checkpoint folder (before training resumes there)."""
        path = os.path.join(folder, STATE_FILE)
        if not os.path.exists(path):
            warnings.warn(
                f"{folder} holds no {STATE_FILE} (written before stop_on_holdout kept it): the resumed run "
                "chooses only among the epochs after the checkpoint",
                stacklevel=2,
            )
            return
        saved = torch.load(path, weights_only=True)
        self.records, self.best, self._snapshot = saved["records"], saved["best"], saved["snapshot"]
        self.score_start = False  # the start was scored before the checkpoint

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        super().on_epoch_end(args, state, control, model=model, **kwargs)
        if self._saved is not None and self._saved[0] == state.global_step:
            # A step checkpoint on the epoch's last step was written before this score: add it there.
            self.save(self._saved[1], state.global_step)

    @torch.no_grad()
    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._snapshot is None:
            return
        for p, saved in zip(self._trainable(model), self._snapshot):
            p.copy_(saved.to(p.device))
        self._snapshot = None
        chosen = self.records[self.best]
        state.log_history.append(
            {"stop/epoch": chosen["epoch"], "stop/step": chosen["step"], "stop/ks": chosen["ks"]}
        )
