"""The classic DNC memory (Graves et al. 2016): an N × W matrix with erase/add writes. The baseline that
``memory_type="dnc"`` puts behind the same controller and interface as the SDAPM.

    content    c = softmax(β cos(k, M_n))
    write      w = g_w (g_a a + (1 − g_a) c_w),   M ← M ⊙ (1 − wᵀ e) + wᵀ v
    read       r = w_r M,   w_r = π_b b + π_c c_r + π_f f      (temporal links optional)

Shapes: ``B`` batch, ``R`` read heads, ``N`` slots, ``W`` word size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .addressing import (
    allocation_weighting,
    content_weights,
    cosine_similarity,
    directional_weights,
    mix_read_modes,
    retention,
    updated_links,
    updated_usage,
)
from .tensor_state import TensorState


@dataclass(frozen=True)
class DNCMemorySettings:
    """Sizes of a classic DNC memory (``read_top_k``: sparse content reads over the K best slots)."""

    slots: int
    word_size: int
    read_heads: int = 1
    read_top_k: int | None = None
    temporal_links: bool = False

    def __post_init__(self) -> None:
        if self.read_top_k is not None and not 1 <= self.read_top_k <= self.slots:
            raise ValueError(f"read_top_k must be in [1, slots={self.slots}] or None, got {self.read_top_k}")


@dataclass(frozen=True)
class DNCMemoryState(TensorState):
    memory: torch.Tensor  # (B, N, W)
    usage: torch.Tensor  # (B, N)
    read_weights: torch.Tensor  # (B, R, N)
    write_weights: torch.Tensor  # (B, N)
    link: torch.Tensor | None = None  # (B, N, N)
    precedence: torch.Tensor | None = None  # (B, N)


def init_state(
    settings: DNCMemorySettings, batch_size: int, dtype: torch.dtype = torch.float32, device=None
) -> DNCMemoryState:
    n, opts = settings.slots, {"dtype": dtype, "device": device}
    links = settings.temporal_links
    return DNCMemoryState(
        memory=torch.zeros(batch_size, n, settings.word_size, **opts),
        usage=torch.zeros(batch_size, n, **opts),
        read_weights=torch.zeros(batch_size, settings.read_heads, n, **opts),
        write_weights=torch.zeros(batch_size, n, **opts),
        link=torch.zeros(batch_size, n, n, **opts) if links else None,
        precedence=torch.zeros(batch_size, n, **opts) if links else None,
    )


def read(
    state: DNCMemoryState,
    keys: torch.Tensor,
    strengths: torch.Tensor,
    settings: DNCMemorySettings,
    modes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, DNCMemoryState]:
    """Read vectors (B, R, W) for keys (B, R, W) and strengths (B, R); modes (B, R, 3) need temporal links."""
    everywhere = torch.ones(state.usage.shape, dtype=torch.bool, device=keys.device)
    weights = content_weights(cosine_similarity(keys, state.memory), strengths, everywhere, settings.read_top_k)
    if modes is not None:
        forward, backward = directional_weights(state.link, state.read_weights)
        weights = mix_read_modes(weights, forward, backward, modes)
    return weights @ state.memory, dataclasses.replace(state, read_weights=weights)


def write(
    state: DNCMemoryState,
    key: torch.Tensor,
    value: torch.Tensor,
    settings: DNCMemorySettings,
    gate: torch.Tensor,
    free_gates: torch.Tensor,
    allocation_gate: torch.Tensor,
    write_strength: torch.Tensor,
    erase: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> DNCMemoryState:
    """Erase/add write of value (B, W) at the DNC write weighting; gates (B,), free gates (B, R), erase (B, W)."""
    usage = state.usage * retention(free_gates, state.read_weights)
    everywhere = torch.ones(usage.shape, dtype=torch.bool, device=key.device)
    content = content_weights(cosine_similarity(key[:, None], state.memory), write_strength[:, None], everywhere)
    location = allocation_gate[:, None] * allocation_weighting(usage) + (1 - allocation_gate[:, None]) * content[:, 0]
    weights = gate[:, None] * location
    memory = state.memory * (1 - weights.unsqueeze(-1) * erase.unsqueeze(1)) + weights.unsqueeze(-1) * value.unsqueeze(1)
    link, precedence = state.link, state.precedence
    if link is not None:
        link, precedence = updated_links(link, precedence, weights)
    new = dataclasses.replace(
        state, memory=memory, usage=updated_usage(usage, weights), write_weights=weights, link=link,
        precedence=precedence,
    )
    return new if mask is None else new.where(mask, state)
