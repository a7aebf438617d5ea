"""Where the memory looks: content and subspace scores, sparse softmax, usage and allocation, temporal links.

Each function is one DNC addressing mechanism, batch-first and differentiable, in pure torch.
Shapes: ``B`` batch, ``R`` read heads, ``N`` slots, ``W`` word size, ``r`` stored rank of a slot.

Content addressing of SDAPM slots (the slot's own key set, not its centroid)
----------------------------------------------------------------------------
A slot stores the centroid ``b`` of its member keys and a factor ``X (r, W)`` of their centred scatter
``S = Xᵀ X = Σ_j a_j (k_j − b)ᵀ(k_j − b)`` with ``G = (X Xᵀ + λA I)⁻¹`` cached (``A`` the slot's mass).
For a query ``x`` with ``z = x − b``::

    residual(z) = λA · z (S + λA I)⁻¹ zᵀ = ‖z‖² − (X zᵀ)ᵀ G (X zᵀ)      (≈ part of z outside the key span)
    novelty(z)  = residual(z) + max(0, ‖z‖ − ρ)²                          (ρ² = tr S / A, the member radius)
    fit(x)      = 1 − novelty(z) / 4

A raw slot (one pair, ``X = 0``) has ``residual = ‖z‖²`` and ``ρ = 0``, so for a unit query and a unit key
``fit = cos(x, b)``: plain DNC cosine addressing is the special case. A consolidated slot scores
``fit ≈ 1`` for every query inside the hull of its member keys, however far from the centroid, which is what
makes a merged slot findable by each of its members (centroid cosine loses 10–47% of them, see the design study).

Content weights: ``c_r = softmax_n(β_r · fit_rn + log u_n)`` over occupied slots (``u`` a per-slot presence,
the SDAPM's usage), optionally only over the top-K.
"""

from __future__ import annotations

import torch

# Score given to empty slots: finite (so gradients stay finite), and exp(EMPTY − max) underflows to exactly 0.
EMPTY_SCORE = -1.0e9
# Smallest squared distance a square root is taken of: its gradient stays finite at a query on a centroid.
DISTANCE_EPS = 1e-12
# ε in the DNC's cosine norms, so that empty rows score 0.
COSINE_EPS = 1e-6
# Scores per block in ``top_k_indices``.
TOP_K_BLOCK = 4


def subspace_fit(
    words: torch.Tensor,
    keys: torch.Tensor,
    key_factors: torch.Tensor,
    key_offsets: torch.Tensor,
    gram_inv: torch.Tensor,
    radius: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """How well each query fits each slot's key set.

    Args:
        words: (B, R, W) queries (unit norm).
        keys: (B, N, W) slot centroids ``b``.
        key_factors: (B, N, r, W) factors ``X`` of the centred key scatter.
        key_offsets: (B, N, r) ``X bᵀ``, cached per slot.
        gram_inv: (B, N, r, r) ``G = (X Xᵀ + λA I)⁻¹``.
        radius: (B, N) RMS member radius ``ρ``.

    Returns:
        fit (B, R, N) as in the module docstring, and ``q = G X (x − b)ᵀ`` (B, R, N, r), which the read reuses
        so that the slot factors are streamed once.
    """
    b, heads, w = words.shape
    n, r = key_factors.shape[1], key_factors.shape[2]
    # z = x − b without materialising (B, R, N, W): X zᵀ = X xᵀ − X bᵀ, ‖z‖² = ‖x‖² − 2 x·b + ‖b‖².
    p = (words @ key_factors.reshape(b, n * r, w).transpose(1, 2)).view(b, heads, n, r) - key_offsets[:, None]
    q = apply_gram(gram_inv, p)
    z2 = (
        words.pow(2).sum(-1, keepdim=True)
        - 2.0 * words @ keys.transpose(1, 2)
        + torch.linalg.vector_norm(keys, dim=-1).square()[:, None]
    ).clamp_min(0.0)
    residual = (z2 - (p * q).sum(-1)).clamp_min(0.0)  # a product and a sum: einsum's tiny bmms are slower
    excess = (z2.clamp_min(DISTANCE_EPS).sqrt() - radius[:, None]).clamp_min(0.0)
    return 1.0 - 0.25 * (residual + excess.pow(2)), q


def apply_gram(gram_inv: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``q = G p`` per slot and head: gram_inv (B, N, r, r), p (B, R, N, r) → (B, R, N, r).

    One batched matmul over the B·N slots, each applying its G to the R heads' rows at once (``p Gᵀ``); no copy of
    G per head. With torch 2.13 on CPU this beats r multiply-adds of G's columns at every size measured, from one
    head (B = 1, N = 16, r = 32: 7× faster forward) to B = 32, R = 4, N = 1024, r = 8 (1.9× forward, 1.4× with
    the backward), and a chunk's C·R heads (C = 64: 30×).
    """
    return (p.transpose(1, 2) @ gram_inv.transpose(-1, -2)).transpose(1, 2)


def cosine_similarity(words: torch.Tensor, rows: torch.Tensor, eps: float = COSINE_EPS) -> torch.Tensor:
    """DNC content similarity ``x · m / (‖x‖ ‖m‖)``, with ε in the norms so that empty rows score 0.

    Args:
        words: (B, R, W); rows: (B, N, W).

    Returns:
        (B, R, N).
    """
    dots = torch.einsum("brw,bnw->brn", words, rows)
    norms = words.norm(dim=-1).unsqueeze(-1) * rows.norm(dim=-1).unsqueeze(-2)
    return dots / (norms + eps)


def content_weights(
    fit: torch.Tensor,
    strengths: torch.Tensor,
    occupied: torch.Tensor,
    top_k: int | None = None,
    presence: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax over occupied slots of ``β · fit + log(presence)``, optionally sparse.

    Args:
        fit: (B, R, N) scores in about [−1, 1].
        strengths: (B, R) sharpness ``β ≥ 0``.
        occupied: (B, N) bool, slots that hold something.
        top_k: keep only the K best slots per head (gradient reaches only those, as in SAM).
        presence: (B, N) in [0, 1], a prior weight per slot (the SDAPM's usage).

    Returns:
        (B, R, N) weights; each row sums to 1, or is all zeros when the memory is empty.
    """
    if top_k is not None and top_k < fit.shape[-1]:
        weights, idx = top_k_weights(fit, strengths, occupied, top_k, presence)
        return torch.zeros_like(fit).scatter(-1, idx, weights)
    weights = torch.softmax(_content_scores(fit, strengths, occupied, presence), dim=-1)
    return weights * occupied.any(-1).to(weights.dtype)[:, None, None]


def top_k_weights(
    fit: torch.Tensor,
    strengths: torch.Tensor,
    occupied: torch.Tensor,
    top_k: int,
    presence: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``content_weights`` with ``top_k`` in compact form: the weights of the K best slots and their indices.

    Args: as ``content_weights``.

    Returns:
        weights (B, R, K), each row summing to 1 (all zeros when the memory is empty), and the slot indices
        (B, R, K), best first; K = min(top_k, N).
    """
    scores = _content_scores(fit, strengths, occupied, presence)
    best, idx = scores.topk(min(top_k, scores.shape[-1]), dim=-1)
    weights = torch.softmax(best, dim=-1)
    return weights * occupied.any(-1).to(weights.dtype)[:, None, None], idx


def top_k_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The indices of the k largest scores along the last dimension, largest first: ``scores.topk(k).indices``, the
    same slots (among equal scores possibly others of the same score), faster where k is a large part of N.

    Every one of the k largest scores lies in a block whose maximum is among the k largest block maxima (a block
    whose maximum ranks below k holds nothing above the k larger maxima), so with blocks of 4 the top k of N is the
    top k of the 4k scores of those blocks, and the top k blocks come the same way from the N / 4 maxima. A block
    is 4 scores N / 4 apart, so its maxima are the elementwise maximum of four contiguous quarters. On the CPU,
    torch 2.13 selects each row's k best by ``nth_element`` over all N unless N ≥ 64 k; here the selections run
    over at most 4k scores (the shortlist pass of ``scripts/bench_memory.py`` takes its top 32 of 1,024 so).

    Args:
        scores: (..., N).
        k: how many, ≤ N.

    Returns:
        (..., k) indices into the last dimension, best first.
    """
    return _top_k_indices(scores, k, ordered=True)


def _top_k_indices(scores: torch.Tensor, k: int, ordered: bool) -> torch.Tensor:
    """``top_k_indices``, best first only where ``ordered`` (the blocks' own order does not matter)."""
    n = scores.shape[-1]
    if n < 8 * k or n % TOP_K_BLOCK:
        return scores.topk(k, dim=-1, sorted=ordered).indices
    stride = n // TOP_K_BLOCK
    blocks = scores.unflatten(-1, (TOP_K_BLOCK, stride))  # block j: the scores j, j + N/4, j + N/2, j + 3N/4
    best_blocks = _top_k_indices(blocks.amax(-2), k, ordered=False)  # (..., k)
    members = blocks.gather(-1, best_blocks.unsqueeze(-2).expand(*blocks.shape[:-1], k)).flatten(-2)  # (..., 4k)
    best = members.topk(k, dim=-1, sorted=ordered).indices  # member t·k + i is score t·N/4 + best_blocks[i]
    return best_blocks.gather(-1, best % k) + best // k * stride


def _content_scores(
    fit: torch.Tensor, strengths: torch.Tensor, occupied: torch.Tensor, presence: torch.Tensor | None
) -> torch.Tensor:
    """(B, R, N) logits ``β · fit + log(presence)``, ``EMPTY_SCORE`` on empty slots."""
    scores = strengths.unsqueeze(-1) * fit
    if presence is not None:
        scores = scores + torch.log(presence.clamp_min(torch.finfo(scores.dtype).tiny))[:, None]
    return scores.masked_fill(~occupied[:, None, :], EMPTY_SCORE)


def allocation_weighting(usage: torch.Tensor) -> torch.Tensor:
    """DNC allocation: ``a[φ_j] = (1 − u[φ_j]) Π_{i<j} u[φ_i]`` with φ the slots sorted by ascending usage.

    Args:
        usage: (B, N) in [0, 1].

    Returns:
        (B, N) allocation weights (sum ≤ 1). Ties are broken by slot index, so the result does not depend on
        how many empty slots follow the used ones.
    """
    sorted_usage, order = torch.sort(usage, dim=-1, stable=True)
    shifted = torch.cat([torch.ones_like(sorted_usage[:, :1]), sorted_usage[:, :-1]], dim=-1)
    sorted_alloc = (1.0 - sorted_usage) * torch.cumprod(shifted, dim=-1)
    return torch.zeros_like(usage).scatter(-1, order, sorted_alloc)


def least_used_slot(usage: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The argmax of ``allocation_weighting(usage)`` in O(N), for usage in [0, 1]: the least used slot.

    Its allocation weight ``1 − u_min`` is the largest (every other slot's is at most ``(1 − u_j) u_min``), and
    ties go to the lowest index, as in ``allocation_weighting``.

    Args:
        usage: (B, N) in [0, 1].

    Returns:
        slot (B,) and whether its allocation weight is positive (B,) bool (False when every slot is fully used).
    """
    lowest, slot = usage.min(dim=-1)
    return slot, lowest < 1.0


def retention(free_gates: torch.Tensor, read_weights: torch.Tensor) -> torch.Tensor:
    """DNC memory retention ``ψ = Π_r (1 − f_r w_r^read)``.

    Args:
        free_gates: (B, R) in [0, 1].
        read_weights: (B, R, N) the previous step's read weights.

    Returns:
        (B, N) factor applied to usage before allocation.
    """
    factors = 1.0 - free_gates.unsqueeze(-1) * read_weights
    return factors[:, 0] if factors.shape[1] == 1 else factors.prod(dim=1)  # one head: no product to take


def updated_usage(usage: torch.Tensor, write_weights: torch.Tensor) -> torch.Tensor:
    """DNC usage after a write: ``u + w − u ⊙ w``. Shapes (B, N)."""
    return usage + write_weights - usage * write_weights


def updated_links(
    link: torch.Tensor, precedence: torch.Tensor, write_weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """DNC temporal linkage after a write.

    ``L[i, j] ← (1 − w_i − w_j) L[i, j] + w_i p_j`` (slot i written right after slot j), zero diagonal;
    ``p ← (1 − Σ w) p + w``.

    Args:
        link: (B, N, N); precedence: (B, N); write_weights: (B, N).
    """
    w_i = write_weights.unsqueeze(-1)
    w_j = write_weights.unsqueeze(-2)
    link = (1.0 - w_i - w_j) * link + w_i * precedence.unsqueeze(-2)
    link = link * (1.0 - torch.eye(link.shape[-1], dtype=link.dtype, device=link.device))
    precedence = (1.0 - write_weights.sum(-1, keepdim=True)) * precedence + write_weights
    return link, precedence


def directional_weights(link: torch.Tensor, prev_read_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward ``f = L w`` and backward ``b = Lᵀ w`` weights from the previous read weights.

    Args:
        link: (B, N, N); prev_read_weights: (B, R, N).

    Returns:
        forward, backward, each (B, R, N).
    """
    forward = torch.einsum("bij,brj->bri", link, prev_read_weights)
    backward = torch.einsum("bji,brj->bri", link, prev_read_weights)
    return forward, backward


def mix_read_modes(
    content: torch.Tensor, forward: torch.Tensor, backward: torch.Tensor, modes: torch.Tensor
) -> torch.Tensor:
    """DNC read weights ``w = π_b b + π_c c + π_f f``.

    Args:
        content, forward, backward: (B, R, N); modes: (B, R, 3), a distribution over (backward, content, forward).
    """
    return modes[..., 0:1] * backward + modes[..., 1:2] * content + modes[..., 2:3] * forward


def merged_links(
    link: torch.Tensor, precedence: torch.Tensor, group: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the links of a consolidated group into its target slot and clear the freed slots.

    Args:
        link: (B, N, N); precedence: (B, N).
        group: (B, N) 1 for every slot of the group (target included), else 0.
        target: (B, N) one-hot of the slot that keeps the merged content.
    """
    freed = group - target
    keep = 1.0 - freed
    rows = (link * group.unsqueeze(-1)).sum(1, keepdim=True) * keep.unsqueeze(-2)  # (B, 1, N): out of the group
    cols = (link * group.unsqueeze(-2)).sum(2, keepdim=True) * keep.unsqueeze(-1)  # (B, N, 1): into the group
    link = link * keep.unsqueeze(-1) * keep.unsqueeze(-2)
    link = link * (1.0 - target).unsqueeze(-1) * (1.0 - target).unsqueeze(-2)
    link = link + target.unsqueeze(-1) * rows.clamp(max=1.0) + target.unsqueeze(-2) * cols.clamp(max=1.0)
    link = link * (1.0 - torch.eye(link.shape[-1], dtype=link.dtype, device=link.device))
    precedence = precedence * keep + target * (precedence * group).sum(-1, keepdim=True)
    return link.clamp(0.0, 1.0), precedence
