"""Copy the benchmark models a sweep's forget10 seeds use from the cache into the package (`sgu_llm/models/shipped`),
with their recorded weights fingerprints, so a fresh clone reproduces the stored results without fine-tuning.

    python scripts/ship_models.py recipes/sweeps/tiny-tofu.yaml [--split forget10]

Each model is fine-tuned first if the cache lacks it (the same models `sgu-llm sweep` trains), and must match
the weights recorded in the sweep's baselines.json for its seed, so what is shipped is what the rows used.
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
from sgu_llm.experiments.sweep import load_sweep
from sgu_llm.experiments.sweep.runner import run_recipe
from sgu_llm.models.benchmark import META_FILE, SHIPPED_DIR, benchmark_models

KEEP = ("config.json", "generation_config.json", "model.safetensors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep")
    ap.add_argument("--split", default="forget10")
    a = ap.parse_args()
    cfg = load_sweep(a.sweep)
    shipped = 0
    for seed in cfg.splits[a.split]:
        recipe = run_recipe(cfg, a.split, seed, next(iter(cfg.methods)), (1e-3, ()), tempfile.gettempdir())
        recipe.bench.use_shipped = False  # the cache (or a fine-tuning), never the copy being replaced
        data = load_benchmark_data(recipe.script)
        _, models, metas = benchmark_models(data, recipe.bench, prompt_format=recipe.config.prompt_format)
        with open(os.path.join(cfg.output_dir, a.split, f"seed{seed}", "baselines.json")) as fh:
            recorded = {role: m["weights"] for role, m in json.load(fh)["meta"].items()}
        for role, model in models.items():
            meta, weights = metas[role], weights_fingerprint(model)
            if weights != recorded[role]:
                raise SystemExit(f"seed {seed} {role}: weights {weights} are not the recorded {recorded[role]}")
            key, train_role = meta["key"], meta["material"]["role"]
            source = os.path.join(recipe.bench.cache_dir, "models", f"{train_role}-{key[:16]}")
            target = os.path.join(SHIPPED_DIR, f"{train_role}-{key[:16]}")

            def save(folder: str, source: str = source, meta: dict = meta, weights: str = weights) -> None:
                for name in KEEP:
                    if os.path.exists(os.path.join(source, name)):
                        shutil.copy(os.path.join(source, name), folder)
                with open(os.path.join(folder, META_FILE), "w") as fh:
                    json.dump({**meta, "weights": weights}, fh, indent=2)

            atomic_dir(target, save)
            shipped += 1
            print(f"seed {seed} {role}: {target} (weights {weights})")
    print(f"{shipped} entries written (models shared between seeds are written once per use)")


if __name__ == "__main__":
    main()
