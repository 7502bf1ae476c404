"""A run resumed from a mid-epoch checkpoint ends with the same weights as the uninterrupted run."""

import os

import pytest
import torch
from peft import LoraConfig

from sgu_llm.models.tiny import tiny_llama
from sgu_llm.trainers import get_method
from sgu_llm.trainers.sgu import RULE_STATE_FILE

# Equalities of runs and measured tolerances: .ci/run checks them under another machine's CPU kernels too.
pytestmark = pytest.mark.outcome

CASES = {
    # the stash path with a rule that keeps running averages between steps (saved with the checkpoint)
    "sgu_stash_fisher": ("sgu", {"selective_function": "fisher_reverse", "forget_loss": "npo"}, False),
    "sgu_lean": ("sgu", {"lean_selection": True}, False),
    "sgu_lora": ("sgu", {}, True),
    "npo": ("npo", {}, False),
}


def weights(trainer):
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("case", list(CASES))
def test_resumed_run_equals_uninterrupted_run(case, tokenizer, finetuned_state, small_sets, make_config, tmp_path):
    method, overrides, lora = CASES[case]
    config_cls, trainer_cls = get_method(method)
    forget, retain = small_sets  # 20 forget rows: batches of 8, 8, 4 per epoch

    def trainer_for(out, **kw):
        model = tiny_llama(tokenizer, hidden_size=64, num_layers=2, seed=0)
        model.load_state_dict(finetuned_state)
        cfg = make_config(
            config_cls,
            output_dir=str(out),
            num_train_epochs=2,
            learning_rate=3e-3,
            save_strategy="steps",
            save_steps=2,
            **overrides,
            **kw,
        )
        peft = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM") if lora else None
        return trainer_cls(model, cfg, forget, retain, processing_class=tokenizer, peft_config=peft)

    whole = trainer_for(tmp_path / "whole")
    whole.train()
    assert whole.state.global_step == 6
    checkpoint = tmp_path / "whole" / "checkpoint-2"  # mid first epoch: 2 of 3 batches done
    assert checkpoint.is_dir()
    if case == "sgu_stash_fisher":
        assert (checkpoint / RULE_STATE_FILE).exists()  # the running averages travel with the checkpoint

    resumed = trainer_for(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 6
    a, b = weights(whole), weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{case}: {key} differs after resuming"


def test_resume_true_without_checkpoints_is_a_clear_error(tmp_path):
    from sgu_llm.trainers import SGUConfig
    from sgu_llm.trainers.outputs import resume_argument

    cfg = SGUConfig(output_dir=str(tmp_path / "empty"), report_to="none", resume_from_checkpoint="true")
    with pytest.raises(ValueError, match="no checkpoint-"):
        resume_argument(cfg)
    cfg.resume_from_checkpoint = str(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        resume_argument(cfg)
    os.makedirs(tmp_path / "empty" / "checkpoint-4")
    cfg.resume_from_checkpoint = "last"
    assert resume_argument(cfg) is True


@pytest.mark.parametrize("checkpoint_step", [4, 6])  # mid epoch 2; the last step of epoch 2 (saved before its score)
def test_resume_keeps_the_holdout_stopping_choice(
    checkpoint_step, tokenizer, finetuned_state, splits, small_sets, make_config, tmp_path
):
    """With stop_on_holdout the resumed run scores and chooses among all epochs, as the uninterrupted run."""
    config_cls, trainer_cls = get_method("sgu")
    forget, retain = small_sets
    holdout = splits["retain90"].select(range(20))

    def trainer_for(out):
        model = tiny_llama(tokenizer, hidden_size=64, num_layers=2, seed=0)
        model.load_state_dict(finetuned_state)
        cfg = make_config(
            config_cls, output_dir=str(out), num_train_epochs=3, learning_rate=1e-2, save_strategy="steps",
            save_steps=2, stop_on_holdout=True, stop_metric="nll",
        )
        return trainer_cls(model, cfg, forget, retain, processing_class=tokenizer, holdout_dataset=holdout)

    whole = trainer_for(tmp_path / "whole")
    whole.train()
    records = whole.stopping.records
    assert [r["step"] for r in records] == [0, 3, 6, 9]

    resumed = trainer_for(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / f"checkpoint-{checkpoint_step}"))
    assert resumed.stopping.records == records  # the scores before the checkpoint came with it
    a, b = weights(whole), weights(resumed)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resuming a stop_on_holdout run"


def test_lora_adapters_do_not_depend_on_the_global_rng(tokenizer, finetuned_state, small_sets, make_config, tmp_path):
    """Determinism: the adapters start from args.seed, whatever drew from the global RNG before (fine-tuning the
    target in the same process, as a fresh `sgu-llm unlearn` does, against loading it from the cache)."""
    config_cls, trainer_cls = get_method("sgu")
    forget, retain = small_sets
    starts = []
    for draws in (0, 1000):
        model = tiny_llama(tokenizer, hidden_size=64, num_layers=2, seed=0)  # (seeds the global RNG itself)
        model.load_state_dict(finetuned_state)
        torch.rand(draws)
        peft = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        trainer = trainer_cls(model, make_config(config_cls, output_dir=str(tmp_path / str(draws))), forget, retain,
                              processing_class=tokenizer, peft_config=peft)
        starts.append({k: v.clone() for k, v in trainer.model.state_dict().items() if "lora_A" in k})
    assert starts[0] and all(torch.equal(starts[0][k], starts[1][k]) for k in starts[0])
