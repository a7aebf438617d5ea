"""Accuracy by distance for long-context tasks: accuracy of answers grouped by how far back their evidence lies.

Self-contained (``evaluate`` copies the file alone), loaded by path:
``sdapm_hf.metrics.load_metric("accuracy_by_distance")``.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy per bucket of evidence distance (tokens between the evidence and the question)."
_INPUTS = """
Args:
    predictions: the predicted answer of each example (int).
    references: the true answer of each example (int).
    distances: tokens from the evidence to the question, per example (int).
    bucket_edges: ascending upper edges of the buckets (default: powers of two up to the largest distance).
Returns:
    accuracy (overall), and per bucket ``accuracy@<=E`` with ``count@<=E``.
"""


class AccuracyByDistance(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64"),
                 "distances": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, distances, bucket_edges=None):
        hits = np.asarray(predictions) == np.asarray(references)
        distances = np.asarray(distances)
        if bucket_edges is None:
            top = max(int(distances.max(initial=1)), 1)
            bucket_edges = [2**k for k in range(int(np.ceil(np.log2(top))) + 1)]
        if list(bucket_edges) != sorted(bucket_edges):
            raise ValueError(f"bucket_edges must ascend, got {bucket_edges}")
        result = {"accuracy": float(hits.mean()) if hits.size else float("nan")}
        low = -np.inf
        for edge in bucket_edges:
            inside = (distances > low) & (distances <= edge)
            result[f"count@<={edge}"] = int(inside.sum())
            result[f"accuracy@<={edge}"] = float(hits[inside].mean()) if inside.any() else float("nan")
            low = edge
        return result
