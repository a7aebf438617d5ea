"""The SDAPM memory's state: N slots, each an affine map, and the bookkeeping that addressing needs.

Pure torch, batch-first. ``B`` batch, ``R`` read heads, ``N`` slots, ``W`` word size, ``r`` the largest rank a
slot stores (``max_rank``).

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

Representation (measured; the commands are in ``docs/benchmarks.md``): identity plus low rank with factored
sufficient statistics. A fixed dense ``(Bv, M, Bw)`` slot cannot absorb new pairs without forgetting the old ones
(the design study measured 0.50 recall at 16 pairs per slot for a dense map merged pairwise); the statistics merge
exactly (``sdapm_merge``), so the capacity test recalls ≥ 0.99 of 256 pairs in 16 slots. A raw slot costs nothing
beyond its key and value (rank 0), and a read costs ``O(B R N r W)`` instead of ``O(B R N W²)`` for dense maps.

Stability invariant ("bigness")
-------------------------------
With ``normalize_words`` (keys and read words unit), ``value_max = V`` (written values clipped to ``‖v‖ ≤ V``),
``ridge = λ > 0``, ``gain_max = γ`` (``σ_max(M − I) ≤ γ``, enforced at consolidation) and ``mass_max = A_max``
(statistics rescaled so ``A ≤ A_max``; this leaves ``b``, ``c`` and ``M`` unchanged and forgets old members
geometrically in later merges), every stored quantity is bounded for all time:

* ``‖Bv‖ ≤ 1`` and ``‖Bw‖ ≤ V`` (convex combinations of unit keys and clipped values);
* ``‖M‖₂ ≤ 1 + γ``, hence ``‖f_n(x)‖ ≤ 2(1 + γ) + V`` for a unit ``x``, and the mixture read obeys the same bound;
* ``A ≤ A_max``, ``‖X‖²_F = A ρ² ≤ 4 A_max``, ``‖Y‖_F ≤ √A_max (2 + 2V)`` and ``‖G‖₂ ≤ 1/(λ A)``.

``stability_bound(settings)`` returns ``2(1 + γ) + V``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from .slot_tape import gather_rows, put_rows_
from .tensor_state import TensorState, lazy_zeros

# Smallest norm a vector is divided by (normalisation, cosines, clipping): a zero vector stays zero.
NORM_EPS = 1e-12


@dataclass(frozen=True)
class SDAPMSettings:
    """Sizes and stability rules of an SDAPM memory (each rule is checked here, once).

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
        read_top_k: sparse reads over the K best slots per head, applying only their maps (None: dense softmax).
        read_candidates: with read_top_k, shortlist this many slots per head by centroid cosine and score only
            those (approximate, ``O(N W)`` instead of ``O(N r W)`` per head; None: score every slot exactly).
        temporal_links: keep the DNC link matrix for forward/backward read modes.
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
    read_top_k: int | None = None
    read_candidates: int | None = None
    temporal_links: bool = False

    def __post_init__(self) -> None:
        for name in ("slots", "word_size", "read_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_rank is not None and not 1 <= self.max_rank <= self.word_size:
            raise ValueError(f"max_rank must be in [1, word_size={self.word_size}] or None, got {self.max_rank}")
        if self.ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge}")
        for name in ("value_max", "gain_max", "mass_max"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value}")
        if self.read_top_k is not None and not 1 <= self.read_top_k <= self.slots:
            raise ValueError(f"read_top_k must be in [1, slots={self.slots}] or None, got {self.read_top_k}")
        if self.read_candidates is not None and (self.read_top_k is None or self.read_candidates < self.read_top_k):
            raise ValueError(f"read_candidates needs read_top_k and must be >= read_top_k, got {self.read_candidates}")

    @property
    def rank(self) -> int:
        return self.max_rank or self.word_size


def stability_bound(settings: SDAPMSettings) -> float:
    """Bound on ‖Bw‖, ‖f_n(x)‖ and every read output under the stability rules (module docstring)."""
    if not (settings.normalize_words and settings.value_max and settings.gain_max and settings.ridge > 0):
        return float("inf")
    return 2.0 * (1.0 + settings.gain_max) + settings.value_max


@dataclass(frozen=True)
class SlotContents(TensorState):
    """What a slot holds (see the module docstring), for any leading shape ``(...)``: one slot per entry."""

    key: torch.Tensor  # (..., W) b
    value: torch.Tensor  # (..., W) c
    mass: torch.Tensor  # (...) A
    radius: torch.Tensor  # (...) ρ
    key_factors: torch.Tensor  # (..., r, W) X
    value_factors: torch.Tensor  # (..., r, W) Y
    gram_inv: torch.Tensor  # (..., r, r) G
    key_offsets: torch.Tensor  # (..., r) X bᵀ
    rank: torch.Tensor  # (...) int64, used rows of X and Y


SLOT_FIELDS = tuple(f.name for f in dataclasses.fields(SlotContents))


@dataclass(frozen=True)
class MemoryState(TensorState):
    """The memory of a batch: the slots' contents (``SLOT_FIELDS``, each (B, N, ...)) and bookkeeping."""

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

    def slots(self) -> SlotContents:
        """The slots' contents, each (B, N, ...)."""
        return SlotContents(**{name: getattr(self, name) for name in SLOT_FIELDS})


def init_state(
    settings: SDAPMSettings,
    batch_size: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> MemoryState:
    """An empty memory for ``batch_size`` independent sequences; its large CPU fields come from ``lazy_zeros``, so
    the pages of slots a sequence never writes are never touched."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"memory dtype must be floating point, got {dtype}")
    n, w, r, heads = settings.slots, settings.word_size, settings.rank, settings.read_heads
    opts = {"dtype": dtype, "device": device}
    links = settings.temporal_links
    return MemoryState(
        key=lazy_zeros(batch_size, n, w, **opts),
        value=lazy_zeros(batch_size, n, w, **opts),
        mass=lazy_zeros(batch_size, n, **opts),
        radius=lazy_zeros(batch_size, n, **opts),
        key_factors=lazy_zeros(batch_size, n, r, w, **opts),
        value_factors=lazy_zeros(batch_size, n, r, w, **opts),
        gram_inv=lazy_zeros(batch_size, n, r, r, **opts),
        key_offsets=lazy_zeros(batch_size, n, r, **opts),
        rank=lazy_zeros(batch_size, n, dtype=torch.long, device=device),
        usage=lazy_zeros(batch_size, n, **opts),
        age=lazy_zeros(batch_size, n, **opts),
        read_weights=lazy_zeros(batch_size, heads, n, **opts),
        write_weights=lazy_zeros(batch_size, n, **opts),
        link=lazy_zeros(batch_size, n, n, **opts) if links else None,
        precedence=lazy_zeros(batch_size, n, **opts) if links else None,
    )


def reset_state(state: MemoryState, done: torch.Tensor) -> MemoryState:
    """Empty the memory of the batch elements where ``done`` (B,) is True; the others are untouched."""
    check_mask("done", done, state)
    return state.map(torch.zeros_like).where(done, state)


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


def slot_maps(state: MemoryState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every slot as the seed's dense triple ``(Bv (B, N, W), M (B, N, W, W), Bw (B, N, W))``.

    ``f_n(x) = (x − Bv_n) M_n + Bw_n`` with ``M_n = I + X_nᵀ G_n Y_n``; for inspection and plots (reads never
    materialise ``M``).
    """
    w = state.key.shape[-1]
    eye = torch.eye(w, dtype=state.key.dtype, device=state.key.device)
    maps = eye + state.key_factors.transpose(-1, -2) @ (state.gram_inv @ state.value_factors)
    return state.key, maps * state.occupied[..., None, None].to(maps.dtype), state.value


# --------------------------------------------------------------------------------------------- storage


def put_slots(
    state: MemoryState,
    contents: dict[str, torch.Tensor],
    index: torch.Tensor,
    active: torch.Tensor,
    inplace: bool = False,
) -> MemoryState:
    """Put ``contents`` (per-slot fields by name, each (B, k, ...)) into slots ``index`` (B, k) where ``active``
    (B, k); other slots and inactive entries keep their exact values. The fields are ``SLOT_FIELDS`` or the
    per-slot bookkeeping (``usage``, ``age``, ``write_weights``; ``read_weights`` as (B, k, R)).

    ``inplace`` writes the slot fields into the state's own tensors, so that a write costs ``O(k r W)`` instead of a
    copy of the memory, in its backward too (``slot_tape``); the bookkeeping too where autograd is off. Under
    autograd this is right only where nothing kept for the backward holds a whole slot field (autograd raises at
    the backward otherwise): reads from a shortlist and the fixed consolidation rules gather what they use
    (``slot_tape.gather_rows``), dense reads keep every slot's factors.
    """
    bsz, k = index.shape
    rows = torch.arange(bsz, device=index.device)[:, None].expand(bsz, k)
    recorded = torch.is_grad_enabled()
    fields = {}
    for name, new in contents.items():
        old = _slot_major(name, getattr(state, name))
        extra = (1,) * (old.dim() - 2)
        values = torch.where(active.view(bsz, k, *extra), new, gather_rows(old, rows, index))
        if inplace and (name in SLOT_FIELDS or not recorded):
            out = put_rows_(old, rows, index, values)
        else:
            out = old.index_put((rows, index), values)
        fields[name] = _slot_major(name, out)
    return dataclasses.replace(state, **fields)


def _slot_major(name: str, t: torch.Tensor) -> torch.Tensor:
    """The field ``name`` with its slot dimension second, (B, N, ...): a view; applied twice, the identity."""
    return t.transpose(1, 2) if name == "read_weights" else t


def select_fields(mask: torch.Tensor, new: MemoryState, old: MemoryState, fields: tuple[str, ...]) -> MemoryState:
    """``new`` where mask (B,) is True, ``old`` elsewhere, bit for bit, for ``fields``; other fields from ``new``."""
    picked = {
        name: torch.where(mask.view(-1, *(1,) * (t.dim() - 1)), t, getattr(old, name)) if name in fields else t
        for name, t in new.as_dict().items()
    }
    return MemoryState(**picked)


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


def check_tensor(name: str, tensor: torch.Tensor, shape: tuple[int, ...], state: MemoryState) -> None:
    """Raise a TypeError/ValueError naming ``name`` unless it is a finite tensor of ``shape`` like the memory's."""
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


def check_mask(name: str, mask: torch.Tensor, state: MemoryState) -> None:
    """Raise unless ``mask`` is a (B,) bool tensor on the memory's device."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor of shape ({state.batch_size},)")
    if tuple(mask.shape) != (state.batch_size,):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected ({state.batch_size},)")
    if mask.device != state.key.device:
        raise ValueError(f"{name} is on {mask.device}, the memory is on {state.key.device}")


def gate_or_ones(name: str, gate: torch.Tensor | None, state: MemoryState, check: bool) -> torch.Tensor:
    """A (B,) gate, checked, or ones where none is given."""
    if gate is None:
        return torch.ones(state.batch_size, dtype=state.key.dtype, device=state.key.device)
    if check:
        check_tensor(name, gate, (state.batch_size,), state)
    return gate
