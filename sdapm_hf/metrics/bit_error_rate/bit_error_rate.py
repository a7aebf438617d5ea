"""Bit error rate of binary vectors: the share of bits predicted wrong (the DNC papers' copy-task measure).

Self-contained (``evaluate`` copies the file alone), loaded by path: ``sdapm_hf.metrics.load_metric("bit_error_rate")``.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Share of wrong bits between predicted and target binary vectors (values are thresholded at 0.5)."
_INPUTS = """
Args:
    predictions: per example, the predicted bits or probabilities (list of float).
    references: per example, the target bits (list of 0/1).
Returns:
    bit_error_rate (float in [0, 1]), bits (int), bit_errors_per_sequence (float, the DNC papers' figure).
"""


class BitErrorRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")),
                 "references": datasets.Sequence(datasets.Value("int8"))}
            ),
        )

    def _compute(self, predictions, references):
        errors = bits = 0
        for predicted, target in zip(predictions, references):
            predicted, target = np.asarray(predicted) >= 0.5, np.asarray(target).astype(bool)
            if predicted.shape != target.shape:
                raise ValueError(f"{predicted.size} predicted bits for {target.size} target bits")
            errors += int((predicted != target).sum())
            bits += target.size
        return {
            "bit_error_rate": errors / bits if bits else float("nan"),
            "bits": bits,
            "bit_errors_per_sequence": errors / len(references) if references else float("nan"),
        }
