"""Bad input gets an error that names the problem, and nothing saved is lost (see docs/reliability.md for the
full list, including the cases tested next to the feature they concern)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from sdapm_hf import DNCSDAPMConfig, DNCSDAPMForCausalLM, DNCSDAPMForSequenceClassification
from sdapm_hf.tasks import build_task
from sdapm_hf.training import ExperimentArguments, load_experiment, train

TINY = dict(vocab_size=12, hidden_size=16, controller_size=16, memory_slots=4, word_size=8)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    DNCSDAPMForCausalLM(DNCSDAPMConfig(**TINY)).save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_truncated_weights_are_named(saved):
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(OSError, match="model.safetensors is corrupt or truncated"):
        AutoModelForCausalLM.from_pretrained(saved)


def test_config_that_does_not_fit_the_weights_is_refused(saved):
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "word_size": 12}))
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # after a report of every mismatched tensor
        AutoModelForCausalLM.from_pretrained(saved)


def test_embeddings_of_another_dtype_are_named():
    model = DNCSDAPMForCausalLM(DNCSDAPMConfig(**TINY))
    with pytest.raises(TypeError, match="inputs_embeds has dtype torch.float64, the model torch.float32"):
        model.model(inputs_embeds=torch.zeros(1, 3, 16, dtype=torch.float64))


def test_an_empty_split_stops_training_before_it_starts(tmp_path):
    args = ExperimentArguments(task="copy", task_args={"train_size": 0}, model=TINY, output_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="no examples in its 'train' split"):
        train(args)
    assert not (tmp_path / "run").exists()


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="unknown task 'copy_twice'"):
        build_task("copy_twice")


def test_a_task_argument_the_task_does_not_take_is_named():
    with pytest.raises(ValueError, match=r"task 'copy' takes no argument 'min_needles' \(check task_args\)"):
        build_task("copy", min_needles=4, train_size=4)


def test_malformed_yaml_is_named(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("task: copy\nmodel: {memory_slots: 4\n")
    with pytest.raises(ValueError, match="broken.yaml is not valid YAML"):
        load_experiment(path)


def test_unknown_experiment_field_is_named(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("task: copy\nmax_step: 10\n")
    with pytest.raises(ValueError, match="max_step"):
        load_experiment(path)


def test_memory_state_of_another_config_is_named():
    small = DNCSDAPMForCausalLM(DNCSDAPMConfig(**TINY))
    wider = DNCSDAPMForCausalLM(DNCSDAPMConfig(**{**TINY, "controller_size": 24}))
    state = wider(input_ids=torch.ones(1, 3, dtype=torch.long)).memory_state
    with pytest.raises(ValueError, match="memory_state has controller_size 24, this config has 16"):
        small(input_ids=torch.ones(1, 3, dtype=torch.long), memory_state=state)


def test_act_needs_the_per_token_recurrence_and_says_so():
    with pytest.raises(Exception, match="set chunk_size=None"):  # the config validator wraps the ValueError
        DNCSDAPMConfig(**TINY, act_mode="act")
    assert DNCSDAPMConfig(**TINY, act_mode="act", chunk_size=None).act_mode == "act"


def test_pondernet_settings_that_cannot_work_are_named():
    with pytest.raises(Exception, match="ponder_prior must be in"):
        DNCSDAPMConfig(**TINY, act_mode="pondernet", chunk_size=None, ponder_prior=1.0)
    with pytest.raises(Exception, match="set act_mode='act' in a plugged model"):
        DNCSDAPMConfig(**TINY, act_mode="pondernet", chunk_size=None, text_config={"model_type": "llama"})
    with pytest.raises(ValueError, match="set act_mode='act' for sequence classification"):
        DNCSDAPMForSequenceClassification(DNCSDAPMConfig(**TINY, act_mode="pondernet", chunk_size=None))


def test_adapter_that_names_no_base_is_refused_on_load(tmp_path):
    from test_plugin import plugged

    model = plugged(base_model_name_or_path="some/base", save_base_weights=False)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    with pytest.raises(ValueError, match="adapter checkpoint that names no base model"):
        DNCSDAPMForCausalLM.from_pretrained(tmp_path)


def test_push_without_a_token_uploads_nothing(tmp_path, monkeypatch):
    from sdapm_hf.publish import push_run

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored login either
    run = tmp_path / "run"
    train(ExperimentArguments(task="copy", task_args={"symbols": 4, "min_length": 2, "max_length": 3,
                                                      "train_size": 8, "validation_size": 4, "test_size": 4},
                              model=TINY, output_dir=str(run), max_steps=1, batch_size=4, save_every=4))
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with pytest.raises(PermissionError, match="pushing needs a Hugging Face token: set HF_TOKEN"):
        push_run(run, "someone/run")
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # not even the card was written


def test_a_folder_that_is_not_a_run_is_named(tmp_path):
    from sdapm_hf.cli import main

    with pytest.raises(FileNotFoundError, match="is not a run folder: it has no experiment.json"):
        main(["evaluate", str(tmp_path)])
