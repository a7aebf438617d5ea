"""Self-contained ``evaluate`` metric modules, loaded by path (the Hub cannot be reached from here).

    >>> metric = load_metric("token_accuracy")
    >>> metric.compute(predictions=[[1, 2, 3]], references=[[-100, 2, 4]])["token_accuracy"]
    0.5
"""

from __future__ import annotations

from pathlib import Path

import evaluate
import numpy as np

METRICS = ("token_accuracy", "bit_error_rate", "accuracy_by_distance")  # token_accuracy also gives exact_match


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """The metric module ``name`` (one of ``METRICS``) loaded from this package by path."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; the metrics shipped are {METRICS}")
    return evaluate.load(str(Path(__file__).parent / name / f"{name}.py"), **kwargs)


def causal_lm_metrics(prediction) -> dict[str, float]:
    """``Trainer``'s ``compute_metrics`` for next-token tasks, with
    ``preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1)``: predictions at position t are scored
    against the labels at t + 1 (padding of either side is -100)."""
    predicted, labels = np.asarray(prediction.predictions)[:, :-1], np.asarray(prediction.label_ids)[:, 1:]
    result = load_metric("token_accuracy").compute(predictions=predicted.tolist(), references=labels.tolist())
    return {"token_accuracy": result["token_accuracy"], "exact_match": result["exact_match"]}
