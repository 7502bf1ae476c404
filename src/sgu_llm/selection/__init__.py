"""Selection rules: pure tensor functions from (g_r, g_f) to an update and per-coordinate actions."""

from sgu_llm.selection import controls, group, gru, importance, sago, subspace  # noqa: F401  (register their rules)
from sgu_llm.selection.actions import ACTION_NAMES, Action
from sgu_llm.selection.rules import (
    SelectiveFunction,
    get_selective_function,
    list_selective_functions,
    pcgrad,
    register_selective_function,
    sgu_select,
    sign_conflict,
)
from sgu_llm.selection.selector import SelectionSettings, SelectionStats, select_gradients
from sgu_llm.selection.thresholds import (
    MAX_EXACT_QUANTILE,
    THRESHOLD_POPULATIONS,
    THRESHOLD_SCOPES,
    magnitude_thresholds,
    same_sign,
)

__all__ = [
    "ACTION_NAMES",
    "Action",
    "MAX_EXACT_QUANTILE",
    "SelectionSettings",
    "SelectionStats",
    "SelectiveFunction",
    "THRESHOLD_POPULATIONS",
    "THRESHOLD_SCOPES",
    "get_selective_function",
    "list_selective_functions",
    "magnitude_thresholds",
    "pcgrad",
    "register_selective_function",
    "same_sign",
    "select_gradients",
    "sgu_select",
    "sign_conflict",
]
