"""Which SDAPM slots to consolidate: the fixed rules, and the learned head that sees slot metadata.

Every rule returns a selection (B, N) ≥ 0 for ``sdapm_merge.consolidate``, whose top entries form the group:

* ``closest_pair_selection`` ("auto"): the lightest occupied slot and the slot that minimises
  ``mass_j − cos(Bv_i, Bv_j)`` (similar and small, so groups stay balanced);
* ``least_used_pair_selection`` ("usage"): the same with usage for mass: the slots written with the smallest gates
  merge first, so what the controller gated high stays exact;
* ``relative_usage_pair_selection`` ("relative_usage"): the same with each usage divided by the memory's largest,
  so that a slot gated far above the rest is not the partner of a merge for a cosine that is only a little higher;
* ``most_similar_pair_selection`` ("similar"): the two slots whose keys have the highest cosine;
* ``ConsolidationHead`` ("learned"): ``softmax_n(β · fit(q, slot n) + w · meta_n)`` over occupied slots, with a
  gate from the controller's consolidation gate and the memory's mean metadata. The seed found that giving the
  consolidator metadata (usage, age, member count, fit residual) halved the loss: ``slot_metadata``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .addressing import EMPTY_SCORE
from .sdapm_state import NORM_EPS, MemoryState

# How much a slot's age, as age/(1 + age) < 1, counts in the choice of the slot to merge first: under a unit of mass
# (integer-like, so ties in mass go to the oldest), and far under any difference of usage that matters.
MASS_TIE_BREAK = 1.0
USAGE_TIE_BREAK = 1e-6
# Smallest mass a fit residual is divided by (``slot_metadata``; empty slots have mass 0).
MASS_EPS = 1e-6
# Gates are clamped this far from 0 and 1 before their logit is taken.
GATE_EPS = 1e-6
META_FEATURES = 5


def is_full(state: MemoryState) -> torch.Tensor:
    """(B,) bool: every slot holds something, so the next write overwrites a stored pair unless a consolidation
    frees a slot first."""
    return state.mass.amin(-1) > 0  # one pass over the slots


def closest_pair_selection(state: MemoryState) -> torch.Tensor:
    """Consolidate-when-full policy in O(N W): the lightest occupied slot (the oldest among equals) and the
    occupied slot that minimises ``mass_j − cos(Bv_i, Bv_j)`` (similar and small, so groups stay balanced).

    Returns:
        (B, N) selection with 1 on the two chosen slots (use with ``group_size=2``).
    """
    return _nearest_pair(state, state.mass, MASS_TIE_BREAK)


def _nearest_pair(state: MemoryState, weight: torch.Tensor, tie_break: float) -> torch.Tensor:
    """(B, N) selection of the occupied slot i of least ``weight − tie_break · age/(1 + age)`` (weight (B, N); the
    oldest among equals) and the occupied slot j ≠ i of least ``weight_j − cos(Bv_i, Bv_j)``. A choice, without
    gradient: nothing of the slots is kept for the backward."""
    n = state.mass.shape[1]
    occupied = state.occupied
    with torch.no_grad():
        lightness = weight - tie_break * state.age / (1.0 + state.age)
        first = lightness.masked_fill(~occupied, float("inf")).argmin(-1)
        norms = state.key.norm(dim=-1).clamp_min(NORM_EPS)  # cosines without a normalised copy of every key
        pick = first[:, None, None].expand(-1, 1, state.key.shape[-1])
        anchor = state.key.gather(1, pick) / norms.gather(1, first[:, None]).unsqueeze(-1)  # (B, 1, W), unit
        cosine = (state.key @ anchor.transpose(1, 2)).squeeze(-1) / norms
        cost = weight - cosine
        forbidden = ~occupied | F.one_hot(first, n).bool()
        second = cost.masked_fill(forbidden, float("inf")).argmin(-1)
        return _pair(state, first, second)


def least_used_pair_selection(state: MemoryState) -> torch.Tensor:
    """Consolidate-when-full policy in O(N W): the least-used occupied slot (the oldest among equals) and the
    occupied slot that minimises ``usage_j − cos(Bv_i, Bv_j)`` (little used and similar): what the writes gated
    least is compressed first, and a slot written with a high gate stays exact while others are less used.

    The pair's selection is its usage (at least the smallest normal float), so the merge weighs each slot's pairs
    by its usage relative to the other's: the more used slot's map dominates the merged one, and how much the other
    blurs it is differentiable in both usages (in the write gates that set them). Merge it with
    ``merged_usage="weighted"`` (the merged usage is then their usage-weighted mean, which repeated merges of
    little-used slots do not raise).

    Returns:
        (B, N) selection with the usages of the two chosen slots there, 0 elsewhere (use with ``group_size=2``).
    """
    return _usage_pair(state, state.usage)


def relative_usage_pair_selection(state: MemoryState) -> torch.Tensor:
    """``least_used_pair_selection`` with every usage divided by the largest in its memory (in [0, 1]): the partner
    minimises ``usage_j / max_n usage_n − cos(Bv_i, Bv_j)``. Usages are write gates, often far below 1, and a cosine
    varies by up to 2: with raw usages the slot the controller gated highest is the partner of any lightly gated slot
    whose key is a little closer to it, and repeated merges can blur it; relative to the largest usage, it pays a
    full unit of cosine for it.

    Returns:
        (B, N) selection with the usages of the two chosen slots there, 0 elsewhere (use with ``group_size=2``).
    """
    return _usage_pair(state, state.usage / state.usage.amax(-1, keepdim=True).clamp_min(_tiny(state.usage)))


def _usage_pair(state: MemoryState, weight: torch.Tensor) -> torch.Tensor:
    """The pair ``_nearest_pair`` chooses by ``weight`` (B, N), selected with the two slots' usages."""
    return _nearest_pair(state, weight, USAGE_TIE_BREAK) * state.usage.clamp_min(_tiny(state.usage))


def _tiny(t: torch.Tensor) -> float:
    """The smallest normal float of ``t``'s dtype."""
    return torch.finfo(t.dtype).tiny


def most_similar_pair_selection(state: MemoryState) -> torch.Tensor:
    """Consolidate-when-full policy in O(N² W): the two occupied slots whose keys have the highest cosine
    ``cos(Bv_i, Bv_j)``, whatever their mass and age: redundant slots merge first, and a distinct slot stays
    exact while near-duplicates exist (``closest_pair_selection`` instead always takes the lightest slot,
    however unlike the others it is).

    Returns:
        (B, N) selection with 1 on the two chosen slots (use with ``group_size=2``); a choice, without gradient.
    """
    n = state.mass.shape[1]
    with torch.no_grad():
        unit = state.key / state.key.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)
        cosine = unit @ unit.transpose(1, 2)  # (B, N, N)
        pair = state.occupied[:, :, None] & state.occupied[:, None, :]
        pair = pair & ~torch.eye(n, dtype=torch.bool, device=pair.device)
        best = cosine.masked_fill(~pair, -float("inf")).flatten(1).argmax(-1)
    return _pair(state, best // n, best % n)


def _pair(state: MemoryState, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(B, N) selection with 1 on slots ``first`` and ``second`` (B,)."""
    selection = torch.zeros_like(state.mass)
    selection.scatter_(1, first[:, None], 1.0)
    selection.scatter_(1, second[:, None], 1.0)
    return selection


def slot_metadata(state: MemoryState, ridge: float) -> torch.Tensor:
    """(B, N, 5) per-slot features for the consolidation head: usage, age/(1+age), log(1+mass), rank/r and the
    slot's ridge fit residual per unit mass ``‖λA · G Y‖²_F / A``."""
    mass = state.mass
    residual = (ridge * mass).pow(2) * (state.gram_inv @ state.value_factors).pow(2).sum((-1, -2))
    residual = residual / mass.clamp_min(MASS_EPS)
    rank = state.rank.to(mass.dtype) / state.key_factors.shape[2]
    return torch.stack([state.usage, state.age / (1.0 + state.age), torch.log1p(mass), rank, residual], dim=-1)


class ConsolidationHead(nn.Module):
    """Which slots to merge and whether to, from the controller's consolidation query and slot metadata."""

    def __init__(self) -> None:
        super().__init__()
        self.meta_score = nn.Linear(META_FEATURES, 1)
        self.meta_gate = nn.Linear(META_FEATURES + 1, 1)
        # The gate starts from the memory's fullness alone; the selection starts as "merge the lightest slots"
        # (weight −4 on log(1 + mass)), which keeps groups balanced, and learns from there.
        self.meta_score.init_std = self.meta_gate.init_std = 0.0
        self.meta_score.init_weight = [0.0, 0.0, -4.0, 0.0, 0.0]

    def forward(
        self, fit: torch.Tensor, strength: torch.Tensor, gate: torch.Tensor, meta: torch.Tensor,
        occupied: torch.Tensor, full: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """fit (B, N) of the consolidation key, strength (B,), gate (B,) in [0, 1], meta (B, N, F),
        occupied (B, N), full (B,) → selection weights (B, N) and gate (B,)."""
        scores = strength[:, None] * fit + self.meta_score(meta).squeeze(-1)
        scores = scores.masked_fill(~occupied, EMPTY_SCORE)
        selection = torch.softmax(scores, dim=-1) * occupied.to(scores.dtype)
        summary = torch.cat([(meta * occupied[..., None]).mean(1), full[:, None].to(meta.dtype)], dim=-1)
        logit = torch.logit(gate.clamp(GATE_EPS, 1 - GATE_EPS)) + self.meta_gate(summary).squeeze(-1)
        return selection, torch.sigmoid(logit)
