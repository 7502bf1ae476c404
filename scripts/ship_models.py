"""Copy benchmark models from the cache into the package (`sgu_llm/models/shipped`), with their weights
fingerprints, so a fresh clone finds them instead of fine-tuning (`sgu_llm.models.benchmark`).

    python scripts/ship_models.py --sweep recipes/sweeps/tiny-tofu.yaml [--split forget10]
    python scripts/ship_models.py --recipe recipes/tiny-tofu/sgu.yaml [--replace] [--synthetic_num_authors 40 ...]

A model missing from the cache is fine-tuned first (the same model `sgu-llm finetune` makes). With `--sweep`,
every model of the split's seeds must have the weights recorded in that seed's baselines.json, so what is
shipped is what the stored rows used. With `--recipe`, the recipe's three models (any recipe field can follow).
Models shipped already are kept (`--replace`: rebuilt from the cache or fine-tuned, and replaced).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

from sgu_llm.core.cache import weights_fingerprint
from sgu_llm.core.files import atomic_dir
from sgu_llm.data.benchmark import load_benchmark_data
from sgu_llm.experiments.config import parse_args
from sgu_llm.experiments.sweep import load_sweep
from sgu_llm.experiments.sweep.runner import run_recipe
from sgu_llm.models.benchmark import META_FILE, SHIPPED_DIR, benchmark_models, shipped_weights

KEEP = ("config.json", "generation_config.json", "model.safetensors")


def ship(recipe, recorded: dict | None = None, replace: bool = False) -> None:
    """Ship the recipe's target, retain and noise-floor models (checked against `recorded` weights). A model
    shipped already is kept as it is (it is what the stored rows used), unless `replace`: then every model
    comes from the cache or a fine-tuning and replaces the shipped copy."""
    recipe.bench.use_shipped = not replace
    data = load_benchmark_data(recipe.script)
    _, models, metas = benchmark_models(data, recipe.bench, prompt_format=recipe.config.prompt_format)
    for role, model in models.items():
        meta, weights = metas[role], weights_fingerprint(model)
        if recorded is not None and weights != recorded[role]:
            raise SystemExit(f"{role}: weights {weights} are not the recorded {recorded[role]}")
        key, train_role = meta["key"], meta["material"]["role"]
        source = os.path.join(recipe.bench.cache_dir, "models", f"{train_role}-{key[:16]}")
        target = os.path.join(SHIPPED_DIR, f"{train_role}-{key[:16]}")
        if not replace and shipped_weights(train_role, key) == weights:
            print(f"{role}: {target} (weights {weights}, shipped already)")
            continue

        def save(folder: str, source: str = source, meta: dict = meta, weights: str = weights) -> None:
            for name in KEEP:
                if os.path.exists(os.path.join(source, name)):
                    shutil.copy(os.path.join(source, name), folder)
            with open(os.path.join(folder, META_FILE), "w") as fh:
                json.dump({**meta, "weights": weights, "shipped": True}, fh, indent=2)

        atomic_dir(target, save)
        print(f"{role}: {target} (weights {weights})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep")
    ap.add_argument("--split", default="forget10")
    ap.add_argument("--recipe")
    ap.add_argument("--replace", action="store_true", help="replace models shipped already (from the cache or a "
                    "fine-tuning) instead of keeping them")
    a, rest = ap.parse_known_args()
    if a.sweep:
        cfg = load_sweep(a.sweep)
        for seed in cfg.splits[a.split]:
            with open(os.path.join(cfg.output_dir, a.split, f"seed{seed}", "baselines.json")) as fh:
                recorded = {role: m["weights"] for role, m in json.load(fh)["meta"].items()}
            print(f"seed {seed}:")
            ship(run_recipe(cfg, a.split, seed, next(iter(cfg.methods)), (1e-3, ()), tempfile.gettempdir()), recorded, a.replace)
    if a.recipe:
        ship(parse_args(["--config", a.recipe, "--output_dir", tempfile.gettempdir(), *rest]), replace=a.replace)


if __name__ == "__main__":
    main()
