"""How far each test's outcome sits from its bound, under each kernel set: the margins the tests recorded.

Run the tests with `SGU_LLM_MARGINS=FILE` (the `margin` fixture of `tests/conftest.py` appends one JSON line per
checked bound), once per kernel set, then:

    python scripts/compare_margins.py native.jsonl avx2.jsonl [--tight 1.5]

prints one row per check: the bound, the value under each file's kernel set, how much the value moved between
them, and the room (the smallest ratio of value to bound, or bound to value for an upper bound, over the
sets; under `--tight` it is marked). Exits non-zero if a check failed in any file.
"""

from __future__ import annotations

import argparse
import json
import sys


def load(path: str) -> dict[tuple[str, str], dict]:
    out = {}
    with open(path) as fh:
        for line in fh:
            r = json.loads(line)
            out[(r["test"], r["name"])] = r
    return out


def passed(r: dict) -> bool:
    v, b = r["value"], r["bound"]
    return v > b if r["op"] == ">" else v < b if r["op"] == "<" else v <= b


def room(r: dict) -> float:
    """Value over bound for a lower bound, bound over value for an upper one (inf where the other is 0)."""
    v, b = r["value"], r["bound"]
    num, den = (v, b) if r["op"] == ">" else (b, v)
    if den <= 0:
        return float("inf") if num > 0 else 0.0
    return num / den


def label(records: dict) -> str:
    r = next(iter(records.values()))
    return r["forced"] or r["capability"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--tight", type=float, default=1.5, help="mark rows whose room is below this ratio")
    args = parser.parse_args()
    sets = [load(f) for f in args.files]
    names = [label(s) if s else f for s, f in zip(sets, args.files)]
    keys = [k for k in sets[0]] + [k for s in sets[1:] for k in s if k not in sets[0]]
    print("| test | check | bound | " + " | ".join(names) + " | moved | room |")
    print("|---" * (len(names) + 5) + "|")
    failed = False
    for key in keys:
        rows = [s.get(key) for s in sets]
        present = [r for r in rows if r is not None]
        ref = present[0]
        values = [f"{r['value']:.4g}" + ("" if passed(r) else " FAIL") if r else "-" for r in rows]
        failed |= not all(passed(r) for r in present)
        moved = max(r["value"] for r in present) - min(r["value"] for r in present)
        least = min(room(r) for r in present)
        mark = " (tight)" if least < args.tight else ""
        print(
            f"| {key[0].split('::', 1)[-1]} | {key[1]} | {ref['op']} {ref['bound']:.4g} | " + " | ".join(values)
            + f" | {moved:.3g} | {least:.3g}{mark} |"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
