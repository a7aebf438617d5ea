"""Chunked mode: reads in parallel against the chunk's start, one least-squares slot per chunk."""

import pytest
import torch
from test_plugin import ids, plugged

from sdapm_hf import DNCSDAPMConfig, DNCSDAPMForCausalLM
from sdapm_hf import sdapm
from sdapm_hf.access import memory_settings

TINY = dict(vocab_size=12, hidden_size=16, controller_size=24, memory_slots=4, word_size=8, read_heads=2)
CHUNKABLE = dict(clock_keys=False, consolidation="auto")


def standalone(**overrides) -> DNCSDAPMForCausalLM:
    torch.manual_seed(0)
    return DNCSDAPMForCausalLM(DNCSDAPMConfig(**{**TINY, **CHUNKABLE, "chunk_size": None, **overrides})).eval()


def twin(model: DNCSDAPMForCausalLM, chunk_size: int | None) -> DNCSDAPMForCausalLM:
    """The same weights (and frozen base) with another chunk size."""
    config = DNCSDAPMConfig(**{**model.config.to_dict(), "chunk_size": chunk_size})
    other = type(model)(config).eval()  # a frozen base is built from text_config, then takes the model's weights
    other.load_state_dict(model.state_dict())
    return other


def tokens(batch=3, length=20, seed=0):
    return torch.randint(1, TINY["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


def padded_mask(x: torch.Tensor) -> torch.Tensor:
    mask = torch.ones_like(x)
    mask[0, :5] = 0  # left padding
    mask[1, 7] = 0  # a hole
    return mask


def assert_states_close(a: dict, b: dict, tol: float = 1e-5, gram_tol: float = 1e-5) -> None:
    """Every field of memory state ``a`` is in ``b``, equal up to ``tol`` times the field's largest entry (at least
    1). ``gram_inv`` = (X Xᵀ + λA)⁻¹ gets ``gram_tol``: with eigenvalues of X Xᵀ near λA its conditioning
    amplifies the float rounding of X (1e-7 here) by 10²–10³, where runs group the same operations differently."""
    assert set(a) <= set(b)
    for name, tensor in a.items():
        assert tensor.shape == b[name].shape, name
        if tensor.numel():  # an unfinished chunk of no positions is empty
            scale = max(1.0, tensor.double().abs().max().item())
            limit = (gram_tol if name == "memory.gram_inv" else tol) * scale
            assert (tensor.double() - b[name].double()).abs().max() <= limit, name


def assert_same_run(a, b, tol=1e-5):
    assert (a.logits - b.logits).abs().max() <= tol
    assert_states_close(a.memory_state, b.memory_state, tol)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"consolidation": "off"}, {"temporal_links": True}, {"read_top_k": 2}, {"read_top_k": 2, "read_candidates": 3},
     {"interface_window": 3}, {"consolidation": "similar"}, {"query_values": True}],
)
def test_chunk_size_one_is_the_per_token_model(overrides):
    per_token = standalone(**overrides)  # 4 slots, 20 positions: the memory fills and consolidates
    chunked = twin(per_token, 1)
    x = tokens()
    mask = padded_mask(x)
    with torch.no_grad():
        assert_same_run(per_token(input_ids=x, attention_mask=mask), chunked(input_ids=x, attention_mask=mask))


def test_chunk_size_one_is_the_per_token_model_in_a_frozen_llama():
    per_token = plugged(segment_length=8, chunk_size=None, **CHUNKABLE)  # segments of 8 over 20 positions
    chunked = twin(per_token, 1)
    x = ids(length=20)
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    with torch.no_grad():
        assert_same_run(per_token(input_ids=x, attention_mask=mask), chunked(input_ids=x, attention_mask=mask))


@pytest.mark.parametrize("window", [1, 3])
def test_chunks_count_from_the_start_of_the_stream_across_calls(window):
    model = standalone(chunk_size=4, interface_window=window)
    x, mask = tokens(), padded_mask(tokens())
    with torch.no_grad():
        whole = model(input_ids=x, attention_mask=mask)
        state, logits = None, []
        for start, end in ((0, 3), (3, 9), (9, 10), (10, 20)):  # calls that end inside chunks
            out = model(input_ids=x[:, start:end], attention_mask=mask[:, start:end], memory_state=state)
            state = out.memory_state
            logits.append(out.logits)
    assert (torch.cat(logits, 1) - whole.logits).abs().max() <= 1e-5
    assert state["chunk.mask"].shape == (3, 0)  # 20 positions = 5 whole chunks
    assert_states_close(whole.memory_state, state, gram_tol=1e-3)  # fused and stepwise controller runs


def test_a_chunk_reads_the_memory_of_its_start_and_writes_one_slot_at_its_end():
    model = standalone(chunk_size=4)
    x = tokens(length=4)
    with torch.no_grad():
        part = model(input_ids=x[:, :3]).memory_state
        whole = model(input_ids=x).memory_state
    assert part["chunk.mask"].shape == (3, 3) and not part["memory.mass"].any()  # nothing written yet
    assert not part["chunk.reads"].any()  # every position read the empty memory of the chunk's start
    assert whole["chunk.mask"].shape == (3, 0)
    assert (whole["memory.mass"] > 0).sum(-1).tolist() == [1, 1, 1]
    assert whole["memory.rank"].amax(-1).tolist() == [3, 3, 3]  # the 4 pairs as one least-squares slot


@pytest.mark.parametrize("members", [1, 2])
def test_chunk_members_keeps_the_most_strongly_gated_steps_alone(members):
    model = standalone(chunk_size=4, chunk_members=members)
    x = tokens(length=4)
    with torch.no_grad():
        whole = model(input_ids=x).memory_state
    slot = whole["memory.write_weights"].argmax(-1)
    rows = torch.arange(3)
    gates = whole["memory.usage"][rows, slot]  # the slot's presence: its strongest member's gate
    assert whole["memory.rank"][rows, slot].tolist() == [members - 1] * 3  # an exact map of M members
    assert torch.allclose(whole["memory.mass"][rows, slot], whole["memory.mass"][rows, slot].clamp(max=members))
    assert (gates > 0).all()


def test_chunk_members_read_back_their_values_from_one_slot():
    w, c = 16, 5
    settings = sdapm.SDAPMSettings(slots=4, word_size=w, read_heads=c, ridge=1e-7)
    g = torch.Generator().manual_seed(0)
    state = sdapm.init_state(settings, 1)
    chunks = []
    for half in (slice(0, 8), slice(8, 16)):  # two chunks whose keys span orthogonal coordinates
        keys = torch.zeros(1, c, w)
        keys[..., half] = torch.randn(1, c, 8, generator=g)
        values = torch.nn.functional.normalize(torch.randn(1, c, w, generator=g), dim=-1)
        gates = torch.rand(1, c, generator=g) * 0.8 + 0.2
        state = sdapm.write_chunk(state, keys, values, settings, gates)
        assert state.usage[0, state.write_weights[0].argmax()] == gates.amax()  # the strongest member's presence
        chunks.append((keys, values))
    assert state.occupied.sum() == 2 and state.rank.max() == c - 1  # one slot per chunk, an exact fit
    for keys, values in chunks:
        out, after = sdapm.read(state, keys, torch.full((1, c), 1e3), settings)
        assert after.read_weights.amax(-1).min() > 1 - 1e-6  # each key addresses its own chunk's slot alone
        assert (out - values).norm(dim=-1).max() <= 1e-3


def test_a_chunk_of_more_than_w_plus_one_pairs_keeps_an_affine_map_exactly():
    w, c = 8, 20  # 19 scatter rows compressed to r = W = 8 without loss
    settings = sdapm.SDAPMSettings(slots=2, word_size=w, read_heads=c, ridge=1e-7)
    g = torch.Generator().manual_seed(1)
    keys = torch.nn.functional.normalize(torch.randn(1, c, w, generator=g), dim=-1)
    values = keys @ (0.3 * torch.randn(w, w, generator=g) / w**0.5) + 0.1 * torch.randn(w, generator=g) / w**0.5
    assert values.norm(dim=-1).max() < settings.value_max  # no clipping: the pairs lie on one affine map
    state = sdapm.write_chunk(sdapm.init_state(settings, 1), keys, values, settings, torch.ones(1, c))
    assert state.rank.max() == w
    out, _ = sdapm.read(state, keys, torch.full((1, c), 1e3), settings)
    assert (out - values).norm(dim=-1).max() <= 1e-3


def test_a_chunk_without_real_positions_leaves_the_state_bit_identical():
    model = standalone(chunk_size=4)
    x = tokens(batch=2, length=8)
    mask = torch.ones_like(x)
    mask[1, 4:] = 0  # batch element 1 has no real position in the second chunk
    with torch.no_grad():
        before = model(input_ids=x[:, :4]).memory_state
        after = model(input_ids=x[:, 4:], attention_mask=mask[:, 4:], memory_state=before).memory_state
    assert all(torch.equal(after[name][1], tensor[1]) for name, tensor in before.items())
    assert not torch.equal(after["memory.mass"][0], before["memory.mass"][0])
    settings = memory_settings(model.config)
    memory = sdapm.MemoryState.from_dict({k[7:]: v for k, v in before.items() if k.startswith("memory.")})
    pairs = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    written = sdapm.write_chunk(memory, *pairs, settings, torch.ones(2, 3), mask=torch.tensor([True, False]))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(written.as_dict().values(), memory.as_dict().values()))


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"chunk_size": 0}, "chunk_size must be an integer >= 1"),
        ({"chunk_size": 4, "memory_type": "dnc"}, "chunk_size=4 needs memory_type"),
        ({"chunk_size": 4, "act_mode": "act"}, "chunk_size=4 needs act_mode"),
        ({"chunk_size": 4, "clock_keys": True}, "chunk_size=4 needs clock_keys"),
        ({"chunk_size": 4, "consolidation": "learned"}, "chunk_size=4 needs consolidation"),
        ({"chunk_size": None, "chunk_members": 2}, "chunk_members needs chunk_size"),
        ({"chunk_size": 4, "chunk_members": 5}, "chunk_members must be an integer in"),
    ],
)
def test_unsupported_chunked_configs_are_refused(overrides, field):
    with pytest.raises(Exception, match=field):  # the config's validator wraps the ValueError
        DNCSDAPMConfig(**{**TINY, **CHUNKABLE, **overrides})


def test_a_state_with_a_full_pending_chunk_is_refused():
    model = standalone(chunk_size=4)
    with torch.no_grad():
        state = model(input_ids=tokens(length=3)).memory_state
    with pytest.raises(ValueError, match="3 positions of an unfinished chunk, chunk_size=3 allows at most 2"):
        twin(model, 3)(input_ids=tokens(length=2), memory_state=state)


@pytest.mark.parametrize(
    "settings",
    [
        {"chunk_size": 3},
        {"chunk_size": 8, "max_rank": 4},  # 7 scatter rows kept as the top 4 principal directions
        {"chunk_size": 12},  # 11 scatter rows in W = 8 dimensions, compressed exactly to 8
        {"chunk_size": 4, "temporal_links": True},
        {"chunk_size": 8, "chunk_members": 3, "interface_window": 2},
        {"chunk_size": 3, "consolidation": "similar"},
    ],
)
def test_chunked_mode_trains(settings):
    model = standalone(**settings).train()
    x = tokens(length=24)
    out = model(input_ids=x, attention_mask=padded_mask(x), labels=x)
    out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert torch.isfinite(out.loss) and all(torch.isfinite(g).all() for g in grads.values())
    assert grads["model.memory.interface.proj.weight"].abs().sum() > 0


def test_cached_generation_equals_uncached_with_chunks():
    model = plugged(segment_length=6, chunk_size=4, **CHUNKABLE)  # chunk and segment boundaries differ
    prompt = ids(length=7)
    cached = model.generate(prompt, max_new_tokens=9, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=9, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    with torch.no_grad():  # and token-by-token calls meet the chunk boundaries of one pass over the whole text
        whole = model(input_ids=cached[:, :-1])
        step = model(input_ids=cached[:, :7], use_cache=True)
        for i in range(7, cached.shape[1] - 1):
            step = model(input_ids=cached[:, i : i + 1], cache=step.cache, use_cache=True)
    assert (step.logits[:, -1] - whole.logits[:, -1]).abs().max() <= 1e-4
    assert_states_close(whole.memory_state, step.memory_state, gram_tol=1e-3)


def test_standalone_cached_generation_equals_uncached_with_chunks():
    model = standalone(chunk_size=3)
    prompt = tokens(batch=2, length=5)
    for beams in (1, 3):
        settings = dict(max_new_tokens=8, min_new_tokens=8, num_beams=beams, do_sample=False)
        cached = model.generate(prompt, use_cache=True, **settings)
        assert torch.equal(cached, model.generate(prompt, use_cache=False, **settings))


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_shortlisted_models_train_with_writes_in_place_and_leave_a_given_state_alone(chunk_size):
    model = standalone(chunk_size=chunk_size, read_top_k=2, read_candidates=3)  # eval: no dropout, still autograd
    assert model.model.memory.access.writes_in_place()  # under autograd: the reads keep no whole slot field
    x = tokens(length=24)
    mask = padded_mask(x)
    first = model(input_ids=x[:, :12], attention_mask=mask[:, :12])
    given = {name: t.detach().clone() for name, t in first.memory_state.items()}
    out = model(input_ids=x[:, 12:], attention_mask=mask[:, 12:], memory_state=first.memory_state, labels=x[:, 12:])
    (out.loss + first.logits.mean()).backward()  # both calls' graphs, after the second wrote into the memory
    assert all(torch.equal(given[name], t) for name, t in first.memory_state.items())
    assert model.model.memory.interface.proj.weight.grad.abs().sum() > 0
    kept = {name: t.clone() for name, t in given.items()}
    with torch.no_grad():  # the same numbers as without autograd, where every field is written in place
        again = model(input_ids=x[:, 12:], attention_mask=mask[:, 12:], memory_state=given)
    assert torch.allclose(again.logits, out.logits, atol=1e-6)
    assert all(torch.equal(kept[name], t) for name, t in given.items())
    dense = standalone(chunk_size=chunk_size, read_top_k=2)
    assert not dense.model.memory.access.writes_in_place()  # exact top-K scores every slot
