"""The Hugging Face contract: the Auto classes load every checkpoint kind as remote code, half-precision bases plug
in, the observer API and the ablation switches, the CLI's overrides, and the layers of the import graph."""

import ast
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, BertConfig, BertModel

from sdapm_hf import DNCSDAPMConfig, DNCSDAPMForCausalLM, DNCSDAPMForSequenceClassification, DNCSDAPMModel

from test_plugin import MEMORY, ids, plugged, tiny_base

PACKAGE = Path(__file__).resolve().parent.parent / "sdapm_hf"
AUTO = ("AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification")


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        max_position_embeddings=32)
    return BertModel(config).eval()


def test_every_auto_class_loads_every_checkpoint_kind_as_remote_code(tmp_path, clean_python):
    base = tiny_base()
    base.save_pretrained(tmp_path / "base")
    standalone = DNCSDAPMForCausalLM(DNCSDAPMConfig(vocab_size=64, hidden_size=32, **MEMORY)).eval()
    whole = plugged(segment_length=8)
    adapter = DNCSDAPMForCausalLM.from_base(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                                            save_base_weights=False, segment_length=8, **MEMORY)
    torch.nn.init.normal_(adapter.model.memory.output.weight, std=0.5)
    classifier = DNCSDAPMForSequenceClassification.from_base(tiny_bert(), num_labels=3, segment_length=16, **MEMORY)
    torch.nn.init.normal_(classifier.model.memory.output.weight, std=0.5)
    x = ids(length=20)
    expected = {}
    for name, model in (("standalone", standalone), ("whole", whole), ("adapter", adapter), ("classifier", classifier)):
        model.save_pretrained(tmp_path / name)
        auto_map = json.loads((tmp_path / name / "config.json").read_text())["auto_map"]
        assert set(auto_map) == {"AutoConfig", *AUTO}, auto_map
        with torch.no_grad():
            expected[name] = {"hidden": model.model(input_ids=x).last_hidden_state, "logits": model(input_ids=x).logits}
    torch.save({"ids": x, "expected": expected}, tmp_path / "expected.pt")
    out = clean_python(
        f"""
        import torch
        import transformers
        saved = torch.load({str(tmp_path / "expected.pt")!r})
        x, expected = saved["ids"], saved["expected"]
        native = {{"standalone": "AutoModelForCausalLM", "whole": "AutoModelForCausalLM",
                   "adapter": "AutoModelForCausalLM", "classifier": "AutoModelForSequenceClassification"}}
        for name in ("standalone", "whole", "adapter", "classifier"):
            folder = {str(tmp_path)!r} + "/" + name
            config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
            assert type(config).__name__ == "DNCSDAPMConfig", type(config)
            for auto in {AUTO!r}:
                model = getattr(transformers, auto).from_pretrained(folder, trust_remote_code=True).eval()
                assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
                with torch.no_grad():
                    out = model(input_ids=x)
                if auto == "AutoModel":
                    diff = (out.last_hidden_state - expected[name]["hidden"]).abs().max().item()
                    assert diff <= 1e-5, (name, auto, diff)
                elif auto == native[name]:
                    diff = (out.logits - expected[name]["logits"]).abs().max().item()
                    assert diff <= 1e-5, (name, auto, diff)
                else:  # another head on the same memory: it runs, its head starts fresh
                    assert out.logits.shape[0] == x.shape[0], (name, auto)
                print(name, auto, "ok")
        print("remote-ok")
        """
    )
    assert "remote-ok" in out and out.count(" ok") == 4 * len(AUTO)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_base_plugs_in(dtype):
    base = tiny_base().to(dtype)
    x = ids(length=20)
    with torch.no_grad():
        reference = base(x[:, :8]).logits
    model = DNCSDAPMForCausalLM.from_base(base, segment_length=8, **MEMORY)
    assert model.model.base.dtype == dtype and model.model.memory.output.weight.dtype == torch.float32
    with torch.no_grad():  # identity at init: the base's own logits, in its own dtype
        out = model(input_ids=x)
    assert out.logits.dtype == dtype and torch.equal(out.logits[:, :8], reference)
    assert out.memory_state["memory.key"].dtype == torch.float32  # the memory's state stays float32
    torch.nn.init.normal_(model.model.memory.output.weight, std=0.5)
    model.train()
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    grads = [p.grad for p in model.model.memory.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
    assert model.model.memory.output.weight.grad.abs().sum() > 0
    model.eval()
    cached = model.generate(x[:, :6], max_new_tokens=5, do_sample=False, use_cache=True)
    assert torch.equal(cached, model.generate(x[:, :6], max_new_tokens=5, do_sample=False, use_cache=False))


def test_a_whole_checkpoint_loaded_in_bfloat16_keeps_its_memory_in_float32(tmp_path):
    model = plugged(segment_length=8)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert again.model.base.dtype == torch.bfloat16 and again.model.memory.output.weight.dtype == torch.float32
    with torch.no_grad():
        assert torch.isfinite(again(input_ids=ids()).logits).all()


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_memory_states_report_every_update(chunk_size):
    model = plugged(segment_length=8, **({} if chunk_size is None else {"chunk_size": 4, "clock_keys": False,
                                                                          "consolidation": "auto"}))
    x = ids(length=20)
    with torch.no_grad():
        out = model(input_ids=x, output_memory_states=True)
        plain = model(input_ids=x)
    assert plain.memory_states is None and torch.equal(out.logits, plain.logits)
    updates = out.memory_states
    assert updates[0].read_weights is None and not updates[0].memory["mass"].any()  # the memory before the first position
    covered = [(u.start, u.end) for u in updates[1:]]
    assert covered[0][0] == 0 and covered[-1][1] == 20 and all(a[1] == b[0] for a, b in zip(covered, covered[1:]))
    if chunk_size is None:
        assert len(updates) == 21
    else:  # pieces end at chunk (4) and segment (8) boundaries: every chunk of 4 is one piece
        assert covered == [(i, i + 4) for i in range(0, 20, 4)]
    for update in updates[1:]:
        assert update.read_weights.shape == (2, update.end - update.start, 1, MEMORY["memory_slots"])
        assert update.usage.shape == update.write_weights.shape == (2, MEMORY["memory_slots"])
    final = {name.removeprefix("memory."): t for name, t in out.memory_state.items() if name.startswith("memory.")}
    assert all(torch.equal(updates[-1].memory[name], t) for name, t in final.items())


def test_every_model_can_report_its_memory_states():
    x = ids(length=10)
    standalone = DNCSDAPMModel(DNCSDAPMConfig(vocab_size=64, hidden_size=32, **MEMORY, chunk_size=None))
    classifier = DNCSDAPMForSequenceClassification.from_base(tiny_bert(), num_labels=3, segment_length=16, **MEMORY)
    for model in (standalone, classifier, plugged(segment_length=8)):
        with torch.no_grad():
            out = model(input_ids=x, output_memory_states=True)
        assert len(out.memory_states) >= 2 and out.memory_states[-1].end == 10, type(model).__name__


def test_the_classifiers_loss_pays_the_memorys_costs_over_the_real_tokens():
    settings = dict(MEMORY, chunk_size=None, act_mode="act", act_max_steps=3, clock_keys=True, write_cost=0.2,
                    ponder_cost=0.01, clock_reset_cost=0.1)
    model = DNCSDAPMForSequenceClassification.from_base(tiny_bert(), num_labels=3, segment_length=16, **settings)
    x, labels = ids(length=12), torch.tensor([0, 2])
    mask = torch.ones_like(x)
    mask[1, 9:] = 0  # the second row is 9 tokens long
    with torch.no_grad():
        out = model.model(input_ids=x, attention_mask=mask)
        loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
        free = model(input_ids=x, attention_mask=mask, labels=labels, write_cost=0.0).loss
        logits = model.classify(out, mask, None).logits
    real = mask.bool()
    expected = (torch.nn.functional.cross_entropy(logits, labels) + 0.01 * out.ponder_cost[real].mean()
                + 0.1 * out.clock_resets[real].mean() + 0.2 * out.write_gates[real].mean())
    assert out.write_gates[real].mean() > 0.05 and out.ponder_cost[real].mean() > 1
    assert loss == pytest.approx(expected.item(), abs=1e-6)
    assert free == pytest.approx((expected - 0.2 * out.write_gates[real].mean()).item(), abs=1e-6)


def test_base_alone_is_the_base_and_zero_memory_drops_the_reads():
    model = plugged(segment_length=8)
    x = ids(length=20)
    base = tiny_base()
    with torch.no_grad(), model.ablation("base_alone"):
        alone = model(input_ids=x).logits
    with torch.no_grad():
        segments = torch.cat([base(x[:, i : i + 8]).logits for i in range(0, 20, 8)], 1)
        assert torch.equal(alone, segments)  # segment by segment, the base's own logits
        assert (model(input_ids=x).logits - alone).abs().max() > 1e-3  # the memory is open
    standalone = DNCSDAPMForCausalLM(DNCSDAPMConfig(vocab_size=64, hidden_size=32, **MEMORY, chunk_size=None)).eval()
    with torch.no_grad(), standalone.ablation("zero_memory"):
        zeroed = standalone(input_ids=x).logits
    with torch.no_grad():
        standalone.model.output.weight[:, MEMORY["controller_size"] :] = 0  # the reads' columns of the output map
        assert torch.allclose(standalone(input_ids=x).logits, zeroed, atol=1e-6)
    with pytest.raises(ValueError, match="base_alone compares a plugged model with its base"):
        with standalone.ablation("base_alone"):
            pass
    with pytest.raises(ValueError, match="unknown ablation"):
        with standalone.ablation("no_memory"):
            pass


def test_train_takes_the_same_overrides_as_evaluate(tmp_path, monkeypatch, capsys):
    from sdapm_hf.cli import main

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    config = tmp_path / "exp.yaml"
    config.write_text("task: copy\ntask_args: {symbols: 4, min_length: 2, max_length: 3, train_size: 8, "
                      "validation_size: 4, test_size: 4}\nmodel: {hidden_size: 16, controller_size: 16, "
                      "memory_slots: 4, word_size: 8}\nmax_steps: 5\nbatch_size: 4\n")
    run = tmp_path / "run"
    main(["train", str(config), "--output_dir", str(run), "--max-steps", "1", "--seed", "3",
          "--set", "memory_slots=3", "chunk_size=null", "--task-args", "train_size=12"])
    experiment = json.loads((run / "experiment.json").read_text())
    assert experiment["max_steps"] == 1 and experiment["seed"] == 3 and experiment["batch_size"] == 4
    assert experiment["model"] == {"hidden_size": 16, "controller_size": 16, "memory_slots": 3, "word_size": 8,
                                   "chunk_size": None}
    assert experiment["task_args"]["train_size"] == 12 and experiment["task_args"]["symbols"] == 4
    assert json.loads((run / "model" / "config.json").read_text())["memory_slots"] == 3
    with pytest.raises(SystemExit):
        main(["train", str(config), "--max_stepz", "1"])
    assert "--max_stepz" in capsys.readouterr().err


def _relative_imports(path: Path) -> set[str]:
    """The package modules ``path`` imports when it runs (imports for type checkers only do not count)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING" for node in ast.walk(block)}
    return {node.module for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and id(node) not in typing_only}


def _absolute_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
    return names - {"__future__", "dataclasses", "typing", "math", "collections", "pathlib", "contextlib", "mmap"}


def test_the_layers_of_the_import_graph():
    assert _relative_imports(PACKAGE / "configuration_dnc_sdapm.py") == set()  # a leaf
    memory = ["addressing.py", "dnc_memory.py", "tensor_state.py", "slot_tape.py",
              *(p.name for p in PACKAGE.glob("sdapm*.py"))]
    for name in memory:  # the memory imports only torch (safetensors lazily, to save a state)
        assert _absolute_imports(PACKAGE / name) <= {"torch", "safetensors"}, name
    for name in ("core.py", "access.py", "controller.py", "act.py", *memory):  # nothing of the plug or the models
        assert not _relative_imports(PACKAGE / name) & {"injection", "modeling_dnc_sdapm", "configuration_dnc_sdapm"}, name
    assert "injection" not in _relative_imports(PACKAGE / "core.py")
