"""The memory core: exact writes, exact consolidation, capacity beyond the slot count, bounded norms."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from sdapm_hf import sdapm, sdapm_merge
from sdapm_hf.memory_demo import stream_recall
from sdapm_hf.sdapm import MemoryState, SDAPMSettings


def unit(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1).to(dtype)


def fill(settings, keys, values, dtype=torch.float32):
    """Write keys/values (B, P, W) one by one into an empty memory."""
    state = sdapm.init_state(settings, keys.shape[0], dtype=dtype)
    for i in range(keys.shape[1]):
        state = sdapm.write(state, keys[:, i], values[:, i], settings)
    return state


def read_all(state, settings, words, beta=1e4):
    """Read each word (B, P, W) with one head per word."""
    heads = dataclasses.replace(settings, read_heads=words.shape[1])
    state = dataclasses.replace(state, read_weights=torch.zeros(words.shape[0], words.shape[1], settings.slots))
    strengths = torch.full(words.shape[:2], beta, dtype=words.dtype)
    out, _ = sdapm.read(state, words, strengths, heads)
    return out


def test_write_then_read_is_exact():
    settings = SDAPMSettings(slots=16, word_size=32)
    keys, values = unit(3, 10, 32, seed=1), unit(3, 10, 32, seed=2)
    state = fill(settings, keys, values)
    out = read_all(state, settings, keys)
    assert (out - values).abs().max() <= 1e-5
    assert torch.equal(state.mass.sum(-1), torch.full((3,), 10.0))


@pytest.mark.parametrize("group", [2, 5, 8])
def test_consolidation_is_exact_for_members_and_linear_between_them(group):
    settings = SDAPMSettings(slots=16, word_size=32, ridge=1e-7)
    keys, values = unit(2, group, 32, seed=3), unit(2, group, 32, seed=4)
    state = fill(settings, keys, values)
    merged = sdapm.consolidate(state, state.occupied.float(), settings, group_size=group)
    assert torch.equal(merged.occupied.sum(-1), torch.tensor([1, 1]))
    assert torch.equal(merged.rank.amax(-1), torch.tensor([group - 1] * 2))

    # Through the read path: every member key is recalled.
    assert (read_all(merged, settings, keys) - values).norm(dim=-1).max() <= 1e-4
    # The slot is one affine map: midpoints of member keys go to midpoints of values.
    bv, maps, bw = sdapm.slot_maps(merged)
    slot = merged.mass.argmax(-1)
    bv, maps, bw = bv[[0, 1], slot], maps[[0, 1], slot], bw[[0, 1], slot]
    f = lambda x: ((x - bv[:, None]) @ maps) + bw[:, None]  # noqa: E731
    assert (f(keys) - values).norm(dim=-1).max() <= 1e-4
    mid_keys = (keys[:, :-1] + keys[:, 1:]) / 2
    mid_values = (values[:, :-1] + values[:, 1:]) / 2
    assert (f(mid_keys) - mid_values).norm(dim=-1).max() <= 1e-4
    unnormalised = dataclasses.replace(settings, normalize_words=False)
    assert (read_all(merged, unnormalised, mid_keys) - mid_values).norm(dim=-1).max() <= 1e-4


def test_ridge_error_shrinks_to_exact():
    keys, values = unit(1, 8, 32, seed=5), unit(1, 8, 32, seed=6)
    errors = []
    for ridge in (1e-2, 1e-4, 1e-6, 0.0):
        settings = SDAPMSettings(slots=8, word_size=32, ridge=ridge, gain_max=None)
        state = fill(settings, keys.double(), values.double(), dtype=torch.float64)
        merged = sdapm.consolidate(state, state.occupied.double(), settings, group_size=8)
        errors.append((read_all(merged, settings, keys.double()) - values.double()).norm(dim=-1).max().item())
    # The ridge error is linear in λ, and the pseudo-inverse (λ = 0) is exact.
    assert errors[0] > 50 * errors[1] > 2500 * errors[2]
    assert errors[3] < 1e-7


def test_merging_consolidated_slots_equals_consolidating_all_members():
    """Sufficient statistics add exactly: (A ∪ B) merged in two stages = merged at once."""
    settings = SDAPMSettings(slots=16, word_size=16, ridge=1e-3)
    keys, values = unit(2, 10, 16, seed=7).double(), unit(2, 10, 16, seed=8).double()
    state = fill(settings, keys, values, dtype=torch.float64)
    at_once = sdapm.consolidate(state, state.occupied.double(), settings, group_size=10)
    first = torch.zeros(2, 16, dtype=torch.float64)
    first[:, :4] = 1
    staged = sdapm.consolidate(state, first, settings, group_size=4)
    second = torch.zeros_like(first)
    second[:, 4:10] = 1
    staged = sdapm.consolidate(staged, second, settings, group_size=6)
    staged = sdapm.consolidate(staged, staged.occupied.double(), settings, group_size=2)
    a, b = sdapm.slot_maps(at_once), sdapm.slot_maps(staged)
    i, j = at_once.mass.argmax(-1), staged.mass.argmax(-1)
    for x, y in zip(a, b):
        assert torch.allclose(x[[0, 1], i], y[[0, 1], j], atol=1e-10)


def test_most_similar_pair_merges_near_duplicates_and_keeps_a_distinct_oldest_slot():
    """``closest_pair_selection`` always merges the lightest (oldest) slot; ``most_similar_pair_selection`` merges
    the two keys with the highest cosine, so the oldest, distinct pair stays exact (empty slots are never picked)."""
    settings = SDAPMSettings(slots=6, word_size=8, ridge=1e-6)
    keys, values = unit(1, 4, 8, seed=1), unit(1, 4, 8, seed=2)
    keys[0, 2] = F.normalize(keys[0, 1] + 0.01 * keys[0, 3], dim=-1)  # slots 1 and 2: near duplicates
    state = fill(settings, keys, values)
    assert sdapm.closest_pair_selection(state)[0, 0] == 1
    selection = sdapm.most_similar_pair_selection(state)
    assert selection[0].tolist() == [0, 1, 1, 0, 0, 0]
    merged = sdapm.consolidate(state, selection, settings, 2)
    assert int(merged.occupied.sum()) == 3
    assert torch.allclose(read_all(merged, settings, keys[:, :1]), values[:, :1], atol=1e-5)


def test_relative_usage_keeps_the_most_used_slot_out_of_a_merge_for_a_slightly_closer_key():
    """Usages are write gates far below 1: with raw usages the lightest slot merges with the most used one when its
    key is a little closer (by more than their usages differ); relative to the largest usage it takes the next."""
    settings = SDAPMSettings(slots=4, word_size=8, ridge=1e-6)
    keys, values = unit(1, 4, 8, seed=1), unit(1, 4, 8, seed=2)
    keys[0, 2] = F.normalize(keys[0, 0] + 0.3 * keys[0, 1], dim=-1)  # the most used slot: closest to slot 0
    keys[0, 3] = F.normalize(keys[0, 0] + 0.5 * keys[0, 1], dim=-1)  # a lightly used slot, a little farther
    state = dataclasses.replace(fill(settings, keys, values), usage=torch.tensor([[1e-5, 2e-5, 0.02, 3e-5]]))
    assert sdapm.least_used_pair_selection(state)[0].nonzero().flatten().tolist() == [0, 2]
    assert sdapm.relative_usage_pair_selection(state)[0].nonzero().flatten().tolist() == [0, 3]


def test_gradcheck_through_write_consolidate_read():
    settings = SDAPMSettings(slots=5, word_size=4, read_heads=2, ridge=1e-3, gain_max=None)
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    values = (0.3 * torch.randn(2, 4, 4, generator=g, dtype=torch.float64)).requires_grad_()
    selection = torch.tensor([[1.0, 0.6, 0.8, 0.0, 0.0], [0.9, 1.0, 0.7, 0.5, 0.0]], dtype=torch.float64)
    selection.requires_grad_()
    words = torch.randn(2, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    strengths = torch.tensor([[2.0, 5.0], [3.0, 1.0]], dtype=torch.float64, requires_grad=True)

    def run(keys, values, selection, words, strengths):
        state = sdapm.init_state(settings, 2, dtype=torch.float64)
        for i in range(4):
            state = sdapm.write(state, keys[:, i], values[:, i], settings)
        state = sdapm.consolidate(state, selection, settings, group_size=3)
        out, _ = sdapm.read(state, words, strengths, settings)
        return out

    assert torch.autograd.gradcheck(run, (keys, values, selection, words, strengths), eps=1e-6, atol=1e-6)


def test_nearly_collinear_keys_stay_finite_and_bounded():
    settings = SDAPMSettings(slots=8, word_size=16)  # default ridge 1e-4, gain bound 8
    keys, values = unit(1, 4, 16, seed=9), unit(1, 4, 16, seed=10)
    direction = unit(1, 16, seed=11)
    direction = F.normalize(direction - (direction * keys[:, 0]).sum(-1, keepdim=True) * keys[:, 0], dim=-1)
    keys[:, 1] = F.normalize(keys[:, 0] + 1e-4 * direction, dim=-1)
    state = fill(settings, keys, values)
    merged = sdapm.consolidate(state, state.occupied.float(), settings, group_size=4)
    for t in merged.as_dict().values():
        assert torch.isfinite(t).all()
    out = read_all(merged, settings, keys)
    assert torch.isfinite(out).all()
    assert (out[:, 2:] - values[:, 2:]).norm(dim=-1).max() <= 1e-2
    _, maps, _ = sdapm.slot_maps(merged)
    eye = torch.eye(16)
    assert torch.linalg.matrix_norm(maps[merged.occupied] - eye, ord=2).max() <= 8.0 + 1e-4


def test_capacity_sixteen_pairs_per_slot():
    settings = SDAPMSettings(slots=16, word_size=32)
    recall, state = stream_recall(settings, pairs=256, batch=4, consolidate=True, seed=0)
    assert recall >= 0.99, recall
    assert state.occupied.all() and state.mass.sum(-1).eq(256).all()
    baseline, _ = stream_recall(settings, pairs=256, batch=4, consolidate=False, seed=0)
    assert baseline <= 0.1, baseline


def self_feeding_stream(settings, steps, batch=4, seed=0):
    """Design study §5.3: half fresh noise, half the last read plus noise; reads written back as values;
    consolidate the 8 most-read slots when full. Returns the largest ‖Bw‖ and ‖read‖ seen before any overflow."""
    g = torch.Generator().manual_seed(seed)
    w = settings.word_size
    state = sdapm.init_state(settings, batch)
    y = torch.zeros(batch, w)
    largest_value = largest_read = 0.0
    for _ in range(steps):
        fresh = torch.rand(batch, 1, generator=g) < 0.5
        noise = torch.randn(batch, w, generator=g) / w**0.5
        x = torch.where(fresh, noise, y + 0.1 * torch.randn(batch, w, generator=g) / w**0.5)
        out, state = sdapm.read(state, x[:, None], torch.full((batch, 1), 10.0), settings, check=False)
        y = out[:, 0]
        full = sdapm.is_full(state)
        state = sdapm.consolidate(state, state.read_weights[:, 0], settings, 8, mask=full, check=False)
        state = sdapm.write(state, x, y + 0.1 * torch.randn(batch, w, generator=g) / w**0.5, settings, check=False)
        v, r = state.value.norm(dim=-1).max().item(), y.norm(dim=-1).max().item()
        if not (math.isfinite(v) and math.isfinite(r)):
            break  # diverged: the norms seen so far are the finite ones
        largest_value, largest_read = max(largest_value, v), max(largest_read, r)
    return largest_value, largest_read


def test_norms_stay_bounded_on_a_long_self_feeding_stream():
    settings = SDAPMSettings(slots=64, word_size=32)
    bound = sdapm.stability_bound(settings)
    assert bound == 2 * (1 + 8.0) + 1.0
    largest_value, largest_read = self_feeding_stream(settings, steps=10_000)
    assert largest_value <= settings.value_max + 1e-5
    assert largest_read <= bound

    unprotected = SDAPMSettings(
        slots=64, word_size=32, ridge=0.0, value_max=None, gain_max=None, mass_max=None, normalize_words=False
    )
    assert sdapm.stability_bound(unprotected) == float("inf")
    largest_value, largest_read = self_feeding_stream(unprotected, steps=1_000)
    assert largest_value > bound and largest_read > bound


def test_unused_slots_change_nothing():
    keys, values = unit(2, 12, 16, seed=12), unit(2, 12, 16, seed=13)
    words = unit(2, 3, 16, seed=14)
    outputs = []
    for slots in (16, 64):
        settings = SDAPMSettings(slots=slots, word_size=16, read_heads=3, temporal_links=True)
        state = sdapm.init_state(settings, 2)
        for i in range(12):
            state = sdapm.write(state, keys[:, i], values[:, i], settings)
            if i == 7:
                selection = torch.zeros(2, slots)
                selection[:, :3] = torch.tensor([1.0, 0.7, 0.4])
                state = sdapm.consolidate(state, selection, settings, group_size=3)
        modes = torch.softmax(torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(0)), -1)
        out, state = sdapm.read(state, words, torch.full((2, 3), 4.0), settings, modes=modes)
        out2, _ = sdapm.read(state, out, torch.full((2, 3), 4.0), settings, modes=modes)
        outputs.append(torch.cat([out, out2], 1))
    assert (outputs[0] - outputs[1]).abs().max() <= 1e-6


def test_write_mask_leaves_state_bit_identical():
    settings = SDAPMSettings(slots=8, word_size=8, read_heads=2, temporal_links=True)
    keys, values = unit(3, 6, 8, seed=15), unit(3, 6, 8, seed=16)
    state = fill(settings, keys[:, :5], values[:, :5])
    mask = torch.tensor([True, False, True])
    after = sdapm.write(state, keys[:, 5], values[:, 5], settings, mask=mask)
    merged = sdapm.consolidate(after, after.occupied.float(), settings, 3, mask=mask)
    for name, t in merged.as_dict().items():
        assert torch.equal(t[1], getattr(state, name)[1]), name
        assert not torch.equal(t[0], getattr(state, name)[0]) or name in ("link", "read_weights"), name


def test_state_detach_reorder_reset_and_save(tmp_path):
    settings = SDAPMSettings(slots=8, word_size=8, temporal_links=True)
    keys = unit(3, 4, 8, seed=17).requires_grad_()
    state = fill(settings, keys, unit(3, 4, 8, seed=18))
    assert state.key.requires_grad and not state.detach().key.requires_grad
    state = state.detach()
    beams = state.index_select(torch.tensor([2, 2, 0]))
    assert torch.equal(beams.key[0], state.key[2]) and torch.equal(beams.key[2], state.key[0])
    reset = sdapm.reset_state(state, torch.tensor([False, True, False]))
    assert not reset.occupied[1].any() and torch.equal(reset.key[0], state.key[0])
    sdapm.save_state(state, tmp_path / "memory.safetensors")
    loaded = sdapm.load_state(tmp_path / "memory.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(state.as_dict().values(), loaded.as_dict().values()))
    assert MemoryState.from_dict(state.as_dict()).as_dict().keys() == state.as_dict().keys()
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read memory state"):
        sdapm.load_state(tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match="not a MemoryState: missing"):
        MemoryState.from_dict({"key": state.key})


def test_forward_mode_composes_the_maps_in_write_order():
    """Location reads follow the links and apply each slot's map to the read word: a chain of slots is a
    chain of layers, f_4(f_3(f_2(v_1)))."""
    settings = SDAPMSettings(slots=8, word_size=16, temporal_links=True, normalize_words=False)
    keys, values = unit(1, 5, 16, seed=19), unit(1, 5, 16, seed=20)
    state = fill(settings, keys, values)
    content = torch.tensor([[[0.0, 1.0, 0.0]]])
    forward = torch.tensor([[[0.0, 0.0, 1.0]]])
    backward = torch.tensor([[[1.0, 0.0, 0.0]]])
    strong = torch.full((1, 1), 1e4)
    out, state = sdapm.read(state, keys[:, 1:2], strong, settings, modes=content)
    expected = values[:, 1]
    for i in (2, 3, 4):
        out, state = sdapm.read(state, out, strong, settings, modes=forward)
        expected = expected - keys[:, i] + values[:, i]
        assert (out[:, 0] - expected).abs().max() < 1e-5
        assert state.read_weights[0, 0].argmax() == i and state.read_weights[0, 0].max() > 0.999
    out, state = sdapm.read(state, out, strong, settings, modes=backward)
    assert (out[:, 0] - (expected - keys[:, 3] + values[:, 3])).abs().max() < 1e-5


def test_sparse_top_k_read():
    dense = SDAPMSettings(slots=32, word_size=16, read_heads=2)
    sparse = dataclasses.replace(dense, read_top_k=4)
    state = fill(dense, unit(2, 20, 16, seed=21), unit(2, 20, 16, seed=22))
    words = unit(2, 2, 16, seed=23).requires_grad_()
    strengths = torch.full((2, 2), 3.0)
    out_dense, s_dense = sdapm.read(state, words, strengths, dense)
    out_sparse, s_sparse = sdapm.read(state, words, strengths, sparse)
    assert (s_sparse.read_weights > 0).sum(-1).le(4).all()
    assert torch.allclose(s_sparse.read_weights.sum(-1), torch.ones(2, 2))
    # The top-4 hold most of the mass here, so the sparse read is close to the dense one.
    top_mass = s_dense.read_weights.topk(4, -1).values.sum(-1)
    assert ((out_sparse - out_dense).norm(dim=-1) <= 2 * (1 - top_mass) * 3 + 1e-6).all()
    sharp = torch.full((2, 2), 1e4)
    assert torch.allclose(sdapm.read(state, words, sharp, sparse)[0], sdapm.read(state, words, sharp, dense)[0])


def test_empty_memory_reads_zero_with_finite_gradients():
    settings = SDAPMSettings(slots=4, word_size=8)
    state = sdapm.init_state(settings, 2)
    words = unit(2, 1, 8, seed=26).requires_grad_()
    out, after = sdapm.read(state, words, torch.ones(2, 1), settings)
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out)) and torch.isfinite(words.grad).all()
    assert torch.equal(after.read_weights, torch.zeros_like(after.read_weights))


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda s, st: sdapm.write(st, torch.zeros(2, 9), torch.zeros(2, 8), s), ValueError, r"write key has shape"),
        (lambda s, st: sdapm.read(st, torch.zeros(2, 1, 7), torch.ones(2, 1), s), ValueError, r"read words has shape"),
        (lambda s, st: sdapm.read(st, torch.zeros(2, 8), torch.ones(2, 1), s), ValueError, r"read words has shape"),
        (lambda s, st: sdapm.write(st, torch.full((2, 8), float("nan")), torch.zeros(2, 8), s), ValueError, "NaN"),
        (lambda s, st: sdapm.write(st, torch.zeros(2, 8), torch.full((2, 8), float("inf")), s), ValueError, "inf"),
        (lambda s, st: sdapm.write(st, torch.zeros(2, 8).double(), torch.zeros(2, 8), s), TypeError, "dtype"),
        (lambda s, st: sdapm.write(st, torch.zeros(2, 8, device="meta"), torch.zeros(2, 8), s), ValueError, "meta"),
        (lambda s, st: sdapm.write(st, torch.zeros(2, 8), [0.0] * 8, s), TypeError, "torch.Tensor"),
        (lambda s, st: sdapm.read(st, torch.zeros(3, 1, 8), torch.ones(3, 1), s), ValueError, r"shape \(3, 1, 8\)"),
        (lambda s, st: sdapm.write(st, torch.ones(2, 8), torch.ones(2, 8), s, mask=torch.ones(2)), TypeError, "bool"),
        (lambda s, st: sdapm.consolidate(st, torch.ones(2, 4), s, group_size=9), ValueError, "group_size"),
        (lambda s, st: sdapm.read(st, torch.ones(2, 1, 8), torch.ones(2, 1), s, torch.ones(2, 1, 3)), ValueError,
         "temporal_links"),
        (lambda s, st: sdapm.read(st, torch.ones(2, 1, 8), torch.ones(2, 1), dataclasses.replace(s, slots=5)),
         ValueError, "memory state field 'key' has shape"),
        (lambda s, st: sdapm.init_state(s, 0), ValueError, "batch_size"),
        (lambda s, st: sdapm.init_state(s, 2, dtype=torch.int64), TypeError, "floating point"),
    ],
)
def test_bad_arguments_name_the_problem(make, error, message):
    settings = SDAPMSettings(slots=4, word_size=8)
    state = sdapm.init_state(settings, 2)
    with pytest.raises(error, match=message):
        make(settings, state)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("slots", 0, "slots must be an integer >= 1"),
        ("word_size", 2.5, "word_size must be an integer"),
        ("max_rank", 99, "max_rank"),
        ("ridge", -1.0, "ridge"),
        ("value_max", 0.0, "value_max"),
        ("read_top_k", 0, "read_top_k"),
        ("read_top_k", 5, "read_top_k"),
    ],
)
def test_bad_settings_name_the_field(field, value, message):
    kwargs = {"slots": 4, "word_size": 8, field: value}
    with pytest.raises(ValueError, match=message):
        SDAPMSettings(**kwargs)


def test_inplace_updates_match_functional_ones():
    settings = SDAPMSettings(slots=6, word_size=8, temporal_links=True)
    keys, values = unit(2, 9, 8, seed=27), unit(2, 9, 8, seed=28)
    functional = sdapm.init_state(settings, 2)
    streaming = sdapm.init_state(settings, 2)
    with torch.no_grad():
        for i in range(9):
            for name, st in (("functional", functional), ("streaming", streaming)):
                inplace = name == "streaming"
                full = sdapm.is_full(st)
                st = sdapm.consolidate(st, sdapm.closest_pair_selection(st), settings, 2, mask=full, inplace=inplace)
                st = sdapm.write(st, keys[:, i], values[:, i], settings, inplace=inplace)
                functional, streaming = (st, streaming) if not inplace else (functional, st)
    for name, t in functional.as_dict().items():
        assert torch.equal(t, getattr(streaming, name)), name


@pytest.mark.parametrize("inplace", [False, True])
def test_slot_fields_stay_contiguous_through_writes_and_merges(inplace):
    # the reads gather slots from a flat view; a field laid out otherwise (the inverse's column-major G) gathers
    # several times slower
    settings = SDAPMSettings(slots=4, word_size=8, max_rank=2)
    keys, values = unit(2, 9, 8, seed=29), unit(2, 9, 8, seed=30)
    state = sdapm.init_state(settings, 2)
    with torch.no_grad():
        for i in range(9):
            state = sdapm.consolidate(state, sdapm.closest_pair_selection(state), settings, 2,
                                      mask=sdapm.is_full(state), inplace=inplace)
            state = sdapm.write(state, keys[:, i], values[:, i], settings, inplace=inplace)
    assert state.rank.amax() > 0  # merges happened
    for name in sdapm.SLOT_FIELDS:
        assert getattr(state, name).is_contiguous(), name


def _stream_with_grad(settings, inplace, steps=12):
    """Read, consolidate when full and write, ``steps`` times under autograd; the reads, the last state and the
    gradients of the written keys, values and the read words."""
    keys, values = unit(2, steps, 8, seed=60).requires_grad_(), unit(2, steps, 8, seed=61).requires_grad_()
    words = unit(2, steps, settings.read_heads, 8, seed=62).requires_grad_()
    strengths = torch.full((2, settings.read_heads), 4.0)
    state, outs = sdapm.init_state(settings, 2), []
    for i in range(steps):
        out, state = sdapm.read(state, words[:, i], strengths, settings)
        outs.append(out)
        full = sdapm.is_full(state)
        state = sdapm.consolidate(state, sdapm.closest_pair_selection(state), settings, 2, mask=full, inplace=inplace)
        state = sdapm.write(state, keys[:, i], values[:, i], settings, inplace=inplace)
    outs = torch.stack(outs, 1)
    loss = (outs * torch.linspace(-1, 1, 8)).sum() + (state.value_factors * state.key_factors).sum() + state.value.sum()
    loss.backward()
    return outs, state, (keys.grad, values.grad, words.grad)


def test_inplace_updates_under_autograd_match_functional_ones_after_shortlisted_reads():
    """Shortlisted reads and the fixed consolidation rules keep nothing of the whole slot fields for the backward,
    so writes and merges may update them in place under autograd: same reads, state and gradients."""
    settings = SDAPMSettings(slots=6, word_size=8, read_heads=2, max_rank=4, read_top_k=2, read_candidates=4)
    (out_f, state_f, grads_f), (out_i, state_i, grads_i) = (_stream_with_grad(settings, x) for x in (False, True))
    assert torch.equal(out_f, out_i)
    for name, t in state_f.as_dict().items():
        assert torch.equal(t, getattr(state_i, name)), name
    for a, b in zip(grads_f, grads_i):
        assert a is not None and torch.allclose(a, b, atol=1e-6)
    # a dense read keeps every slot's factors for the backward: writing them in place afterwards fails loudly
    with pytest.raises(RuntimeError, match="inplace"):
        _stream_with_grad(dataclasses.replace(settings, read_top_k=None, read_candidates=None), True)


def test_shortlisted_sparse_read_matches_exact_top_k_on_raw_slots():
    exact = SDAPMSettings(slots=64, word_size=16, read_heads=3, read_top_k=4)
    shortlist = dataclasses.replace(exact, read_candidates=16)
    state = fill(exact, unit(2, 40, 16, seed=29), unit(2, 40, 16, seed=30))
    words, strengths = unit(2, 3, 16, seed=31), torch.full((2, 3), 5.0)
    a, sa = sdapm.read(state, words, strengths, exact)
    b, sb = sdapm.read(state, words, strengths, shortlist)
    # Raw slots: the centroid cosine is the exact score, so the shortlist holds the exact top-4.
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(sa.read_weights, sb.read_weights, atol=1e-6)
    with pytest.raises(ValueError, match="read_candidates"):
        SDAPMSettings(slots=8, word_size=8, read_candidates=4)


def test_top_k_indices_chooses_what_topk_chooses():
    """The shortlist's top-k by block maxima: the same indices as ``topk`` on distinct scores, best first, at sizes
    that take the blocks (N ≥ 8k, N a multiple of 4: recursing once or twice) and sizes that do not; the same
    scores where many tie (empty slots)."""
    from sdapm_hf.addressing import EMPTY_SCORE, top_k_indices

    gen = torch.Generator().manual_seed(41)
    for n, k in [(1024, 32), (4096, 32), (256, 32), (4096, 8), (520, 16), (130, 16), (64, 32), (512, 1)]:
        scores = torch.randn(3, 5, n, generator=gen)
        assert torch.equal(top_k_indices(scores, k), scores.topk(k).indices), (n, k)
    scores = torch.randn(2, 3, 512, generator=gen)
    scores[..., 40:] = EMPTY_SCORE
    idx = top_k_indices(scores, 64)
    assert torch.equal(scores.gather(-1, idx), scores.topk(64).values)
    assert (idx.sort(-1).values.diff(dim=-1) > 0).all()  # distinct slots


def test_the_shortlist_is_each_heads_best_occupied_slots_by_centroid_cosine():
    settings = SDAPMSettings(slots=256, word_size=16, read_heads=3, read_top_k=4, read_candidates=16)
    state = fill(settings, unit(2, 200, 16, seed=42), unit(2, 200, 16, seed=43))  # 56 slots stay empty
    words = unit(2, 3, 16, seed=44)
    cosine = F.cosine_similarity(words[:, :, None], state.key[:, None], dim=-1)  # (B, R, N)
    expected = cosine.masked_fill(~state.occupied[:, None], -2.0).topk(16, dim=-1).indices
    assert state.occupied.sum(-1).min() >= 16
    assert torch.equal(sdapm.shortlist_slots(state, words, 16), expected)


def test_least_used_slot_is_the_argmax_of_the_allocation_weights():
    from sdapm_hf.addressing import allocation_weighting, least_used_slot

    usage = torch.rand(64, 9, generator=torch.Generator().manual_seed(32))
    usage[:16] = (usage[:16] * 3).floor() / 2  # ties (0, 0.5, 1)
    usage[16:20] = 1.0  # every slot fully used
    slot, room = least_used_slot(usage)
    allocation = allocation_weighting(usage)
    assert torch.equal(room, allocation.amax(-1) > 0)
    assert torch.equal(slot[room], allocation.argmax(-1)[room])


def test_sparse_top_k_read_equals_the_dense_computation():
    """Exact top-K reads apply only the K chosen slots' maps; the dense path (taken with read modes) applies
    all N with zero weights elsewhere. Same outputs, read weights and gradients."""
    settings = SDAPMSettings(slots=12, word_size=8, read_heads=3, read_top_k=3, temporal_links=True)
    keys, values = unit(2, 10, 8, seed=33), unit(2, 10, 8, seed=34)
    state = fill(settings, keys, values)
    state = sdapm.consolidate(state, torch.tensor([[1.0, 0.8, 0.6] + [0.0] * 9] * 2), settings, 3)
    content_only = torch.tensor([0.0, 1.0, 0.0]).expand(2, 3, 3)
    results = []
    for modes in (None, content_only):
        leaf = state.map(lambda t: t.clone().requires_grad_() if t.is_floating_point() else t)
        words, strengths = unit(2, 3, 8, seed=35).requires_grad_(), torch.full((2, 3), 6.0, requires_grad=True)
        out, after = sdapm.read(leaf, words, strengths, settings, modes=modes)
        (out * torch.linspace(-1, 1, 8)).sum().backward()
        grads = [words.grad, strengths.grad] + [leaf.as_dict()[name].grad for name in sdapm.SLOT_FIELDS[:-1]]
        results.append((out, after.read_weights, [torch.zeros(1) if g is None else g for g in grads]))
    (sparse_out, sparse_weights, sparse_grads), (dense_out, dense_weights, dense_grads) = results
    assert torch.allclose(sparse_out, dense_out, atol=1e-6)
    assert torch.allclose(sparse_weights, dense_weights, atol=1e-7)
    assert (sparse_weights > 0).sum(-1).le(3).all()
    for a, b in zip(sparse_grads, dense_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_inplace_consolidation_of_larger_groups_under_a_mask_matches_functional():
    settings = SDAPMSettings(slots=8, word_size=8, read_heads=2, temporal_links=True)
    keys, values = unit(3, 8, 8, seed=36), unit(3, 8, 8, seed=37)
    state = fill(settings, keys, values)
    _, state = sdapm.read(state, unit(3, 2, 8, seed=38), torch.full((3, 2), 3.0), settings)
    selection = torch.rand(3, 8, generator=torch.Generator().manual_seed(39)) + 0.1
    mask = torch.tensor([True, False, True])
    with torch.no_grad():
        functional = sdapm.consolidate(state, selection, settings, 4, mask=mask)
        streaming = sdapm.consolidate(state.map(torch.clone), selection, settings, 4, mask=mask, inplace=True)
    for name, t in functional.as_dict().items():
        assert torch.equal(t, getattr(streaming, name)), name
        assert torch.equal(t[1], getattr(state, name)[1]), name
    merged, freed = selection[0].topk(4).indices[0], selection[0].topk(4).indices[1:]
    assert functional.usage[0, merged] == 1 and functional.usage[0, freed].eq(0).all()
    assert functional.age[0, merged] == state.age[0, selection[0].topk(4).indices].min()
    assert functional.read_weights[0][:, freed].eq(0).all() and functional.write_weights[0, freed].eq(0).all()


def test_the_demo_runs_end_to_end(capsys):
    from sdapm_hf.memory_demo import main

    main(["--slots", "4", "--word-size", "8", "--batch", "2"])
    printed = capsys.readouterr().out
    rules, bare = printed.split("with the stability rules ")[1].split(" (bound ")[0], printed.split("without them ")[1]
    assert float(rules) <= 19.0 and float(bare) > 19.0


@pytest.mark.parametrize("shape_static", [False, True], ids=["sized-by-its-ranks", "shape-static"])
def test_a_merge_within_rank_is_exact_whatever_else_its_batch_merges(shape_static, monkeypatch):
    """An element whose merge has at most r rows keeps them as they are (value and gradient), also when another
    element of its batch merges more than r rows (and keeps a top-r basis of them), and on the shape-static path
    that accelerators and torch.compile take."""
    settings = SDAPMSettings(slots=8, word_size=8, max_rank=3, ridge=1e-3, gain_max=None)
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(2, 8, 8, generator=g, dtype=torch.float64)
    # the second element's merged keys ±d (unit after normalisation): its 3 rows have rank 1, so a top-3 basis of
    # them depends on how the eigensolver completes it, and need not span the directions their gradient has
    keys[1, [0, 1, 2, 6]] = torch.tensor([1.0, -1.0, 3.0, -2.0], dtype=torch.float64)[:, None] * keys[1, 5]
    keys.requires_grad_()
    values = torch.randn(2, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    words = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)

    def group(batch, *slots):  # the first slot scores highest, so the merged slot takes its place
        selection = torch.zeros(batch, 8, dtype=torch.float64)
        selection[:, list(slots)] = torch.linspace(1.0, 0.8, len(slots), dtype=torch.float64)
        return selection

    def merged_reads(keys, values):
        b = keys.shape[0]
        state = sdapm.init_state(settings, b, dtype=torch.float64)
        for i in range(8):
            state = sdapm.write(state, keys[:, i], values[:, i], settings)
        state = sdapm.consolidate(state, group(b, 0, 1, 2), settings, group_size=3)  # rank 2
        state = sdapm.consolidate(state, group(b, 3, 4, 5), settings, group_size=3)  # rank 2
        last = torch.stack([group(1, 0, 3, 6)[0], group(1, 0, 6)[0]])[-b:]  # 2 + 2 + 2 rows; 2 + 1 rows
        state = sdapm.consolidate(state, last, settings, group_size=3)
        return read_all(state, settings, words[-b:])

    alone = merged_reads(keys[1:], values[1:])
    key_grad, value_grad = torch.autograd.grad(alone.sum(), (keys, values))
    if shape_static:
        monkeypatch.setattr(sdapm_merge, "host_reads_free", lambda t: False)
    batch = merged_reads(keys, values)
    torch.testing.assert_close(batch[1], alone[0], rtol=0, atol=1e-10)
    batch_key_grad, batch_value_grad = torch.autograd.grad(batch[1].sum(), (keys, values))
    torch.testing.assert_close(batch_key_grad, key_grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(batch_value_grad, value_grad, rtol=0, atol=1e-10)
