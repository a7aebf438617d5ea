"""The recurrent memory model over a sequence of vectors: controller, interface, memory access, ponder loop.

One time step (``MemoryCore.step``)::

    h, state_c  = Controller([x_t ; r_{t−1}])                    controller.py
    ξ           = Interface(h, [x_t ; … ; x_{t−K+1}])             controller.py (K = interface_window)
    r_t         = Ponder(read, read keys ⊕ clock)                act.py (read output → next read word)
    memory      = consolidate if full, write (k ⊕ clock, v)      access.py, sdapm.py
    o_t         = W_o [Dropout_bypass(h) ; r_t]                  the core's output (B, D)

Chunked mode (``chunk_size`` C; chunks are counted from the start of the memory's stream, across calls): for the
positions t of one chunk, with ``r_prev`` the reads of the previous chunk's last real position::

    h_t, state_c = Controller([x_t ; r_prev])                    token by token
    ξ_t          = Interface(h_t, [x_t ; … ; x_{t−K+1}])          all positions of the chunk in one call
    r_t          = Read(read keys_t)                             all at once, against the memory at the chunk's start
    o_t          = W_o [Dropout_bypass(h_t) ; r_t]
    at the end:  memory = consolidate if full, write_chunk({(k_t, v_t, g_t)})      one slot for the C pairs
                 r_prev = r of the chunk's last real position

A call that ends inside a chunk keeps the chunk's positions so far (``PendingChunk``, in the state as
``chunk.<field>``), so a stream fed in pieces (segments, cached generation) meets the same chunk boundaries as one
pass over it. ``chunk_size=1`` is the per-token recurrence.

With a frozen base, ``x_t`` is the base's hidden state after LayerNorm, the output is scaled by the hidden state's
RMS (``forward``) and ``W_o`` starts at zero, so an untrained memory adds nothing to the base's residual stream.
The interface's window ``[x_t ; … ; x_{t−K+1}]`` holds the last K real inputs (zeros before the first), so a key
or value can be a token's neighbour, e.g. the word two positions back, without routing it through the LSTM; the
state carries the last K − 1 inputs. The recurrent state (controller, last reads, clock, memory, window) is a
``RecurrentState``; as a plain dict of tensors it
is the models' ``memory_state``. Positions where the mask is False leave the state untouched (in chunked mode: a
chunk without a real position leaves it bit-identical).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .access import AccessState, MemoryAccess, last_real
from .act import Ponder, ponder_statistics
from .configuration_dnc_sdapm import DNCSDAPMConfig
from .controller import Controller, Interface
from .injection import segment_bounds
from .tensor_state import TensorState

# The interface parts a chunk's end writes.
CHUNK_WRITES = ("write_key", "write_value", "write_gate", "free_gates")


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

    def as_dict(self) -> dict[str, torch.Tensor]:
        chunk = {} if self.chunk is None else self.chunk.prefixed("chunk")
        window = {} if self.window is None else {"window": self.window}
        return {
            "controller.h": self.h, "controller.c": self.c, "reads": self.reads, **self.access.as_dict(), **chunk, **window
        }

    def where(self, mask: torch.Tensor, other: RecurrentState) -> RecurrentState:
        """Per position (per-token mode, no pending chunk): ``self`` where mask (B,), ``other`` elsewhere."""
        pick = lambda a, b: torch.where(mask.view(-1, *(1,) * (a.dim() - 1)), a, b)  # noqa: E731
        return RecurrentState(
            pick(self.h, other.h), pick(self.c, other.c), pick(self.reads, other.reads), self.access.where(mask, other.access),
            window=None if self.window is None else pick(self.window, other.window),
        )


@dataclass
class CoreOutput:
    """The core's outputs over T positions (see ``DNCSDAPMModelOutput`` for the fields)."""

    hidden: torch.Tensor  # (B, T, D)
    state: RecurrentState
    ponder_cost: torch.Tensor  # (B, T)
    ponder_steps: torch.Tensor  # (B, T)
    ponder_hidden_states: torch.Tensor | None = None  # (B, T, K, D)
    ponder_probs: torch.Tensor | None = None  # (B, T, K)
    clock_resets: torch.Tensor | None = None  # (B, T)


class MemoryCore(nn.Module):
    """Controller + memory, stepped over the positions of (B, T, D) inputs."""

    def __init__(self, config: DNCSDAPMConfig) -> None:
        super().__init__()
        self.config = config
        self.chunk_size = config.chunk_size
        self.window = config.interface_window
        self.read_size = 0 if config.memory_type == "none" else config.read_heads * config.word_size
        self.input_norm = nn.LayerNorm(config.hidden_size) if config.text_config is not None else nn.Identity()
        self.controller = Controller(config, self.read_size)
        self.interface = Interface(config)
        self.access = MemoryAccess(config)
        self.ponder = Ponder(config)
        self.bypass = nn.Dropout(config.bypass_dropout)
        self.output = nn.Linear(config.controller_size + self.read_size, config.hidden_size)
        if config.text_config is not None:
            self.output.init_std = 0.0  # the memory's path into a frozen base starts closed

    def initial_state(self, batch_size: int, dtype: torch.dtype, device: torch.device) -> RecurrentState:
        zeros = torch.zeros(batch_size, self.config.controller_size, dtype=dtype, device=device)
        reads = torch.zeros(batch_size, self.read_size, dtype=dtype, device=device)
        access = self.access.init_state(batch_size, dtype, device)
        chunk = None if self.chunk_size is None else self._empty_chunk(batch_size, dtype, device)
        window = None
        if self.window > 1:
            window = torch.zeros(batch_size, self.window - 1, self.config.hidden_size, dtype=dtype, device=device)
        return RecurrentState(zeros, zeros.clone(), reads, access, chunk, window)

    def _empty_chunk(self, batch_size: int, dtype: torch.dtype, device: torch.device) -> PendingChunk:
        config = self.config
        heads, w = config.read_heads, config.word_size
        empty = lambda *shape: torch.zeros(batch_size, 0, *shape, dtype=dtype, device=device)  # noqa: E731
        return PendingChunk(
            mask=torch.zeros(batch_size, 0, dtype=torch.bool, device=device),
            reads=empty(self.read_size),
            read_weights=empty(heads, config.memory_slots),
            write_key=empty(w),
            write_value=empty(w),
            write_gate=empty(),
            free_gates=empty(heads),
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
            )
        except (KeyError, ValueError) as err:
            raise ValueError(f"memory_state does not come from a model with this config: {err}") from err
        if state.chunk is not None and state.chunk.length >= self.chunk_size:
            raise ValueError(
                f"memory_state holds {state.chunk.length} positions of an unfinished chunk, "
                f"chunk_size={self.chunk_size} allows at most {self.chunk_size - 1}"
            )
        if state.window is not None and tuple(state.window.shape[1:]) != (self.window - 1, self.config.hidden_size):
            raise ValueError(
                f"memory_state holds a window of shape {tuple(state.window.shape[1:])}, interface_window="
                f"{self.window} needs ({self.window - 1}, {self.config.hidden_size})"
            )
        if state.h.shape[0] != batch_size:
            raise ValueError(f"memory_state has batch size {state.h.shape[0]}, the input has {batch_size}")
        if state.h.shape[1] != self.config.controller_size:
            raise ValueError(
                f"memory_state has controller_size {state.h.shape[1]}, this config has {self.config.controller_size}"
            )
        return state

    def step(
        self, x: torch.Tensor, state: RecurrentState, mask: torch.Tensor
    ) -> tuple[RecurrentState, torch.Tensor, object, dict[str, torch.Tensor]]:
        """One position: x (B, D), mask (B,) → new state, output (B, D), ponder step, interface."""
        h, (hh, cc) = self.controller(x, state.reads, (state.h, state.c))
        if self.access.kind == "none":
            out = self.output(self.bypass(h))
            new = RecurrentState(hh, cc, state.reads, state.access, window=state.window)
            return new.where(mask, state), out, None, {}
        window, previous = self._windows(x[:, None], mask[:, None], state.window)
        iface = self.interface(h, window[:, 0])
        access = self.access.advance_clock(iface, state.access, mask)
        words = self.access.first_words(iface, access)
        step = self.ponder(lambda w, st, active: self.access.read(iface, w, st, active & mask), words, access, h)
        access = self.access.update(iface, step.state, mask)
        reads = step.reads.flatten(1)
        out = self.output(torch.cat([self.bypass(h), reads], dim=-1))
        if step.step_reads is not None:
            k = step.step_reads.shape[1]
            per_step = torch.cat([self.bypass(h)[:, None].expand(-1, k, -1), step.step_reads.flatten(2)], dim=-1)
            step.step_reads = self.output(per_step)  # (B, K, D): every inner step's output
        new = RecurrentState(hh, cc, reads, access, window=previous)
        return new.where(mask, state), out, step, iface

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, state: RecurrentState | None = None,
        residual: torch.Tensor | None = None,
    ) -> CoreOutput:
        """x (B, T, D), mask (B, T) bool; ``state`` None starts from an empty memory; ``residual`` (B, T, D) the
        stream the output is added to, when it is not ``x`` itself (the memory reading the base's embeddings).

        With a frozen base the output is in units of the residual stream's scale at each position,
        ``o_t · rms(residual_t)``: the memory reads its input normalised and writes back at the stream's scale, so a
        projection of order one can steer a stream of any norm (a random or pretrained base's residual is often
        10–100 × the memory's own outputs)."""
        stream = x if residual is None else residual
        scale = stream.pow(2).mean(-1, keepdim=True).sqrt() if self.config.text_config is not None else None
        x = self.input_norm(x)
        if state is None:
            state = self.initial_state(x.shape[0], x.dtype, x.device)
        chunked = self.chunk_size is not None
        out = self._forward_chunked(x, mask, state) if chunked else self._forward_steps(x, mask, state)
        if scale is not None:
            out.hidden = out.hidden * scale
        return out

    def _forward_steps(self, x: torch.Tensor, mask: torch.Tensor, state: RecurrentState) -> CoreOutput:
        """The per-token recurrence (``step``) over x (B, T, D), mask (B, T)."""
        b, t, _ = x.shape
        outputs, steps, costs, step_outs, step_probs, resets = [], [], [], [], [], []
        for i in range(t):
            state, out, step, iface = self.step(x[:, i], state, mask[:, i])
            outputs.append(out)
            if "clock_reset" in iface:
                resets.append(iface["clock_reset"])
            if step is not None:
                steps.append(step.steps)
                costs.append(step.cost)
                if step.step_probs is not None:
                    step_outs.append(step.step_reads)
                    step_probs.append(step.step_probs)
        zeros = torch.zeros(b, t, dtype=x.dtype, device=x.device)
        return CoreOutput(
            hidden=torch.stack(outputs, 1) if outputs else x.new_zeros(b, 0, self.config.hidden_size),
            state=state,
            ponder_cost=torch.stack(costs, 1) if costs else zeros,
            ponder_steps=torch.stack(steps, 1) if steps else zeros + 1,
            ponder_hidden_states=torch.stack(step_outs, 1) if step_outs else None,
            ponder_probs=torch.stack(step_probs, 1) if step_probs else None,
            clock_resets=torch.stack(resets, 1) if resets else None,
        )

    def _forward_chunked(self, x: torch.Tensor, mask: torch.Tensor, state: RecurrentState) -> CoreOutput:
        """Chunked mode (module docstring) over x (B, T, D), mask (B, T): pieces that end at chunk boundaries."""
        b, t, _ = x.shape
        outputs = []
        for start, end in segment_bounds(0, t, self.chunk_size, state.chunk.length):
            state, out = self._chunk_piece(x[:, start:end], mask[:, start:end], state)
            outputs.append(out)
        zeros = torch.zeros(b, t, dtype=x.dtype, device=x.device)
        hidden = torch.cat(outputs, 1) if outputs else x.new_zeros(b, 0, self.config.hidden_size)
        return CoreOutput(hidden=hidden, state=state, ponder_cost=zeros, ponder_steps=zeros + 1)

    def _chunk_piece(
        self, x: torch.Tensor, mask: torch.Tensor, state: RecurrentState
    ) -> tuple[RecurrentState, torch.Tensor]:
        """The L positions of one chunk in this call, x (B, L, D), mask (B, L) → state, outputs (B, L, D); the
        chunk's end (write, reads fed back) when they complete it."""
        b, steps = mask.shape
        h, (hh, cc) = self.controller.steps(x, state.reads, (state.h, state.c), mask)
        windows, previous = self._windows(x, mask, state.window)
        iface = self.interface(h.flatten(0, 1), windows.flatten(0, 1))
        iface = {name: t.unflatten(0, (b, steps)) for name, t in iface.items()}
        reads, weights = self.access.read_chunk(iface, state.access)
        reads = reads.flatten(2)
        out = self.output(torch.cat([self.bypass(h), reads], dim=-1))
        piece = PendingChunk(mask=mask, reads=reads, read_weights=weights, **{k: iface[k] for k in CHUNK_WRITES})
        state = RecurrentState(hh, cc, state.reads, state.access, state.chunk.extended(piece), previous)
        if state.chunk.length == self.chunk_size:
            state = self._end_chunk(state)
        return state, out

    def _end_chunk(self, state: RecurrentState) -> RecurrentState:
        """The chunk's single write, and its last real position's reads as the controller's next read input."""
        chunk = state.chunk
        access = self.access.write_chunk(state.access, chunk.as_dict(), chunk.mask)
        rows = torch.arange(chunk.mask.shape[0], device=chunk.mask.device)
        last = chunk.reads[rows, last_real(chunk.mask)]
        reads = torch.where(chunk.mask.any(-1)[:, None], last, state.reads)
        return RecurrentState(state.h, state.c, reads, access, chunk.cleared(), state.window)

    def _windows(
        self, x: torch.Tensor, mask: torch.Tensor, previous: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The interface's input at each of L positions, x (B, L, D), mask (B, L) bool, ``previous`` (B, K−1, D)
        the last K − 1 real inputs (newest first; None for K = 1) → windows (B, L, K·D) ``[x_t ; … ; x_{t−K+1}]``
        over the real positions, and the last K − 1 real inputs after the L positions (a masked one is skipped)."""
        if previous is None:
            return x, None
        k = previous.shape[1] + 1
        # one unfold for a chunk without padding; a single position (the per-token step) takes the loop, which needs
        # no host-side look at the mask
        if x.shape[1] > 1 and bool(mask.all()):  # (B, K−1+L, D) oldest first → (B, L, D, K) → newest first
            stream = torch.cat([previous.flip(1), x], 1)
            windows = stream.unfold(1, k, 1).flip(-1).transpose(-1, -2).flatten(2)
            return windows, stream[:, -(k - 1) :].flip(1)
        windows = []
        for i in range(x.shape[1]):
            window = torch.cat([x[:, i, None], previous], 1)  # (B, K, D)
            windows.append(window.flatten(1))
            previous = torch.where(mask[:, i, None, None], window[:, :-1], previous)
        return torch.stack(windows, 1), previous

    def statistics(self, ponder_steps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(3,) mean inner steps, p90 and share at the cap over the counted positions."""
        return torch.tensor(list(ponder_statistics(ponder_steps.detach(), mask, self.ponder.max_steps).values()))
