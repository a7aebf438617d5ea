"""A trained associative-recall run past its exact storage (scripts/recall_past_storage.py)."""

import sys
from pathlib import Path

import pytest

from sdapm_hf.training import ExperimentArguments, train

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import recall_past_storage  # noqa: E402


MODEL = {"hidden_size": 8, "controller_size": 8, "memory_slots": 2, "word_size": 8, "max_rank": 2,
         "consolidation": "auto", "clock_keys": False, "chunk_size": None}


def trained(folder: Path, **model) -> Path:
    train(ExperimentArguments(
        task="mqar", task_args={"vocab_size": 32, "seq_len": 16, "num_kv_pairs": 4, "random_non_queries": False,
                                "train_size": 16, "validation_size": 4, "test_size": 4},
        model={**MODEL, **model}, output_dir=str(folder), max_steps=1, batch_size=4, eval_every=100, save_every=100))
    return folder


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    return trained(tmp_path / "run")


def test_filler_puts_the_asked_writes_before_the_queries(run):
    out = recall_past_storage.past_storage(run, [2.0], test_size=4)
    assert out["exact_storage"] == 2 * (2 + 1) and out["pairs"] == 4
    cases = out["results"]
    assert [(c["filler"], c["consolidation"]) for c in cases] == [
        ("repeated", "auto"), ("repeated", "off"), ("random", "auto"), ("random", "off")]
    # 12 writes before the queries: the 8 pair tokens and 4 of filler; then the 8 query tokens
    assert all(c["writes_before_queries"] == 12 and c["task_args"]["seq_len"] == 20 for c in cases)
    assert all(0 <= c["token_accuracy"] <= 1 for c in cases)
    with pytest.raises(ValueError, match="exceed"):
        recall_past_storage.past_storage(run, [1.0], test_size=4)  # 6 writes cannot hold the 8 pair tokens


def test_a_memory_without_consolidation_is_measured_once_on_the_inputs_it_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    run = trained(tmp_path / "dnc", memory_type="dnc", memory_slots=3)
    with pytest.raises(ValueError, match="--exact"):
        recall_past_storage.past_storage(run, [2.0], test_size=4)
    cases = recall_past_storage.past_storage(run, [2.0], test_size=4, exact=6)["results"]
    assert [(c["filler"], c["consolidation"]) for c in cases] == [
        ("repeated", "none (no consolidation)"), ("random", "none (no consolidation)")]
    assert all(c["writes_before_queries"] == 12 for c in cases)
