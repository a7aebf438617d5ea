"""Sequence exact match: the share of sequences whose every labelled position is predicted right.

Self-contained (``evaluate`` copies the file alone), loaded by path:
``sdapm_hf.metrics.load_metric("sequence_exact_match")``.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Share of sequences whose labelled positions (label != ignore_index) are all predicted right."
_INPUTS = """
Args:
    predictions: per sequence, the predicted token at each position (list of int).
    references: per sequence, the label at each position, ``ignore_index`` where nothing is scored.
    ignore_index: label of unscored positions (default -100).
Returns:
    exact_match (float in [0, 1]), sequences (int).
"""


class SequenceExactMatch(evaluate.Metric):
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
        exact = 0
        for predicted, label in zip(predictions, references):
            predicted, label = np.asarray(predicted), np.asarray(label)
            if predicted.shape != label.shape:
                raise ValueError(f"a prediction of length {predicted.size} for a reference of length {label.size}")
            keep = label != ignore_index
            exact += bool((predicted[keep] == label[keep]).all())
        return {"exact_match": exact / len(references) if references else float("nan"), "sequences": len(references)}
