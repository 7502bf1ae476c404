"""The SAE probe inside the benchmark run (and `sgu-llm probe`): the SAE (given, or trained on the target's
activations and cached), the probe attached to the trainer, and the probe's report with its causal check."""

from __future__ import annotations

import json
import os
from typing import Any

from sgu_llm.core.cache import fingerprint
from sgu_llm.core.files import atomic_dir, write_json
from sgu_llm.data.benchmark import training_sets
from sgu_llm.data.pairing import prepare_qa_dataset
from sgu_llm.probe import (
    SAEProbe,
    SAEProbeCallback,
    causal_check,
    collect_activations,
    load_sae,
    sae_quality,
    save_sae,
    train_sae,
)
from sgu_llm.probe.hooks import resolve_hook


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
    path = os.path.join(bench.cache_dir, "saes", key[:16])
    quality_file = os.path.join(path, "quality.json")
    if not os.path.exists(os.path.join(path, "cfg.json")):
        acts = activations()
        sae = train_sae(
            acts,
            expansion=probe_args.sae_expansion,
            l1_coefficient=probe_args.sae_l1_coefficient,
            epochs=probe_args.sae_epochs,
            hook_name=probe_args.sae_hook_name,
        ).eval()
        quality = sae_quality(sae, acts)

        def save(folder: str) -> None:
            save_sae(sae, folder)
            write_json(os.path.join(folder, "quality.json"), quality)

        atomic_dir(path, save)
    elif not os.path.exists(quality_file):  # cached before the quality was kept beside it
        write_json(quality_file, sae_quality(load_sae(path).eval(), activations()))
    with open(quality_file) as fh:
        quality = json.load(fh)
    # Loaded through sae-lens' own loader, as a published SAE would be; its quality is read from the cache
    # (measured on the target's activations when it was trained), so a cached run skips those forwards.
    return load_sae(path).eval(), quality


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
    fmt = {"prompt_format": prompt_format}
    forget = prepare_qa_dataset(data["forget"], tokenizer, "forget", **fmt).to_list()
    retain = prepare_qa_dataset(data["retain"].select(range(min(100, len(data["retain"])))), tokenizer, "retain", **fmt)
    retain = retain.to_list()
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


