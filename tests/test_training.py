"""The Accelerate training loop: a run folder, and a resumed run that ends where an uninterrupted one does."""

import json

import pytest
import torch
from safetensors.torch import load_file

from sdapm_hf.training import ExperimentArguments, load_experiment, train
from sdapm_hf.training.data import LengthBucketBatchSampler

TASK_ARGS = {"symbols": 6, "min_length": 2, "max_length": 4, "train_size": 64, "validation_size": 8, "test_size": 8}
MODEL = {"hidden_size": 16, "controller_size": 16, "memory_slots": 4, "word_size": 8}


def experiment(tmp_path, name, **overrides) -> ExperimentArguments:
    settings = dict(task="copy", task_args=TASK_ARGS, model=MODEL, output_dir=str(tmp_path / name), max_steps=6,
                    batch_size=8, eval_every=3, save_every=3, log_every=1, warmup_steps=2)
    return ExperimentArguments(**{**settings, **overrides})


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))


def test_run_folder_and_metrics(tmp_path):
    metrics = train(experiment(tmp_path, "run"))
    run = tmp_path / "run"
    assert metrics["steps"] == 6 and 0 <= metrics["validation/token_accuracy"] <= 1
    assert json.loads((run / "metrics.json").read_text()) == metrics
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert all(r["memory_value_max"] <= 1.0 + 1e-5 for r in logged if "loss" in r)
    assert (run / "model" / "model.safetensors").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_3", "step_6"]


def test_resumed_run_ends_identical_to_an_uninterrupted_one(tmp_path):
    train(experiment(tmp_path, "whole"))
    train(experiment(tmp_path, "parts", stop_at_step=3))
    train(experiment(tmp_path, "parts", resume=True))
    whole = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    parts = load_file(tmp_path / "parts" / "model" / "model.safetensors")
    assert whole.keys() == parts.keys()
    for name in whole:
        assert torch.equal(whole[name], parts[name]), name


def test_yaml_experiment(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("task: copy\nmax_steps: 7\nmodel: {memory_slots: 4}\n")
    args = load_experiment(path, seed=3)
    assert (args.task, args.max_steps, args.seed, args.model) == ("copy", 7, 3, {"memory_slots": 4})
    path.write_text("task: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_experiment(path)
    path.write_text("tsak: copy\n")
    with pytest.raises(ValueError, match="tsak"):
        load_experiment(path)
    with pytest.raises(ValueError, match="max_steps"):
        ExperimentArguments(max_steps=0)


def test_length_buckets_are_seeded_and_uniform():
    lengths = [3, 5, 3, 5, 5, 7, 3, 3, 5]
    sampler = LengthBucketBatchSampler(lengths, batch_size=2, seed=1)
    first = list(sampler)
    assert first == list(LengthBucketBatchSampler(lengths, batch_size=2, seed=1))
    assert sorted(i for batch in first for i in batch) == list(range(9))
    assert all(len({lengths[i] for i in batch}) == 1 for batch in first)
    sampler.set_epoch(1)
    assert list(sampler) != first and len(sampler) == len(first)
    with pytest.raises(ValueError, match="empty"):
        LengthBucketBatchSampler([], batch_size=2)
