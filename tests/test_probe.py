"""The SAE probe: hook mapping, a tiny SAE built locally, state classification, causal check, callback."""

import numpy as np
import pytest
import torch
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

from sgu_llm.probe import (
    SAEProbe,
    SAEProbeCallback,
    capture,
    causal_check,
    classify,
    collect_activations,
    encode_with_pre,
    feature_stats,
    load_sae,
    resolve_hook,
    sae_quality,
    save_sae,
    select_forget_features,
    train_sae,
)
from sgu_llm.probe.sae_probe import ProbeArguments, answer_probability, feeding_pattern


def hand_sae(d_in=4, d_sae=4):
    """Feature i reads input dimension i (no bias): activations are relu(x[i])."""
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d_in, d_sae))
        sae.W_dec.copy_(torch.eye(d_sae, d_in))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_hook_names_map_to_hf_modules(model):
    assert resolve_hook(model, "blocks.1.hook_resid_post")[2] == "layers.1"
    assert resolve_hook(model, "blocks.0.hook_mlp_out")[2] == "layers.0.mlp"
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        with (
            capture(model, "blocks.1.hook_resid_pre") as pre,
            capture(model, "blocks.0.hook_resid_post") as post,
        ):
            model(input_ids=ids)
    assert torch.allclose(pre[0], hidden[1]) and torch.allclose(post[0], hidden[1])
    with pytest.raises(ValueError, match="unsupported hook name"):
        resolve_hook(model, "model.layers.0")
    with pytest.raises(ValueError, match="names layer 7 but the model has 2 layers"):
        resolve_hook(model, "blocks.7.hook_resid_post")


def test_feeding_parameters():
    pat = feeding_pattern("blocks.0.hook_resid_post")
    assert pat.search("model.layers.0.mlp.up_proj.weight") and pat.search("model.embed_tokens.weight")
    assert not pat.search("model.layers.1.mlp.up_proj.weight")
    assert not feeding_pattern("blocks.0.hook_resid_pre").search("model.layers.0.mlp.up_proj.weight")


def test_classification_on_a_constructed_case():
    """Feature 0 is suppressed, feature 1 inverted, feature 2 changes on retain, feature 3 is untouched."""
    sae = hand_sae()
    gen = torch.Generator().manual_seed(0)
    forget_before = torch.tensor([2.0, 2.0, 1.0, 1.0]) + 0.1 * torch.rand(50, 4, generator=gen)
    retain_before = torch.tensor([0.05, 0.05, 1.0, 1.0]) + 0.01 * torch.rand(50, 4, generator=gen)
    forget_after = forget_before * torch.tensor([0.05, -1.0, 1.0, 1.0])  # suppress 0, invert 1
    retain_after = retain_before * torch.tensor([1.0, 1.0, 0.2, 1.0])  # 2 loses its retain activation

    def stats(x, mask=None):
        acts, pre = encode_with_pre(sae, x)
        return feature_stats(acts, pre, mask), acts > 0

    f0, f_mask = stats(forget_before)
    r0, r_mask = stats(retain_before)
    f1, _ = stats(forget_after, f_mask)
    r1, _ = stats(retain_after, r_mask)
    # Feature 1's post-activation is 0 after the inversion; only the pre-activation shows the sign flip.
    assert f1.mean_act[1] == 0 and f1.start_pre[1] < -1.5
    assert classify(f0, r0, f1, r1) == ["pruned", "reversed", "collateral", "maintained"]
    # Selection picks the features that fire on the forget set far more than on retain.
    selected = select_forget_features(f0, r0, percentile=50)
    assert set(selected.tolist()) == {0, 1}


def test_train_save_load_sae_with_sae_lens(tmp_path):
    gen = torch.Generator().manual_seed(0)
    codes = torch.relu(torch.randn(4000, 16, generator=gen)) * (torch.rand(4000, 16, generator=gen) < 0.2)
    acts = codes @ torch.randn(16, 8, generator=gen)
    sae = train_sae(acts, expansion=4, l1_coefficient=0.05, epochs=40, batch_size=256, lr=3e-3)
    q = sae_quality(sae, acts)
    assert q["explained_variance"] > 0.9 and 0 < q["l0"] < 32
    path = save_sae(sae, str(tmp_path / "sae"))
    loaded = load_sae(path)
    assert type(loaded).__name__ == "StandardSAE"
    assert torch.allclose(loaded.encode(acts[:10]), sae.encode(acts[:10]), atol=1e-5)
    with pytest.raises(ValueError, match="also give sae_id"):
        load_sae("not-a-folder-release")


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"])
def test_causal_check_baseline_is_the_unmodified_model(model, tokenizer, small_sets, hook, monkeypatch):
    import contextlib

    from sgu_llm.data.pairing import prepare_qa_dataset
    from sgu_llm.evaluation.prefix import FrozenPrefix

    forget, retain = small_sets
    rows_f = prepare_qa_dataset(forget, tokenizer, "f").to_list()
    rows_r = prepare_qa_dataset(retain.select(range(20)), tokenizer, "r").to_list()
    acts, _ = collect_activations(model, rows_f + rows_r, hook, tokenizer.pad_token_id)
    sae = train_sae(acts, expansion=2, l1_coefficient=0.5, epochs=5, batch_size=128)
    freq = (sae.encode(acts) > 0).float().mean(0)
    plain = answer_probability(model, rows_f, tokenizer.pad_token_id)

    def check():
        return causal_check(
            model,
            sae,
            hook,
            tokenizer.pad_token_id,
            rows_f,
            rows_r,
            features=torch.argsort(freq, descending=True)[:8].tolist(),
            freq=freq,
            draws=3,
            scales=(0.0, -2.0),
        )

    made = []
    init = FrozenPrefix.__init__
    monkeypatch.setattr(FrozenPrefix, "__init__", lambda self: (init(self), made.append(self))[0])
    result = check()
    assert made[0].hits > 0 if hook.startswith("blocks.1") else made[0].hits == 0
    if hook.startswith("blocks.1"):  # the layer below the hook ran once, its output reused: the same numbers
        monkeypatch.setattr(FrozenPrefix, "active", lambda self, model, layer=None: contextlib.nullcontext())
        plain_passes = check()
        for scale in ("0.0", "-2.0"):
            for key in ("clamped_effects", "random_mean"):
                got, want = result["by_scale"][scale][key], plain_passes["by_scale"][scale][key]
                assert got == pytest.approx(want, abs=1e-6), (scale, key)
    # Reconstruction + error term is the identity: clamping nothing changes nothing.
    assert result["baseline"]["forget_prob"] == pytest.approx(plain, abs=1e-5)
    # Clamping the 8 most frequent features of the only SAE does change the model.
    assert result["clamped_forget_drop"] != 0.0
    assert {"random_forget_drop", "random_retain_drop", "clamped_retain_drop"} <= set(result)
    zero, negative = result["by_scale"]["0.0"], result["by_scale"]["-2.0"]
    assert len(zero["random_effects"]) == 3 and 0.0 <= zero["random_at_least"] <= 1.0
    assert zero["random_selectivity_min"] <= zero["random_mean"]["selectivity"] <= zero["random_selectivity_max"]
    sel = [e["selectivity"] for e in zero["random_effects"]]
    assert zero["random_at_least"] == pytest.approx(np.mean(np.array(sel) >= zero["clamped_effects"]["selectivity"]))
    # Pushing the features past zero is a different intervention from switching them off.
    assert negative["clamped"]["forget_nll"] != zero["clamped"]["forget_nll"]
    assert result["clamped_forget_drop"] == zero["clamped_effects"]["forget_drop"]  # top level: the first factor


def test_probe_callback_during_sgu(model, tokenizer, small_sets, make_config):
    from sgu_llm.trainers import SGUConfig, SGUTrainer

    forget, retain = small_sets
    trainer = SGUTrainer(
        model, make_config(SGUConfig, num_train_epochs=2), forget, retain, processing_class=tokenizer
    )
    pairs = trainer.train_dataset
    acts, _ = collect_activations(
        model,
        pairs.forget.to_list() + pairs.retain.to_list()[:40],
        "blocks.0.hook_resid_post",
        tokenizer.pad_token_id,
    )
    sae = train_sae(acts, expansion=2, l1_coefficient=0.5, epochs=5, batch_size=128)
    args = ProbeArguments(probe_every=2, select_percentile=80)
    probe = SAEProbe(
        sae, "blocks.0.hook_resid_post", tokenizer, pairs.forget.to_list(), pairs.retain.to_list()[:20], args
    )
    callback = SAEProbeCallback(probe, every=2).attach(trainer)
    trainer.train()
    steps = [h["step"] for h in probe.history]
    assert steps[0] == 0 and steps[-1] == trainer.state.global_step and len(steps) >= 3
    out = probe.to_json()
    assert out["selected"] and all(
        f["state"] in ("maintained", "pruned", "reversed", "collateral") for f in out["features"]
    )
    assert len(out["features"][0]["steps"]) == len(steps)
    # SGU's actions were recorded for the tensors that feed layer 0 only, at every optimizer step.
    assert len(callback.actions) == trainer.state.global_step
    names = set(callback.actions[0]["tensors"])
    assert "model.layers.0.mlp.down_proj.weight" in names
    assert not any(".layers.1." in n for n in names)
    assert probe.seconds > 0


def test_causal_check_falls_back_to_the_largest_forget_drops():
    """With nothing pruned or reversed, the causal check clamps the features whose forget activation fell most."""
    from sgu_llm.experiments.probing import largest_forget_drops

    def feature(f, start, end):
        return {"feature": f, "steps": [{"forget_mean_act": start}, {"forget_mean_act": end}]}

    feats = [feature(1, 1.0, 0.5), feature(2, 2.0, 0.2), feature(3, 1.0, 1.5), feature(4, 0.0, 0.0)]
    assert largest_forget_drops(feats, 5) == [2, 1]  # relative drops 0.9 and 0.5; rises and dead features out
    assert largest_forget_drops(feats, 1) == [2] and largest_forget_drops(feats, 0) == []
