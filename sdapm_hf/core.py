"""The recurrent memory model over a sequence of vectors: controller, interface, memory access, ponder loop.

One time step (``MemoryCore.step``)::

    h, state_c  = Controller([x_t ; r_{t−1}])                    controller.py
    ξ           = Interface(h, x_t)                              controller.py
    r_t         = Ponder(read, read keys ⊕ clock)                act.py (read output → next read word)
    memory      = consolidate if full, write (k ⊕ clock, v)      access.py, sdapm.py
    o_t         = W_o [Dropout_bypass(h) ; r_t]                  the core's output (B, D)

With a frozen base, ``x_t`` is the base's hidden state after LayerNorm and ``W_o`` starts at zero, so an untrained
memory adds nothing to the base's residual stream. The recurrent state (controller, last reads, clock, memory) is
a ``RecurrentState``; as a plain dict of tensors it is the models' ``memory_state``. Positions where the mask is
False leave the state untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .access import AccessState, MemoryAccess
from .act import Ponder, ponder_statistics
from .configuration_dnc_sdapm import DNCSDAPMConfig
from .controller import Controller, Interface


@dataclass(frozen=True)
class RecurrentState:
    """Controller state, last reads and memory access state of a batch."""

    h: torch.Tensor  # (B, H)
    c: torch.Tensor  # (B, H)
    reads: torch.Tensor  # (B, R·W)
    access: AccessState

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"controller.h": self.h, "controller.c": self.c, "reads": self.reads, **self.access.as_dict()}

    def where(self, mask: torch.Tensor, other: RecurrentState) -> RecurrentState:
        pick = lambda a, b: torch.where(mask[:, None], a, b)  # noqa: E731
        return RecurrentState(
            pick(self.h, other.h), pick(self.c, other.c), pick(self.reads, other.reads), self.access.where(mask, other.access)
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
        return RecurrentState(zeros, zeros.clone(), reads, self.access.init_state(batch_size, dtype, device))

    def state_from_dict(self, tensors: dict[str, torch.Tensor], batch_size: int) -> RecurrentState:
        """A ``memory_state`` dict back as a state; errors name what does not fit this config or batch."""
        try:
            state = RecurrentState(
                tensors["controller.h"], tensors["controller.c"], tensors["reads"], self.access.state_from_dict(tensors)
            )
        except (KeyError, ValueError) as err:
            raise ValueError(f"memory_state does not come from a model with this config: {err}") from err
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
            new = RecurrentState(hh, cc, state.reads, state.access)
            return new.where(mask, state), out, None, {}
        iface = self.interface(h, x)
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
        new = RecurrentState(hh, cc, reads, access)
        return new.where(mask, state), out, step, iface

    def forward(self, x: torch.Tensor, mask: torch.Tensor, state: RecurrentState | None = None) -> CoreOutput:
        """x (B, T, D), mask (B, T) bool; ``state`` None starts from an empty memory."""
        b, t, _ = x.shape
        x = self.input_norm(x)
        if state is None:
            state = self.initial_state(b, x.dtype, x.device)
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

    def statistics(self, ponder_steps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(3,) mean inner steps, p90 and share at the cap over the counted positions."""
        return torch.tensor(list(ponder_statistics(ponder_steps.detach(), mask, self.ponder.max_steps).values()))
