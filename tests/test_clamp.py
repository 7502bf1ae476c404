"""`sae_clamp`: the clamp edits the activation only where its features fire, travels with the model (copy, save,
load), is not skipped by the frozen-prefix reuse, and the method raises the forget NLL without touching a weight."""

import copy

import pytest
import torch
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

from sgu_llm.data.pairing import prepare_qa_dataset
from sgu_llm.evaluation.prefix import FrozenPrefix
from sgu_llm.models.clamp import SAEClamp, attach_clamp, clamps, remove_clamp, save_clamp
from sgu_llm.models.hooks import capture
from sgu_llm.models.saved import load_saved_model
from sgu_llm.probe import SAEClampConfig, SAEClampTrainer, select_clamp_features
from sgu_llm.probe.patching import edited_nll, padded_batches


def lossless_sae(d=64):
    """Features relu(x) and relu(-x), decoded as their difference: the reconstruction is exact."""
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d, apply_b_dec_to_input=False))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_the_clamp_edits_where_its_features_fire_and_travels_with_the_model(model, tokenizer, tmp_path):
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    hook = "blocks.0.hook_resid_post"
    with torch.no_grad(), capture(model, hook) as before:
        model(input_ids=ids)
    x = before[0][0]
    before_logits = _logits(model, ids)
    sae = lossless_sae()
    # feature 3 reads +x[3], feature 64 + 5 reads -x[5]: clamped to -4 where they fire
    values = torch.tensor([-4.0, -4.0])
    clamp = SAEClamp.from_sae(sae, hook, [3, 69], values)
    assert torch.allclose(clamp.encode(x), sae.encode(x)[:, [3, 69]])
    attach_clamp(model, clamp)
    with torch.no_grad(), capture(model, hook) as after:
        model(input_ids=ids)
    y = after[0][0]
    expect = x.clone()
    expect[:, 3] = torch.where(x[:, 3] > 0, -4.0, x[:, 3])  # decode(-4 e_3) = -4 in dim 3
    expect[:, 5] = torch.where(x[:, 5] < 0, 4.0, x[:, 5])  # feature 69 decodes to -e_5: -4 there is +4 in dim 5
    assert torch.allclose(y, expect, atol=1e-5)
    assert torch.equal(y[:, 10:], x[:, 10:])  # the other dimensions pass unchanged
    clamped = _logits(model, ids)
    assert not torch.allclose(clamped, before_logits)
    # outside state_dict, carried by deepcopy, saved beside the weights and loaded back
    assert not any("sae_clamp" in k for k in model.state_dict())
    assert torch.equal(_logits(copy.deepcopy(model), ids), clamped)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    assert save_clamp(model, str(tmp_path / "m"))
    loaded, _ = load_saved_model(str(tmp_path / "m"))
    assert len(clamps(loaded)) == 1 and torch.allclose(_logits(loaded, ids), clamped, atol=1e-6)
    remove_clamp(model)
    assert torch.equal(_logits(model, ids), before_logits)
    with pytest.raises(ValueError, match="blocks.0.hook_resid_post"):
        attach_clamp(model, SAEClamp.from_sae(sae, "blocks.1.hook_resid_pre", [3], values[:1]))


def test_the_frozen_prefix_does_not_skip_a_clamp_below_the_trainable_layers(model, tokenizer, small_sets):
    forget, _ = small_sets
    batches = padded_batches(prepare_qa_dataset(forget, tokenizer, "f").to_list(), tokenizer.pad_token_id)
    for name, p in model.named_parameters():  # only layer 1 and the head train: the prefix reuses layer 1's input
        p.requires_grad_(not (name.startswith("model.embed_tokens") or name.startswith("model.layers.0.")))
    prefix = FrozenPrefix()
    with prefix.active(model):
        plain = edited_nll(model, batches)
    assert prefix.layer == 1 and prefix.states  # recorded, before the clamp
    clamp = SAEClamp.from_sae(lossless_sae(), "blocks.0.hook_resid_post", list(range(64)), torch.full((64,), -3.0))
    attach_clamp(model, clamp)
    with prefix.active(model):
        reused = edited_nll(model, batches)
    fresh = edited_nll(model, batches)
    assert (fresh - plain).mean() > 0.1 and reused == pytest.approx(fresh, abs=1e-6)


def test_clamp_selection_follows_forget_and_retain_firing():
    forget = torch.tensor([[1.0, 2.0, 0.0, 5.0], [3.0, 0.0, 1.0, 5.0], [0.0, 0.0, 1.0, 5.0]])
    retain = torch.tensor([[0.0, 1.0, 0.0, 5.0]] + [[0.0, 0.0, 0.0, 5.0]] * 9)
    out = select_clamp_features(forget, retain, k=3, retain_sparsity=0.1, multiplier=10)
    # 3 fires on every retain token (ineligible); 0 and 2 fire on 2/3 of forget tokens, 1 on 1/3 and 1/10 of retain
    assert out["features"] == [0, 2, 1] and out["eligible"] == 3
    assert out["values"].tolist() == pytest.approx([-20.0, -10.0, -20.0])
    assert select_clamp_features(forget, retain, k=3, retain_sparsity=0.0, multiplier=10)["features"] == [0, 2]


def test_sae_clamp_raises_the_forget_nll_without_changing_a_weight(model, tokenizer, small_sets, make_config):
    forget, retain = small_sets
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    config = make_config(SAEClampConfig, clamp_hook_name="blocks.0.hook_resid_post", clamp_sae_epochs=5,
                         clamp_features=20, clamp_multiplier=10, clamp_retain_sparsity=0.5,
                         clamp_sae_l1_coefficient=3)
    trainer = SAEClampTrainer(model, config, forget_dataset=forget, retain_dataset=retain, processing_class=tokenizer)
    rows = padded_batches(prepare_qa_dataset(forget, tokenizer, "f").to_list(), tokenizer.pad_token_id)
    before = edited_nll(trainer.model, rows).mean()
    trainer.train()
    after = edited_nll(trainer.model, rows).mean()
    assert 1 <= len(trainer.clamp.features) <= 20 and max(trainer.clamp.info["retain_frequency"]) <= 0.5
    assert after > before + 0.05
    assert all(torch.equal(v, weights[k]) for k, v in trainer.model.state_dict().items())
    assert [h["clamp/features"] for h in trainer.state.log_history if "clamp/features" in h] == [len(trainer.clamp.features)]
    for bad, match in (({"stop_on_holdout": True}, "stop_on_holdout: false"),
                       ({"clamp_hook_name": "blocks.1.hook_resid_pre"}, "an output the clamp edits"),
                       ({"clamp_features": 0}, "clamp_features >= 1")):
        with pytest.raises(ValueError, match=match):
            make_config(SAEClampConfig, **bad)
