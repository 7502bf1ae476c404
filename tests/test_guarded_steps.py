"""Guarded steps: a non-finite forget or retain gradient skips the update, is counted, and too many in a row stop
the run with a clear error, leaving the last finite weights."""

import pytest
import torch

from sgu_llm.trainers import SGUConfig, SGUTrainer
from sgu_llm.trainers.sgu import NonFiniteGradientError

# Equalities of runs and measured tolerances: .ci/run checks them under another machine's CPU kernels too.
pytestmark = pytest.mark.outcome


class PoisonedSGU(SGUTrainer):
    """SGU whose forget loss is NaN at the given optimizer steps (as an overflow or a bad batch would make it)."""

    poisoned: set = set()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if "forget" in inputs and self.state.global_step in self.poisoned:
            return loss * float("nan")
        return loss


def snapshot(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("lean", [False, True])
def test_a_nonfinite_step_is_skipped_and_counted(model, tokenizer, small_sets, make_config, lean):
    forget, retain = small_sets
    cfg = make_config(SGUConfig, max_steps=3, per_device_train_batch_size=4, lean_selection=lean)
    trainer = PoisonedSGU(model, cfg, forget, retain, processing_class=tokenizer)
    trainer.poisoned = {1}
    weights = []

    from transformers import TrainerCallback

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            weights.append(snapshot(trainer))

    trainer.add_callback(Watch())
    trainer.train()
    assert trainer.selection_skipped_steps == 1
    before, after_bad, after_good = weights  # after steps 1 (finite), 2 (NaN, skipped), 3 (finite)
    assert all(torch.equal(before[n], after_bad[n]) for n in before)  # the skipped step moved nothing
    assert not all(torch.equal(after_bad[n], after_good[n]) for n in before)  # training went on
    assert all(torch.isfinite(p).all() for p in after_good.values())
    fracs = [h["sgu/nonfinite_frac"] for h in trainer.state.log_history if "sgu/nonfinite_frac" in h]
    assert fracs == [0.0, 1.0, 0.0]


def test_too_many_nonfinite_steps_in_a_row_stop_the_run(model, tokenizer, small_sets, make_config):
    forget, retain = small_sets
    cfg = make_config(SGUConfig, max_steps=10, per_device_train_batch_size=4, max_nonfinite_steps=3)
    trainer = PoisonedSGU(model, cfg, forget, retain, processing_class=tokenizer)
    trainer.poisoned = set(range(1, 100))
    start = snapshot(trainer)
    with pytest.raises(NonFiniteGradientError, match="3 optimizer steps in a row.*Lower learning_rate"):
        trainer.train()
    end = snapshot(trainer)
    # Step 0 was finite and moved the weights; after it nothing did, and nothing is NaN.
    assert all(torch.isfinite(p).all() for p in end.values())
    assert trainer.state.global_step == 3 and trainer.selection_skipped_steps == 3
    assert not all(torch.equal(start[n], end[n]) for n in start)


def test_max_nonfinite_steps_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="max_nonfinite_steps must be at least 1"):
        SGUConfig(output_dir=str(tmp_path), report_to="none", max_nonfinite_steps=0)
