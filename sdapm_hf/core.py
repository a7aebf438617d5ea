"""The recurrent memory model over a sequence of vectors: controller, interface, memory access, ponder loop.

One time step (``MemoryCore.step``)::

    h, state_c  = Controller([x_t ; r_{t−1}])                    controller.py
    ξ           = Interface(h, [x_t ; … ; x_{t−K+1}])             controller.py (K = interface_window)
                  (predictive_writes: the write key is the read key of the previous real position;
                   query_values: the value is this position's read key)
    r_t         = Ponder(read, read keys ⊕ clock)                act.py (read output → next read word)
    memory      = consolidate if full, write (k ⊕ clock, v)      access.py, sdapm_*.py
    f_t         = [Dropout_bypass(h) ; r_t]                      the core's features (B, H + R·W)

Chunked mode (``chunk_size`` C; chunks are counted from the start of the memory's stream, across calls): for the
positions t of one chunk, with ``r_prev`` the reads of the previous chunk's last real position::

    h_t, state_c = Controller([x_t ; r_prev])                    token by token
    ξ_t          = Interface(h_t, [x_t ; … ; x_{t−K+1}])          all positions of the chunk in one call
    r_t          = Read(read keys_t)                             all at once, against the memory at the chunk's start
    f_t          = [Dropout_bypass(h_t) ; r_t]
    at the end:  memory = consolidate if full, write_chunk({(k_t, v_t, g_t)})      one slot for the C pairs
                 r_prev = r of the chunk's last real position

A call that ends inside a chunk keeps the chunk's positions so far (``PendingChunk``, in the state as
``chunk.<field>``), so a stream fed in pieces (segments, cached generation) meets the same chunk boundaries as one
pass over it. ``chunk_size=1`` is the per-token recurrence.

The core knows nothing of a base model: the models map its features to their outputs (modeling_dnc_sdapm.py, and
the plug of injection.py). The interface's window ``[x_t ; … ; x_{t−K+1}]`` holds the last K real inputs (zeros
before the first), so a key or value can be a token's neighbour without routing it through the LSTM; the state
carries the last K − 1 inputs. The recurrent state (controller, last reads, clock, memory, window) is a
``RecurrentState``; as a plain dict of tensors it is the models' ``memory_state``. Positions where the mask is False
leave the state untouched (in chunked mode: a chunk without a real position leaves it bit-identical).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.profiler import record_function

from .access import AccessState, MemoryAccess, last_real
from .act import Ponder, PonderStep, ponder_statistics
from .compiled import CompiledStep
from .controller import Controller, Interface, InterfaceVector
from .tensor_state import TensorState, host_reads_free

if TYPE_CHECKING:
    from .configuration_dnc_sdapm import DNCSDAPMConfig


def _where(new: RecurrentState, mask: torch.Tensor | None, old: RecurrentState) -> RecurrentState:
    """``new`` where mask (B,) is True and ``old`` elsewhere; ``new`` itself for mask None (every element real)."""
    return new if mask is None else new.where(mask, old)


def piece_bounds(start: int, length: int, size: int, filled: int = 0) -> list[tuple[int, int]]:
    """Split positions [start, start + length) into pieces that end where blocks of ``size`` end.

    ``filled`` positions of the current block came before ``start``, so the first piece is at most
    ``size − filled`` long (0 < filled = size opens a new block). Chunks of the memory and segments of a base are
    such blocks.
    """
    bounds, at, room = [], start, size - filled
    if room <= 0:
        room = size
    while at < start + length:
        end = min(at + room, start + length)
        bounds.append((at, end))
        at, room = end, size
    return bounds


def previous_real(values: torch.Tensor, mask: torch.Tensor, carry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of L positions the value of the last real position before it: values (B, L, F), mask (B, L) bool,
    carry (B, F) the last real value before the L positions → (B, L, F), and the last real value after them."""
    b, length = mask.shape
    stream = torch.cat([carry[:, None], values], 1)  # (B, 1 + L, F); the carry counts as real
    real = torch.cat([torch.ones_like(mask[:, :1]), mask], 1)
    steps = torch.arange(length + 1, device=mask.device).expand(b, -1)
    last = torch.where(real, steps, torch.zeros_like(steps)).cummax(1).values  # (B, 1 + L)
    gathered = stream.gather(1, last[..., None].expand(-1, -1, stream.shape[-1]))
    return gathered[:, :-1], gathered[:, -1]


@dataclass(frozen=True)
class PendingChunk(TensorState):
    """The positions of the current chunk seen so far (chunked mode), each field (B, f, ...) with 0 ≤ f < C: what
    the chunk's end writes into the memory and feeds back to the controller."""

    mask: torch.Tensor  # (B, f) bool, the positions that count
    reads: torch.Tensor  # (B, f, R·W)
    read_weights: torch.Tensor  # (B, f, R, N)
    write_key: torch.Tensor  # (B, f, W)
    write_value: torch.Tensor  # (B, f, W)
    write_gate: torch.Tensor  # (B, f)
    free_gates: torch.Tensor  # (B, f, R)

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    def extended(self, piece: PendingChunk) -> PendingChunk:
        """The positions of ``piece`` appended."""
        return PendingChunk(**{name: torch.cat([t, getattr(piece, name)], 1) for name, t in self.as_dict().items()})

    def cleared(self) -> PendingChunk:
        """No positions (the start of the next chunk)."""
        return self.map(lambda t: t[:, :0])


@dataclass(frozen=True)
class RecurrentState:
    """Controller state, last reads and memory access state of a batch."""

    h: torch.Tensor  # (B, H)
    c: torch.Tensor  # (B, H)
    reads: torch.Tensor  # (B, R·W) the controller's read input
    access: AccessState
    chunk: PendingChunk | None = None  # chunked mode only
    window: torch.Tensor | None = None  # (B, K−1, D) the last K − 1 real inputs, newest first (interface_window K > 1)
    query: torch.Tensor | None = None  # (B, W) the last real position's read query (predictive writes)

    def as_dict(self) -> dict[str, torch.Tensor]:
        chunk = {} if self.chunk is None else self.chunk.prefixed("chunk")
        optional = {name: t for name, t in (("window", self.window), ("query", self.query)) if t is not None}
        return {
            "controller.h": self.h, "controller.c": self.c, "reads": self.reads, **self.access.as_dict(), **chunk,
            **optional,
        }

    def where(self, mask: torch.Tensor, other: RecurrentState) -> RecurrentState:
        """Per position (per-token mode, no pending chunk): ``self`` where mask (B,), ``other`` elsewhere."""
        pick = lambda a, b: None if a is None else torch.where(mask.view(-1, *(1,) * (a.dim() - 1)), a, b)  # noqa: E731
        return RecurrentState(
            pick(self.h, other.h), pick(self.c, other.c), pick(self.reads, other.reads), self.access.where(mask, other.access),
            window=pick(self.window, other.window), query=pick(self.query, other.query),
        )


@dataclass
class MemoryUpdate:
    """The memory after one update (a position in per-token mode, the piece of a chunk in a call in chunked mode),
    and the reads of the positions ``[start, end)`` it covers, which were made against the memory of the update
    before it (entry 0 of a model's ``memory_states`` is the memory before the first position: no reads)."""

    start: int
    end: int
    read_weights: torch.Tensor | None  # (B, end − start, R, N) the last read of each position
    memory: dict[str, torch.Tensor]  # the memory state's fields (detached), e.g. usage, age, write_weights, key

    @property
    def usage(self) -> torch.Tensor:
        return self.memory["usage"]

    @property
    def write_weights(self) -> torch.Tensor:
        return self.memory["write_weights"]

    def shifted(self, offset: int) -> MemoryUpdate:
        """The same update with its positions counted ``offset`` later (a segment of a longer input)."""
        return MemoryUpdate(self.start + offset, self.end + offset, self.read_weights, self.memory)


@dataclass
class CoreOutput:
    """The core's outputs over T positions."""

    features: torch.Tensor  # (B, T, H + R·W) [bypass(h) ; reads]
    state: RecurrentState
    ponder_cost: torch.Tensor  # (B, T)
    ponder_steps: torch.Tensor  # (B, T)
    clock_resets: torch.Tensor | None = None  # (B, T)
    write_gates: torch.Tensor | None = None  # (B, T) the write gate of every position (a memory)
    memory_states: list[MemoryUpdate] | None = None  # with ``record``: one per memory update
    ponder_reads: torch.Tensor | None = None  # (B, T, K, R·W) every inner step's read (PonderNet in training)
    ponder_halting: torch.Tensor | None = None  # (B, T, K) the halting distributions (PonderNet in training)


class MemoryCore(nn.Module):
    """Controller + memory, stepped over the positions of (B, T, D) inputs, giving (B, T, H + R·W) features."""

    def __init__(self, config: DNCSDAPMConfig) -> None:
        super().__init__()
        self.chunk_size = config.chunk_size
        self.window = config.interface_window
        self.predictive = config.predictive_writes
        self.query_values = config.query_values
        self.width = config.hidden_size
        self.controller_size = config.controller_size
        self.read_heads = config.read_heads
        self.slots = config.memory_slots
        self.word_size = config.word_size
        self.read_size = 0 if config.memory_type == "none" else config.read_heads * config.word_size
        self.features = config.controller_size + self.read_size
        self.controller = Controller(config, self.read_size)
        self.interface = Interface(config)
        self.access = MemoryAccess(config)
        self.ponder = Ponder(config)
        self.bypass = nn.Dropout(config.bypass_dropout)
        self.compile_options: dict[str, Any] | None = None
        self._compiled: dict[str, CompiledStep] = {}

    def compile_steps(self, **options: Any) -> None:
        """Run the per-position step (per-token mode) and the chunk piece (chunked mode) through ``torch.compile``
        with ``options`` (``compiled.py``); eager where the backend fails."""
        self.compile_options, self._compiled = options, {}

    def stepper(self, name: str) -> Callable[..., Any]:
        """The method ``name`` ("step" or "_chunk_piece") as the recurrence calls it: compiled after
        ``compile_steps`` (built at the first call, for this module), else the method itself."""
        if self.compile_options is None:
            return getattr(self, name)
        if name not in self._compiled:
            self._compiled[name] = CompiledStep(getattr(self, name), self.compile_options)
        return self._compiled[name]

    def __getstate__(self) -> dict[str, Any]:
        """A copy (``copy.deepcopy``, pickle) compiles its own steps again: compiled code belongs to this module."""
        return {**super().__getstate__(), "_compiled": {}}

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the core's parameters, in which it computes and keeps its state."""
        return self.controller.cell.weight_ih.dtype

    # -- state --------------------------------------------------------------------------------------------

    def initial_state(
        self, batch_size: int, dtype: torch.dtype, device: torch.device, slots: int | None = None
    ) -> RecurrentState:
        """The state before the first position: an empty memory of the config's slots, or of ``slots``."""
        zeros = torch.zeros(batch_size, self.controller_size, dtype=dtype, device=device)
        reads = torch.zeros(batch_size, self.read_size, dtype=dtype, device=device)
        slots = self.slots if slots is None else slots
        access = self.access.init_state(batch_size, dtype, device, slots)
        chunk = None if self.chunk_size is None else self._empty_chunk(batch_size, dtype, device, slots)
        window = None
        if self.window > 1:
            window = torch.zeros(batch_size, self.window - 1, self.width, dtype=dtype, device=device)
        query = torch.zeros(batch_size, self.word_size, dtype=dtype, device=device) if self.predictive else None
        return RecurrentState(zeros, zeros.clone(), reads, access, chunk, window, query)

    def _empty_chunk(self, batch_size: int, dtype: torch.dtype, device: torch.device, slots: int) -> PendingChunk:
        empty = lambda *shape: torch.zeros(batch_size, 0, *shape, dtype=dtype, device=device)  # noqa: E731
        return PendingChunk(
            mask=torch.zeros(batch_size, 0, dtype=torch.bool, device=device),
            reads=empty(self.read_size),
            read_weights=empty(self.read_heads, slots),
            write_key=empty(self.word_size),
            write_value=empty(self.word_size),
            write_gate=empty(),
            free_gates=empty(self.read_heads),
        )

    def state_from_dict(self, tensors: dict[str, torch.Tensor], batch_size: int) -> RecurrentState:
        """A ``memory_state`` dict back as a state; errors name what does not fit this config or batch."""
        try:
            state = RecurrentState(
                tensors["controller.h"],
                tensors["controller.c"],
                tensors["reads"],
                self.access.state_from_dict(tensors),
                None if self.chunk_size is None else PendingChunk.from_prefixed(tensors, "chunk"),
                None if self.window == 1 else tensors["window"],
                tensors["query"] if self.predictive else None,
            )
        except (KeyError, ValueError) as err:
            raise ValueError(f"memory_state does not come from a model with this config: {err}") from err
        if state.chunk is not None and state.chunk.length >= self.chunk_size:
            raise ValueError(
                f"memory_state holds {state.chunk.length} positions of an unfinished chunk, "
                f"chunk_size={self.chunk_size} allows at most {self.chunk_size - 1}"
            )
        if state.window is not None and tuple(state.window.shape[1:]) != (self.window - 1, self.width):
            raise ValueError(
                f"memory_state holds a window of shape {tuple(state.window.shape[1:])}, interface_window="
                f"{self.window} needs ({self.window - 1}, {self.width})"
            )
        if state.h.shape[0] != batch_size:
            raise ValueError(f"memory_state has batch size {state.h.shape[0]}, the input has {batch_size}")
        if state.h.shape[1] != self.controller_size:
            raise ValueError(
                f"memory_state has controller_size {state.h.shape[1]}, this config has {self.controller_size}"
            )
        return state

    # -- the recurrence -----------------------------------------------------------------------------------

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, state: RecurrentState | None = None, zero_reads: bool = False,
        record: bool = False,
    ) -> CoreOutput:
        """x (B, T, D), mask (B, T) bool; ``state`` None starts from an empty memory. ``zero_reads`` zeroes the
        reads in the features (the memory ablation; the controller's path stays); ``record`` returns the memory
        after every update (``MemoryUpdate``)."""
        if state is None:
            state = self.initial_state(x.shape[0], x.dtype, x.device)
        else:
            state = dataclasses.replace(state, access=self.access.owned(state.access))
        run = self._forward_steps if self.chunk_size is None else self._forward_chunked
        with record_function("memory.core"):
            out = run(x, mask, state, record)
        if zero_reads and self.read_size:
            out.features = torch.cat([out.features[..., : self.controller_size],
                                      torch.zeros_like(out.features[..., self.controller_size :])], -1)
        return out

    def step(
        self, x: torch.Tensor, state: RecurrentState, mask: torch.Tensor | None
    ) -> tuple[RecurrentState, torch.Tensor, PonderStep | None, InterfaceVector | None]:
        """One position: x (B, D), mask (B,) bool or None (every element real: no masked update at all) → new
        state, features (B, H + R·W), ponder step, interface. The slot tensors of ``state`` may be updated in place
        (``MemoryAccess.writes_in_place``); ``forward`` copies a state it is given first."""
        h, (hh, cc) = self.controller(x, state.reads, (state.h, state.c))
        if self.access.kind == "none":
            new = RecurrentState(hh, cc, state.reads, state.access, window=state.window)
            return _where(new, mask, state), self.bypass(h), None, None
        window, previous = self._windows(x[:, None], None if mask is None else mask[:, None], state.window)
        iface = self.interface(h, window[:, 0])
        query = None
        if self.predictive:  # this position writes under the query of the one before it
            query = iface.read_key[:, 0]
            iface = dataclasses.replace(iface, write_key=state.query,
                                        write_value=query if self.query_values else iface.write_value)
        access = self.access.advance_clock(iface, state.access, mask)
        words = self.access.first_words(iface, access)

        def read(w: torch.Tensor, st: AccessState, active: torch.Tensor) -> tuple[torch.Tensor, AccessState]:
            return self.access.read(iface, w, st, active if mask is None else active & mask)

        step = self.ponder(read, words, access, h)
        access = self.access.update(iface, step.state, mask)
        reads = step.reads.flatten(1)
        new = RecurrentState(hh, cc, reads, access, window=previous, query=query)
        return _where(new, mask, state), torch.cat([self.bypass(h), reads], dim=-1), step, iface

    def _forward_steps(self, x: torch.Tensor, mask: torch.Tensor, state: RecurrentState, record: bool) -> CoreOutput:
        """The per-token recurrence (``step``) over x (B, T, D), mask (B, T)."""
        b, t, _ = x.shape
        features, steps, costs, resets, gates, step_reads, halting = [], [], [], [], [], [], []
        records = [self._record(0, 0, None, state)] if record else None
        dense = bool(mask.all())  # one look at the mask per call: without padding no step masks its update
        one_step = self.stepper("step")
        for i in range(t):
            state, out, step, iface = one_step(x[:, i], state, None if dense else mask[:, i])
            features.append(out)
            if iface is not None:
                gates.append(iface.write_gate)
                if iface.clock_reset is not None:
                    resets.append(iface.clock_reset)
            if step is not None:
                steps.append(step.steps)
                costs.append(step.cost)
                if step.halting is not None:
                    step_reads.append(step.step_reads.flatten(2))
                    halting.append(step.halting)
            if record:
                weights = None if state.access.memory is None else state.access.memory.read_weights[:, None]
                records.append(self._record(i, i + 1, weights, state))
        zeros = torch.zeros(b, t, dtype=x.dtype, device=x.device)
        return CoreOutput(
            features=torch.stack(features, 1) if features else x.new_zeros(b, 0, self.features),
            state=state,
            ponder_cost=torch.stack(costs, 1) if costs else zeros,
            ponder_steps=torch.stack(steps, 1) if steps else zeros + 1,
            clock_resets=torch.stack(resets, 1) if resets else None,
            write_gates=torch.stack(gates, 1) if gates else None,
            memory_states=records,
            ponder_reads=torch.stack(step_reads, 1) if step_reads else None,
            ponder_halting=torch.stack(halting, 1) if halting else None,
        )

    def _forward_chunked(self, x: torch.Tensor, mask: torch.Tensor, state: RecurrentState, record: bool) -> CoreOutput:
        """Chunked mode (module docstring) over x (B, T, D), mask (B, T): pieces that end at chunk boundaries."""
        b, t, _ = x.shape
        features, gates = [], []
        records = [self._record(0, 0, None, state)] if record else None
        piece = self.stepper("_chunk_piece")
        dense = bool(mask.all())  # one look at the mask per call: without padding no piece looks at it
        for start, end in piece_bounds(0, t, self.chunk_size, state.chunk.length):
            state, out, weights, piece_gates = piece(x[:, start:end], mask[:, start:end], state, dense)
            features.append(out)
            gates.append(piece_gates)
            if record:
                records.append(self._record(start, end, weights, state))
        zeros = torch.zeros(b, t, dtype=x.dtype, device=x.device)
        out = torch.cat(features, 1) if features else x.new_zeros(b, 0, self.features)
        return CoreOutput(features=out, state=state, ponder_cost=zeros, ponder_steps=zeros + 1,
                          write_gates=torch.cat(gates, 1) if gates else zeros, memory_states=records)

    def _chunk_piece(
        self, x: torch.Tensor, mask: torch.Tensor, state: RecurrentState, dense: bool
    ) -> tuple[RecurrentState, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The L positions of one chunk in this call, x (B, L, D), mask (B, L) (``dense``: every position real) →
        state, features (B, L, F), read weights (B, L, R, N), write gates (B, L); the chunk's end (write, reads fed
        back) when they complete it."""
        b, steps = mask.shape
        # a padded call's pieces without padding run fused too, where looking at the mask costs nothing
        real = None if dense or (host_reads_free(mask) and bool(mask.all())) else mask
        with record_function("memory.controller"):
            h, (hh, cc) = self.controller.steps(x, state.reads, (state.h, state.c), real)
        with record_function("memory.interface"):
            windows, previous = self._windows(x, real, state.window)
            iface = self.interface(h.flatten(0, 1), windows.flatten(0, 1)).map(lambda t: t.unflatten(0, (b, steps)))
            query = state.query
            if self.predictive:  # each position writes under the query of the real position before it
                keys, query = previous_real(iface.read_key[:, :, 0], mask, state.query)
                values = iface.read_key[:, :, 0] if self.query_values else iface.write_value
                iface = dataclasses.replace(iface, write_key=keys, write_value=values)
        with record_function("memory.reads"):
            reads, weights = self.access.read_chunk(iface, state.access)
        reads = reads.flatten(2)
        features = torch.cat([self.bypass(h), reads], dim=-1)
        piece = PendingChunk(mask=mask, reads=reads, read_weights=weights, write_key=iface.write_key,
                             write_value=iface.write_value, write_gate=iface.write_gate, free_gates=iface.free_gates)
        state = RecurrentState(hh, cc, state.reads, state.access, state.chunk.extended(piece), previous, query)
        if state.chunk.length == self.chunk_size:
            with record_function("memory.chunk_end"):
                state = self._end_chunk(state)
        return state, features, weights, iface.write_gate

    def _end_chunk(self, state: RecurrentState) -> RecurrentState:
        """The chunk's single write, and its last real position's reads as the controller's next read input."""
        chunk = state.chunk
        access = self.access.write_chunk(state.access, chunk.write_key, chunk.write_value, chunk.write_gate,
                                         chunk.free_gates, chunk.read_weights, chunk.mask)
        rows = torch.arange(chunk.mask.shape[0], device=chunk.mask.device)
        last = chunk.reads[rows, last_real(chunk.mask)]
        reads = torch.where(chunk.mask.any(-1)[:, None], last, state.reads)
        return RecurrentState(state.h, state.c, reads, access, chunk.cleared(), state.window, state.query)

    def _windows(
        self, x: torch.Tensor, mask: torch.Tensor | None, previous: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The interface's input at each of L positions, x (B, L, D), mask (B, L) bool (None: all real),
        ``previous`` (B, K−1, D) the last K − 1 real inputs (newest first; None for K = 1) → windows (B, L, K·D)
        ``[x_t ; … ; x_{t−K+1}]`` over the real positions, and the last K − 1 real inputs after the L positions (a
        masked one is skipped)."""
        if previous is None:
            return x, None
        k = previous.shape[1] + 1
        # one unfold without padding (the stream (B, K−1+L, D) oldest first → (B, L, D, K) → newest first); with a
        # mask, a loop that skips the masked positions without a host-side look at it
        if mask is None:
            stream = torch.cat([previous.flip(1), x], 1)
            windows = stream.unfold(1, k, 1).flip(-1).transpose(-1, -2).flatten(2)
            return windows, stream[:, -(k - 1) :].flip(1)
        windows = []
        for i in range(x.shape[1]):
            window = torch.cat([x[:, i, None], previous], 1)  # (B, K, D)
            windows.append(window.flatten(1))
            previous = torch.where(mask[:, i, None, None], window[:, :-1], previous)
        return torch.stack(windows, 1), previous

    @staticmethod
    def _record(start: int, end: int, read_weights: torch.Tensor | None, state: RecurrentState) -> MemoryUpdate:
        memory = state.access.memory
        # copies: writes may update the state's tensors in place later
        fields = {} if memory is None else {name: t.detach().clone() for name, t in memory.as_dict().items()}
        return MemoryUpdate(start, end, None if read_weights is None else read_weights.detach(), fields)

    def statistics(self, ponder_steps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(3,) mean inner steps, p90 and share at the cap over the counted positions."""
        return torch.tensor(list(ponder_statistics(ponder_steps.detach(), mask, self.ponder.max_steps).values()))
