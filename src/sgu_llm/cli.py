"""The `sgu-llm` command.

sgu-llm unlearn --config recipes/tiny-llama/sgu.yaml --output_dir runs/tiny-sgu
sgu-llm methods
"""

from __future__ import annotations

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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "unlearn":
        from sgu_llm.unlearn import main as unlearn_main

        return unlearn_main(rest)
    if command == "run":
        from sgu_llm.run import main as run_main

        return run_main(rest)
    if command == "sweep":
        from sgu_llm.sweep import main as sweep_main

        return sweep_main(rest)
    if command == "finetune":
        from sgu_llm.commands import finetune_main

        return finetune_main(rest)
    if command == "eval":
        from sgu_llm.commands import eval_main

        return eval_main(rest)
    if command == "probe":
        from sgu_llm.commands import probe_main

        return probe_main(rest)
    if command == "attack":
        from sgu_llm.commands import attack_main

        return attack_main(rest)
    if command == "vision":
        from sgu_llm.vision import main as vision_main

        return vision_main(rest)
    if command == "methods":
        from sgu_llm.objectives import list_objectives
        from sgu_llm.selection import list_selective_functions
        from sgu_llm.trainers import list_methods

        print("methods:", ", ".join(list_methods()))
        print("selective functions:", ", ".join(list_selective_functions()))
        print("forget objectives (forget_loss):", ", ".join(list_objectives()))
        return 0
    print(f"sgu-llm: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
