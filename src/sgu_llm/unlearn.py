"""`python -m sgu_llm.unlearn` and `accelerate launch -m sgu_llm.unlearn`: the `sgu-llm unlearn` command."""

from __future__ import annotations

import sys

from sgu_llm.cli import main

if __name__ == "__main__":
    sys.exit(main(["unlearn", *sys.argv[1:]]))
