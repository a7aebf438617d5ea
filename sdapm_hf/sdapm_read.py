"""Reading the SDAPM memory: each head addresses slots by how well its word fits their key sets, and the read is the
mixture of the addressed slots' maps applied to the word.

For head ``r`` with (unit) read word ``x_r``::

    a_r = softmax_n(β_r · fit(x_r, slot n) + log u_n)      over occupied slots (addressing.subspace_fit; u the usage)
    y_r = Σ_n a_rn f_n(x_r) = Σ_n a_rn [(x_r − b_n) + c_n + (G_n X_n (x_r − b_n)ᵀ)ᵀ Y_n]

optionally over each head's top-K slots only, optionally mixed with the temporal forward/backward modes.

Why the mixture of maps: it is a convex combination of the slots' own predictions, so the stability bound on every
``f_n`` holds for the read, and a member key of a consolidated slot is recalled to float precision once its slot
wins the softmax. Why addressing by the slot's key subspace rather than its centroid: member keys sit at cosine
≈ 1/√g from their centroid, below random raw keys, so centroid routing loses members (design study §2.5, §3).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .addressing import (
    EMPTY_SCORE, content_weights, directional_weights, mix_read_modes, subspace_fit, top_k_indices, top_k_weights,
)
from .sdapm_state import NORM_EPS, MemoryState, SDAPMSettings, check_state, check_tensor
from .slot_tape import flat_rows, gather_rows


def read(
    state: MemoryState,
    words: torch.Tensor,
    strengths: torch.Tensor,
    settings: SDAPMSettings,
    modes: torch.Tensor | None = None,
    check: bool = True,
) -> tuple[torch.Tensor, MemoryState]:
    """Apply the addressed slots' maps to the read words.

    Args:
        state: the memory.
        words: (B, R, W) read words; each is both the query and the input of the maps (unit-normalised if
            ``settings.normalize_words``).
        strengths: (B, R) content sharpness β ≥ 0.
        settings: the memory's settings.
        modes: (B, R, 3) distribution over (backward, content, forward); needs ``temporal_links``.
        check: validate shapes, dtypes, devices and finiteness.

    Returns:
        outputs (B, R, W) and the state with the new ``read_weights``.
    """
    if check:
        b, heads, w = state.batch_size, settings.read_heads, settings.word_size
        check_state(state, settings)
        check_tensor("read words", words, (b, heads, w), state)
        check_tensor("read strengths", strengths, (b, heads), state)
        if modes is not None:
            if state.link is None:
                raise ValueError("read modes need settings.temporal_links=True")
            check_tensor("read modes", modes, (b, heads, 3), state)
    outputs, weights = read_queries(state, words, strengths, settings, modes)
    return outputs, dataclasses.replace(state, read_weights=weights)


def read_queries(
    state: MemoryState,
    words: torch.Tensor,
    strengths: torch.Tensor,
    settings: SDAPMSettings,
    modes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``read`` of Q read words against the same memory, in parallel, without checks or a new state.

    Q = R for the heads of one step; Q = C·R for the heads of C steps that all read the memory as it is
    (step-major: query ``c·R + r`` is head ``r`` of step ``c``), which is how a chunk of C steps reads.

    Args:
        words: (B, Q, W) read words, Q a multiple of R.
        strengths: (B, Q) content sharpness β ≥ 0.
        modes: (B, Q, 3) read modes; each step's head ``r`` follows the links from ``state.read_weights[:, r]``.

    Returns:
        outputs (B, Q, W) and the dense read weights (B, Q, N).
    """
    x = F.normalize(words, dim=-1) if settings.normalize_words else words
    n, top_k, candidates = settings.slots, settings.read_top_k, settings.read_candidates
    if modes is None and candidates is not None and candidates < n:
        outputs, weights, idx = _read_shortlist(state, x, strengths, settings)
    elif modes is None and top_k is not None and top_k < n:
        outputs, weights, idx = _read_top_k(state, x, strengths, settings)
    else:
        fit, q = _fit(x, state)
        weights = content_weights(fit, strengths, state.occupied, top_k, presence=state.usage)
        if modes is not None:
            forward, backward = directional_weights(state.link, state.read_weights)
            steps = x.shape[1] // forward.shape[1]
            weights = mix_read_modes(weights, forward.repeat(1, steps, 1), backward.repeat(1, steps, 1), modes)
        return _mixture(state.key, state.value, state.value_factors, x, weights, q), weights
    dense = torch.zeros(*x.shape[:2], n, dtype=x.dtype, device=x.device).scatter(-1, idx, weights)
    return outputs, dense


# What addressing streams, by name of the state field (each (B, N, ...)): ``subspace_fit``'s slot arguments.
ADDRESS_FIELDS = ("key", "key_factors", "key_offsets", "gram_inv", "radius")
# What the mixture of maps streams.
MAP_FIELDS = ("key", "value", "value_factors")


def _fit(x: torch.Tensor, state: MemoryState) -> tuple[torch.Tensor, torch.Tensor]:
    """``subspace_fit`` of queries x (B, R', W) against every slot of ``state``."""
    return subspace_fit(x, *(getattr(state, name) for name in ADDRESS_FIELDS))


def gather_candidates(state: MemoryState, shortlist: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the shortlisted read copies out of each candidate before it scores it: shortlist (B, R, C) → per field
    of ``ADDRESS_FIELDS``, ``mass`` and ``usage``, each head's candidates (B·R, C, ...)."""
    return _pick(state, (*ADDRESS_FIELDS, "mass", "usage"), shortlist)


def _pick(state: MemoryState, names: tuple[str, ...], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each head's own slots of the named fields: each (B, N, ...), idx (B, R, K) → (B·R, K, ...)."""
    b, heads, k = idx.shape
    rows = torch.arange(b, device=idx.device)[:, None, None].expand_as(idx)
    flat = flat_rows(rows, idx, state.mass.shape[1])
    fields = {name: getattr(state, name) for name in names}
    return {name: gather_rows(t, rows, idx, flat).view(b * heads, k, *t.shape[2:]) for name, t in fields.items()}


def _read_top_k(
    state: MemoryState, x: torch.Tensor, strengths: torch.Tensor, settings: SDAPMSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact sparse read: score every slot, then apply only the maps of each head's ``read_top_k`` best slots.

    Returns:
        outputs (B, R, W), weights (B, R, K) and their slot indices (B, R, K).
    """
    fit, q = _fit(x, state)
    weights, idx = top_k_weights(fit, strengths, state.occupied, settings.read_top_k, presence=state.usage)
    q = q.gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, q.shape[-1]))
    return _read_chosen(state, x, weights, idx, q), weights, idx


def _read_shortlist(
    state: MemoryState, x: torch.Tensor, strengths: torch.Tensor, settings: SDAPMSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-stage sparse read: shortlist ``read_candidates`` slots per head by centroid cosine (``O(N W)``), then
    score only those by subspace fit and read from the ``read_top_k`` best of them. Approximate: a consolidated
    slot whose centroid is far from the query can miss the shortlist (``scripts/bench_memory.py`` measures
    the recall this costs).

    Returns:
        as ``_read_top_k``.
    """
    b, heads, w = x.shape
    shortlist = shortlist_slots(state, x, settings.read_candidates)
    candidates = gather_candidates(state, shortlist)
    # (B·R, 1, C), (B·R, 1, C, r)
    fit, q = subspace_fit(x.reshape(b * heads, 1, w), *(candidates[name] for name in ADDRESS_FIELDS))
    weights, best = top_k_weights(
        fit,
        strengths.reshape(b * heads, 1),
        candidates["mass"] > 0,  # the shortlist's occupied slots, without a pass over all N
        settings.read_top_k,
        presence=candidates["usage"],
    )
    weights, best = weights.view(b, heads, -1), best.view(b, heads, -1)  # best indexes the shortlist
    q = q.view(b, heads, -1, q.shape[-1]).gather(2, best.unsqueeze(-1).expand(-1, -1, -1, q.shape[-1]))
    idx = shortlist.gather(-1, best)
    return _read_chosen(state, x, weights, idx, q), weights, idx


def shortlist_slots(state: MemoryState, x: torch.Tensor, candidates: int) -> torch.Tensor:
    """First stage of the shortlisted read: per head, the ``candidates`` occupied slots whose centroid has the
    largest cosine with the read word, in O(N W).

    Args:
        state: the memory.
        x: (B, R, W) read words (unit norm).
        candidates: C ≤ N.

    Returns:
        (B, R, C) slot indices, best first.
    """
    with torch.no_grad():  # a choice: nothing of the slots is kept for the backward
        # (B, N, R): the keys as the left factor, which streams them faster than x Kᵀ (the two forms of attention in
        # scripts/bench_memory.py compare it)
        dots = state.key @ x.transpose(1, 2)
        occupied = state.occupied
        scale = torch.where(occupied, state.key.norm(dim=-1).clamp_min(NORM_EPS).reciprocal(), 0.0)  # (B, N)
        coarse = torch.addcmul(torch.where(occupied, 0.0, EMPTY_SCORE)[..., None], dots, scale[..., None])
        return top_k_indices(coarse.transpose(1, 2).contiguous(), candidates)  # (B, R, N)


def _read_chosen(
    state: MemoryState, x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor, q: torch.Tensor
) -> torch.Tensor:
    """Read from K chosen slots per head: x (B, R, W), weights and idx (B, R, K), q (B, R, K, r) → (B, R, W).

    Only the chosen slots' maps are gathered (each head reads from its own K slots as a batch of one head)."""
    b, heads, k = idx.shape
    key, value, value_factors = _pick(state, MAP_FIELDS, idx).values()
    flat = (b * heads, 1)
    out = _mixture(key, value, value_factors, x.reshape(*flat, -1), weights.reshape(*flat, k), q.reshape(*flat, k, -1))
    return out.view(b, heads, -1)


def _mixture(
    key: torch.Tensor, value: torch.Tensor, value_factors: torch.Tensor, x: torch.Tensor, weights: torch.Tensor,
    q: torch.Tensor,
) -> torch.Tensor:
    """``y = Σ_n a_n [(x − b_n) + c_n + q_n Y_n]``: key, value (B, N, W), value_factors (B, N, r, W), x (B, R, W),
    weights (B, R, N), q (B, R, N, r) = G X (x − b)ᵀ from ``subspace_fit`` → (B, R, W)."""
    b, heads, n, r = q.shape
    corrections = (weights.unsqueeze(-1) * q).reshape(b, heads, n * r) @ value_factors.reshape(b, n * r, -1)
    return x * weights.sum(-1, keepdim=True) - weights @ key + weights @ value + corrections
