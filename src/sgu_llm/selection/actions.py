"""The three things SGU can do with one parameter coordinate."""

from enum import IntEnum


class Action(IntEnum):
    """Per-coordinate unlearning action, stored as int8 codes in selection results.

    Example:
        >>> from sgu_llm.selection import Action
        >>> int(Action.MAINTAIN)
        1
    """

    PRUNE = 0  # update 0: neither learn nor unlearn this coordinate
    MAINTAIN = 1  # follow the retain gradient g_r
    REVERSE = 2  # follow -g_f: ascend the forget loss


ACTION_NAMES: tuple[str, ...] = tuple(a.name.lower() for a in Action)
