"""Adaptive computation over memory reads: in each inner step the read output is the next read word.

For one time step with first read word ``x_0`` and controller output ``h``::

    y_n = Read(y_{n−1}),  y_0 = x_0                      (a chain of slots applied to this input)
    λ_n = σ(w_h · [h ; y_n ; e_n] + b_h)                (halting unit; e_n the one-hot of the inner step n)

* ``act`` (Graves 2016): ``N = min{n : Σ_{m≤n} λ_m ≥ 1 − ε}`` (capped; ε = ``act_epsilon``), remainder
  ``R = 1 − Σ_{m<N} λ_m``, output ``Σ_{n<N} λ_n y_n + R y_N``, ponder cost ``N + R`` (its gradient flows through
  ``R``).
* ``pondernet`` (Banino et al. 2021): halting distribution ``p_n = λ_n Π_{m<n} (1 − λ_m)`` (``λ_K = 1`` at the cap
  K); training runs all K steps and the model's loss is the expected loss ``Σ_n p_n L(y_n)`` plus the ponder cost
  ``KL(p ‖ Geometric(λ_p))`` (truncated at K, λ_p = ``ponder_prior``), so each inner read is trained in proportion
  to ``p_n`` and a halting unit that stops after one read still gets the task's gradient (ACT's does not once
  ``λ_1 ≥ 1 − ε``). The read that goes on is ``y_{N*}`` at the median halting step
  ``N* = min{n : Σ_{m≤n} p_m ≥ ½}``, in training and in evaluation (where the loop stops there).
* ``fixed``: always ``K`` steps, output ``y_K`` (the baseline ACT must beat at equal mean compute).
* ``none``: one read.

The halting unit sees which inner step it is at (``e_n``; Graves feeds a first-step flag into a cell whose state
then moves with every step, while ``h`` here is fixed for the time step): a read's output alone does not say how
many links were followed, so without ``e_n`` no halting unit can stop after exactly k of them.

Ponder statistics: steps per token (mean, p90, share at the cap) over the tokens that count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from .tensor_state import host_reads_free

if TYPE_CHECKING:
    from .configuration_dnc_sdapm import DNCSDAPMConfig

ReadFn = Callable[[torch.Tensor, object, torch.Tensor], tuple[torch.Tensor, object]]
# Initial bias of the halting unit: σ(1) ≈ 0.73, so an untrained loop halts after one or two steps.
HALTING_BIAS_INIT = 1.0
# Tolerance when counting positions whose (integer) step count reached the cap.
CAP_TOLERANCE = 1e-6


@dataclass
class PonderStep:
    """Result of one time step's ponder loop."""

    reads: torch.Tensor  # (B, R, W) the reads that go on
    state: object  # memory after the loop
    steps: torch.Tensor  # (B,) inner steps taken
    cost: torch.Tensor  # (B,) ponder cost (ACT; PonderNet in training), 0 otherwise
    step_reads: torch.Tensor | None = None  # (B, K, R, W) every inner step's read (PonderNet in training)
    halting: torch.Tensor | None = None  # (B, K) the halting distribution p (PonderNet in training)


class Ponder(nn.Module):
    """The inner read loop of one time step (module docstring)."""

    def __init__(self, config: DNCSDAPMConfig) -> None:
        super().__init__()
        self.mode = config.act_mode
        self.max_steps = 1 if config.act_mode == "none" else config.act_max_steps
        self.epsilon = config.act_epsilon
        read_size = config.read_heads * config.word_size
        self.halting = None
        # log g_n of the geometric prior truncated at the cap (``_kl_to_prior``), n = 1 … K
        stay, stop = math.log1p(-config.ponder_prior), math.log(config.ponder_prior)
        self.log_prior = [n * stay + stop for n in range(self.max_steps - 1)] + [(self.max_steps - 1) * stay]
        if self.mode in ("act", "pondernet"):
            self.halting = nn.Linear(config.controller_size + read_size + self.max_steps, 1)
            self.halting.init_bias = HALTING_BIAS_INIT

    def forward(self, read: ReadFn, words: torch.Tensor, state: object, h: torch.Tensor) -> PonderStep:
        """read(words (B, R, W), state, active (B,) bool) → (outputs (B, R, W), state); h (B, H)."""
        if self.mode == "act":
            return self._act(read, words, state, h)
        if self.mode == "pondernet":
            return self._pondernet(read, words, state, h)
        b = words.shape[0]
        zeros = torch.zeros(b, dtype=words.dtype, device=words.device)
        everyone = torch.ones(b, dtype=torch.bool, device=words.device)
        for _ in range(self.max_steps):
            words, state = read(words, state, everyone)
        return PonderStep(words, state, zeros + self.max_steps, zeros)

    def _halt(self, h: torch.Tensor, reads: torch.Tensor, n: int) -> torch.Tensor:
        """λ_n (B,) after inner step n ≥ 1."""
        step = torch.zeros(h.shape[0], self.max_steps, dtype=h.dtype, device=h.device)
        step[:, n - 1] = 1.0
        return torch.sigmoid(self.halting(torch.cat([h, reads.flatten(1), step], dim=-1))).squeeze(-1)

    def _act(self, read: ReadFn, words: torch.Tensor, state: object, h: torch.Tensor) -> PonderStep:
        b = words.shape[0]
        total = torch.zeros(b, dtype=words.dtype, device=words.device)  # Σ λ of the steps taken before halting
        output = torch.zeros_like(words)
        steps = torch.zeros_like(total)
        remainder = torch.zeros_like(total)
        running = torch.ones(b, dtype=torch.bool, device=words.device)
        for n in range(1, self.max_steps + 1):
            words, state = read(words, state, running)
            halt = self._halt(h, words, n)
            last = n == self.max_steps
            stops = running & ((total + halt >= 1.0 - self.epsilon) | last)
            weight = torch.where(stops, 1.0 - total, halt) * running
            output = output + weight[:, None, None] * words
            remainder = torch.where(stops, 1.0 - total, remainder)
            steps = torch.where(stops, torch.full_like(steps, n), steps)
            total = total + torch.where(stops, torch.zeros_like(halt), halt) * running
            running = running & ~stops
            if host_reads_free(running) and not bool(running.any()):
                break  # elsewhere the remaining steps run with every position halted: they change nothing
        return PonderStep(output, state, steps, steps + remainder)

    def _pondernet(self, read: ReadFn, words: torch.Tensor, state: object, h: torch.Tensor) -> PonderStep:
        b = words.shape[0]
        going = torch.ones(b, dtype=words.dtype, device=words.device)  # Π_{m<n} (1 − λ_m)
        reached = torch.zeros_like(going)  # Σ_{m<n} p_m
        chosen, steps = torch.zeros_like(words), torch.zeros_like(going)
        running = torch.ones(b, dtype=torch.bool, device=words.device)  # before the median halting step
        reads, probs = [], []
        for n in range(1, self.max_steps + 1):
            words, state = read(words, state, running)
            halt = torch.ones_like(going) if n == self.max_steps else self._halt(h, words, n)
            p = going * halt
            going = going * (1.0 - halt)
            reached = reached + p
            stops = running & ((reached >= 0.5) | (n == self.max_steps))
            chosen = torch.where(stops[:, None, None], words, chosen)
            steps = torch.where(stops, torch.full_like(steps, n), steps)
            running = running & ~stops
            reads.append(words)
            probs.append(p)
            if not self.training and host_reads_free(running) and not bool(running.any()):
                break  # in evaluation the later steps are never used
        if not self.training:
            return PonderStep(chosen, state, steps, torch.zeros_like(steps))
        halting = torch.stack(probs, 1)
        return PonderStep(chosen, state, steps, self._kl_to_prior(halting), torch.stack(reads, 1), halting)

    def _kl_to_prior(self, halting: torch.Tensor) -> torch.Tensor:
        """KL(p ‖ g) (B,) of the halting distribution p (B, K) to the geometric prior truncated at K:
        ``g_n = λ_p (1 − λ_p)^{n−1}`` for n < K and ``g_K = (1 − λ_p)^{K−1}``."""
        tiny = torch.finfo(halting.dtype).tiny
        log_ratio = halting.clamp_min(tiny).log() - halting.new_tensor(self.log_prior)
        return torch.where(halting > 0, halting * log_ratio, 0.0).sum(-1)


def ponder_statistics(steps: torch.Tensor, mask: torch.Tensor, cap: int) -> dict[str, float]:
    """Mean, 90th percentile and share at the cap of inner steps per counted token. steps, mask (B, T)."""
    counted = steps[mask.bool()].float()
    if counted.numel() == 0:
        return {"ponder_mean": math.nan, "ponder_p90": math.nan, "ponder_at_cap": math.nan}
    return {
        "ponder_mean": counted.mean().item(),
        "ponder_p90": torch.quantile(counted, 0.9).item(),
        "ponder_at_cap": (counted >= cap - CAP_TOLERANCE).float().mean().item(),
    }
