"""Gathers from and in-place writes into a slot field under autograd, at the cost of the slots they touch.

A slot field ``F`` (B, N, ...) that a sequence updates in place goes through versions ``F_0, F_1, …``: a write
``F_t = F_{t−1}`` with rows ``(b, n)`` replaced by ``V_t`` (B, k, ...), a read gathers ``F_t[b, n]``. Autograd's own
``index_put_`` and indexing give every step a gradient of the whole field: a gather's backward fills a zero
tensor of ``F``'s size, a write's backward copies the incoming one, so a sequence of T steps costs ``O(T B N)`` in
the backward, however few slots it touched. The backward of these steps runs in reverse order, and
``∂L/∂F_{t−1}`` differs from ``∂L/∂F_t`` only in the rows that write ``t`` and the gathers between ``t − 1`` and
``t`` touch:

    ∂L/∂F_{t−1} = ∂L/∂F_t with the written rows zeroed + Σ_{gathers of F_{t−1}} their gradients scattered,
    ∂L/∂V_t     = (∂L/∂F_t)[written rows].

So one buffer, the tape, holds ``∂L/∂F`` of the version the backward has reached, and each step updates it in
``O(k)``: a gather adds its gradient into its rows, a write takes the gradient of its rows and zeroes them. The
gradient that autograd passes between the steps' nodes is None: their edges only order the backward (a node runs
after every node that used its version). Where something else uses a whole version (a loss on the final state,
a selection scored over every slot), its gradient arrives at the node as usual and is added to the tape, so the
result stays exact. The field as it was before the first write receives the tape once, at that write's node;
gathers before it are autograd's own.

Rows a write replaces must be distinct within each batch row (``topk`` indices, one slot), as for ``index_put_``.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .tensor_state import lazy_zeros


class SlotTape:
    """``∂L/∂F`` of the version the backward has reached, for one field (shape, dtype and device of ``F``); a
    large CPU buffer costs the pages of the rows the backward touches (``tensor_state.lazy_zeros``)."""

    def __init__(self, field: torch.Tensor) -> None:
        self.shape, self.dtype, self.device = field.shape, field.dtype, field.device
        self.grad: torch.Tensor | None = None

    def _buffer(self) -> torch.Tensor:
        if self.grad is None:
            self.grad = lazy_zeros(*self.shape, dtype=self.dtype, device=self.device)  # pages of untouched rows: none
        return self.grad

    def add_whole(self, grad: torch.Tensor | None) -> None:
        """Add the gradient of a whole version (None: nothing used the whole field)."""
        if grad is not None:
            self._buffer().add_(grad)

    def add_rows(self, rows: torch.Tensor, idx: torch.Tensor, grad: torch.Tensor) -> None:
        """A gather's gradient: ``grad`` (rows.shape + field's trailing shape) added at ``[rows, idx]``."""
        self._buffer().index_put_((rows, idx), grad, accumulate=True)

    def take_rows(self, rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor | None:
        """A write's gradient: the tape at ``[rows, idx]``, which the write then zeroes (None: no gradient yet)."""
        if self.grad is None:
            return None
        taken = self.grad[rows, idx]
        self.grad.index_put_((rows, idx), torch.zeros_like(taken))
        return taken

    def release(self) -> torch.Tensor | None:
        """The gradient of the field as it came in; the tape is empty afterwards (ready for another backward)."""
        grad, self.grad = self.grad, None
        return grad


def flat_rows(rows: torch.Tensor, idx: torch.Tensor, slots: int) -> torch.Tensor:
    """The rows ``[rows, idx]`` of fields (B, N = slots, ...) as indices into their flattened (B·N) rows, flat."""
    return (rows * slots + idx).flatten()


def _gather(field: torch.Tensor, rows: torch.Tensor, idx: torch.Tensor, flat: torch.Tensor | None) -> torch.Tensor:
    """``field[rows, idx]``, by ``index_select`` over the flattened (batch, slot) dimensions where they flatten
    without a copy (faster than advanced indexing on the CPU)."""
    if field.stride(0) != field.stride(1) * field.shape[1]:  # a transposed view (the read weights): no flat view
        return field[rows, idx]
    flat = flat_rows(rows, idx, field.shape[1]) if flat is None else flat
    return field.flatten(0, 1).index_select(0, flat).view(*idx.shape, *field.shape[2:])


def tape_of(field: torch.Tensor) -> SlotTape | None:
    """The tape of a field last updated by this module under autograd (None otherwise)."""
    tape = getattr(field.grad_fn, "tape", None)
    return tape if isinstance(tape, SlotTape) else None


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, field: torch.Tensor, rows: torch.Tensor, idx: torch.Tensor, flat: torch.Tensor | None, tape: SlotTape
    ) -> torch.Tensor:
        ctx.tape = tape
        ctx.save_for_backward(rows, idx)
        return _gather(field, rows, idx, flat)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[None, None, None, None, None]:
        rows, idx = ctx.saved_tensors
        ctx.tape.add_rows(rows, idx, grad)
        return None, None, None, None, None


class _Put(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, field: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, idx: torch.Tensor, tape: SlotTape,
        first: bool,
    ) -> torch.Tensor:
        ctx.tape, ctx.first = tape, first
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(rows, idx)
        field.index_put_((rows, idx), values)
        ctx.mark_dirty(field)
        return field

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None, None]:
        rows, idx = ctx.saved_tensors
        ctx.tape.add_whole(grad)
        values = ctx.tape.take_rows(rows, idx)
        field = ctx.tape.release() if ctx.first else None
        return field if ctx.needs_input_grad[0] else None, values, None, None, None, None


def _recorded(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def gather_rows(
    field: torch.Tensor, rows: torch.Tensor, idx: torch.Tensor, flat: torch.Tensor | None = None
) -> torch.Tensor:
    """``field[rows, idx]``: field (B, N, ...), rows and idx of one shape S (batch and slot indices) → S + (...);
    ``flat``: ``flat_rows(rows, idx, N)`` where the caller gathers several fields at the same rows."""
    tape = tape_of(field) if _recorded(field) else None
    if tape is None:  # not written by ``put_rows_`` under autograd: autograd's own gather is as good
        return _gather(field, rows, idx, flat)
    return _Gather.apply(field, rows, idx, flat, tape)


def put_rows_(field: torch.Tensor, rows: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``field[rows, idx] = values`` in place; returns ``field``. rows, idx (B, k), distinct slots in each row."""
    if not _recorded(field, values):
        return field.index_put_((rows, idx), values)
    tape = tape_of(field)
    first = tape is None
    return _Put.apply(field, values, rows, idx, SlotTape(field) if first else tape, first)
