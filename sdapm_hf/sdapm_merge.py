"""Consolidation: a group of SDAPM slots merged into one slot by ridge least squares on their statistics.

Statistics of a union add exactly (parallel-axis rule), so merging needs no member list. For slots ``i`` with
soft weights ``a_i ∈ (0, 1]`` and masses ``w_i = a_i A_i``, the merged slot has ``A = Σ w_i``, ``b``, ``c`` the
``w``-weighted means, and factor rows ``√a_i X_i``, ``√a_i Y_i`` plus, for ``m = 1 … g−1`` (Chan's update,
``W_m``/``B_m``/``C_m`` prefix mass/centroid/value mean of slots ``1 … m``)::

    x_m = √(W_m w_{m+1} / W_{m+1}) (B_m − b_{m+1})
    y_m = √(W_m w_{m+1} / W_{m+1}) ((C_m − c_{m+1}) − (B_m − b_{m+1}))

These g − 1 rows carry the between-slot scatter with no null direction, so ``X Xᵀ`` is non-singular for
affinely independent keys and the fit is exact as ``λ → 0`` (for g ≤ W + 1 members). When the rows exceed ``r``,
the slot keeps the top-``r`` principal directions of its key scatter (an eigendecomposition of the small row
Gram, or a QR when ``r = W``; the rotation is treated as a constant by autograd): exact while the true rank fits,
least-squares beyond. Then ``G = (X Xᵀ + λA I)⁻¹`` and the stability rules (``mass_max``: statistics rescaled;
``gain_max``: ``Y`` scaled so that ``σ_max(Xᵀ G Y) ≤ γ``). Merging a raw pair with weight 1 is the seed's "add a
slot"; consolidating a group is its "Penrose–Moore" step, made exact for the affine map with pre- and post-bias.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .addressing import merged_links
from .sdapm_state import (
    NORM_EPS, MemoryState, SDAPMSettings, SlotContents, check_mask, check_state, check_tensor, gate_or_ones,
    put_slots, select_fields,
)
from .slot_tape import gather_rows
from .tensor_state import host_reads_free

# Smallest trace a row Gram is divided by in float64 (``_row_basis``): an all-zero Gram stays zero.
TRACE_EPS = 1e-300


def consolidate(
    state: MemoryState,
    selection: torch.Tensor,
    settings: SDAPMSettings,
    group_size: int = 2,
    gate: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    check: bool = True,
    inplace: bool = False,
    merged_usage: str = "max",
) -> MemoryState:
    """Merge the ``group_size`` best-selected occupied slots into one, freeing the others.

    The group is the top-g of ``selection`` (B, N) ≥ 0 among occupied slots; member ``j`` enters the fit with
    soft weight ``a_j = selection_j / max selection`` (a slot with weight 0 is not a member), so the result is
    differentiable in ``selection`` and in the slots' contents. The merged slot replaces the group's best slot; its
    usage is the members' largest (``merged_usage="max"``) or their mean weighted by ``a``
    (``"weighted"``: repeated merges of little-used slots then keep a little-used slot). Nothing happens where
    fewer than two slots are selected, where ``gate < 0.5`` (straight-through in the gate) or where ``mask`` is
    False. ``inplace`` as in ``write``.
    """
    b, n = state.batch_size, settings.slots
    if check:
        check_state(state, settings)
        check_tensor("consolidation selection", selection, (b, n), state)
        if mask is not None:
            check_mask("consolidation mask", mask, state)
    if not isinstance(group_size, int) or not 2 <= group_size <= n:
        raise ValueError(f"group_size must be an integer in [2, slots={n}], got {group_size!r}")
    gate = gate_or_ones("consolidation gate", gate, state, check)

    scores = selection.clamp_min(0.0) * state.occupied.to(selection.dtype)
    top, idx = scores.topk(group_size, dim=-1)  # (B, g), descending
    member = top > 0
    eligible = member.sum(-1) >= 2
    if mask is not None:
        eligible = eligible & mask
    skippable = host_reads_free(eligible)
    if skippable and not bool(eligible.any()):
        return state  # the gate changes nothing anywhere, so it gets no gradient either
    do = eligible & (gate >= 0.5)
    if skippable and not gate.requires_grad and not bool(do.any()):
        return state
    weights = top / top[:, :1].clamp_min(torch.finfo(top.dtype).tiny) * member.to(top.dtype)

    rows = torch.arange(b, device=idx.device)[:, None].expand(b, group_size)
    # indexing keeps only the indices for the backward (a gather keeps the whole field): in-place writes stay legal
    merged = merge_slots(state.slots().map(lambda t: gather_rows(t, rows, idx)), weights, member, settings)
    contents = {name: _first_then_zeros(t, group_size) for name, t in merged.as_dict().items()}
    bookkeeping = _merged_bookkeeping(state, idx, member, weights if merged_usage == "weighted" else None)
    bookkeeping = {name: _first_then_zeros(t, group_size) for name, t in bookkeeping.items()}
    result = put_slots(state, contents | bookkeeping, idx, member & do[:, None], inplace=inplace)
    if state.link is not None:
        target = F.one_hot(idx[:, 0], n).to(state.key.dtype)
        group = torch.zeros_like(target).scatter(1, idx, member.to(target.dtype))
        link, precedence = merged_links(state.link, state.precedence, group, target)
        result = dataclasses.replace(result, link=link, precedence=precedence)
        result = select_fields(do, result, state, fields=("link", "precedence"))
    if gate.requires_grad:
        would = put_slots(state, contents, idx, member & eligible[:, None])
        result = _blend_gradient(result, would, state, (gate - gate.detach()) * eligible.to(gate.dtype))
    return result


def _first_then_zeros(t: torch.Tensor, g: int) -> torch.Tensor:
    """(B, ...) → (B, g, ...): ``t`` for the group's first slot, zeros for the g − 1 others."""
    return torch.cat([t.unsqueeze(1), torch.zeros_like(t).unsqueeze(1).expand(-1, g - 1, *t.shape[1:])], 1)


def _merged_bookkeeping(
    state: MemoryState, idx: torch.Tensor, member: torch.Tensor, weights: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """The merged slot's usage, age, read weights (B, R) and write weight, each (B,) otherwise, for the group
    ``idx`` (B, g) with ``member`` (B, g): the members' largest usage (or their mean weighted by ``weights``
    (B, g)) and smallest age, the sum of their read weights, its own write weight. The freed members get zeros
    (``_first_then_zeros``)."""
    m = member.to(state.usage.dtype)
    usage = state.usage.gather(1, idx) * m
    age = state.age.gather(1, idx).masked_fill(~member, torch.finfo(state.age.dtype).max)
    read = state.read_weights.gather(2, idx[:, None].expand(-1, state.read_weights.shape[1], -1))  # (B, R, g)
    if weights is not None:
        usage = (weights * usage).sum(-1, keepdim=True) / (weights * m).sum(-1, keepdim=True).clamp_min(
            torch.finfo(usage.dtype).tiny)
    return {
        "usage": usage.amax(-1),
        "age": age.amin(-1),
        "read_weights": (read * m[:, None]).sum(-1),
        "write_weights": state.write_weights.gather(1, idx[:, :1]).squeeze(1),
    }


def _blend_gradient(result: MemoryState, new: MemoryState, old: MemoryState, st: torch.Tensor) -> MemoryState:
    """Add ``st · (new − old)`` (zero in the forward pass) so a hard gate gets a straight-through gradient."""
    fields = {}
    for name, t in result.as_dict().items():
        if t.is_floating_point():
            t = t + st.view(-1, *(1,) * (t.dim() - 1)) * (getattr(new, name) - getattr(old, name))
        fields[name] = t
    return MemoryState(**fields)


def merge_slots(slots: SlotContents, weights: torch.Tensor, member: torch.Tensor, settings: SDAPMSettings) -> SlotContents:
    """Ridge least-squares merge of g slots into one (module docstring).

    Args:
        slots: the g slots, each field with a leading (B, g).
        weights: (B, g) soft membership a ∈ [0, 1] (relative: the largest is 1).
        member: (B, g) bool, a > 0 (non-members may sit anywhere in the group).
        settings: rank, ridge and stability rules.

    Returns:
        The merged slot, each field with a leading (B,).
    """
    mass, key, value = slots.mass, slots.key, slots.value
    xf, yf, rank = slots.key_factors, slots.value_factors, slots.rank
    bsz, g, r, w = xf.shape
    dtype = key.dtype
    tiny = torch.finfo(dtype).tiny
    a = weights * member.to(dtype)
    wm = a * mass  # (B, g) member masses
    total = wm.sum(-1)
    total = torch.where(total > 0, total, torch.ones_like(total))  # > 0 wherever a merge happens
    b = (wm.unsqueeze(-1) * key).sum(1) / total.unsqueeze(-1)
    c = (wm.unsqueeze(-1) * value).sum(1) / total.unsqueeze(-1)

    # Between-slot scatter as g − 1 rows (Chan's pairwise update over the prefix 1..m and slot m+1); a member
    # joining a prefix without members (non-members may come first) adds no row.
    cum = wm.cumsum(1)
    joins = member[:, 1:] & (cum[:, :-1] > 0)
    cum = cum.clamp_min(tiny)
    prefix_key = (wm.unsqueeze(-1) * key).cumsum(1) / cum.unsqueeze(-1)
    prefix_value = (wm.unsqueeze(-1) * value).cumsum(1) / cum.unsqueeze(-1)
    coef = (cum[:, :-1] * wm[:, 1:] / cum[:, 1:]).clamp_min(0.0)
    coef = torch.where(joins, coef.clamp_min(tiny).sqrt(), torch.zeros_like(coef))
    dk = prefix_key[:, :-1] - key[:, 1:]
    dv = prefix_value[:, :-1] - value[:, 1:]
    shift_x = coef.unsqueeze(-1) * dk
    shift_y = coef.unsqueeze(-1) * (dv - dk)

    # Members' own rows, scaled by √a: only the first max(rank) rows of each can be used (none for raw slots); the
    # shape-static path keeps all r.
    used_rank = int(rank.max()) if host_reads_free(rank) else r
    root = torch.where(member, a.clamp_min(tiny).sqrt(), torch.zeros_like(a))
    own_x = (root[..., None, None] * xf[:, :, :used_rank]).reshape(bsz, g * used_rank, w)
    own_y = (root[..., None, None] * yf[:, :, :used_rank]).reshape(bsz, g * used_rank, w)
    used = (torch.arange(used_rank, device=rank.device) < rank.unsqueeze(-1)) & member.unsqueeze(-1)
    rows_x = torch.cat([own_x, shift_x], 1)
    rows_y = torch.cat([own_y, shift_y], 1)
    used = torch.cat([used.reshape(bsz, g * used_rank), joins], 1)
    count = used.sum(-1)
    rows_x = rows_x * used.unsqueeze(-1).to(dtype)
    rows_y = rows_y * used.unsqueeze(-1).to(dtype)

    # Pack the used rows first, then keep at most r of them.
    order = torch.argsort((~used).to(torch.int8), dim=1, stable=True)
    rows_x = rows_x.gather(1, order.unsqueeze(-1).expand_as(rows_x))
    rows_y = rows_y.gather(1, order.unsqueeze(-1).expand_as(rows_y))
    k = int(count.max()) if host_reads_free(count) else rows_x.shape[1]
    rows_x, rows_y = rows_x[:, :k], rows_y[:, :k]
    if k > r:  # where an element has more than r rows, it keeps their top-r basis; elsewhere its rows as they are
        basis = _row_basis(rows_x, r, span=r == w).transpose(1, 2)
        over = (count > r)[:, None, None]
        rows_x = torch.where(over, basis @ rows_x, rows_x[:, :r])
        rows_y = torch.where(over, basis @ rows_y, rows_y[:, :r])
        count = count.clamp(max=r)
    else:
        pad = r - k
        rows_x = F.pad(rows_x, (0, 0, 0, pad))
        rows_y = F.pad(rows_y, (0, 0, 0, pad))
    live = (torch.arange(r, device=count.device) < count.unsqueeze(-1)).to(dtype)
    rows_x = rows_x * live.unsqueeze(-1)
    rows_y = rows_y * live.unsqueeze(-1)

    if settings.mass_max is not None:
        scale = (settings.mass_max / total).clamp(max=1.0)
        total = total * scale
        rows_x = rows_x * scale.sqrt()[:, None, None]
        rows_y = rows_y * scale.sqrt()[:, None, None]
    gram_inv = _gram_inverse(rows_x, total, live, settings.ridge)
    if settings.gain_max is not None:
        rows_y = rows_y * _gain_scale(rows_x, rows_y, gram_inv, settings.gain_max)[:, None, None]
    radius = (rows_x.pow(2).sum((1, 2)) / total).clamp_min(tiny).sqrt()
    return SlotContents(
        key=b,
        value=c,
        mass=total,
        radius=radius,
        key_factors=rows_x,
        value_factors=rows_y,
        gram_inv=gram_inv,
        key_offsets=(rows_x @ b.unsqueeze(-1)).squeeze(-1),
        rank=count,
    )


def _row_basis(rows_x: torch.Tensor, r: int, span: bool) -> torch.Tensor:
    """(B, k, r) orthonormal columns U, a constant for autograd, such that the r rows ``Uᵀ X`` keep the most of the
    key scatter of the k > r rows X (B, k, W) (used for the elements with more than r used rows only).

    For r < W: the top-r eigenvectors of X Xᵀ, the principal directions (solved in float64 on the trace-normalised
    Gram, so that large or clustered rows converge). With ``span`` (r = W): any orthonormal basis of X's column
    span, from a reduced QR (about 10× cheaper than the eigendecomposition); it loses nothing, as ``U Uᵀ X = X``
    keeps both ``S = XᵀX`` and ``T = XᵀY``.
    """
    rows = rows_x.detach()
    if span:
        return torch.linalg.qr(rows).Q
    gram = (rows @ rows.transpose(1, 2)).double()
    gram = gram / gram.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(TRACE_EPS)[:, None, None]
    _, vecs = torch.linalg.eigh(gram)
    return vecs.flip(-1)[..., :r].to(rows.dtype)


def _gram_inverse(rows_x: torch.Tensor, mass: torch.Tensor, live: torch.Tensor, ridge: float) -> torch.Tensor:
    """``(X Xᵀ + λA I)⁻¹`` on the used rows, zero on the padding (pseudo-inverse when λ = 0)."""
    gram = rows_x @ rows_x.transpose(1, 2)
    if ridge == 0:
        return torch.linalg.pinv(gram.double()).to(gram.dtype)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    inv = torch.linalg.inv(gram + (ridge * mass)[:, None, None] * eye)
    return inv * live.unsqueeze(-1) * live.unsqueeze(-2)


def _gain_scale(rows_x: torch.Tensor, rows_y: torch.Tensor, gram_inv: torch.Tensor, gain_max: float) -> torch.Tensor:
    """Factor in (0, 1] that brings ``σ_max(Xᵀ G Y)`` down to ``gain_max``; a constant for autograd.

    ``σ(Xᵀ G Y) = σ(R_x G R_yᵀ)`` with ``Xᵀ = Q_x R_x`` and ``Yᵀ = Q_y R_y``, an r × r problem."""
    with torch.no_grad():
        r_x = torch.linalg.qr(rows_x.transpose(1, 2)).R
        r_y = torch.linalg.qr(rows_y.transpose(1, 2)).R
        sigma = torch.linalg.matrix_norm(r_x @ gram_inv @ r_y.transpose(1, 2), ord=2)
        return (gain_max / sigma.clamp_min(NORM_EPS)).clamp(max=1.0)
