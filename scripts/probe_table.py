"""The probe's evidence over model seeds: `docs/probe.json` and the table in `docs/probe.md`.

For every model seed, one `sgu-llm run` of the recipe with the probe's evidence on (`evidence: true`: the
per-layer patching curve, attribution-ranked SAE features at the layer where it rises most, their causal test on
held-out forget rows against matched random sets and a random-weights SAE, net of a retain-only null run), then
one entry per seed and k in the JSON (entries of other models are kept) and the markdown table:

    python scripts/probe_table.py --recipe recipes/tiny-tofu/sgu.yaml --model tiny-llama --seeds 0 1 2 3 4
    python scripts/probe_table.py --recipe recipes/smollm2-135m/gru_calibrated.yaml --model smollm2-135m-instruct \
        --seeds 0 1 2 -- --evidence_layers 22 23 24 25 26 27 28 29

A seed whose run folder already holds the evidence is read, not rerun (`--rerun` reruns it). Arguments after
`--` override recipe fields for every seed. `--probe_only` skips what the evidence does not read (the retain and
noise-floor models, every evaluation): the same unlearned model, null and evidence at a fraction of the cost.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from sgu_llm.core.files import write_json
from sgu_llm.experiments.config import load_recipe, parse_fields
from sgu_llm.experiments.probing import evidence_bar
from sgu_llm.experiments.run import evidence_only, run_benchmark

KEEP = ("fraction_of_layer_patch", "p_random", "random_sae_fraction", "random_sets_fraction", "retain_side_effect",
        "null_overlap", "reconstruction_forget_rise", "forget_rise", "random_sae_p_random")


def run_seed(recipe: str, seed: int, out: str, extra: list[str], probe_only: bool = False) -> dict:
    """The run's probe.json (its evidence) for model seed `seed`, from `out` when already there."""
    path = os.path.join(out, "probe.json")
    args = ["--output_dir", out, "--overwrite_output_dir", "true", "--model_seed", str(seed),
            "--noise_floor_seed", str(seed + 1), "--seed", str(seed), "--evidence", "true", *extra]
    start = time.perf_counter()
    if probe_only:
        found = evidence_only(parse_fields(load_recipe(recipe), args))
        found["evidence"]["seconds"] = {"run": time.perf_counter() - start, **found["timings"], "probe_only": True}
        write_json(path, {"evidence": found["evidence"]}, indent=None)
        return {"evidence": found["evidence"]}
    run_benchmark(parse_fields(load_recipe(recipe), args))
    with open(path) as fh:
        probe = json.load(fh)
    with open(os.path.join(out, "metrics.json")) as fh:
        timings = json.load(fh).get("timings", {})
    probe["evidence"]["seconds"] = {"run": time.perf_counter() - start, **timings}
    write_json(path, probe, indent=None)
    return probe


def entries(model: str, method: str, seed: int, evidence: dict) -> list[dict]:
    base = {"model": model, "method": method, "seed": seed, "layer": evidence["layer"],
            "hook_name": evidence["hook_name"], "null": evidence["null"],
            "draws": evidence["trained_sae"]["draws"], "clamp_draws": evidence["trained_sae"].get("clamp_draws"),
            "verdict": evidence["verdict"],
            "sae_explained_variance": evidence["sae_quality"].get("explained_variance"),
            "seconds": evidence.get("seconds", {})}
    return [{**base, "k": r["k"], **{k: r[k] for k in KEEP}, "clamp": r["clamp"]} for r in evidence["rows"]]


def fmt(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def markdown(all_entries: list[dict], model: str) -> str:
    mine = sorted((e for e in all_entries if e["model"] == model), key=lambda e: (e["seed"], e["k"]))
    lines = [f"`{model}` (`{mine[0]['method']}`), {mine[0]['draws']} matched random sets, held-out forget rows:", "",
             "| seed | layer | k | fraction of layer patch | p (random sets) | random sets' fraction | random-weights SAE's "
             "fraction | retain side effect | null overlap | bar at k = 20 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    met = 0
    seeds = sorted({e["seed"] for e in mine})
    for e in mine:
        bar = ""
        if e["k"] == 20:
            failed = evidence_bar(e)
            met += not failed
            bar = ", ".join(short for short, _ in failed) or "**met**"
        lines.append(f"| {e['seed']} | {e['layer']} | {e['k']} | {fmt(e['fraction_of_layer_patch'])} | "
                     f"{fmt(e['p_random'])} | {fmt(e['random_sets_fraction'])} | {fmt(e['random_sae_fraction'])} | "
                     f"{fmt(e['retain_side_effect'])} | {fmt(e['null_overlap'])} | {bar} |")
    lines += ["", f"The bar at k = 20 is met on {met} of {len(seeds)} seeds."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", required=True, help="The run's recipe (its method is the one probed).")
    ap.add_argument("--model", required=True, help="The model's name in the table and the JSON.")
    ap.add_argument("--seeds", type=int, nargs="+", required=True, help="Model seeds.")
    ap.add_argument("--runs", default="results/probe-evidence",
                    help="Where the runs go (one folder per model and seed; their probe.json files are committed, as the "
                    "sweeps' records are, so the table rebuilds without rerunning a seed).")
    ap.add_argument("--json", default="docs/probe.json", help="The JSON the entries are merged into.")
    ap.add_argument("--rerun", action="store_true", help="Rerun seeds whose evidence is on disk.")
    ap.add_argument("--probe_only", action="store_true",
                    help="Only what the evidence reads: the target, unlearning, the null and the evidence (no retain or "
                    "noise-floor model, no evaluation; on SmolLM2 one fine-tuning a seed instead of two or three).")
    args = ap.parse_args(argv)
    cfg = load_recipe(args.recipe)
    label = str(cfg.get("method", "sgu"))
    if label == "sgu":
        label = f"{cfg.get('selective_function', 'sgu')} over {cfg.get('forget_loss', 'nll')}"
    found = []
    for seed in args.seeds:
        out = os.path.join(args.runs, args.model, f"seed{seed}")
        path = os.path.join(out, "probe.json")
        probe = None
        if os.path.exists(path) and not args.rerun:
            with open(path) as fh:
                probe = json.load(fh)
        if not probe or "evidence" not in probe:
            probe = run_seed(args.recipe, seed, out, extra, args.probe_only)
        found += entries(args.model, label, seed, probe["evidence"])
        print(f"[probe_table] {args.model} seed {seed}: {probe['evidence']['verdict']}", flush=True)
    old = {"entries": []}
    if os.path.exists(args.json):
        with open(args.json) as fh:
            old = json.load(fh)
    kept = [e for e in old["entries"] if e["model"] != args.model]
    commands = {**old.get("commands", {}),
                args.model: "python scripts/probe_table.py " + " ".join(argv + (["--", *extra] if extra else []))}
    write_json(args.json, {"entries": kept + found, "commands": commands})
    print(markdown(kept + found, args.model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
