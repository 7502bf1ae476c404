"""Evaluation: TOFU metrics (pure functions) and the suite that scores a model."""

from sgu_llm.evaluation.nll import answer_nll
from sgu_llm.evaluation.suite import check_tokenizer_matches, evaluate_model

__all__ = ["answer_nll", "check_tokenizer_matches", "evaluate_model"]
