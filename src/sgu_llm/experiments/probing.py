"""The SAE probe inside the benchmark run (and `sgu-llm probe`): the SAE (given, or trained on the target's
activations and cached), the probe attached to the trainer, and the probe's report with its causal check."""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any

from sgu_llm.core.cache import fingerprint
from sgu_llm.data.benchmark import training_sets
from sgu_llm.data.pairing import prepare_qa_dataset
from sgu_llm.models.hooks import decoder_layers, resolve_hook
from sgu_llm.probe import (
    SAEProbe,
    SAEProbeCallback,
    cached_sae,
    causal_check,
    collect_activations,
    load_sae,
    sae_quality,
)
from sgu_llm.probe.features import causal_test, feature_cards, random_weights_sae
from sgu_llm.probe.patching import layer_patch_curve


def prepare_sae(
    target: Any,
    tokenizer: Any,
    train_set: Any,
    probe_args: Any,
    bench: Any,
    target_key: str,
    prompt_format: str,
) -> tuple[Any, dict[str, float]]:
    """The probe's SAE: a given sae-lens folder/release, or one trained on the target's activations (cached)."""
    rows = prepare_qa_dataset(train_set, tokenizer, "SAE", prompt_format=prompt_format).to_list()

    def activations() -> Any:
        return collect_activations(target, rows, probe_args.sae_hook_name, tokenizer.pad_token_id)[0]

    if probe_args.sae_path:
        sae = load_sae(probe_args.sae_path, probe_args.sae_id).eval()
        return sae, sae_quality(sae, activations())
    key = fingerprint(
        {
            "target": target_key,
            "hook": probe_args.sae_hook_name,
            "expansion": probe_args.sae_expansion,
            "l1": probe_args.sae_l1_coefficient,
            "epochs": probe_args.sae_epochs,
            "format": 1,
        }
    )
    return cached_sae(os.path.join(bench.cache_dir, "saes", key[:16]), activations,
                      expansion=probe_args.sae_expansion, l1_coefficient=probe_args.sae_l1_coefficient,
                      epochs=probe_args.sae_epochs, hook_name=probe_args.sae_hook_name)


def largest_forget_drops(features: list[dict], k: int) -> list[int]:
    """The `k` probed features whose mean forget activation fell most, relative to its start (drops only)."""
    drops = []
    for f in features:
        first, last = f["steps"][0]["forget_mean_act"], f["steps"][-1]["forget_mean_act"]
        if first > 0 and last < first:
            drops.append(((first - last) / first, f["feature"]))
    return [feature for _, feature in sorted(drops, reverse=True)[:k]]


def probe_report(
    probe: Any,
    target: Any,
    tokenizer: Any,
    forget_rows: list[dict],
    retain_rows: list[dict],
    probe_args: Any,
    quality: dict,
    *,
    actions: list | None = None,
    train_seconds: float | None = None,
    other_seconds: float = 0.0,
) -> dict[str, Any]:
    """The probe's JSON (`sgu-llm run` and `sgu-llm probe`): feature states and per-step statistics, the top
    contexts of the removed features, SGU actions, the probe's cost and the causal check on the target."""
    out = probe.to_json()
    for f in out["features"]:
        if f["state"] in ("pruned", "reversed"):
            f["contexts"] = probe.top_contexts(f["feature"])
    # The features unlearning switched off on the forget set: pruned, and reversed (pushed past zero). When
    # none reached those states, the check clamps the features whose forget activation fell most instead
    # (and says so): the effect of what unlearning reduced, not of what it removed.
    removed = [f["feature"] for f in out["features"] if f["state"] in ("pruned", "reversed")]
    clamped_from = "removed"
    if not removed:
        removed, clamped_from = largest_forget_drops(out["features"], probe_args.causal_fallback_features), "largest_drop"
    start = probe.history[0]
    causal = causal_check(
        target,
        probe.sae,
        probe.hook_name,
        tokenizer.pad_token_id,
        forget_rows,
        retain_rows,
        removed,
        (start["forget"].freq + start["retain"].freq) / 2,
        exclude=out["selected"],
        draws=probe_args.causal_random_draws,
        scales=tuple(probe_args.causal_scales),
    )
    without = (
        float("nan") if train_seconds is None else max(train_seconds - probe.seconds - other_seconds, 1e-9)
    )
    out.update(
        {
            "hf_module": resolve_hook(target, probe.hook_name)[2],
            "sae_quality": quality,
            "actions": actions or [],
            "unlearn_seconds_without_probe": without,
            "probe_share": probe.seconds / without,
            "causal": {**causal, "clamped_from": clamped_from},
            "causal_random_draws": probe_args.causal_random_draws,
        }
    )
    return out


def probe_pair(
    before: Any,
    after: Any,
    tokenizer: Any,
    data: dict,
    probe_args: Any,
    bench: Any,
    target_key: str,
    prompt_format: str,
) -> dict[str, Any]:
    """Probe one before/after pair without training (`sgu-llm probe`, the sweep's probe stage): the SAE of
    `before` (given or trained, cached under `target_key`), feature states from `before` to `after` on the
    first `probe_examples` forget and retain rows, and the causal check on `before` (`probe_report`)."""
    sae, quality = prepare_sae(before, tokenizer, training_sets(data)["target"], probe_args, bench, target_key, prompt_format)
    n = probe_args.probe_examples
    forget, retain = probe_rows(data, tokenizer, prompt_format)
    probe = SAEProbe(sae, probe_args.sae_hook_name, tokenizer, forget[:n], retain[:n], probe_args)
    probe.measure(before, 0)
    probe.measure(after, 1)
    return probe_report(probe, before, tokenizer, forget, retain, probe_args, quality)


def attach_probe(
    trainer: Any,
    models: dict,
    tokenizer: Any,
    data: dict,
    metas: dict,
    model_args: Any,
    bench: Any,
    probe_args: Any,
    prompt_format: str,
) -> tuple[Any, dict]:
    """Train (or load) the SAE on the target's activations and attach the probe: (callback, SAE quality)."""
    target_key = metas.get("target", {}).get("key", model_args.model_name_or_path)
    sae, quality = prepare_sae(
        models["target"],
        tokenizer,
        training_sets(data)["target"],
        probe_args,
        bench,
        target_key,
        prompt_format,
    )
    pairs, n = trainer.train_dataset, probe_args.probe_examples
    probe = SAEProbe(
        sae,
        probe_args.sae_hook_name,
        tokenizer,
        pairs.forget.select(range(min(n, len(pairs.forget)))).to_list(),
        pairs.retain.select(range(min(n, len(pairs.retain)))).to_list(),
        probe_args,
    )
    return SAEProbeCallback(probe, probe_args.probe_every).attach(trainer), quality




def merged(model: Any) -> Any:
    """The model as plain weights: a merged copy of a PEFT model, else the model itself."""
    return copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model


def evidence_layer(curve: dict[str, Any], allowed: list[int] | None) -> tuple[int, str]:
    """The layer the evidence's SAE sits at: among the `allowed` layers (all when None), the one whose patch adds
    most to the forget fraction over the layer below it; and the sentence that says so.

    Example:
        >>> evidence_layer({"layers": [0, 1, 2], "forget_fraction": [0.1, 0.7, 1.0]}, None)[0]
        1
        >>> evidence_layer({"layers": [0, 1, 2], "forget_fraction": [0.1, 0.7, 1.0]}, [0, 2])[0]
        2
    """
    layers = [la for la in curve["layers"] if allowed is None or la in allowed]
    if not layers:
        raise ValueError(f"evidence_layers {allowed} holds none of the model's layers {curve['layers']}")
    frac = dict(zip(curve["layers"], curve["forget_fraction"]))
    rise = {la: frac[la] - frac.get(la - 1, 0.0) for la in layers}
    finite = [la for la in layers if rise[la] == rise[la]]
    if not finite:
        return layers[-1], f"the models do not differ on forget rows; layer {layers[-1]} (the last allowed) by default"
    best = max(finite, key=lambda la: (rise[la], -la))
    return best, (f"layer {best}: the patching curve rises most there ({rise[best]:+.3f} of the forget NLL change "
                  f"over the layer below) among layers {layers[0]}-{layers[-1]}")


def summarise_evidence(trained: dict[str, Any], random_sae: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per k: what the selected features reproduce on held-out forget rows, against both controls."""
    out = []
    for k, entry in trained["by_k"].items():
        rnd = random_sae["by_k"].get(k, {})
        out.append({
            "k": int(k),
            "fraction_of_layer_patch": entry["fraction_of_layer_patch"],
            "p_random": entry["p_random"],
            "random_sets_fraction": entry["random_fraction_mean"],
            "random_sae_fraction": rnd.get("fraction_of_layer_patch", float("nan")),
            "random_sae_p_random": rnd.get("p_random", float("nan")),
            "retain_side_effect": entry["retain_side_effect"],
            "null_overlap": entry.get("null_overlap", float("nan")),
            "reconstruction_forget_rise": entry["error_term"]["reconstruction_forget_rise"],
            "forget_rise": entry["forget_rise"],
            "clamp": {s: {"selectivity": c["selectivity"], "p_random": c["p_random"],
                          "retain_side_effect": c["retain_side_effect"]} for s, c in entry["clamp"].items()},
        })
    return out


def evidence_bar(row: dict[str, Any], k: int = 20, draws: int = 99) -> list[tuple[str, str]]:
    """The criteria of the issue's bar that `row` (one k of `summarise_evidence`) misses, each as (a short label,
    the sentence): at least half the whole-layer patch, p <= 0.01, above the random-weights SAE, a retain side
    effect at most a quarter."""
    frac, p, rnd, side = (row["fraction_of_layer_patch"], row["p_random"], row["random_sae_fraction"],
                          row["retain_side_effect"])
    failed = []
    if not frac >= 0.5:
        failed.append(("fraction < 0.5", f"they reproduce {frac:.2f} of the whole-layer patch (< 0.5)"))
    if not p <= 0.01:
        failed.append(("p > 0.01", f"p {p:.2g} against matched random sets "
                       f"(> 0.01{'; 99 draws are needed for 0.01' if draws < 99 else ''})"))
    if not frac > rnd:
        failed.append(("random-weights SAE as high", f"a random-weights SAE's top {k} reproduce as much ({rnd:.2f})"))
    if not abs(side) <= 0.25:
        failed.append(("retain side effect > 0.25", f"the retain side effect is {side:.2f} of the forget effect (> 0.25)"))
    return failed


def verdict(rows: list[dict[str, Any]], k: int = 20, draws: int = 99) -> str:
    """The one sentence the evidence supports, at `k` features (`evidence_bar`)."""
    row = next((r for r in rows if r["k"] == k), None)
    if row is None:
        return f"no causal test at k = {k}"
    failed = evidence_bar(row, k, draws)
    if not failed:
        return (f"The {k} selected features carry the unlearning at this layer: {row['fraction_of_layer_patch']:.2f} "
                f"of the whole-layer patch on held-out forget rows (p {row['p_random']:.2g}), above a random-weights "
                f"SAE's {row['random_sae_fraction']:.2f}, with a retain side effect of {row['retain_side_effect']:.2f}.")
    return (f"The evidence does not support that {k} SAE features carry the unlearning: "
            + "; ".join(sentence for _, sentence in failed) + ".")


def probe_rows(data: dict, tokenizer: Any, prompt_format: str) -> tuple[list[dict], list[dict]]:
    """Every forget row and the first 100 retain rows, tokenised: the rows the probe's checks score."""
    fmt = {"prompt_format": prompt_format}
    forget = prepare_qa_dataset(data["forget"], tokenizer, "forget", **fmt).to_list()
    retain = prepare_qa_dataset(data["retain"].select(range(min(100, len(data["retain"])))), tokenizer, "retain", **fmt)
    return forget, retain.to_list()


def probe_evidence(
    target: Any,
    unlearned: Any,
    tokenizer: Any,
    data: dict,
    probe_args: Any,
    bench: Any,
    target_key: str,
    prompt_format: str,
    *,
    null: Any | None = None,
) -> dict[str, Any]:
    """Where unlearning acts and which SAE features carry it (`probe_args.evidence`; docs/probe.md).

    1. The per-layer patching curve on every forget row and 100 retain rows (`layer_patch_curve`).
    2. The SAE (trained on the target, cached) at the layer where the forget curve rises most among
       `evidence_layers`, features ranked by net attribution on the even rows (net of the `null` model's
       when given).
    3. The causal test on the odd rows: patch / clamp the top k against matched random sets, and the same
       procedure through a random-weights SAE of the same shape.
    """
    forget, retain = probe_rows(data, tokenizer, prompt_format)
    pad = tokenizer.pad_token_id
    allowed = probe_args.evidence_layers
    n_layers = len(decoder_layers(target))
    if allowed is not None and max(allowed) >= n_layers:
        raise ValueError(f"evidence_layers {allowed} reach past the model's {n_layers} decoder layers (0..{n_layers - 1})")
    curve = layer_patch_curve(target, unlearned, forget, retain, pad)
    layer, why = evidence_layer(curve, allowed)
    hook = f"blocks.{layer}.hook_resid_post"
    args = dataclasses.replace(probe_args, sae_hook_name=hook)
    sae, quality = prepare_sae(target, tokenizer, training_sets(data)["target"], args, bench, target_key, prompt_format)
    select = {"forget": forget[0::2], "retain": retain[0::2]}
    test = {"forget": forget[1::2], "retain": retain[1::2]}
    ks = tuple(probe_args.evidence_ks)
    trained = causal_test(target, unlearned, sae, hook, select, test, pad, null=null, ks=ks,
                          scales=tuple(probe_args.evidence_scales), draws=probe_args.evidence_draws,
                          clamp_draws=min(probe_args.evidence_clamp_draws, probe_args.evidence_draws))
    # the control needs its patch fraction (the bar) and a p of its own: fewer draws, no clamps
    random_sae = causal_test(target, unlearned, random_weights_sae(sae, seed=1), hook, select, test, pad, null=null,
                             ks=ks, scales=(), draws=min(probe_args.evidence_clamp_draws, probe_args.evidence_draws))
    rows = summarise_evidence(trained, random_sae)
    top = trained["ranked"][: min(10, max(probe_args.evidence_ks))]
    cards = feature_cards(target, unlearned, sae, hook, select, tokenizer, top, null=null)
    net = trained["net_attribution"]
    null_net = trained["null_net_attribution"] or [0.0] * len(net)
    effect = {f: i for i, f in enumerate(top)}
    for card in cards:
        f = card["feature"]
        card.update(net_attribution=net[f], null_net_attribution=null_net[f], rank=effect[f] + 1)
    return {
        "curve": curve,
        "layer": layer,
        "layer_reason": why,
        "hook_name": hook,
        "sae_quality": quality,
        "null": null is not None,
        "rows": rows,
        "cards": cards,
        "verdict": verdict(rows, 20 if 20 in probe_args.evidence_ks else probe_args.evidence_ks[0],
                           probe_args.evidence_draws),
        "trained_sae": {k: v for k, v in trained.items() if k not in ("attribution",)},
        "random_sae": {k: v for k, v in random_sae.items() if k not in ("attribution", "net_attribution",
                                                                           "null_net_attribution")},
    }
