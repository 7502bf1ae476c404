"""The `sgu-llm` command: dispatch to a subcommand, and the one place a user error becomes a message.

Every subcommand's `main(argv)` raises `ValueError` for a mistake the user can fix (a bad recipe, a missing
file, an impossible setting); here it is printed as `sgu-llm <command>: error: ...` and the exit status is 2
(`SGU_LLM_DEBUG=1` shows the traceback instead). Subcommands are imported when called, so `--help` is fast.
"""

from __future__ import annotations

import importlib
import os
import sys

USAGE = """usage: sgu-llm <command> [options]

commands:
  run       the embedded benchmark end to end: sgu-llm run recipes/tiny-tofu/sgu.yaml --output_dir DIR
  unlearn   unlearn a forget set with a method and a recipe (sgu-llm unlearn --help lists every field)
  sweep     methods x learning rates x model seeds x splits: sgu-llm sweep recipes/sweeps/tiny-tofu.yaml
  finetune  fine-tune (and cache) the benchmark's target, retain and noise-floor models
  eval      evaluate a saved model on the TOFU sets: sgu-llm eval MODEL_DIR --output eval.json
  probe     SAE probe of a saved before/after pair: sgu-llm probe --before DIR --after DIR --output_dir OUT
  attack    relearning and quantization attacks: sgu-llm attack MODEL_DIR --retain_model DIR --output OUT.json
  vision    SGU on an image classifier (8x8 digits): sgu-llm vision --output docs/vision.md
  methods   list the registered unlearning methods, selective functions and forget objectives
"""

# command -> (module, function), imported when the command runs
COMMANDS = {
    "unlearn": ("sgu_llm.experiments.unlearn", "main"),
    "run": ("sgu_llm.experiments.run", "main"),
    "sweep": ("sgu_llm.experiments.sweep", "main"),
    "finetune": ("sgu_llm.experiments.commands", "finetune_main"),
    "eval": ("sgu_llm.experiments.commands", "eval_main"),
    "probe": ("sgu_llm.experiments.commands", "probe_main"),
    "attack": ("sgu_llm.experiments.commands", "attack_main"),
    "vision": ("sgu_llm.experiments.vision", "main"),
    "methods": ("sgu_llm.cli", "list_registries"),
}


def list_registries(argv: list[str]) -> int:
    """`sgu-llm methods`: every registered method, selective function and forget objective."""
    objectives = importlib.import_module("sgu_llm.objectives")
    selection = importlib.import_module("sgu_llm.selection")
    trainers = importlib.import_module("sgu_llm.trainers")
    print("methods:", ", ".join(trainers.list_methods()))
    print("selective functions:", ", ".join(selection.list_selective_functions()))
    print("forget objectives (forget_loss):", ", ".join(objectives.list_objectives()))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"sgu-llm: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module, function = COMMANDS[command]
    try:
        return getattr(importlib.import_module(module), function)(rest)
    except ValueError as err:  # a user's error: what is wrong and how to fix it, without a traceback
        if os.environ.get("SGU_LLM_DEBUG"):
            raise
        print(f"sgu-llm {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
