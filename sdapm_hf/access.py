"""Memory access for one time step: turn the controller's interface into memory operations.

Order within a step::

    κ_t   = clock(κ_{t−1}, reset)                               (clock_keys)
    words = read keys ⊕ κ  →  Ponder loop of reads              (act.py)
    if the memory is full:  consolidate(selection, gate)         (SDAPM; automatic, learned or off)
    write(key ⊕ κ, value, gates)                                 (masked where the token does not count)

Reads come before the write, so the memory's output at position t depends on positions < t only (the token
itself reaches the model through the controller), and a write cannot disturb the read of its own step.

Chunked mode (``chunk_size`` C, SDAPM only) splits a step in two: every step of a chunk reads the memory as it
was at the chunk's start (``read_chunk``, all C steps in one call), and the chunk's end consolidates if the memory
is full and writes the C pairs as one least-squares slot (``write_chunk``, ``sdapm_write.write_chunk``)::

    r_t      = Read(read keys_t)  against the memory at the chunk's start,  t in the chunk
    memory   = consolidate if full, write_chunk({(k_t, v_t, g_t)})         once, at the chunk's end

With C = 1 this is the step above. With ``chunk_members`` M < C, the slot keeps only the chunk's M most strongly
gated steps (the others' gates are set to 0), so that a chunk of filler around one fact stores the fact alone,
as a thin slot that consolidation merges exactly, instead of a least-squares fit dominated by the filler.

The same controller drives either the SDAPM (``sdapm_*.py``) or the classic DNC memory (``dnc_memory.py``);
``memory_type="none"`` has no access at all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.profiler import record_function

from .addressing import subspace_fit
from .controller import Clock, InterfaceVector, mix_keys
from .dnc_memory import DNCMemorySettings, DNCMemoryState
from .dnc_memory import init_state as dnc_init_state
from .dnc_memory import read as dnc_read
from .dnc_memory import write as dnc_write
from .sdapm_merge import consolidate
from .sdapm_read import read as sdapm_read
from .sdapm_read import read_queries as sdapm_read_queries
from .sdapm_selection import (
    ConsolidationHead, closest_pair_selection, is_full, least_used_pair_selection, most_similar_pair_selection,
    relative_usage_pair_selection, slot_metadata,
)
from .sdapm_state import MemoryState, SDAPMSettings
from .sdapm_state import init_state as sdapm_init_state
from .sdapm_write import write as sdapm_write
from .sdapm_write import write_chunk as sdapm_write_chunk
from .tensor_state import TensorState, host_reads_free

if TYPE_CHECKING:
    from .configuration_dnc_sdapm import DNCSDAPMConfig

# The consolidation modes whose pair is chosen by a fixed rule (no learned parts).
FIXED_SELECTIONS = {"auto": closest_pair_selection, "usage": least_used_pair_selection,
                    "relative_usage": relative_usage_pair_selection, "similar": most_similar_pair_selection}


def memory_settings(config: DNCSDAPMConfig) -> SDAPMSettings | DNCMemorySettings | None:
    """The memory's settings for a model config (built, and so checked, here)."""
    if config.memory_type == "none":
        return None
    shared = dict(slots=config.memory_slots, word_size=config.word_size, read_heads=config.read_heads,
                  read_top_k=config.read_top_k, temporal_links=config.temporal_links)
    if config.memory_type == "dnc":
        return DNCMemorySettings(**shared)
    return SDAPMSettings(**shared, max_rank=config.max_rank, ridge=config.ridge, value_max=config.value_max,
                         gain_max=config.gain_max, mass_max=config.mass_max, read_candidates=config.read_candidates)


@dataclass(frozen=True)
class AccessState(TensorState):
    """What the access carries from step to step: the memory (flattened as ``memory.<field>``) and the clock."""

    memory: MemoryState | DNCMemoryState | None
    clock: torch.Tensor | None = None  # (B, W)

    def as_dict(self) -> dict[str, torch.Tensor]:
        out = self.memory.prefixed("memory") if self.memory is not None else {}
        if self.clock is not None:
            out["clock"] = self.clock
        return out

    def map(self, fn) -> AccessState:
        return AccessState(None if self.memory is None else self.memory.map(fn), None if self.clock is None else fn(self.clock))

    def where(self, mask: torch.Tensor, other: AccessState) -> AccessState:
        memory = None if self.memory is None else self.memory.where(mask, other.memory)
        clock = None if self.clock is None else torch.where(mask[:, None], self.clock, other.clock)
        return AccessState(memory, clock)


def last_real(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last True position of mask (B, L) (0 where there is none)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (mask.to(torch.long) * positions).argmax(-1)


class MemoryAccess(nn.Module):
    """Write side and read side of one time step (module docstring)."""

    def __init__(self, config: DNCSDAPMConfig) -> None:
        super().__init__()
        self.kind = config.memory_type
        self.settings = memory_settings(config)
        # the settings of each slot count run so far (``sized``): built and checked once, not at every step
        self._sized = {} if self.settings is None else {self.settings.slots: self.settings}
        self.consolidation_mode = config.consolidation
        self.chunk_members = config.chunk_members
        self.clock = Clock(config.word_size) if config.clock_keys and self.kind != "none" else None
        learned = self.kind == "sdapm" and config.consolidation == "learned"
        self.consolidation = ConsolidationHead() if learned else None

    def init_state(
        self, batch_size: int, dtype: torch.dtype, device: torch.device, slots: int | None = None
    ) -> AccessState:
        """The empty memory of a batch, with the config's slots or ``slots`` (the same weights run a memory of
        any size: nothing learned depends on N)."""
        if self.kind == "none":
            return AccessState(None)
        init_state = sdapm_init_state if self.kind == "sdapm" else dnc_init_state
        settings = self.settings if slots is None else self.sized(slots)
        memory = init_state(settings, batch_size, dtype=dtype, device=device)
        clock = self.clock.initial(batch_size, dtype) if self.clock is not None else None
        return AccessState(memory, clock)

    def sized(self, slots: int) -> SDAPMSettings | DNCMemorySettings:
        """The memory's settings with ``slots`` slots (checked: e.g. ``read_top_k`` must fit)."""
        if slots not in self._sized:
            try:
                self._sized[slots] = dataclasses.replace(self.settings, slots=slots)
            except ValueError as err:
                raise ValueError(f"a memory of {slots} slots does not fit this config: {err}") from err
        return self._sized[slots]

    def settings_of(self, memory: MemoryState | DNCMemoryState) -> SDAPMSettings | DNCMemorySettings:
        """The settings for ``memory``, whose slot count may differ from the config's (``init_state``)."""
        return self.sized(memory.usage.shape[-1])

    def state_from_dict(self, tensors: dict[str, torch.Tensor]) -> AccessState:
        cls = MemoryState if self.kind == "sdapm" else DNCMemoryState
        return AccessState(cls.from_prefixed(tensors, "memory") if self.kind != "none" else None, tensors.get("clock"))

    def advance_clock(self, iface: InterfaceVector, state: AccessState, mask: torch.Tensor | None) -> AccessState:
        """Step the clock where ``mask`` (B,) (None: everywhere; no-op without clock keys)."""
        if state.clock is None:
            return state
        clock = self.clock(state.clock, iface.clock_reset)
        if mask is not None:
            clock = torch.where(mask[:, None], clock, state.clock)
        return dataclasses.replace(state, clock=clock)

    def update(self, iface: InterfaceVector, state: AccessState, mask: torch.Tensor | None) -> AccessState:
        """Consolidation and write for this step; mask (B,) bool (None: every element)."""
        if self.kind == "none":
            return state
        clock = state.clock
        key = iface.write_key if clock is None else mix_keys(iface.write_key, clock, iface.write_clock)
        memory = state.memory
        settings = self.settings_of(memory)
        if self.kind == "dnc":
            memory = dnc_write(
                memory, key, iface.write_value, settings, iface.write_gate, iface.free_gates,
                iface.allocation_gate, iface.write_strength, iface.erase, mask,
            )
            return AccessState(memory, clock)
        inplace = self.writes_in_place(memory)
        memory = self._consolidate(memory, mask, inplace, iface)
        memory = sdapm_write(
            memory, key, iface.write_value, settings, gate=iface.write_gate,
            free_gates=iface.free_gates, mask=mask, check=False, inplace=inplace,
        )
        return AccessState(memory, clock)

    def writes_in_place(self, memory: MemoryState | None = None) -> bool:
        """Whether writes and merges update the slot tensors in place (``sdapm_state.put_slots``; a write then
        costs O(r W) instead of a copy of the memory): always without autograd; with it, where nothing kept for the
        backward holds a whole slot field: the reads come from a shortlist (dense and exact top-K reads score
        every slot, as do the temporal read modes and the learned consolidation head). ``memory``: a memory of
        another slot count than the config's."""
        if self.kind != "sdapm":
            return False
        if not torch.is_grad_enabled():
            return True
        settings = self.settings if memory is None else self.settings_of(memory)
        shortlisted = settings.read_candidates is not None and settings.read_candidates < settings.slots
        return shortlisted and not settings.temporal_links and self.consolidation is None

    def owned(self, state: AccessState) -> AccessState:
        """``state`` with the memory's tensors copied where writes go in place, so that a state a caller passed in
        (a model's ``memory_state``) is never changed."""
        if not self.writes_in_place(state.memory):
            return state
        return dataclasses.replace(state, memory=state.memory.map(torch.clone))

    def read_chunk(self, iface: InterfaceVector, state: AccessState) -> tuple[torch.Tensor, torch.Tensor]:
        """Every step of a chunk reads the memory as it is, in one call (``sdapm_read.read_queries``).

        Args:
            iface: the steps' interface, each part (B, L, ...).

        Returns:
            reads (B, L, R, W) and read weights (B, L, R, N).
        """
        b, steps, heads, w = iface.read_key.shape
        modes = iface.read_mode
        out, weights = sdapm_read_queries(
            state.memory, iface.read_key.flatten(1, 2), iface.read_strength.flatten(1), self.settings_of(state.memory),
            None if modes is None else modes.flatten(1, 2),
        )
        return out.view(b, steps, heads, w), weights.view(b, steps, heads, -1)

    def write_chunk(
        self,
        state: AccessState,
        keys: torch.Tensor,
        values: torch.Tensor,
        gates: torch.Tensor,
        free_gates: torch.Tensor,
        read_weights: torch.Tensor,
        mask: torch.Tensor,
    ) -> AccessState:
        """The end of a chunk of C steps: consolidate if the memory is full, then write the C pairs as one slot.

        Every step's reads enter the memory's read weights as C·R heads first, so that consolidation maps them
        with the slots and each step's free gates free what that step read, as in C single steps; afterwards
        the read weights are the last real step's. Batch elements without a real step are bit-identical.

        Args:
            keys, values: (B, C, W) the steps' write keys and values.
            gates: (B, C) their write gates; free_gates (B, C, R); read_weights (B, C, R, N).
            mask: (B, C) bool, the steps that count.
        """
        b, c, heads, n = read_weights.shape
        real = mask.any(-1)
        memory = dataclasses.replace(state.memory, read_weights=read_weights.flatten(1, 2))
        inplace = self.writes_in_place(memory)
        memory = self._consolidate(memory, real, inplace)
        weight = mask.to(gates.dtype)
        gates = gates * weight
        if self.chunk_members is not None and self.chunk_members < c:  # the M strongest steps alone
            strongest = gates.topk(self.chunk_members, dim=-1).indices
            gates = gates * torch.zeros_like(mask).scatter(-1, strongest, True).to(gates.dtype)
        memory = sdapm_write_chunk(
            memory, keys, values, self.settings_of(memory), gates, (free_gates * weight[..., None]).flatten(1),
            mask=real, check=False, inplace=inplace,
        )
        last = memory.read_weights.view(b, c, heads, n)[torch.arange(b, device=mask.device), last_real(mask)]
        weights = torch.where(real[:, None, None], last, state.memory.read_weights)
        return AccessState(dataclasses.replace(memory, read_weights=weights), state.clock)

    def _consolidate(
        self, memory: MemoryState, mask: torch.Tensor | None, inplace: bool, iface: InterfaceVector | None = None
    ) -> MemoryState:
        """Consolidate where the memory is full and ``mask`` (B,) (None: everywhere), in place where ``inplace``
        (``writes_in_place``); ``iface`` feeds the learned head."""
        if self.consolidation_mode == "off":
            return memory
        full = is_full(memory) if mask is None else is_full(memory) & mask
        if host_reads_free(full) and not bool(full.any()):  # nothing to do: skip choosing a pair
            return memory
        with record_function("memory.consolidation"):
            return self._merge_pair(memory, full, inplace, iface)

    def _merge_pair(
        self, memory: MemoryState, full: torch.Tensor, inplace: bool, iface: InterfaceVector | None
    ) -> MemoryState:
        """Merge the pair the consolidation mode selects, where ``full`` (B,)."""
        if self.consolidation_mode in FIXED_SELECTIONS:
            selection = FIXED_SELECTIONS[self.consolidation_mode](memory)
            usage = "weighted" if self.consolidation_mode in ("usage", "relative_usage") else "max"
            return consolidate(memory, selection, self.settings_of(memory), 2, mask=full, check=False,
                               merged_usage=usage, inplace=inplace)
        query = iface.consolidation_key[:, None]
        fit, _ = subspace_fit(query, memory.key, memory.key_factors, memory.key_offsets, memory.gram_inv, memory.radius)
        meta = slot_metadata(memory, self.settings.ridge)
        selection, gate = self.consolidation(
            fit[:, 0], iface.consolidation_strength, iface.consolidation_gate, meta, memory.occupied, full
        )
        return consolidate(memory, selection, self.settings_of(memory), 2, gate=gate, mask=full, check=False)

    def first_words(self, iface: InterfaceVector, state: AccessState) -> torch.Tensor:
        """(B, R, W) first read words: the read keys, mixed with the clock."""
        if state.clock is None:
            return iface.read_key
        return mix_keys(iface.read_key, state.clock[:, None], iface.read_clock)

    def read(
        self, iface: InterfaceVector, words: torch.Tensor, state: AccessState, active: torch.Tensor
    ) -> tuple[torch.Tensor, AccessState]:
        """One read of every head; the read weights change only where ``active`` (B,)."""
        settings = self.settings_of(state.memory)
        if self.kind == "sdapm":
            out, memory = sdapm_read(state.memory, words, iface.read_strength, settings, iface.read_mode, check=False)
        else:
            out, memory = dnc_read(state.memory, words, iface.read_strength, settings, iface.read_mode)
        weights = torch.where(active[:, None, None], memory.read_weights, state.memory.read_weights)
        return out, dataclasses.replace(state, memory=dataclasses.replace(memory, read_weights=weights))
