"""Token accuracy and sequence exact match over labelled positions.

Self-contained (``evaluate`` copies the file alone), loaded by path: ``sdapm_hf.metrics.load_metric("token_accuracy")``.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = (
    "Share of labelled positions (label != ignore_index) whose predicted token equals the label, and share of "
    "sequences whose labelled positions are all right."
)
_INPUTS = """
Args:
    predictions: per sequence, the predicted token at each position (list of int).
    references: per sequence, the label at each position, ``ignore_index`` where nothing is scored.
    ignore_index: label of unscored positions (default -100).
Returns:
    token_accuracy (nan without scored positions), exact_match (share of sequences all right), scored (positions),
    sequences.
"""


class TokenAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")),
                 "references": datasets.Sequence(datasets.Value("int64"))}
            ),
        )

    def _compute(self, predictions, references, ignore_index: int = -100):
        hits = scored = exact = 0
        for predicted, label in zip(predictions, references):
            predicted, label = np.asarray(predicted), np.asarray(label)
            if predicted.shape != label.shape:
                raise ValueError(f"a prediction of length {predicted.size} for a reference of length {label.size}")
            keep = label != ignore_index
            right = predicted[keep] == label[keep]
            hits, scored, exact = hits + int(right.sum()), scored + int(keep.sum()), exact + bool(right.all())
        return {
            "token_accuracy": hits / scored if scored else float("nan"),
            "exact_match": exact / len(references) if references else float("nan"),
            "scored": scored,
            "sequences": len(references),
        }
