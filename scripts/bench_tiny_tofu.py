"""Run every `recipes/tiny-tofu/*.yaml` method on the embedded benchmark and print a comparison table.

    python scripts/bench_tiny_tofu.py --output_dir runs/bench-tiny-tofu

Models are cached (SGU_LLM_CACHE or ~/.cache/sgu-llm): the first method trains them, the rest reuse them.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = (
    "forget_quality",
    "model_utility",
    "forget_prob",
    "forget_rouge",
    "retain_prob",
    "retain_rouge",
    "privleak",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", default="runs/bench-tiny-tofu")
    parser.add_argument("--methods", nargs="*", default=None, help="recipe names (default: all)")
    args = parser.parse_args()
    recipes = sorted(glob.glob(os.path.join(ROOT, "recipes", "tiny-tofu", "*.yaml")))
    if args.methods:
        recipes = [r for r in recipes if os.path.basename(r)[:-5] in args.methods]
    rows = {}
    for recipe in recipes:
        name = os.path.basename(recipe)[:-5]
        out = os.path.join(args.output_dir, name)
        cmd = [
            sys.executable,
            "-m",
            "sgu_llm.cli",
            "run",
            recipe,
            "--output_dir",
            out,
            "--overwrite_output_dir",
            "true",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        with open(os.path.join(out, "metrics.json")) as fh:
            rows[name] = json.load(fh)
        print(proc.stdout.strip().splitlines()[-1], file=sys.stderr)
    first = next(iter(rows.values()))
    table = ["| model | " + " | ".join(COLUMNS) + " | unlearn s |", "|---" * (len(COLUMNS) + 2) + "|"]

    def line(label, agg, seconds=None):
        cells = [f"{agg.get(c):.3g}" if isinstance(agg.get(c), float) else "–" for c in COLUMNS]
        return f"| {label} | " + " | ".join(cells) + f" | {'' if seconds is None else f'{seconds:.0f}'} |"

    for ref in ("target", "retain", "noise_floor"):
        table.append(line(ref + " model", first[ref]))
    for name, m in rows.items():
        table.append(line(f"`{name}`", m["unlearned"], m["timings"]["unlearn"]))
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
