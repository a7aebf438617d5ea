"""The DNC controller and its interface to the memory.

Per time step ``t`` (Graves et al. 2016)::

    (h_t, c_t) = LSTM([x_t ; r_{t−1}], (h_{t−1}, c_{t−1})),   h_t clipped to ±clip
    ξ_t        = LayerNorm(W_ξ h_t + U_ξ [x_t ; … ; x_{t−K+1}])       (the interface vector, ADNC's normalisation)

The input's direct path ``U_ξ`` lets a gate depend on the current token itself (a delimiter that resets
the clock, say) without first routing it through the recurrent state. With ``interface_window`` K > 1 it sees
the last K inputs (a short causal convolution, as the shift before an SSM's recall): a pair can be written with
the word two positions back as its key and the current one as its value ("the otter is jade"), and read with the
previous word as its query ("the otter ?"), without the LSTM having to learn to carry the word first.

``ξ_t`` is split into the named parts of ``Interface.parts`` (read keys, strengths and modes, write key, value
and gate, free gates, the classic memory's allocation gate, write strength and erase vector, the consolidation
gate, key and strength, and the clock's gates). The SDAPM writes where allocation says (the least-used slot),
so its write location has no learned parts. Gates go through a sigmoid, read modes through a softmax over
(backward, content, forward), strengths through ``exp(2 + 3 tanh(ξ/3))`` ∈ [e⁻¹, e⁵] (a log-scale
parametrisation: sharp addressing needs β ≈ 20–100, far beyond what a clipped linear output reaches under
``1 + softplus``).

The clock (``clock_keys``) is an addressing mode for keys: ``κ_t = normalize(P ((1 − ρ_t) κ_{t−1} + ρ_t κ_0))``
with ``P`` a fixed random rotation and ``ρ_t = g_t³`` from a learned reset gate ``g_t``. Replayed after a reset
it produces the same sequence of keys, which are quasi-random unit vectors however long the sequence: position
keys that a model can use to store and recall items in order (the DNC's temporal links play that role for
unconsolidated slots). A soft reset leaks, and a leaking orbit contracts towards a fixed point beyond the
lengths seen in training, so each reset costs ``clock_reset_cost`` in the loss: a reset the task needs pays for
itself, the others are driven to ρ ≈ 0. Write and read keys are ``normalize((1 − c) κ + c k)`` with content
share ``c = (1 − g)³`` from learned gates ``g``: an open clock gate leaks almost no content into a position
key (content keys out of the trained range are what stopped a copy model from generalising in length), a closed
one gives a pure content key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .tensor_state import TensorState

if TYPE_CHECKING:
    from .configuration_dnc_sdapm import DNCSDAPMConfig

# The controller's outputs are clipped to ±CONTROLLER_CLIP (the DNC's stabiliser).
CONTROLLER_CLIP = 20.0


class Controller(nn.Module):
    """LSTM over the input and the previous reads; outputs are clipped (DNC)."""

    def __init__(self, config: DNCSDAPMConfig, read_size: int) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(config.hidden_size + read_size, config.controller_size)
        self.clip = CONTROLLER_CLIP

    def forward(
        self, x: torch.Tensor, reads: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, D), reads (B, R·W), state (h, c) each (B, H) → output (B, H) and the new state."""
        h, c = self.cell(torch.cat([x, reads], dim=-1), state)
        return h.clamp(-self.clip, self.clip), (h, c)

    def steps(
        self, x: torch.Tensor, reads: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """L steps that all get the same reads: x (B, L, D), reads (B, R·W), mask (B, L) bool (a masked step keeps
        the state; None: every step real) → outputs (B, L, H) and the last state.

        Several steps without a mask run as one fused LSTM call with the cell's weights (``torch.lstm``, the op
        behind ``nn.LSTM``: 5× faster than L cell calls on CPU at H = 128, equal to float rounding); otherwise step
        by step (so one step is exactly ``forward``).
        """
        if mask is None and x.shape[1] > 1:
            inputs = torch.cat([x, reads[:, None].expand(-1, x.shape[1], -1)], dim=-1)
            cell = self.cell
            weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
            # (input, hx, weights, has_biases, num_layers, dropout, train, bidirectional, batch_first)
            out, h, c = torch.lstm(
                inputs, (state[0][None], state[1][None]), weights, True, 1, 0.0, self.training, False, True
            )
            return out.clamp(-self.clip, self.clip), (h[0], c[0])
        outputs = []
        for i in range(x.shape[1]):
            out, new = self(x[:, i], reads, state)
            if mask is None:
                state = new
            else:
                keep = mask[:, i, None]
                state = (torch.where(keep, new[0], state[0]), torch.where(keep, new[1], state[1]))
            outputs.append(out)
        return torch.stack(outputs, 1), state


@dataclass(frozen=True)
class InterfaceVector(TensorState):
    """The named parts of the interface vector ξ of one step, batch-first (B, ...), or of L steps (B, L, ...); a
    part the config does not use is None."""

    read_key: torch.Tensor | None = None  # (B, R, W)
    read_strength: torch.Tensor | None = None  # (B, R) β
    write_key: torch.Tensor | None = None  # (B, W)
    write_value: torch.Tensor | None = None  # (B, W)
    write_gate: torch.Tensor | None = None  # (B,)
    free_gates: torch.Tensor | None = None  # (B, R)
    read_mode: torch.Tensor | None = None  # (B, R, 3) over (backward, content, forward)
    allocation_gate: torch.Tensor | None = None  # (B,) classic memory
    write_strength: torch.Tensor | None = None  # (B,) classic memory
    erase: torch.Tensor | None = None  # (B, W) classic memory
    consolidation_gate: torch.Tensor | None = None  # (B,) learned consolidation
    consolidation_key: torch.Tensor | None = None  # (B, W)
    consolidation_strength: torch.Tensor | None = None  # (B,)
    clock_reset: torch.Tensor | None = None  # (B,) ρ
    write_clock: torch.Tensor | None = None  # (B,)
    read_clock: torch.Tensor | None = None  # (B, R)


def interface_parts(config: DNCSDAPMConfig) -> dict[str, tuple[int, float]]:
    """Name (an ``InterfaceVector`` field) → (size, initial bias) of every part of ξ this config needs."""
    r, w = config.read_heads, config.word_size
    parts: dict[str, tuple[int, float]] = {}
    if config.memory_type == "none":
        return parts
    parts["read_key"] = (r * w, 0.0)
    parts["read_strength"] = (r, config.read_strength_bias_init)
    parts["write_key"] = (w, 0.0)
    parts["write_value"] = (w, 0.0)
    parts["write_gate"] = (1, 1.0)
    parts["free_gates"] = (r, -3.0)
    if config.temporal_links:
        parts["read_mode"] = (r * 3, 0.0)
    if config.memory_type == "dnc":  # the classic memory's soft write location; the SDAPM allocates
        parts["allocation_gate"] = (1, 1.0)
        parts["write_strength"] = (1, 0.0)
        parts["erase"] = (w, 0.0)
    if config.memory_type == "sdapm" and config.consolidation == "learned":
        parts["consolidation_gate"] = (1, 2.0)  # starts as consolidate-when-full; learns when not to
        parts["consolidation_key"] = (w, 0.0)
        parts["consolidation_strength"] = (1, 0.0)
    if config.clock_keys:
        parts["clock_reset"] = (1, 0.0)
        parts["write_clock"] = (1, 3.0)  # keys start on the clock; the gates learn when content keys help
        parts["read_clock"] = (r, 3.0)
    return parts


_SIGMOID = {"write_gate", "allocation_gate", "free_gates", "erase", "consolidation_gate", "write_clock",
            "read_clock"}
_STRENGTH = {"read_strength", "write_strength", "consolidation_strength"}
_SCALAR = {"write_gate", "allocation_gate", "write_strength", "consolidation_gate", "consolidation_strength",
           "clock_reset", "write_clock"}  # (B,)


def strength(raw: torch.Tensor) -> torch.Tensor:
    """Addressing sharpness β = exp(2 + 3 tanh(raw / 3)) ∈ [e⁻¹, e⁵]."""
    return torch.exp(2.0 + 3.0 * torch.tanh(raw / 3.0))


class Interface(nn.Module):
    """Controller output (B, H) and input window (B, K·D) → the interface vector (module docstring)."""

    def __init__(self, config: DNCSDAPMConfig) -> None:
        super().__init__()
        self.parts = interface_parts(config)
        self.read_heads = config.read_heads
        total = sum(size for size, _ in self.parts.values())
        self.proj = nn.Linear(config.controller_size, total)
        self.skip = nn.Linear(config.hidden_size * config.interface_window, total, bias=False)
        self.norm = nn.LayerNorm(total)
        # Read by the model's weight initialisation: each gate starts at its part's bias (open or closed).
        self.norm.init_bias = [bias for size, bias in self.parts.values() for _ in range(size)]

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> InterfaceVector:
        """h (B, H) controller output, x (B, K·D) the step's input window ``[x_t ; … ; x_{t−K+1}]``."""
        flat = self.norm(self.proj(h) + self.skip(x))
        out = {}
        for name, chunk in zip(self.parts, flat.split([size for size, _ in self.parts.values()], -1)):
            if name in _SIGMOID:
                chunk = torch.sigmoid(chunk)
            elif name == "clock_reset":
                chunk = torch.sigmoid(chunk).pow(3)
            elif name in _STRENGTH:
                chunk = strength(chunk)
            if name == "read_key":
                chunk = chunk.view(h.shape[0], self.read_heads, -1)
            elif name == "read_mode":
                chunk = torch.softmax(chunk.view(h.shape[0], self.read_heads, 3), dim=-1)
            elif name in _SCALAR:
                chunk = chunk.squeeze(-1)
            out[name] = chunk
        return InterfaceVector(**out)


class Clock(nn.Module):
    """Position keys from a fixed random rotation with a learned reset (module docstring)."""

    def __init__(self, word_size: int, seed: int = 0) -> None:
        super().__init__()
        self.register_buffer("rotation", torch.empty(word_size, word_size))
        self.register_buffer("origin", torch.empty(word_size))
        self.seed = seed

    def default_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotation and origin this module starts with (seeded, independent of global RNG state)."""
        g = torch.Generator().manual_seed(self.seed)
        w = self.origin.shape[0]
        q, r = torch.linalg.qr(torch.randn(w, w, generator=g, dtype=torch.float64))
        rotation = q * torch.sign(torch.diagonal(r))
        origin = F.normalize(torch.randn(w, generator=g, dtype=torch.float64), dim=0)
        return rotation.float(), origin.float()

    def initial(self, batch_size: int, dtype: torch.dtype) -> torch.Tensor:
        return self.origin.to(dtype).expand(batch_size, -1).clone()

    def forward(self, clock: torch.Tensor, reset: torch.Tensor) -> torch.Tensor:
        """clock (B, W), reset ρ (B,) in [0, 1] → next clock (B, W)."""
        mixed = (1.0 - reset[:, None]) * clock + reset[:, None] * self.origin.to(clock.dtype)
        return F.normalize(mixed @ self.rotation.to(clock.dtype).T, dim=-1)


def mix_keys(key: torch.Tensor, clock: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``normalize((1 − c) κ + c normalize(k))`` with content share ``c = (1 − g)³``; key (B, ..., W), clock
    broadcastable, gate (B, ...)."""
    content = (1.0 - gate.unsqueeze(-1)).pow(3)
    return F.normalize((1.0 - content) * clock + content * F.normalize(key, dim=-1), dim=-1)
