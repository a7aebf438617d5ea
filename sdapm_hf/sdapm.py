"""The SDAPM memory: N slots, each an affine map, written exactly and consolidated by ridge least squares.

Pure torch, batch-first, differentiable. ``B`` batch, ``R`` read heads, ``N`` slots, ``W`` word size,
``r`` the largest rank a slot stores (``max_rank``).

What a slot is
--------------
Slot ``n`` is the affine map ``f_n(x) = (x − Bv_n) M_n + Bw_n`` with ``M_n = I + X_nᵀ G_n Y_n``:

* ``key`` ``Bv (N, W)``: pre-bias, the centroid ``b`` of the member keys;
* ``value`` ``Bw (N, W)``: post-bias, the mean ``c`` of the member values (``f(b) = c``);
* ``mass`` ``A (N)``: total weight of the members (0 = empty slot, 1 = one written pair);
* ``key_factors`` ``X (N, r, W)`` and ``value_factors`` ``Y (N, r, W)``: factors of the slot's sufficient
  statistics, ``S = XᵀX = Σ_j a_j (k_j − b)ᵀ(k_j − b)`` and ``T = XᵀY = Σ_j a_j (k_j − b)ᵀ e_j`` with
  ``e_j = (v_j − c) − (k_j − b)`` the residual that the identity leaves;
* ``gram_inv`` ``G = (X Xᵀ + λA I)⁻¹ (N, r, r)`` and ``key_offsets`` ``X bᵀ (N, r)``, cached;
  ``radius`` ``ρ = (tr S / A)^½``; ``rank``.

So ``M − I = (S + λA I)⁻¹ T`` is the ridge solution of
``min_M Σ_j a_j ‖(k_j − b) M + c − v_j‖² + λA ‖M − I‖²_F``: the identity prior of a written pair, corrected by
least squares on every member. A written pair ``(k, v)`` is a slot with ``b = k``, ``c = v``, ``A = 1``, rank 0:
``f(x) = x − k + v``, so ``f(k) = v`` exactly.

Consolidation (merge a group into one slot)
-------------------------------------------
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
least-squares beyond. Merging a raw pair with weight 1 is the seed's "add a slot"; consolidating a group is its
"Penrose–Moore" step, made exact for the affine map with pre- and post-bias.

Reading
-------
Head ``r`` scores every occupied slot by how well its query fits the slot's key set (``addressing.subspace_fit``:
the subspace/hull residual; plain cosine for raw slots), takes ``a_r ∝ u · exp(β_r · fit)`` with ``u`` the slots'
usage (presence; optionally the top-K
only, optionally mixed with the temporal forward/backward modes) and returns the **mixture of maps**
``y_r = Σ_n a_rn f_n(x_r)``. The seed's parameter-averaged form ``(x − Σ a Bv)(Σ a M) + Σ a Bw`` is available as
``read_form="averaged"``.

Why these choices (measured; the commands are in ``docs/benchmarks.md``)
-------------------------------------------------------------------------
* Representation: identity plus low rank with factored sufficient statistics. A fixed dense ``(Bv, M, Bw)``
  slot cannot absorb new pairs without forgetting the old ones (the design study measured 0.50 recall at 16
  pairs per slot for a dense map merged pairwise); the statistics merge exactly, so our capacity test recalls
  ≥ 0.99 of 256 pairs in 16 slots. A raw slot costs nothing beyond its key and value (rank 0), and a read
  costs ``O(B R N r W)`` instead of ``O(B R N W²)`` for dense maps; ``max_rank`` trades exactness for speed.
* Read form: the mixture. It is a convex combination of the slots' own predictions, so the stability bound on
  every ``f_n`` holds for the read, and a member key of a consolidated slot is recalled to float precision
  once its slot wins the softmax; ``scripts/bench_memory.py --forms`` measures both forms' error and cost.
* Addressing by the slot's key subspace rather than its centroid: member keys sit at cosine ≈ 1/√g from
  their centroid, below random raw keys, so centroid routing loses members (design study §2.5, §3).

Stability invariant ("bigness")
-------------------------------
With ``normalize_words`` (keys and read words unit), ``value_max = V`` (written values clipped to ``‖v‖ ≤ V``),
``ridge = λ > 0``, ``gain_max = γ`` (``σ_max(M − I) ≤ γ``, enforced at consolidation) and ``mass_max = A_max``
(statistics rescaled so ``A ≤ A_max``; this leaves ``b``, ``c`` and ``M`` unchanged and forgets old members
geometrically in later merges), every stored quantity is bounded for all time:

* ``‖Bv‖ ≤ 1`` and ``‖Bw‖ ≤ V`` (convex combinations of unit keys and clipped values);
* ``‖M‖₂ ≤ 1 + γ``, hence ``‖f_n(x)‖ ≤ 2(1 + γ) + V`` for a unit ``x``, and the mixture read obeys the same bound;
* ``A ≤ A_max``, ``‖X‖²_F = A ρ² ≤ 4 A_max``, ``‖Y‖_F ≤ √A_max (2 + 2V)`` and ``‖G‖₂ ≤ 1/(λ A)``.

``stability_bound(settings)`` returns ``2(1 + γ) + V``; the tests run a 10,000-step self-feeding stream and
check it, and check that the same stream with the rules off exceeds it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .addressing import (
    EMPTY_SCORE,
    allocation_weighting,
    apply_gram,
    content_weights,
    directional_weights,
    least_used_slot,
    merged_links,
    mix_read_modes,
    retention,
    subspace_fit,
    top_k_weights,
    updated_links,
)
from .tensor_state import TensorState


@dataclass(frozen=True)
class SDAPMSettings:
    """Sizes and stability rules of an SDAPM memory.

    Attributes:
        slots: N, number of slots (fixed; consolidation frees slots, nothing grows).
        word_size: W, size of keys, values and read words.
        read_heads: R.
        max_rank: r, largest rank a consolidated slot stores (default W: exact up to W + 1 members).
        ridge: λ in the consolidation (0 uses the pseudo-inverse, without the stability it brings).
        value_max: V, written values are clipped to this norm (None: no clip).
        gain_max: γ, bound on the spectral norm of ``M − I`` (None: no bound).
        mass_max: A_max, bound on a slot's mass (None: no bound).
        normalize_words: keys and read words are scaled to unit norm.
        top_k: sparse reads over the K best slots per head, applying only their maps (None: dense softmax).
        candidates: with top_k, shortlist this many slots per head by centroid cosine and score only those
            (approximate, ``O(N W)`` instead of ``O(N r W)`` per head; None: score every slot exactly).
        temporal_links: keep the DNC link matrix for forward/backward read modes.
        read_form: "mixture" (Σ a f(x)) or "averaged" (the seed's averaged parameters).
    """

    slots: int
    word_size: int
    read_heads: int = 1
    max_rank: int | None = None
    ridge: float = 1e-4
    value_max: float | None = 1.0
    gain_max: float | None = 8.0
    mass_max: float | None = 256.0
    normalize_words: bool = True
    top_k: int | None = None
    candidates: int | None = None
    temporal_links: bool = False
    read_form: str = "mixture"

    def __post_init__(self) -> None:
        for name in ("slots", "word_size", "read_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SDAPMSettings.{name} must be an integer >= 1, got {value!r}")
        if self.max_rank is not None and not 1 <= self.max_rank <= self.word_size:
            raise ValueError(f"SDAPMSettings.max_rank must be in [1, word_size={self.word_size}], got {self.max_rank}")
        if self.ridge < 0:
            raise ValueError(f"SDAPMSettings.ridge must be >= 0, got {self.ridge}")
        for name in ("value_max", "gain_max", "mass_max"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"SDAPMSettings.{name} must be > 0 or None, got {value}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"SDAPMSettings.top_k must be >= 1 or None, got {self.top_k}")
        if self.candidates is not None and (self.top_k is None or self.candidates < self.top_k):
            raise ValueError(f"SDAPMSettings.candidates needs top_k and must be >= top_k, got {self.candidates}")
        if self.read_form not in ("mixture", "averaged"):
            raise ValueError(f"SDAPMSettings.read_form must be 'mixture' or 'averaged', got {self.read_form!r}")

    @property
    def rank(self) -> int:
        return self.max_rank or self.word_size


def stability_bound(settings: SDAPMSettings) -> float:
    """Bound on ‖Bw‖, ‖f_n(x)‖ and every read output under the stability rules (module docstring)."""
    if not (settings.normalize_words and settings.value_max and settings.gain_max and settings.ridge > 0):
        return float("inf")
    return 2.0 * (1.0 + settings.gain_max) + settings.value_max


@dataclass(frozen=True)
class MemoryState(TensorState):
    """The memory of a batch: every field is batch-first; ``as_dict``/``from_dict`` give a plain dict."""

    key: torch.Tensor  # (B, N, W) pre-bias Bv = member centroid
    value: torch.Tensor  # (B, N, W) post-bias Bw = member value mean
    mass: torch.Tensor  # (B, N) 0 = empty
    radius: torch.Tensor  # (B, N) RMS member distance from the centroid
    key_factors: torch.Tensor  # (B, N, r, W) X
    value_factors: torch.Tensor  # (B, N, r, W) Y
    gram_inv: torch.Tensor  # (B, N, r, r) G = (X Xᵀ + λA)⁻¹ on the used rows, 0 elsewhere
    key_offsets: torch.Tensor  # (B, N, r) X bᵀ
    rank: torch.Tensor  # (B, N) int64, used rows of X and Y
    usage: torch.Tensor  # (B, N) DNC usage
    age: torch.Tensor  # (B, N) writes since the slot's newest member
    read_weights: torch.Tensor  # (B, R, N) last read weights
    write_weights: torch.Tensor  # (B, N) last write weights
    link: torch.Tensor | None = None  # (B, N, N) temporal links: link[i, j] = i written right after j
    precedence: torch.Tensor | None = None  # (B, N)

    @property
    def occupied(self) -> torch.Tensor:
        """(B, N) bool: slots holding something."""
        return self.mass > 0

    @property
    def batch_size(self) -> int:
        return self.key.shape[0]


def init_state(
    settings: SDAPMSettings,
    batch_size: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> MemoryState:
    """An empty memory for ``batch_size`` independent sequences."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"memory dtype must be floating point, got {dtype}")
    n, w, r, heads = settings.slots, settings.word_size, settings.rank, settings.read_heads
    opts = {"dtype": dtype, "device": device}
    links = settings.temporal_links
    return MemoryState(
        key=torch.zeros(batch_size, n, w, **opts),
        value=torch.zeros(batch_size, n, w, **opts),
        mass=torch.zeros(batch_size, n, **opts),
        radius=torch.zeros(batch_size, n, **opts),
        key_factors=torch.zeros(batch_size, n, r, w, **opts),
        value_factors=torch.zeros(batch_size, n, r, w, **opts),
        gram_inv=torch.zeros(batch_size, n, r, r, **opts),
        key_offsets=torch.zeros(batch_size, n, r, **opts),
        rank=torch.zeros(batch_size, n, dtype=torch.long, device=device),
        usage=torch.zeros(batch_size, n, **opts),
        age=torch.zeros(batch_size, n, **opts),
        read_weights=torch.zeros(batch_size, heads, n, **opts),
        write_weights=torch.zeros(batch_size, n, **opts),
        link=torch.zeros(batch_size, n, n, **opts) if links else None,
        precedence=torch.zeros(batch_size, n, **opts) if links else None,
    )


def reset_state(state: MemoryState, done: torch.Tensor) -> MemoryState:
    """Empty the memory of the batch elements where ``done`` (B,) is True; the others are untouched."""
    _check_mask("done", done, state)
    return init_like(state).where(done, state)


def init_like(state: MemoryState) -> MemoryState:
    """An empty state with the same shapes, dtype and device as ``state``."""
    return state.map(torch.zeros_like)


def save_state(state: MemoryState, path: str | Path) -> None:
    """Write a state to a safetensors file (atomically: a temporary file is renamed into place)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.as_dict().items()}, str(tmp))
    tmp.replace(path)


def load_state(path: str | Path, device: torch.device | str | None = None) -> MemoryState:
    """Read a state written by ``save_state``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device=str(device) if device is not None else "cpu")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"cannot read memory state from {path}: {err}") from err
    return MemoryState.from_dict(tensors)


# --------------------------------------------------------------------------------------------- checks


def check_state(state: MemoryState, settings: SDAPMSettings) -> None:
    """Raise ValueError if ``state`` does not belong to memories with ``settings``."""
    b = state.batch_size
    expected = {
        "key": (b, settings.slots, settings.word_size),
        "key_factors": (b, settings.slots, settings.rank, settings.word_size),
        "read_weights": (b, settings.read_heads, settings.slots),
    }
    for name, shape in expected.items():
        got = tuple(getattr(state, name).shape)
        if got != shape:
            raise ValueError(f"memory state field {name!r} has shape {got}, settings expect {shape}")
    if settings.temporal_links != (state.link is not None):
        raise ValueError(
            f"memory state {'has' if state.link is not None else 'lacks'} temporal links but "
            f"settings.temporal_links={settings.temporal_links}"
        )


def _check_tensor(name: str, tensor: torch.Tensor, shape: tuple[int, ...], state: MemoryState) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype != state.key.dtype:
        raise TypeError(f"{name} has dtype {tensor.dtype}, the memory holds {state.key.dtype}")
    if tensor.device != state.key.device:
        raise ValueError(f"{name} is on {tensor.device}, the memory is on {state.key.device}")
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or inf")


def _check_mask(name: str, mask: torch.Tensor, state: MemoryState) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor of shape ({state.batch_size},)")
    if tuple(mask.shape) != (state.batch_size,):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected ({state.batch_size},)")
    if mask.device != state.key.device:
        raise ValueError(f"{name} is on {mask.device}, the memory is on {state.key.device}")


def _gate(name: str, gate: torch.Tensor | None, state: MemoryState, check: bool) -> torch.Tensor:
    if gate is None:
        return torch.ones(state.batch_size, dtype=state.key.dtype, device=state.key.device)
    if check:
        _check_tensor(name, gate, (state.batch_size,), state)
    return gate


def slot_maps(state: MemoryState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every slot as the seed's dense triple ``(Bv (B, N, W), M (B, N, W, W), Bw (B, N, W))``.

    ``f_n(x) = (x − Bv_n) M_n + Bw_n`` with ``M_n = I + X_nᵀ G_n Y_n``; for inspection and plots (reads never
    materialise ``M``).
    """
    w = state.key.shape[-1]
    eye = torch.eye(w, dtype=state.key.dtype, device=state.key.device)
    maps = eye + state.key_factors.transpose(-1, -2) @ (state.gram_inv @ state.value_factors)
    return state.key, maps * state.occupied[..., None, None].to(maps.dtype), state.value


# --------------------------------------------------------------------------------------------- read


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
        _check_tensor("read words", words, (b, heads, w), state)
        _check_tensor("read strengths", strengths, (b, heads), state)
        if modes is not None:
            if state.link is None:
                raise ValueError("read modes need settings.temporal_links=True")
            _check_tensor("read modes", modes, (b, heads, 3), state)
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
    n, top_k, candidates = settings.slots, settings.top_k, settings.candidates
    if modes is None and candidates is not None and candidates < n:
        outputs, weights, idx = _read_shortlist(state, x, strengths, settings)
    elif modes is None and top_k is not None and top_k < n:
        outputs, weights, idx = _read_top_k(state, x, strengths, settings)
    else:
        fit, q = _fit(x, _fields(state, ADDRESS_FIELDS))
        weights = content_weights(fit, strengths, state.occupied, top_k, presence=state.usage)
        if modes is not None:
            forward, backward = directional_weights(state.link, state.read_weights)
            steps = x.shape[1] // forward.shape[1]
            weights = mix_read_modes(weights, forward.repeat(1, steps, 1), backward.repeat(1, steps, 1), modes)
        outputs = _apply_maps(settings.read_form, _fields(state, MAP_FIELDS[settings.read_form]), x, weights, q)
        return outputs, weights
    dense = torch.zeros(*x.shape[:2], n, dtype=x.dtype, device=x.device).scatter(-1, idx, weights)
    return outputs, dense


# What reads stream, by name of the state field (each (B, N, ...)): addressing (``subspace_fit``'s slot
# arguments, in order) and each read form's maps.
ADDRESS_FIELDS = ("key", "key_factors", "key_offsets", "gram_inv", "radius")
MAP_FIELDS = {
    "mixture": ("key", "value", "value_factors"),
    "averaged": ("key", "key_factors", "gram_inv", "value", "value_factors"),
}


def _fields(state: MemoryState, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {name: getattr(state, name) for name in names}


def _fit(x: torch.Tensor, slots: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``subspace_fit`` of queries x (B', R', W) against ``slots`` (``ADDRESS_FIELDS``, each (B', N', ...))."""
    return subspace_fit(x, *(slots[name] for name in ADDRESS_FIELDS))


def _pick(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Each head's own slots: t (B, N, ...), idx (B, R, K) → (B·R, K, ...)."""
    b, heads, k = idx.shape
    flat = (idx + t.shape[1] * torch.arange(b, device=idx.device)[:, None, None]).flatten()
    return t.flatten(0, 1).index_select(0, flat).view(b * heads, k, *t.shape[2:])


def _read_top_k(
    state: MemoryState, x: torch.Tensor, strengths: torch.Tensor, settings: SDAPMSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact sparse read: score every slot, then apply only the maps of each head's ``top_k`` best slots.

    Returns:
        outputs (B, R, W), weights (B, R, K) and their slot indices (B, R, K).
    """
    fit, q = _fit(x, _fields(state, ADDRESS_FIELDS))
    weights, idx = top_k_weights(fit, strengths, state.occupied, settings.top_k, presence=state.usage)
    q = q.gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, q.shape[-1]))
    return _read_chosen(state, x, weights, idx, q, settings.read_form), weights, idx


def _read_shortlist(
    state: MemoryState, x: torch.Tensor, strengths: torch.Tensor, settings: SDAPMSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-stage sparse read: shortlist ``candidates`` slots per head by centroid cosine (``O(N W)``), then
    score only those by subspace fit and read from the ``top_k`` best of them. Approximate: a consolidated
    slot whose centroid is far from the query can miss the shortlist (``scripts/bench_memory.py`` measures
    the recall this costs).

    Returns:
        as ``_read_top_k``.
    """
    b, heads, w = x.shape
    shortlist = shortlist_slots(state, x, settings.candidates)
    slots = {name: _pick(getattr(state, name), shortlist) for name in ADDRESS_FIELDS}
    fit, q = _fit(x.reshape(b * heads, 1, w), slots)  # (B·R, 1, C), (B·R, 1, C, r)
    weights, best = top_k_weights(
        fit,
        strengths.reshape(b * heads, 1),
        _pick(state.occupied, shortlist),
        settings.top_k,
        presence=_pick(state.usage, shortlist),
    )
    weights, best = weights.view(b, heads, -1), best.view(b, heads, -1)  # best indexes the shortlist
    q = q.view(b, heads, -1, q.shape[-1]).gather(2, best.unsqueeze(-1).expand(-1, -1, -1, q.shape[-1]))
    idx = shortlist.gather(-1, best)
    return _read_chosen(state, x, weights, idx, q, settings.read_form), weights, idx


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
    coarse = (x @ state.key.transpose(1, 2)) / state.key.norm(dim=-1).clamp_min(1e-12)[:, None]
    return coarse.masked_fill(~state.occupied[:, None], EMPTY_SCORE).topk(candidates, dim=-1).indices


def _read_chosen(
    state: MemoryState, x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor, q: torch.Tensor, form: str
) -> torch.Tensor:
    """Read from K chosen slots per head: x (B, R, W), weights and idx (B, R, K), q (B, R, K, r) → (B, R, W).

    Only the chosen slots' maps are gathered (each head reads from its own K slots as a batch of one head)."""
    b, heads, k = idx.shape
    slots = {name: _pick(getattr(state, name), idx) for name in MAP_FIELDS[form]}
    flat = (b * heads, 1)
    out = _apply_maps(form, slots, x.reshape(*flat, -1), weights.reshape(*flat, k), q.reshape(*flat, k, -1))
    return out.view(b, heads, -1)


def _apply_maps(
    form: str, slots: dict[str, torch.Tensor], x: torch.Tensor, weights: torch.Tensor, q: torch.Tensor
) -> torch.Tensor:
    """The read of ``form`` (``MAP_FIELDS[form]`` in ``slots``, each (B, N, ...)): x (B, R, W), weights
    (B, R, N), q (B, R, N, r) from ``subspace_fit`` (used by the mixture) → (B, R, W)."""
    if form == "averaged":
        return _read_averaged(slots, x, weights)
    return _read_mixture(slots, x, weights, q)


def _apply_corrections(weights: torch.Tensor, q: torch.Tensor, value_factors: torch.Tensor) -> torch.Tensor:
    """``Σ_n a_n q_n Y_n``: weights (B, R, N), q (B, R, N, r), value_factors (B, N, r, W) → (B, R, W)."""
    b, heads, n, r = q.shape
    return (weights.unsqueeze(-1) * q).reshape(b, heads, n * r) @ value_factors.reshape(b, n * r, -1)


def _read_mixture(
    slots: dict[str, torch.Tensor], x: torch.Tensor, weights: torch.Tensor, q: torch.Tensor
) -> torch.Tensor:
    """``y = Σ_n a_n [(x − b_n) + c_n + (G_n X_n (x − b_n)ᵀ)ᵀ Y_n]``; q (B, R, N, r) = G X (x − b)ᵀ."""
    total = weights.sum(-1, keepdim=True)
    corrections = _apply_corrections(weights, q, slots["value_factors"])
    return x * total - weights @ slots["key"] + weights @ slots["value"] + corrections


def _read_averaged(slots: dict[str, torch.Tensor], x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The seed's form ``y = (x − Σ a b)(Σ a M) + Σ a c`` with ``M_n = I + X_nᵀ G_n Y_n``."""
    key_factors = slots["key_factors"]
    b, heads, w = x.shape
    n, r = key_factors.shape[1], key_factors.shape[2]
    z = x - weights @ slots["key"]
    p = (z @ key_factors.reshape(b, n * r, w).transpose(1, 2)).view(b, heads, n, r)
    q = apply_gram(slots["gram_inv"], p)
    corrections = _apply_corrections(weights, q, slots["value_factors"])
    return z * weights.sum(-1, keepdim=True) + corrections + weights @ slots["value"]


# --------------------------------------------------------------------------------------------- write


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
        inplace: update the slot tensors of ``state`` in place (streaming inference without autograd: a write
            then costs O(r W) instead of a copy of the memory).
    """
    if check:
        b, w = state.batch_size, settings.word_size
        check_state(state, settings)
        _check_tensor("write key", key, (b, w), state)
        _check_tensor("write value", value, (b, w), state)
        if free_gates is not None:
            _check_tensor("free gates", free_gates, (b, settings.read_heads), state)
        if mask is not None:
            _check_mask("write mask", mask, state)
    gate = _gate("write gate", gate, state, check)
    k = F.normalize(key, dim=-1) if settings.normalize_words else key
    v = _clip_norm(value, settings.value_max)
    location = _location(state, settings, k, free_gates, allocation_gate, write_strength, check)
    return _store(state, _raw_slot(k, v, settings.rank), location, gate, mask, inplace)


def write_chunk(
    state: MemoryState,
    keys: torch.Tensor,
    values: torch.Tensor,
    settings: SDAPMSettings,
    gates: torch.Tensor,
    free_gates: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    check: bool = True,
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
    """
    b, c = keys.shape[:2]
    if check:
        check_state(state, settings)
        _check_tensor("chunk write keys", keys, (b, c, settings.word_size), state)
        _check_tensor("chunk write values", values, (b, c, settings.word_size), state)
        _check_tensor("chunk write gates", gates, (b, c), state)
        if free_gates is not None:
            _check_tensor("free gates", free_gates, tuple(state.read_weights.shape[:2]), state)
        if mask is not None:
            _check_mask("chunk write mask", mask, state)
    k = F.normalize(keys, dim=-1) if settings.normalize_words else keys
    v = _clip_norm(values, settings.value_max)
    strongest = gates.amax(-1)
    weights = gates / strongest.clamp_min(torch.finfo(gates.dtype).tiny)[:, None]
    member = weights > 0
    merged = merge_slots(_raw_slot(k, v, settings.rank), weights, member, settings)
    do = member.any(-1) if mask is None else member.any(-1) & mask
    location = _location(state, settings, merged["key"], free_gates, None, None, check)
    return _store(state, merged, location, strongest, do, inplace=False)


def _location(
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
            location = allocation_weighting(usage)
            g_a = _gate("allocation gate", allocation_gate, state, check)
            beta = _gate("write strength", write_strength, state, check)
            fit, _ = _fit(key[:, None], _fields(state, ADDRESS_FIELDS))
            content = content_weights(fit, beta[:, None], state.occupied)[:, 0]
            location = g_a[:, None] * location + (1.0 - g_a[:, None]) * content
        slot, room = location.argmax(-1), location.amax(-1) > 0
    # The best location; when every slot is fully used (no free slot, no consolidation), the oldest.
    return torch.where(room, slot, state.age.argmax(-1)), usage


def _store(
    state: MemoryState,
    contents: dict[str, torch.Tensor],
    location: tuple[torch.Tensor, torch.Tensor],
    presence: torch.Tensor,
    mask: torch.Tensor | None,
    inplace: bool,
) -> MemoryState:
    """Put one slot's ``contents`` (``SLOT_FIELDS``, each (B, ...)) at ``location`` = (slot (B,), usage (B, N)
    from ``_location``): its usage becomes ``presence`` (B,), its age 0, the others age by one write; the
    temporal links follow. Where ``mask`` (B,) is False the state is bit-identical."""
    slot, usage = location
    do = torch.ones_like(slot, dtype=torch.bool) if mask is None else mask
    weights = F.one_hot(slot, state.key.shape[1]).to(usage.dtype) * do[:, None].to(usage.dtype)
    new = _put_slots(state, {name: t.unsqueeze(1) for name, t in contents.items()}, slot[:, None], do[:, None], inplace)
    link, precedence = state.link, state.precedence
    if link is not None:
        link, precedence = updated_links(link, precedence, weights)
    new = dataclasses.replace(
        new,
        usage=usage * (1.0 - weights) + weights * presence[:, None],
        age=(state.age + 1.0) * (1.0 - weights),
        write_weights=weights,
        link=link,
        precedence=precedence,
    )
    if mask is None:
        return new
    return _select(mask, new, state, fields=("usage", "age", "write_weights", "link", "precedence"))


def _clip_norm(v: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    if max_norm is None:
        return v
    return v * (max_norm / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)


def _raw_slot(k: torch.Tensor, v: torch.Tensor, rank: int) -> dict[str, torch.Tensor]:
    """Contents of slots that hold one written pair each: k, v (..., W) → ``SLOT_FIELDS`` with leading (...)."""
    lead, w = k.shape[:-1], k.shape[-1]
    one = k.new_ones(lead)
    zero = k.new_zeros(())  # the empty factors as broadcast views of one zero: nothing to allocate or fill
    return {
        "key": k,
        "value": v,
        "mass": one,
        "radius": zero.expand(lead),
        "key_factors": zero.expand(*lead, rank, w),
        "value_factors": zero.expand(*lead, rank, w),
        "gram_inv": zero.expand(*lead, rank, rank),
        "key_offsets": zero.expand(*lead, rank),
        "rank": torch.zeros(lead, dtype=torch.long, device=k.device),
    }


SLOT_FIELDS = ("key", "value", "mass", "radius", "key_factors", "value_factors", "gram_inv", "key_offsets", "rank")


def _put_slots(
    state: MemoryState,
    contents: dict[str, torch.Tensor],
    index: torch.Tensor,
    active: torch.Tensor,
    inplace: bool = False,
) -> MemoryState:
    """Put ``contents`` (per-slot fields by name, each (B, k, ...)) into slots ``index`` (B, k) where ``active``
    (B, k); other slots and inactive entries keep their exact values. The fields are ``SLOT_FIELDS`` or the
    per-slot bookkeeping (``usage``, ``age``, ``write_weights``; ``read_weights`` as (B, k, R)). ``inplace``
    writes into the state's own tensors (no autograd graph allowed).
    """
    bsz, k = index.shape
    if inplace and torch.is_grad_enabled() and any(
        t.requires_grad for t in (*contents.values(), *(getattr(state, name) for name in contents))
    ):
        raise ValueError("in-place memory updates cannot be recorded by autograd: use torch.no_grad()")
    rows = torch.arange(bsz, device=index.device)[:, None].expand(bsz, k)
    fields = {}
    for name, new in contents.items():
        old = _slot_major(name, getattr(state, name))
        extra = (1,) * (old.dim() - 2)
        values = torch.where(active.view(bsz, k, *extra), new, old[rows, index])
        out = old.index_put_((rows, index), values) if inplace else old.index_put((rows, index), values)
        fields[name] = _slot_major(name, out)
    return dataclasses.replace(state, **fields)


def _slot_major(name: str, t: torch.Tensor) -> torch.Tensor:
    """The field ``name`` with its slot dimension second, (B, N, ...): a view; applied twice, the identity."""
    return t.transpose(1, 2) if name == "read_weights" else t


def _select(mask: torch.Tensor, new: MemoryState, old: MemoryState, fields: tuple[str, ...]) -> MemoryState:
    """``new`` where mask (B,) is True, ``old`` elsewhere, bit for bit, for ``fields``; other fields from ``new``."""
    picked = {
        name: torch.where(mask.view(-1, *(1,) * (t.dim() - 1)), t, getattr(old, name)) if name in fields else t
        for name, t in new.as_dict().items()
    }
    return MemoryState(**picked)


# --------------------------------------------------------------------------------------------- consolidate


def consolidate(
    state: MemoryState,
    selection: torch.Tensor,
    settings: SDAPMSettings,
    group_size: int = 2,
    gate: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    check: bool = True,
    inplace: bool = False,
) -> MemoryState:
    """Merge the ``group_size`` best-selected occupied slots into one, freeing the others.

    The group is the top-g of ``selection`` (B, N) ≥ 0 among occupied slots; member ``j`` enters the fit with
    soft weight ``a_j = selection_j / max selection`` (a slot with weight 0 is not a member), so the result is
    differentiable in ``selection`` and in the slots' contents. The merged slot replaces the group's best slot.
    Nothing happens where fewer than two slots are selected, where ``gate < 0.5`` (straight-through in the
    gate) or where ``mask`` is False. ``inplace`` as in ``write``.
    """
    b, n = state.batch_size, settings.slots
    if check:
        check_state(state, settings)
        _check_tensor("consolidation selection", selection, (b, n), state)
        if mask is not None:
            _check_mask("consolidation mask", mask, state)
    if not isinstance(group_size, int) or not 2 <= group_size <= n:
        raise ValueError(f"group_size must be an integer in [2, slots={n}], got {group_size!r}")
    gate = _gate("consolidation gate", gate, state, check)

    scores = selection.clamp_min(0.0) * state.occupied.to(selection.dtype)
    top, idx = scores.topk(group_size, dim=-1)  # (B, g), descending
    member = top > 0
    eligible = member.sum(-1) >= 2
    if mask is not None:
        eligible = eligible & mask
    if not bool(eligible.any()):
        return state  # the gate changes nothing anywhere, so it gets no gradient either
    do = eligible & (gate >= 0.5)
    if not gate.requires_grad and not bool(do.any()):
        return state
    weights = top / top[:, :1].clamp_min(torch.finfo(top.dtype).tiny) * member.to(top.dtype)

    def gather(t: torch.Tensor) -> torch.Tensor:
        return t.gather(1, idx.view(b, group_size, *(1,) * (t.dim() - 2)).expand(-1, -1, *t.shape[2:]))

    merged = merge_slots({name: gather(getattr(state, name)) for name in SLOT_FIELDS}, weights, member, settings)
    contents = {name: _first_then_zeros(t, group_size) for name, t in merged.items()}
    bookkeeping = _merged_bookkeeping(state, idx, member)
    bookkeeping = {name: _first_then_zeros(t, group_size) for name, t in bookkeeping.items()}
    result = _put_slots(state, contents | bookkeeping, idx, member & do[:, None], inplace=inplace)
    if state.link is not None:
        target = F.one_hot(idx[:, 0], n).to(state.key.dtype)
        group = torch.zeros_like(target).scatter(1, idx, member.to(target.dtype))
        link, precedence = merged_links(state.link, state.precedence, group, target)
        result = dataclasses.replace(result, link=link, precedence=precedence)
        result = _select(do, result, state, fields=("link", "precedence"))
    if gate.requires_grad:
        would = _put_slots(state, contents, idx, member & eligible[:, None])
        result = _blend_gradient(result, would, state, (gate - gate.detach()) * eligible.to(gate.dtype))
    return result


def _first_then_zeros(t: torch.Tensor, g: int) -> torch.Tensor:
    """(B, ...) → (B, g, ...): ``t`` for the group's first slot, zeros for the g − 1 others."""
    return torch.cat([t.unsqueeze(1), torch.zeros_like(t).unsqueeze(1).expand(-1, g - 1, *t.shape[1:])], 1)


def _merged_bookkeeping(state: MemoryState, idx: torch.Tensor, member: torch.Tensor) -> dict[str, torch.Tensor]:
    """The merged slot's usage, age, read weights (B, R) and write weight, each (B,) otherwise, for the group
    ``idx`` (B, g) with ``member`` (B, g): the members' largest usage and smallest age, the sum of their read
    weights, its own write weight. The freed members get zeros (``_first_then_zeros``)."""
    m = member.to(state.usage.dtype)
    age = state.age.gather(1, idx).masked_fill(~member, torch.finfo(state.age.dtype).max)
    read = state.read_weights.gather(2, idx[:, None].expand(-1, state.read_weights.shape[1], -1))  # (B, R, g)
    return {
        "usage": (state.usage.gather(1, idx) * m).amax(-1),
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


def merge_slots(
    slots: dict[str, torch.Tensor], weights: torch.Tensor, member: torch.Tensor, settings: SDAPMSettings
) -> dict[str, torch.Tensor]:
    """Ridge least-squares merge of g slots into one (module docstring, "Consolidation").

    Args:
        slots: the g slots' fields, each with a leading (B, g) (see ``SLOT_FIELDS``).
        weights: (B, g) soft membership a ∈ [0, 1] (relative: the largest is 1).
        member: (B, g) bool, a > 0 (non-members may sit anywhere in the group).
        settings: rank, ridge and stability rules.

    Returns:
        The merged slot's fields, each with a leading (B,).
    """
    mass, key, value = slots["mass"], slots["key"], slots["value"]
    xf, yf, rank = slots["key_factors"], slots["value_factors"], slots["rank"]
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

    # Members' own rows, scaled by √a: only the first max(rank) rows of each can be used (none for raw slots).
    used_rank = int(rank.max())
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
    k = int(count.max())
    rows_x, rows_y = rows_x[:, :k], rows_y[:, :k]
    if k > r:
        top = _row_basis(rows_x, r)
        rows_x = top.transpose(1, 2) @ rows_x
        rows_y = top.transpose(1, 2) @ rows_y
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
    return {
        "key": b,
        "value": c,
        "mass": total,
        "radius": radius,
        "key_factors": rows_x,
        "value_factors": rows_y,
        "gram_inv": gram_inv,
        "key_offsets": (rows_x @ b.unsqueeze(-1)).squeeze(-1),
        "rank": count,
    }


def _row_basis(rows_x: torch.Tensor, r: int) -> torch.Tensor:
    """(B, k, r) orthonormal columns U, a constant for autograd, such that the r rows ``Uᵀ X`` keep the most of the
    key scatter of the k > r rows X (B, k, W).

    For r < W: the top-r eigenvectors of X Xᵀ, the principal directions (solved in float64 on the trace-normalised
    Gram, so that large or clustered rows converge). For r = W: any orthonormal basis of X's column span, from a
    reduced QR (about 10× cheaper than the eigendecomposition); it loses nothing, as ``U Uᵀ X = X`` keeps both
    ``S = XᵀX`` and ``T = XᵀY``.
    """
    rows = rows_x.detach()
    if r == rows.shape[-1]:
        return torch.linalg.qr(rows).Q
    gram = (rows @ rows.transpose(1, 2)).double()
    gram = gram / gram.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-300)[:, None, None]
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
        return (gain_max / sigma.clamp_min(1e-12)).clamp(max=1.0)


# --------------------------------------------------------------------------------------------- policies


def is_full(state: MemoryState) -> torch.Tensor:
    """(B,) bool: every slot holds something, so the next write overwrites a stored pair unless a consolidation
    frees a slot first."""
    return state.occupied.all(-1)


def most_similar_pair_selection(state: MemoryState) -> torch.Tensor:
    """Consolidate-when-full policy in O(N² W): the two occupied slots whose keys have the highest cosine
    ``cos(Bv_i, Bv_j)``, whatever their mass and age: redundant slots merge first, and a distinct slot stays
    exact while near-duplicates exist (``closest_pair_selection`` instead always takes the lightest slot,
    however unlike the others it is).

    Returns:
        (B, N) selection with 1 on the two chosen slots (use with ``group_size=2``).
    """
    n = state.mass.shape[1]
    unit = state.key / state.key.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cosine = unit @ unit.transpose(1, 2)  # (B, N, N)
    pair = state.occupied[:, :, None] & state.occupied[:, None, :]
    pair = pair & ~torch.eye(n, dtype=torch.bool, device=pair.device)
    best = cosine.masked_fill(~pair, -float("inf")).flatten(1).argmax(-1)
    selection = torch.zeros_like(state.mass)
    selection.scatter_(1, (best // n)[:, None], 1.0)
    selection.scatter_(1, (best % n)[:, None], 1.0)
    return selection


def closest_pair_selection(state: MemoryState) -> torch.Tensor:
    """Consolidate-when-full policy in O(N W): the lightest occupied slot (the oldest among equals) and the
    occupied slot that minimises ``mass_j − cos(Bv_i, Bv_j)`` (similar and small, so groups stay balanced).

    Returns:
        (B, N) selection with 1 on the two chosen slots (use with ``group_size=2``).
    """
    n = state.mass.shape[1]
    occupied = state.occupied
    lightness = state.mass - state.age / (1.0 + state.age)  # ties in mass go to the oldest
    first = lightness.masked_fill(~occupied, float("inf")).argmin(-1)
    norms = state.key.norm(dim=-1).clamp_min(1e-12)  # cosines without a normalised copy of every key
    pick = first[:, None, None].expand(-1, 1, state.key.shape[-1])
    anchor = state.key.gather(1, pick) / norms.gather(1, first[:, None]).unsqueeze(-1)  # (B, 1, W), unit
    cosine = (state.key @ anchor.transpose(1, 2)).squeeze(-1) / norms
    cost = state.mass - cosine
    forbidden = ~occupied | F.one_hot(first, n).bool()
    second = cost.masked_fill(forbidden, float("inf")).argmin(-1)
    selection = torch.zeros_like(state.mass)
    selection.scatter_(1, first[:, None], 1.0)
    selection.scatter_(1, second[:, None], 1.0)
    return selection
