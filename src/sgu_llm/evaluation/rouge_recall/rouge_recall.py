"""ROUGE-L recall as an `evaluate` metric module, shipped inside sgu_llm.

`evaluate.load("rouge")` fetches its script from the Hub; this module loads from
the package folder instead and computes what the TOFU framework reports:
rouge_score's RougeScorer(["rouge1", "rougeL"], use_stemmer=True), per-example
recall.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = (
    "Per-example ROUGE-1 and ROUGE-L recall of predictions against references (rouge_score, stemmed)."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated strings.
    references: list of ground-truth strings.
Returns:
    rouge1_recall: list of floats, one per example.
    rougeL_recall: list of floats, one per example.
"""


class RougeRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
        scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
        return {
            "rouge1_recall": [s["rouge1"].recall for s in scores],
            "rougeL_recall": [s["rougeL"].recall for s in scores],
        }
