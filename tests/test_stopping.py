"""The stopping rule without a retain model: the KS distance, the checkpoint pick, the trainer option."""

import numpy as np
import pytest
import torch

from sgu_llm.trainers import SGUConfig, SGUTrainer
from sgu_llm.trainers.stopping import HoldoutStoppingCallback, check_stop_sets, ks_distance, pick_checkpoint


def test_pick_checkpoint_on_a_constructed_curve():
    # Forget and holdout scores drift together, then apart again (overshoot): the closest epoch wins.
    rng = np.random.default_rng(0)
    holdout = rng.normal(0.0, 1.0, 200)
    shifts = [3.0, 1.5, 0.4, 0.0, 0.6, 2.0]
    distances = [ks_distance(rng.normal(s, 1.0, 200), holdout) for s in shifts]
    assert pick_checkpoint(distances) == 3
    assert distances[0] > 0.8 and distances[3] < 0.15


def test_pick_checkpoint_ties_and_nan():
    assert pick_checkpoint([0.5, 0.2, 0.2]) == 1
    assert pick_checkpoint([float("nan"), 0.7, None]) == 1


def test_truth_ratio_metric_names_missing_fields(splits):
    with pytest.raises(ValueError, match="perturbed_answer.*stop_metric='nll'"):
        check_stop_sets(splits["forget10"], splits["holdout10"], "truth_ratio")
    with pytest.raises(ValueError, match="holdout set"):
        check_stop_sets(splits["forget10_perturbed"], None, "truth_ratio")
    check_stop_sets(splits["forget10"], splits["holdout10"], "nll")


def test_config_rejects_unknown_stop_metric(tmp_path):
    with pytest.raises(ValueError, match="stop_metric must be one of"):
        SGUConfig(output_dir=str(tmp_path), report_to="none", stop_metric="rouge")


def test_trainer_refuses_stop_on_holdout_without_holdout(model, tokenizer, small_sets, make_config):
    forget, retain = small_sets
    with pytest.raises(ValueError, match="holdout"):
        SGUTrainer(
            model, make_config(SGUConfig, stop_on_holdout=True), forget, retain, processing_class=tokenizer
        )


def test_callback_restores_the_chosen_epoch(model, tokenizer, splits, make_config):
    """Train with the option on; the final weights are the snapshot of the epoch with the smallest KS."""
    forget, retain = splits["forget10"], splits["retain90"]
    seen = {}

    class Spy(HoldoutStoppingCallback):
        def _score(self, state, model):
            super()._score(state, model)
            seen[len(self.records) - 1] = [p.detach().clone() for p in model.parameters() if p.requires_grad]

    cfg = make_config(SGUConfig, stop_on_holdout=True, num_train_epochs=3, learning_rate=1e-2)
    trainer = SGUTrainer(
        model,
        cfg,
        forget,
        retain,
        processing_class=tokenizer,
        holdout_dataset=splits["holdout10"],
        forget_eval_dataset=splits["forget10_perturbed"],
    )
    spy = Spy(tokenizer, splits["forget10_perturbed"], splits["holdout10"], "truth_ratio", {})
    trainer.remove_callback(trainer.stopping)
    trainer.stopping = spy
    trainer.add_callback(spy)
    trainer.train()
    assert len(spy.records) == 4  # the start and 3 epochs
    best = pick_checkpoint([r["ks"] for r in spy.records])
    assert spy.best == best
    final = [p.detach() for p in model.parameters() if p.requires_grad]
    for a, b in zip(final, seen[best]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert trainer.state.log_history[-1]["stop/ks"] == spy.records[best]["ks"]

