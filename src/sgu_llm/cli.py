"""The `sgu-llm` command.

sgu-llm unlearn --config recipes/tiny-llama/sgu.yaml --output_dir runs/tiny-sgu
sgu-llm methods
"""

from __future__ import annotations

import sys

USAGE = """usage: sgu-llm <command> [options]

commands:
  unlearn   unlearn a forget set with a method and a recipe (sgu-llm unlearn --help lists every field)
  methods   list the registered unlearning methods and selective functions
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
    if command == "methods":
        from sgu_llm.selection import list_selective_functions
        from sgu_llm.trainers import list_methods

        print("methods:", ", ".join(list_methods()))
        print("selective functions:", ", ".join(list_selective_functions()))
        return 0
    print(f"sgu-llm: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
