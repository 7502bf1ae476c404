"""SGUTrainer and the baselines on a tiny fine-tuned Llama: behaviour, not just that code runs."""

import json

import pytest
import torch
from peft import LoraConfig

from sgu_llm.trainers import (
    GradAscentConfig,
    GradAscentTrainer,
    GradDiffConfig,
    GradDiffTrainer,
    NPOConfig,
    NPOTrainer,
    SGUConfig,
    SGUTrainer,
    SimNPOConfig,
    SimNPOTrainer,
)

# Training outcomes against fixed bounds: each bound holds with room under AVX-512, AVX2 and the default
# (scalar) CPU kernels, and each fails for the same trainer with its forget term switched off
# (`test_a_trainer_that_does_not_unlearn_fails_the_bounds`). .ci/run runs them under a second kernel set.
pytestmark = pytest.mark.outcome


def test_sgu_raises_forget_loss_and_keeps_retain(model, tokenizer, small_sets, make_config, nll, margin):
    forget, retain = small_sets
    f0, r0 = nll(model, forget, tokenizer), nll(model, retain, tokenizer)
    trainer = SGUTrainer(model, make_config(SGUConfig), forget, retain, processing_class=tokenizer)
    trainer.train()
    f1, r1 = nll(model, forget, tokenizer), nll(model, retain, tokenizer)
    assert f0 < 0.1 and r0 < 0.1  # the fixture memorised everything
    margin("forget NLL rise", f1 - f0, ">", FORGETS["sgu"])
    margin("retain NLL rise", r1 - r0, "<", 0.1)  # retain stays near where it was (0.016-0.022)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    keys = {
        "loss/forget",
        "loss/retain",
        "sgu/maintain_frac",
        "sgu/prune_frac",
        "sgu/reverse_frac",
        "sgu/conflict_frac",
        "sgu/tau_d",
        "sgu/grad_cosine",
    }
    assert keys <= set(logs[0])
    for h in logs:
        assert h["sgu/maintain_frac"] + h["sgu/prune_frac"] + h["sgu/reverse_frac"] == pytest.approx(1.0)
        assert h["sgu/reverse_frac"] == 0.0  # the seed rule has no reverse branch
        assert h["sgu/maintain_frac"] >= h["sgu/conflict_frac"]  # every conflict is maintained


def test_sgu_reverse_logs_reverse_fraction(model, tokenizer, small_sets, make_config, nll, margin):
    forget, retain = small_sets
    cfg = make_config(SGUConfig, selective_function="sgu_reverse", num_train_epochs=1, q_m=0.8)
    trainer = SGUTrainer(model, cfg, forget, retain, processing_class=tokenizer)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    # Over same-sign coordinates, 20 % exceed the q_m = 0.8 quantile, unless the maintain test took them.
    assert all(0.0 < h["sgu/reverse_frac"] for h in logs)
    margin("largest reverse fraction", max(h["sgu/reverse_frac"] for h in logs), "<", 0.2)
    assert all("sgu/tau_m" in h for h in logs)


def test_sgu_npo_forget_loss_uses_reference(model, tokenizer, small_sets, make_config, nll, margin):
    forget, retain = small_sets
    # lr 3e-3: the rise is 1.7-2.1 (at 1e-3, 0.21-0.27 against the bound 0.2)
    cfg = make_config(SGUConfig, selective_function="sgu_reverse", forget_loss="npo", num_train_epochs=2,
                      learning_rate=3e-3)
    trainer = SGUTrainer(model, cfg, forget, retain, processing_class=tokenizer)
    assert trainer.ref_model is not None  # full parameters: a frozen copy
    ref_before = [p.clone() for p in trainer.ref_model.parameters()]
    f0 = nll(model, forget, tokenizer)
    trainer.train()
    margin("forget NLL rise", nll(model, forget, tokenizer) - f0, ">", 0.2)
    assert all(torch.equal(a, b) for a, b in zip(ref_before, trainer.ref_model.parameters()))


def assert_base_weights_unchanged(base, peft_model):
    """Every weight of the model under the adapters equals its copy taken before training, bit for bit."""
    after = peft_model.get_base_model().state_dict()
    for name, value in base.items():
        key = next(k for k in after if k.replace(".base_layer", "") == name)
        assert torch.equal(after[key], value), name


def test_lora_leaves_base_weights_bit_identical(model, tokenizer, small_sets, make_config, nll, margin):
    forget, retain = small_sets
    base = {k: v.clone() for k, v in model.state_dict().items()}
    f0 = nll(model, forget, tokenizer)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SGUTrainer(
        model,
        make_config(SGUConfig, learning_rate=1e-2),
        forget,
        retain,
        processing_class=tokenizer,
        peft_config=lora,
    )
    trainer.train()
    peft_model = trainer.model
    margin("forget NLL rise", nll(peft_model, forget, tokenizer) - f0, ">", 0.3)
    assert_base_weights_unchanged(base, peft_model)
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # the adapters did move


def test_param_filter_freezes_the_rest(model, tokenizer, small_sets, make_config):
    forget, retain = small_sets
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = make_config(SGUConfig, unlearn_params=r"layers\.1\.mlp", num_train_epochs=1)
    SGUTrainer(model, cfg, forget, retain, processing_class=tokenizer).train()
    for name, value in model.state_dict().items():
        changed = not torch.equal(value, before[name])
        assert changed == ("layers.1.mlp" in name), name


def test_gradient_accumulation_matches_one_big_batch(model, splits, sgu_update, finetuned_state, margin):
    """2 micro-batches of 4 with accumulation 2 select the same update as one batch of 8.

    Losses are normalised by the answer tokens of the whole window, so the accumulated g_f and
    g_r equal the big batch's up to float32 summation order (~1e-7 relative). Documented
    tolerance: at most 1e-4 of coordinates may switch action at a threshold tie, and the
    updates agree to 1e-5 absolute everywhere else.
    """
    forget, retain = splits["forget10"].select(range(8)), splits["retain90"]
    big = sgu_update(model, forget, retain, per_device_train_batch_size=8)
    model.load_state_dict(finetuned_state)
    acc = sgu_update(
        model,
        forget,
        retain,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
    )
    assert big.abs().sum() > 0
    differ = (big - acc).abs() > 1e-5
    margin("fraction of coordinates that differ", differ.float().mean().item(), "<=", 1e-4)


def test_gradient_accumulation_differs_from_a_different_batch(model, splits, sgu_update, finetuned_state, margin):
    """Control for the test above: the comparison can fail."""
    forget, retain = splits["forget10"].select(range(8)), splits["retain90"]
    big = sgu_update(model, forget, retain, per_device_train_batch_size=8)
    model.load_state_dict(finetuned_state)
    half = sgu_update(model, forget, retain, per_device_train_batch_size=4)
    margin("fraction of coordinates that differ", ((big - half).abs() > 1e-5).float().mean().item(), ">", 0.01)


def test_bf16_autocast_runs_on_cpu(model, tokenizer, small_sets, make_config):
    forget, retain = small_sets
    seen = []
    handle = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    cfg = make_config(SGUConfig, bf16=True, use_cpu=True, num_train_epochs=1)
    trainer = SGUTrainer(model, cfg, forget, retain, processing_class=tokenizer)
    trainer.train()
    handle.remove()
    assert torch.bfloat16 in seen
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all(torch.isfinite(torch.tensor(h["loss/forget"])) for h in logs)
    assert trainer.selection_skipped_steps == 0


def test_tensor_action_log(model, tokenizer, small_sets, make_config, tmp_path):
    forget, retain = small_sets
    cfg = make_config(SGUConfig, log_tensor_actions=True, num_train_epochs=1, logging_steps=2)
    trainer = SGUTrainer(model, cfg, forget, retain, processing_class=tokenizer)
    trainer.train()
    lines = (tmp_path / "out" / "sgu_actions.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    assert len(records) == len([h for h in trainer.state.log_history if "loss" in h])
    rec = records[0]
    assert "model.layers.0.self_attn.q_proj.weight" in rec["tensors"]
    for fr in rec["tensors"].values():
        assert set(fr) == {"prune", "maintain", "reverse"}
        assert sum(fr.values()) == pytest.approx(1.0)


# The forget NLL rise each trainer must reach on the memorised tiny model (small_sets, 5 epochs at lr 1e-3): at
# most half of what it reaches under any kernel set tried (docs/reliability.md lists the values), and over twice
# what the same training reaches with its forget term off (0.01-0.04).
FORGETS = {"sgu": 0.25, "gradascent": 0.2, "graddiff": 0.2, "npo": 0.2, "simnpo": 0.2}
BASELINES = [  # (config, trainer, fields)
    (GradAscentConfig, GradAscentTrainer, {}),
    (GradDiffConfig, GradDiffTrainer, {}),
    (NPOConfig, NPOTrainer, {}),
    # SimNPO's default gamma (0.125) rises 0.13-0.21 here, by machine: gamma 0.5 makes its rise several
    # times the bound on every kernel set tried
    (SimNPOConfig, SimNPOTrainer, {"gamma": 0.5}),
]


@pytest.mark.parametrize("config_cls,trainer_cls,extra", BASELINES, ids=lambda x: getattr(x, "__name__", None))
def test_baselines_raise_forget_loss(config_cls, trainer_cls, extra, model, tokenizer, small_sets, make_config, nll,
                                     margin):
    forget, retain = small_sets
    f0 = nll(model, forget, tokenizer)
    trainer = trainer_cls(
        model, make_config(config_cls, num_train_epochs=5, **extra), forget, retain, processing_class=tokenizer
    )
    trainer.train()
    margin("forget NLL rise", nll(model, forget, tokenizer) - f0, ">", FORGETS[trainer.method_tag()])
    assert "loss/forget" in trainer.state.log_history[0]


@pytest.mark.parametrize(
    "config_cls,trainer_cls,off",
    [
        (SGUConfig, SGUTrainer, {"selective_function": "retain_only"}),  # g_r alone: the retain NLL descent
        (GradDiffConfig, GradDiffTrainer, {"gamma": 0.0}),
        # NPO and SimNPO with gamma 0 are this same retain NLL descent
    ],
    ids=lambda x: getattr(x, "__name__", None),
)
def test_a_trainer_that_does_not_unlearn_fails_the_bounds(config_cls, trainer_cls, off, model, tokenizer, small_sets,
                                                          make_config, nll, margin):
    """The bounds above can fail: with the forget term switched off the same training stays far below them
    (a miscompiled SGU kernel reached 0.051 in the SGU test)."""
    forget, retain = small_sets
    f0 = nll(model, forget, tokenizer)
    trainer_cls(model, make_config(config_cls, num_train_epochs=5, **off), forget, retain,
                processing_class=tokenizer).train()
    margin("forget NLL rise without the forget term", nll(model, forget, tokenizer) - f0, "<",
           min(FORGETS.values()) / 2)


def test_npo_under_lora_uses_disabled_adapters_as_reference(model, tokenizer, small_sets, make_config):
    forget, retain = small_sets
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = NPOTrainer(
        model,
        make_config(NPOConfig, num_train_epochs=1, learning_rate=5e-3),
        forget,
        retain,
        processing_class=tokenizer,
        peft_config=lora,
    )
    assert trainer.ref_model is None  # no deep copy
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])["forget"]
    trainer.train()
    ref_nll, _ = trainer.reference_nll(trainer.model, batch)
    with trainer.model.disable_adapter(), torch.no_grad():
        from sgu_llm.core.losses import per_example_nll

        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected, _ = per_example_nll(logits, batch["labels"])
    assert torch.allclose(ref_nll, expected)
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        trained, _ = per_example_nll(logits, batch["labels"])
    assert not torch.allclose(ref_nll, trained)  # adapters changed the policy, not the reference


def test_save_adapter_and_merged(model, tokenizer, small_sets, make_config, tmp_path):
    forget, retain = small_sets
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    cfg = make_config(SGUConfig, num_train_epochs=1)
    trainer = SGUTrainer(model, cfg, forget, retain, processing_class=tokenizer, peft_config=lora)
    trainer.train()
    out = trainer.save_unlearned_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").exists() and out.endswith("adapter")
    trainer.args.save_merged = True
    trainer.save_unlearned_model(str(tmp_path / "merged"))
    assert (tmp_path / "merged" / "config.json").exists()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()


def test_a_peft_model_can_be_passed_directly(model, tokenizer, small_sets, make_config, nll):
    from peft import get_peft_model

    forget, retain = small_sets
    base = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer = NPOTrainer(
        peft_model,
        make_config(NPOConfig, num_train_epochs=2, learning_rate=1e-2),
        forget,
        retain,
        processing_class=tokenizer,
    )
    assert trainer.ref_model is None  # the reference is the same model with adapters disabled
    f0 = nll(peft_model, forget, tokenizer)
    trainer.train()
    assert nll(peft_model, forget, tokenizer) > f0
    assert_base_weights_unchanged(base, peft_model)
    with pytest.raises(ValueError, match="already a PeftModel"):
        SGUTrainer(
            peft_model,
            make_config(SGUConfig),
            forget,
            retain,
            processing_class=tokenizer,
            peft_config=LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"),
        )
