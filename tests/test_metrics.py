"""The shipped evaluate metric modules, loaded by path offline, alone and through Trainer's compute_metrics."""

import math

import numpy as np
import pytest
from transformers import EvalPrediction

from sdapm_hf.metrics import causal_lm_metrics, load_metric


def test_token_accuracy_and_exact_match_skip_unscored_positions():
    predictions, references = [[1, 2, 3], [4, 5, 6]], [[-100, 2, 4], [-100, 5, 6]]
    assert load_metric("token_accuracy").compute(predictions=predictions, references=references) == {
        "token_accuracy": 0.75, "exact_match": 0.5, "scored": 4, "sequences": 2}


def test_metrics_accumulate_batches():
    metric = load_metric("token_accuracy")
    metric.add_batch(predictions=[[1, 1]], references=[[1, 0]])
    metric.add_batch(predictions=[[2]], references=[[2]])
    assert metric.compute()["token_accuracy"] == pytest.approx(2 / 3)


def test_bit_error_rate_thresholds_probabilities():
    result = load_metric("bit_error_rate").compute(predictions=[[0.9, 0.2, 0.6, 0.4]], references=[[1, 0, 0, 1]])
    assert result == {"bit_error_rate": 0.5, "bits": 4, "bit_errors_per_sequence": 2.0}


def test_accuracy_by_distance_buckets():
    result = load_metric("accuracy_by_distance").compute(
        predictions=[1, 2, 3, 4], references=[1, 2, 0, 0], distances=[1, 3, 100, 500], bucket_edges=[4, 128, 1024]
    )
    assert result["accuracy"] == 0.5 and result["accuracy@<=4"] == 1.0 and result["count@<=4"] == 2
    assert result["accuracy@<=128"] == 0.0 and result["accuracy@<=1024"] == 0.0
    with pytest.raises(ValueError, match="ascend"):
        load_metric("accuracy_by_distance").compute(predictions=[1], references=[1], distances=[1], bucket_edges=[9, 2])


def test_mismatched_lengths_and_unknown_metrics_are_named():
    with pytest.raises(ValueError, match="a prediction of length 2 for a reference of length 3"):
        load_metric("token_accuracy").compute(predictions=[[1, 2]], references=[[1, 2, 3]])
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        load_metric("bleu")


def test_trainer_compute_metrics_scores_the_shifted_labels():
    predictions = np.array([[5, 6, 7, 0], [1, 1, 1, 1]])  # argmax at positions 0..3
    labels = np.array([[-100, 5, 6, 9], [-100, -100, 1, -100]])  # position t predicts labels[t + 1]
    result = causal_lm_metrics(EvalPrediction(predictions=predictions, label_ids=labels))
    assert result["token_accuracy"] == pytest.approx(3 / 4) and result["exact_match"] == 0.5
    assert not math.isnan(result["token_accuracy"])
