"""The SAE probe: hook mapping, a tiny SAE built locally, state classification, causal check, callback; where
unlearning acts (layer patching), feature attribution and the causal test with its controls."""

import copy
import json
import os

import numpy as np
import pytest
import torch
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

from sgu_llm.data.pairing import prepare_qa_dataset
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
    replace_activation,
    resolve_hook,
    sae_quality,
    save_sae,
    select_forget_features,
    train_sae,
)
from sgu_llm.probe.features import (
    _positions,
    _row_nll_with_grad,
    causal_test,
    feature_attribution,
    random_weights_sae,
)
from sgu_llm.probe.patching import (
    _inputs,
    activations_at,
    edited_nll,
    first_changed_layer,
    layer_patch_curve,
    padded_batches,
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


def _rows(tokenizer, small_sets, n_retain=20):
    forget, retain = small_sets
    return (prepare_qa_dataset(forget, tokenizer, "f").to_list(),
            prepare_qa_dataset(retain.select(range(n_retain)), tokenizer, "r").to_list())


def _changed_at(model, layer, seed=0):
    """A copy of `model` whose decoder layer `layer` (only) is perturbed."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.model.layers[layer].parameters():
            p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=gen))
    return out


@pytest.mark.parametrize("changed", [0, 1])
def test_patching_at_the_last_changed_layer_reproduces_the_unlearned_model(model, tokenizer, small_sets, changed):
    rows_f, rows_r = _rows(tokenizer, small_sets)
    unlearned = _changed_at(model, changed)
    curve = layer_patch_curve(model, unlearned, rows_f, rows_r, tokenizer.pad_token_id)
    assert curve["layers"] == [0, 1] and curve["steepest_layer"] == changed
    for k in ("forget", "retain"):
        assert curve["unlearned_nll"][k] != curve["target_nll"][k]
        # at and above the changed layer the patched target is the unlearned model: the same NLL
        for layer in range(changed, 2):
            assert curve[f"{k}_nll"][layer] == pytest.approx(curve["unlearned_nll"][k], abs=1e-6)
            assert curve[f"{k}_fraction"][layer] == pytest.approx(1.0, abs=1e-4)
        # below it the unlearned model's activation is the target's: nothing changes (the curve skips those layers)
        for layer in range(changed):
            assert curve[f"{k}_nll"][layer] == pytest.approx(curve["target_nll"][k], abs=1e-6)
    assert curve["first_changed_layer"] == first_changed_layer(model, unlearned) == changed
    batches = padded_batches(rows_f, tokenizer.pad_token_id)
    for layer in range(changed):  # what the skip assumes, computed: the patch below the change is a no-op
        hook = f"blocks.{layer}.hook_resid_post"
        source = [activations_at(unlearned, hook, b) for b in batches]
        patched = edited_nll(model, batches, hook, lambda i, x, s=source: s[i].to(x.dtype)).mean()
        assert patched == pytest.approx(curve["target_nll"]["forget"], abs=1e-6)
    with pytest.raises(ValueError, match="outside the model's 0..1"):
        layer_patch_curve(model, unlearned, rows_f, rows_r, tokenizer.pad_token_id, layers=[2])


def _sae(d_in, w_enc, w_dec, b_enc=None, b_dec=None, dtype="float32"):
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=w_enc.shape[1], apply_b_dec_to_input=False, dtype=dtype))
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.W_dec.copy_(w_dec)
        sae.b_enc.copy_(torch.zeros(w_enc.shape[1]) if b_enc is None else b_enc)
        sae.b_dec.copy_(torch.zeros(d_in) if b_dec is None else b_dec)
    return sae


def test_attribution_equals_a_finite_difference(model, tokenizer, small_sets):
    """A_i, the feature's change times the NLL gradient, is the derivative of the mean answer NLL along that
    change (in float64, through a hand-built SAE whose feature i reads dimension i)."""
    hook = "blocks.0.hook_resid_post"
    rows_f, _ = _rows(tokenizer, small_sets)
    rows = rows_f[:6]
    model = model.double()
    unlearned = _changed_at(model, 0)
    eye = torch.eye(64, dtype=torch.float64)
    sae = _sae(64, eye, eye, dtype="float64")
    attr = feature_attribution(model, unlearned, sae, hook, rows, tokenizer.pad_token_id, batch_size=4)
    assert attr.shape == (64,) and attr.dtype == torch.float64

    def nll_along(i, eps):  # mean row NLL with feature i moved eps x its unlearned change (positions 1..)
        total = 0.0
        for b in padded_batches(rows, tokenizer.pad_token_id, 4):
            x_t, x_u = activations_at(model, hook, b), activations_at(unlearned, hook, b)
            step = torch.zeros_like(x_t)
            step[..., i] = (torch.relu(x_u) - torch.relu(x_t))[..., i]  # the hand SAE: f = relu(x), decode(f) = f
            step = step * _positions(b)
            with torch.no_grad(), replace_activation(model, hook, lambda x, s=step: x + eps * s):
                total += _row_nll_with_grad(model, _inputs(model, b), b["labels"]).sum().item()
        return total / len(rows)

    # Llama's RMSNorm computes in float32 even in a float64 model, so the NLL carries ~1e-8 of rounding: a step
    # of 0.05 of the change keeps it below 1e-6 of the derivative and the truncation (eps^2) below 1e-3.
    top = torch.argsort(attr.abs(), descending=True)[:3].tolist()
    for i in top:
        eps = 0.05
        fd = (nll_along(i, eps) - nll_along(i, -eps)) / (2 * eps)
        assert fd == pytest.approx(attr[i].item(), rel=5e-3)
        assert all(fd != pytest.approx(attr[j].item(), rel=5e-3) for j in top if j != i)  # the tolerance tells them apart
    assert attr.abs().max() > 0


def test_causal_test_patches_features_and_has_a_random_weights_control(model, tokenizer, small_sets):
    hook = "blocks.1.hook_resid_pre"  # the output of layer 0, the layer that changed
    rows_f, rows_r = _rows(tokenizer, small_sets, n_retain=40)
    unlearned = _changed_at(model, 0)
    select = {"forget": rows_f[::2], "retain": rows_r[::2]}
    test = {"forget": rows_f[1::2], "retain": rows_r[1::2]}
    # A lossless SAE (features relu(x) and relu(-x), decoded as their difference): patching all of its features
    # is the whole-layer patch, with or without the error term (zero here).
    eye = torch.eye(64)
    lossless = _sae(64, torch.cat([eye, -eye], 1), torch.cat([eye, -eye], 0))
    full = causal_test(model, unlearned, lossless, hook, select, test, tokenizer.pad_token_id, ks=(128,), scales=(-2.0,),
                       draws=0)
    allk = full["by_k"]["128"]
    assert sorted(allk["features"]) == list(range(128))
    assert allk["fraction_of_layer_patch"] == pytest.approx(1.0, abs=1e-4)
    assert allk["forget_rise"] == pytest.approx(full["layer_patch_rise"]["forget"], abs=1e-5)
    assert allk["error_term"]["reconstruction_forget_rise"] == pytest.approx(allk["forget_rise"], abs=1e-5)
    assert allk["error_term"]["reconstruction_alone_forget_rise"] == pytest.approx(0.0, abs=1e-6)
    assert allk["retain_side_effect"] == pytest.approx(full["layer_patch_rise"]["retain"] / full["layer_patch_rise"]["forget"], rel=1e-3)
    # Integrated gradients add up to the patch's NLL change (completeness); the target's own gradient does not.
    ig = feature_attribution(model, unlearned, lossless, hook, test["forget"], tokenizer.pad_token_id, path_steps=32)
    plain = feature_attribution(model, unlearned, lossless, hook, test["forget"], tokenizer.pad_token_id)
    assert ig.sum().item() == pytest.approx(full["layer_patch_rise"]["forget"], rel=1e-3)
    assert abs(plain.sum().item() - full["layer_patch_rise"]["forget"]) > 0.1 * abs(full["layer_patch_rise"]["forget"])
    # A trained SAE, its top 4 features against 9 matched random sets; its random-weights twin has its shape.
    rows_all = rows_f + rows_r
    acts, _ = collect_activations(model, rows_all, hook, tokenizer.pad_token_id)
    sae = train_sae(acts, expansion=2, l1_coefficient=0.5, epochs=5, batch_size=128)
    twin = random_weights_sae(sae, seed=1)
    assert type(twin) is type(sae) and twin.cfg.d_sae == sae.cfg.d_sae == 128
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert getattr(twin, name).shape == getattr(sae, name).shape
    assert not torch.allclose(twin.W_enc, sae.W_enc) and torch.equal(twin.b_enc, sae.b_enc)
    assert torch.allclose(twin.W_dec.norm(dim=1), sae.W_dec.norm(dim=1), rtol=1e-4)
    for s in (sae, twin):
        out = causal_test(model, unlearned, s, hook, select, test, tokenizer.pad_token_id, ks=(4,), scales=(-2.0,),
                          draws=9)
        k4 = out["by_k"]["4"]
        assert len(k4["features"]) == 4 and k4["features"] == out["ranked"][:4]
        assert 0.1 <= k4["p_random"] <= 1.0 and 0.1 <= k4["clamp"]["-2.0"]["p_random"] <= 1.0
        assert np.isfinite(k4["fraction_of_layer_patch"]) and k4["random_fraction_max"] >= k4["random_fraction_mean"]
        net = np.array(out["net_attribution"])
        assert net[k4["features"]].min() >= np.delete(net, k4["features"]).max()


def test_published_probe_evidence_has_every_field_per_model_and_seed():
    """docs/probe.json (scripts/probe_table.py): per model and seed, one entry per k with the fields the table shows."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = json.load(open(os.path.join(root, "docs", "probe.json")))
    assert data["entries"] and set(data["commands"]) == {e["model"] for e in data["entries"]}
    for e in data["entries"]:
        for key in ("layer", "k", "fraction_of_layer_patch", "p_random", "random_sae_fraction", "retain_side_effect"):
            assert key in e, (e["model"], e["seed"], key)
        assert 1 / (e["draws"] + 1) <= e["p_random"] <= 1 and e["hook_name"] == f"blocks.{e['layer']}.hook_resid_post"
    by_model = {}
    for e in data["entries"]:
        by_model.setdefault(e["model"], {}).setdefault(e["seed"], set()).add(e["k"])
    assert all(len({frozenset(ks) for ks in seeds.values()}) == 1 for seeds in by_model.values())
    # the committed per-seed records (results/probe-evidence/<model>/seed<N>/probe.json) are what the table shows
    import glob
    import importlib.util

    spec = importlib.util.spec_from_file_location("probe_table", os.path.join(root, "scripts", "probe_table.py"))
    probe_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe_table)
    records = {tuple(r.split(os.sep)[-3:-1]): r
               for r in glob.glob(os.path.join(root, "results", "probe-evidence", "*", "seed*", "probe.json"))}
    assert "smollm2-135m-instruct" in {model for model, _ in records}
    for (model, seed_dir), record in records.items():
        seed = int(seed_dir.removeprefix("seed"))
        published = [e for e in data["entries"] if (e["model"], e["seed"]) == (model, seed)]
        assert published, (model, seed)
        rebuilt = probe_table.entries(model, published[0]["method"], seed, json.load(open(record))["evidence"])
        assert json.loads(json.dumps(rebuilt)) == published


def test_cached_sae_is_trained_once_and_reused_without_a_forward(tmp_path):
    from sgu_llm.probe import cached_sae

    calls = []

    def activations():
        calls.append(1)
        return torch.randn(256, 8, generator=torch.Generator().manual_seed(0))

    path = str(tmp_path / "saes" / "k")
    sae, quality = cached_sae(path, activations, expansion=2, l1_coefficient=0.5, epochs=2, batch_size=128)
    again, quality_again = cached_sae(path, activations, expansion=2, l1_coefficient=0.5, epochs=2, batch_size=128)
    assert len(calls) == 1 and quality_again == quality and "explained_variance" in quality
    assert torch.equal(sae.W_enc, again.W_enc) and sae.W_enc.shape == (8, 16)
    assert (tmp_path / "locks").is_dir() and sorted(p.name for p in (tmp_path / "saes").iterdir()) == ["k"]
