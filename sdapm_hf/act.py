"""Adaptive computation over memory reads: in each inner step the read output is the next read word.

For one time step with first read word ``x_0`` and controller output ``h``::

    y_n = Read(y_{n−1}),  y_0 = x_0                      (a chain of slots applied to this input)
    λ_n = σ(w_h · [h ; y_n] + b_h)                      (halting unit)

* ``act`` (Graves 2016): ``N = min{n : Σ_{m≤n} λ_m ≥ 1 − ε}`` (capped), remainder ``R = 1 − Σ_{m<N} λ_m``,
  output ``Σ_{n<N} λ_n y_n + R y_N``, ponder cost ``N + R`` (its gradient flows through ``R``).
* ``pondernet`` (Banino et al. 2021): ``p_n = λ_n Π_{j<n}(1 − λ_j)`` (the last step takes what is left); the
  loss is ``Σ_n p_n L(y_n) + β KL(p ‖ Geometric(λ_p))``, so every step's output is returned.
* ``fixed``: always ``K`` steps, output ``y_K`` (the baseline ACT must beat at equal mean compute).
* ``none``: one read.

Ponder statistics: steps per token (mean, p90, share at the cap) over the tokens that count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .configuration_dnc_sdapm import DNCSDAPMConfig

ReadFn = Callable[[torch.Tensor, object, torch.Tensor], tuple[torch.Tensor, object]]


@dataclass
class PonderStep:
    """Result of one time step's ponder loop."""

    reads: torch.Tensor  # (B, R, W) the reads that go on (mean-field output)
    state: object  # memory after the loop
    steps: torch.Tensor  # (B,) inner steps taken (the expected count for PonderNet)
    cost: torch.Tensor  # (B,) ponder cost (ACT) or KL to the prior (PonderNet), 0 otherwise
    step_reads: torch.Tensor | None = None  # (B, K, R, W) every step's reads (PonderNet)
    step_probs: torch.Tensor | None = None  # (B, K) halting distribution (PonderNet)


class Ponder(nn.Module):
    """The inner read loop of one time step (module docstring)."""

    def __init__(self, config: DNCSDAPMConfig) -> None:
        super().__init__()
        self.mode = config.act_mode
        self.max_steps = 1 if config.act_mode == "none" else config.act_max_steps
        self.epsilon = config.act_epsilon
        self.prior = config.pondernet_prior
        read_size = config.read_heads * config.word_size
        self.halting = None
        if self.mode in ("act", "pondernet"):
            self.halting = nn.Linear(config.controller_size + read_size, 1)
            self.halting.init_bias = config.halting_bias_init

    def forward(self, read: ReadFn, words: torch.Tensor, state: object, h: torch.Tensor) -> PonderStep:
        """read(words (B, R, W), state, active (B,) bool) → (outputs (B, R, W), state); h (B, H)."""
        b = words.shape[0]
        zeros = torch.zeros(b, dtype=words.dtype, device=words.device)
        everyone = torch.ones(b, dtype=torch.bool, device=words.device)
        if self.mode in ("none", "fixed"):
            for _ in range(self.max_steps):
                words, state = read(words, state, everyone)
            return PonderStep(words, state, zeros + self.max_steps, zeros)
        if self.mode == "act":
            return self._act(read, words, state, h)
        return self._pondernet(read, words, state, h)

    def _halt(self, h: torch.Tensor, reads: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.halting(torch.cat([h, reads.flatten(1)], dim=-1))).squeeze(-1)

    def _act(self, read: ReadFn, words: torch.Tensor, state: object, h: torch.Tensor) -> PonderStep:
        b = words.shape[0]
        total = torch.zeros(b, dtype=words.dtype, device=words.device)  # Σ λ of the steps taken before halting
        output = torch.zeros_like(words)
        steps = torch.zeros_like(total)
        remainder = torch.zeros_like(total)
        running = torch.ones(b, dtype=torch.bool, device=words.device)
        for n in range(1, self.max_steps + 1):
            words, state = read(words, state, running)
            halt = self._halt(h, words)
            last = n == self.max_steps
            stops = running & ((total + halt >= 1.0 - self.epsilon) | last)
            weight = torch.where(stops, 1.0 - total, halt) * running
            output = output + weight[:, None, None] * words
            remainder = torch.where(stops, 1.0 - total, remainder)
            steps = torch.where(stops, torch.full_like(steps, n), steps)
            total = total + torch.where(stops, torch.zeros_like(halt), halt) * running
            running = running & ~stops
            if not bool(running.any()):
                break
        return PonderStep(output, state, steps, steps + remainder)

    def _pondernet(self, read: ReadFn, words: torch.Tensor, state: object, h: torch.Tensor) -> PonderStep:
        b, k = words.shape[0], self.max_steps
        everyone = torch.ones(b, dtype=torch.bool, device=words.device)
        survive = torch.ones(b, dtype=words.dtype, device=words.device)
        probs, outputs = [], []
        for n in range(1, k + 1):
            words, state = read(words, state, everyone)
            halt = self._halt(h, words) if n < k else torch.ones_like(survive)
            probs.append(survive * halt)
            outputs.append(words)
            survive = survive * (1.0 - halt)
        p = torch.stack(probs, 1)  # (B, K), sums to 1
        step_reads = torch.stack(outputs, 1)
        n = torch.arange(1, k + 1, dtype=p.dtype, device=p.device)
        prior = self.prior * (1.0 - self.prior) ** (n - 1)
        prior = prior / prior.sum()
        kl = (p * (torch.log(p.clamp_min(1e-12)) - torch.log(prior))).sum(-1)
        mean_reads = (p[:, :, None, None] * step_reads).sum(1)
        return PonderStep(mean_reads, state, (p * n).sum(-1), kl, step_reads, p)


def ponder_statistics(steps: torch.Tensor, mask: torch.Tensor, cap: int) -> dict[str, float]:
    """Mean, 90th percentile and share at the cap of inner steps per counted token. steps, mask (B, T)."""
    counted = steps[mask.bool()].float()
    if counted.numel() == 0:
        return {"ponder_mean": math.nan, "ponder_p90": math.nan, "ponder_at_cap": math.nan}
    return {
        "ponder_mean": counted.mean().item(),
        "ponder_p90": torch.quantile(counted, 0.9).item(),
        "ponder_at_cap": (counted >= cap - 1e-6).float().mean().item(),
    }
