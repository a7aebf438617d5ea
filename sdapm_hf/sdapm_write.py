"""Writing the SDAPM memory: a pair becomes a raw slot that maps its key exactly to its value; a chunk of pairs
becomes one least-squares slot.

    write        slot ← (Bv = k, M = I, Bw = v)                           so f(k) = v exactly
    write_chunk  slot ← merge_slots({(k_t, v_t)}, a_t = g_t / max g)      the ridge fit through the chunk's pairs

The slot goes to the DNC write location (``location``): by default the least-used slot (``retention`` of the
free gates applied to usage first); its usage becomes the write gate, the other slots age by one write, and the
temporal links follow.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .addressing import (
    allocation_weighting, content_weights, least_used_slot, retention, subspace_fit, updated_links,
)
from .sdapm_merge import merge_slots
from .sdapm_read import ADDRESS_FIELDS
from .sdapm_state import (
    NORM_EPS, MemoryState, SDAPMSettings, SlotContents, check_mask, check_state, check_tensor, gate_or_ones,
    put_slots, select_fields,
)


def write(
    state: MemoryState,
    key: torch.Tensor,
    value: torch.Tensor,
    settings: SDAPMSettings,
    gate: torch.Tensor | None = None,
    free_gates: torch.Tensor | None = None,
    allocation_gate: torch.Tensor | None = None,
    write_strength: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    check: bool = True,
    inplace: bool = False,
) -> MemoryState:
    """Store the pair (key, value) as a raw slot ``(Bv = k, M = I, Bw = v)``, so that ``f(k) = v`` exactly.

    The slot is the best DNC write location, ``g_a · allocation + (1 − g_a) · content(key)`` (allocation alone
    by default: the least-used slot, the lowest index among equals; the oldest slot when every slot is fully
    used). The choice is discrete and carries no gradient: a
    straight-through gradient through it, flowing into every slot field at every step, was measured to
    destabilise training (loss spikes after convergence on the copy task); gradients reach the written key,
    value and gate, and through usage the free gates.
    The gate sets the pair's presence: the written slot's usage becomes ``gate``, and reads weight slots by
    usage (``read``), so a pair written with a small gate is seldom read and is the first to be overwritten.
    Where ``mask`` is False the state is bit-identical.

    Args:
        key, value: (B, W).
        gate: (B,) write gate in [0, 1] (default 1).
        free_gates: (B, R) DNC free gates applied to usage with the last read weights before allocating.
        allocation_gate: (B,) g_a; None writes by allocation only.
        write_strength: (B,) β of the content write location (default 1) when ``allocation_gate`` is given.
        mask: (B,) bool, False where this batch element must not change (padding, finished sequences).
        inplace: update the slot tensors of ``state`` in place (``put_slots``: a write then costs O(r W) instead of a
            copy of the memory).
    """
    if check:
        b, w = state.batch_size, settings.word_size
        check_state(state, settings)
        check_tensor("write key", key, (b, w), state)
        check_tensor("write value", value, (b, w), state)
        if free_gates is not None:
            check_tensor("free gates", free_gates, (b, settings.read_heads), state)
        if mask is not None:
            check_mask("write mask", mask, state)
    gate = gate_or_ones("write gate", gate, state, check)
    k = F.normalize(key, dim=-1) if settings.normalize_words else key
    v = clip_norm(value, settings.value_max)
    where = location(state, settings, k, free_gates, allocation_gate, write_strength, check)
    return _store(state, raw_slots(k, v, settings.rank), where, gate, mask, inplace)


def write_chunk(
    state: MemoryState,
    keys: torch.Tensor,
    values: torch.Tensor,
    settings: SDAPMSettings,
    gates: torch.Tensor,
    free_gates: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    check: bool = True,
    inplace: bool = False,
) -> MemoryState:
    """Store the C pairs of a chunk of steps as ONE slot: the least-squares affine map through them.

    The pairs enter as C raw slots ``(k_t, v_t)`` merged exactly as ``consolidate`` merges slots
    (``merge_slots``: ridge least squares under the rank, mass and gain rules), with soft weights
    ``a_t = g_t / max_s g_s``; so ``f(k_t) = v_t`` up to the ridge for C ≤ W + 1 affinely independent keys when
    ``max_rank ≥ C − 1``, least squares beyond. The slot goes where ``write`` puts a pair (allocation only), and
    its usage becomes ``max_t g_t`` (a merged slot's presence is its strongest member's). One pair with gate g is
    ``write``'s raw slot. Where ``mask`` is False or no gate is positive, the state is bit-identical.

    Args:
        keys, values: (B, C, W).
        gates: (B, C) write gates in [0, 1]; 0 at the positions that do not count.
        free_gates: (B, Q) free gates of the reads in ``state.read_weights`` (B, Q, N), applied to usage before
            allocating (Q = C·R when the state carries the reads of every step of the chunk).
        mask: (B,) bool, False where this batch element must not change.
        inplace: as in ``write``.
    """
    b, c = keys.shape[:2]
    if check:
        check_state(state, settings)
        check_tensor("chunk write keys", keys, (b, c, settings.word_size), state)
        check_tensor("chunk write values", values, (b, c, settings.word_size), state)
        check_tensor("chunk write gates", gates, (b, c), state)
        if free_gates is not None:
            check_tensor("free gates", free_gates, tuple(state.read_weights.shape[:2]), state)
        if mask is not None:
            check_mask("chunk write mask", mask, state)
    k = F.normalize(keys, dim=-1) if settings.normalize_words else keys
    v = clip_norm(values, settings.value_max)
    strongest = gates.amax(-1)
    weights = gates / strongest.clamp_min(torch.finfo(gates.dtype).tiny)[:, None]
    member = weights > 0
    merged = merge_slots(raw_slots(k, v, settings.rank), weights, member, settings)
    do = member.any(-1) if mask is None else member.any(-1) & mask
    where = location(state, settings, merged.key, free_gates, None, None, check)
    return _store(state, merged, where, strongest, do, inplace)


def location(
    state: MemoryState,
    settings: SDAPMSettings,
    key: torch.Tensor,
    free_gates: torch.Tensor | None,
    allocation_gate: torch.Tensor | None,
    write_strength: torch.Tensor | None,
    check: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where ``write`` puts a slot whose key is ``key`` (B, W) (its docstring): slot (B,) and the usage (B, N)
    after the free gates ``ψ = Π_q (1 − f_q w_q)`` over the reads in ``state.read_weights``."""
    usage = state.usage
    if free_gates is not None:
        usage = usage * retention(free_gates, state.read_weights)
    if allocation_gate is None:
        # Allocation only: the argmax of the allocation weights, without sorting.
        slot, room = least_used_slot(usage.detach())
    else:
        with torch.no_grad():
            allocation = allocation_weighting(usage)
            g_a = gate_or_ones("allocation gate", allocation_gate, state, check)
            beta = gate_or_ones("write strength", write_strength, state, check)
            fit, _ = subspace_fit(key[:, None], *(getattr(state, name) for name in ADDRESS_FIELDS))
            content = content_weights(fit, beta[:, None], state.occupied)[:, 0]
            mixed = g_a[:, None] * allocation + (1.0 - g_a[:, None]) * content
        slot, room = mixed.argmax(-1), mixed.amax(-1) > 0
    # The best location; when every slot is fully used (no free slot, no consolidation), the oldest.
    return torch.where(room, slot, state.age.argmax(-1)), usage


def _store(
    state: MemoryState,
    contents: SlotContents,
    where: tuple[torch.Tensor, torch.Tensor],
    presence: torch.Tensor,
    mask: torch.Tensor | None,
    inplace: bool,
) -> MemoryState:
    """Put one slot's ``contents`` (each field (B, ...)) at ``where`` = (slot (B,), usage (B, N) from
    ``location``): its usage becomes ``presence`` (B,), its age 0, the others age by one write; the temporal links
    follow. Where ``mask`` (B,) is False the state is bit-identical."""
    slot, usage = where
    index = slot[:, None]
    active = torch.ones_like(index, dtype=torch.bool) if mask is None else mask[:, None]
    fields = {name: t.unsqueeze(1) for name, t in contents.as_dict().items()}
    new = put_slots(state, fields, index, active, inplace)
    # The bookkeeping of every batch element as if it wrote (one pass over the N slots per field): where ``mask``
    # is False, ``select_fields`` below keeps the old fields.
    weights = torch.zeros_like(usage).scatter_(1, index, 1.0)
    link, precedence = state.link, state.precedence
    if link is not None:
        link, precedence = updated_links(link, precedence, weights)
    new = dataclasses.replace(
        new,
        usage=usage.scatter(1, index, presence[:, None]),
        age=(state.age + 1.0).scatter_(1, index, 0.0),
        write_weights=weights,
        link=link,
        precedence=precedence,
    )
    if mask is None:
        return new
    return select_fields(mask, new, state, fields=("usage", "age", "write_weights", "link", "precedence"))


def clip_norm(v: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    """``v`` scaled down to norm ``max_norm`` where longer (None: unchanged)."""
    if max_norm is None:
        return v
    return v * (max_norm / v.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)).clamp(max=1.0)


def raw_slots(k: torch.Tensor, v: torch.Tensor, rank: int) -> SlotContents:
    """Slots that hold one written pair each: k, v (..., W) → contents with leading (...)."""
    lead, w = k.shape[:-1], k.shape[-1]
    zero = k.new_zeros(())  # the empty factors as broadcast views of one zero: nothing to allocate or fill
    return SlotContents(
        key=k,
        value=v,
        mass=k.new_ones(lead),
        radius=zero.expand(lead),
        key_factors=zero.expand(*lead, rank, w),
        value_factors=zero.expand(*lead, rank, w),
        gram_inv=zero.expand(*lead, rank, rank),
        key_offsets=zero.expand(*lead, rank),
        rank=torch.zeros(lead, dtype=torch.long, device=k.device),
    )
