"""'I don't know' answers for IdkNLL and IdkDPO: a shipped list (`idk_answers.txt`) or a user's file."""

from __future__ import annotations

import os
import random

SHIPPED = os.path.join(os.path.dirname(__file__), "idk_answers.txt")


def idk_answers(path: str | None = None) -> list[str]:
    """The non-empty lines of `path` (default: the shipped list of 20 phrasings).

    Example:
        >>> idk_answers()[0]
        "I don't know."
    """
    with open(path or SHIPPED) as fh:
        answers = [line.strip() for line in fh if line.strip()]
    if not answers:
        raise ValueError(f"{path!r} holds no 'I don't know' answer (one per line)")
    return answers


def assign_idk(num_rows: int, answers: list[str], seed: int) -> list[str]:
    """One answer per row, drawn with `seed` (the same rows and seed give the same answers).

    Example:
        >>> assign_idk(3, ["a", "b"], seed=0) == assign_idk(3, ["a", "b"], seed=0)
        True
    """
    rng = random.Random(seed)
    return [rng.choice(answers) for _ in range(num_rows)]
