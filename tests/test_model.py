"""The Hugging Face classes: shapes, registration, checkpoints, remote code, carried state, learning."""

import json
import time

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import sdapm_hf
from sdapm_hf import DNCSDAPMConfig, DNCSDAPMForCausalLM, DNCSDAPMModel

TINY = dict(vocab_size=12, hidden_size=16, controller_size=24, memory_slots=4, word_size=8, read_heads=2)
# The per-token recurrence with clock keys and learned consolidation (the defaults are the chunked plug's).
PER_TOKEN = dict(chunk_size=None, clock_keys=True, consolidation="learned")


def tiny(**overrides) -> DNCSDAPMForCausalLM:
    torch.manual_seed(0)
    return DNCSDAPMForCausalLM(DNCSDAPMConfig(**{**TINY, **PER_TOKEN, **overrides})).eval()


def tokens(batch=3, length=10, seed=0):
    return torch.randint(1, TINY["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"memory_type": "dnc"},
        {"memory_type": "none"},
        {"consolidation": "auto"},
        {"consolidation": "similar"},
        {"consolidation": "off", "clock_keys": False},
        {"temporal_links": True, "read_top_k": 2},
        {"act_mode": "act", "act_max_steps": 3},
        {"act_mode": "fixed", "act_max_steps": 2},
        {"max_rank": 2},
        {"chunk_size": 4, "clock_keys": False, "consolidation": "auto"},
    ],
)
def test_forward_backward_shapes(overrides):
    model = tiny(**overrides).train()
    ids = tokens()
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (3, 10, TINY["vocab_size"]) and out.logits.dtype == torch.float32
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.ponder_steps.shape == (3, 10) and out.ponder.shape == (3,)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    cap = model.config.act_max_steps if model.config.act_mode != "none" else 1
    assert 1 <= out.ponder[0] <= cap and 0 <= out.ponder[2] <= 1
    if overrides.get("act_mode") == "fixed":
        assert out.ponder[0] == 2 and out.ponder[2] == 1


def test_model_takes_embeddings_and_returns_state():
    model = DNCSDAPMModel(DNCSDAPMConfig(**TINY, **PER_TOKEN)).eval()
    embeds = torch.randn(2, 5, TINY["hidden_size"])
    out = model(inputs_embeds=embeds)
    assert out.last_hidden_state.shape == (2, 5, TINY["hidden_size"])
    assert out.memory_state["memory.key"].shape == (2, TINY["memory_slots"], TINY["word_size"])
    assert set(out.memory_state) >= {"controller.h", "controller.c", "reads", "clock"}


def test_auto_classes_are_registered():
    config = AutoConfig.for_model("dnc_sdapm", **TINY)
    assert isinstance(config, DNCSDAPMConfig)
    assert type(AutoModel.from_config(config)) is DNCSDAPMModel
    assert type(AutoModelForCausalLM.from_config(config)) is DNCSDAPMForCausalLM


def test_save_and_load_round_trip(tmp_path):
    model = tiny(consolidation="auto")
    ids = tokens()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForCausalLM"].endswith("DNCSDAPMForCausalLM")
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)


def test_remote_code_loads_without_the_package(tmp_path, clean_python):
    model = tiny()
    model.save_pretrained(tmp_path / "ckpt")
    ids = tokens()
    torch.save({"ids": ids, "logits": model(input_ids=ids).logits}, tmp_path / "expected.pt")
    out = clean_python(
        f"""
        import torch
        from transformers import AutoModelForCausalLM
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        diff = (model(input_ids=expected["ids"]).logits - expected["logits"]).abs().max().item()
        assert diff == 0.0, diff
        print("remote-ok")
        """
    )
    assert "remote-ok" in out


@pytest.mark.parametrize(
    "overrides", [{}, {"memory_type": "dnc"}, {"act_mode": "act", "temporal_links": True}, {"interface_window": 3}]
)
def test_memory_state_carries_a_sequence_across_calls(overrides):
    model = tiny(**overrides)
    ids = tokens(length=14)  # 4 slots: the second half consolidates
    with torch.no_grad():
        whole = model(input_ids=ids)
        first = model(input_ids=ids[:, :6])
        second = model(input_ids=ids[:, 6:], memory_state=first.memory_state)
    split = torch.cat([first.logits, second.logits], 1)
    assert (split - whole.logits).abs().max() <= 1e-5
    for name, t in whole.memory_state.items():
        assert (t.float() - second.memory_state[name].float()).abs().max() <= 1e-5, name


@pytest.mark.parametrize(
    "overrides",
    [{}, {"memory_type": "dnc"}, {"temporal_links": True, "read_top_k": 2},
     {"chunk_size": 4, "clock_keys": False, "consolidation": "auto", "read_top_k": 2, "read_candidates": 3}],
)
def test_a_memory_of_another_size_runs_as_a_model_built_with_it(overrides):
    small, large = tiny(**overrides), tiny(**overrides, memory_slots=9)  # the same weights: none depends on N
    ids = tokens(length=24)  # 4 slots consolidate (per token or per chunk of 4), 9 do not
    given = small(input_ids=ids, memory_state=small.initial_memory_state(3, memory_slots=9))
    built = large(input_ids=ids)
    assert torch.equal(given.logits, built.logits)
    assert given.memory_state["memory.usage"].shape == (3, 9)
    assert (given.logits - small(input_ids=ids).logits).abs().max() > 1e-4  # the smaller memory reads otherwise
    for name, t in small.initial_memory_state(2).items():  # the config's own size: the state forward starts from
        assert torch.equal(t, large.initial_memory_state(2, memory_slots=4)[name]), name
    with pytest.raises(ValueError, match="a memory of 1 slots does not fit this config: read_top_k"):
        tiny(read_top_k=2).initial_memory_state(3, memory_slots=1)


@pytest.mark.parametrize("window", [1, 3])
def test_padding_leaves_the_state_untouched(window):
    model = tiny(interface_window=window)
    ids = tokens(batch=2, length=6)
    padded = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(2, 6), torch.zeros(2, 3)], 1).long()
    with torch.no_grad():
        plain = model(input_ids=ids)
        masked = model(input_ids=padded, attention_mask=mask)
    for name, t in plain.memory_state.items():
        assert torch.equal(t, masked.memory_state[name]), name


def test_small_copy_task_is_learned_within_a_minute():
    """A learning test that can fail: copy of 2..5 symbols (8 symbols) to >= 90% token accuracy in 60 s of CPU time
    (CPU time, not wall time, so that a busy shared machine does not decide the outcome)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    config = DNCSDAPMConfig(vocab_size=10, hidden_size=32, controller_size=64, memory_slots=8, word_size=16)
    model = DNCSDAPMForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)

    def batch(length, size):
        symbols = torch.randint(2, 10, (size, length), generator=g)
        ids = torch.cat([symbols, torch.ones(size, 1, dtype=torch.long), symbols], 1)
        labels = ids.clone()
        labels[:, : length + 1] = -100
        return ids, labels

    def accuracy():
        model.eval()
        hits = total = 0
        with torch.no_grad():
            for length in range(2, 6):
                ids, labels = batch(length, 64)
                pred = model(input_ids=ids).logits[:, :-1].argmax(-1)
                counted = labels[:, 1:] != -100
                hits += ((pred == labels[:, 1:]) & counted).sum().item()
                total += counted.sum().item()
        model.train()
        return hits / total

    start, best = time.process_time(), 0.0
    model.train()
    for step in range(1, 2000):
        ids, labels = batch(int(torch.randint(2, 6, (1,), generator=g)), 32)
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 25 == 0:
            best = max(best, accuracy())
            if best >= 0.9 or time.process_time() - start > 60:
                break
    assert best >= 0.9, f"token accuracy {best:.3f} after {time.process_time() - start:.0f} CPU s"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("memory_slots", 0, "memory_slots must be >= 1"),
        ("memory_type", "lstm", "memory_type must be one of"),
        ("act_mode", "sometimes", "act_mode must be one of"),
        ("act_mode", "graves", "act_mode must be one of"),
        ("consolidation", "never", "consolidation must be one of"),
        ("bypass_dropout", -0.1, "bypass_dropout"),
        ("word_size", "8", "word_size"),
        ("interface_window", 0, "interface_window must be >= 1"),
        ("act_mode", "act", "chunk_size=32 needs act_mode in .*set chunk_size=None .* or act_mode='none'"),
    ],
)
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(Exception, match=message):
        DNCSDAPMConfig(**{**TINY, field: value})


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max_rank", 99, "max_rank"),
        ("read_top_k", 100, "read_top_k"),
        ("read_candidates", 3, "read_candidates"),
        ("ridge", -1.0, "ridge"),
        ("value_max", 0.0, "value_max"),
    ],
)
def test_the_memory_checks_its_own_rules_when_it_is_built(field, value, message):
    config = DNCSDAPMConfig(**{**TINY, field: value})  # a leaf: the config does not know the memory's rules
    with pytest.raises(ValueError, match=message):
        DNCSDAPMForCausalLM(config)


def test_interface_window_sees_the_last_real_inputs_newest_first():
    core = tiny(interface_window=3, chunk_size=2, clock_keys=False, consolidation="auto").model.memory
    x = torch.arange(1.0, 6.0)[None, :, None].expand(1, 5, 2)  # inputs 1..5 of width 2
    mask = torch.tensor([[True, True, False, True, True]])
    windows, last = core._windows(x, mask, torch.zeros(1, 2, 2))
    assert windows[0, :, ::2].tolist() == [[1, 0, 0], [2, 1, 0], [3, 2, 1], [4, 2, 1], [5, 4, 2]]
    assert last[0, :, 0].tolist() == [5, 4]
    whole, _ = core._windows(x, torch.ones(1, 5, dtype=torch.bool), torch.zeros(1, 2, 2))
    assert whole[0, :, ::2].tolist() == [[1, 0, 0], [2, 1, 0], [3, 2, 1], [4, 3, 2], [5, 4, 3]]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m(input_ids=torch.full((1, 3), 99)), "vocab_size"),
        (lambda m: m(input_ids=tokens(), inputs_embeds=torch.zeros(3, 10, 16)), "exactly one"),
        (lambda m: m.model(inputs_embeds=torch.zeros(3, 10, 7)), r"inputs_embeds must have shape \(B, T, 16\)"),
        (lambda m: m.model(inputs_embeds=torch.full((1, 2, 16), float("nan"))), "NaN"),
        (lambda m: m(input_ids=tokens(), attention_mask=torch.ones(3, 4)), "attention_mask must have shape"),
        (lambda m: m(input_ids=tokens(), labels=torch.full((3, 10), 50)), "labels must lie"),
        (lambda m: m(input_ids=tokens(), memory_state={"reads": torch.zeros(1)}), "memory_state"),
        (lambda m: m(input_ids=tokens(batch=2), memory_state=m(input_ids=tokens()).memory_state), "batch size"),
    ],
)
def test_bad_inputs_name_the_problem(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call(tiny())


def test_package_exports():
    assert sdapm_hf.DNCSDAPMConfig.model_type == "dnc_sdapm"


@pytest.mark.parametrize(("bias", "low", "high"), [(1.0, 12.0, 30.0), (-3.0, 0.4, 1.5)])
def test_read_strengths_start_near_their_configured_bias(bias, low, high):
    model = tiny(read_strength_bias_init=bias)
    interface = model.model.memory.interface
    h = torch.randn(64, model.config.controller_size, generator=torch.Generator().manual_seed(0))
    x = torch.randn(64, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        beta = interface(h, x).read_strength
    assert low < beta.median() < high
