"""slot_tape: in-place slot writes and gathers under autograd give autograd's own gradients, at the cost of the
rows they touch."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sdapm_hf.slot_tape import gather_rows, put_rows_

B, N, W = 3, 50, 4


def _run(start: torch.Tensor, writes: torch.Tensor, taped: bool, steps: int) -> torch.Tensor:
    """``steps`` times: gather two slots per row, write one slot per row from them and the step's input; a loss on
    the gathers, on one whole version in the middle and on the last version."""
    field = start.clone()
    rows = torch.arange(B)[:, None]
    loss = torch.zeros(())
    for t in range(steps):
        read_idx = torch.stack([(torch.arange(B) * 7 + 3 * t) % N, (torch.arange(B) * 5 + t + 1) % N], 1)
        read = gather_rows(field, rows.expand(B, 2), read_idx) if taped else field[rows.expand(B, 2), read_idx]
        loss = loss + (read * (t + 1)).sin().sum()
        write_idx = ((torch.arange(B) * 11 + 2 * t) % N)[:, None]
        values = (read.sum(1, keepdim=True) * 0.5 + writes[:, t : t + 1]).tanh()
        field = put_rows_(field, rows, write_idx, values) if taped else field.index_put((rows, write_idx), values)
        if t == steps // 2:
            loss = loss + (field * torch.linspace(-1, 1, W)).sum()
    return loss + field.square().sum()


def _grads(taped: bool, steps: int = 12) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    start_leaf = torch.randn(B, N, W, generator=generator).requires_grad_()
    writes = torch.randn(B, steps, W, generator=generator).requires_grad_()
    loss = _run(start_leaf * 1.0, writes, taped, steps)
    loss.backward()
    return loss.detach(), start_leaf.grad, writes.grad


def test_taped_gathers_and_writes_give_autograds_own_gradients():
    """Gradients of the written values and of the field before the first write (a whole-field term in the middle
    and at the end included) equal those of autograd's functional index_put."""
    for taped, plain in zip(_grads(True), _grads(False)):
        assert torch.allclose(taped, plain, atol=1e-6)


class _FieldSizedOutputs(TorchDispatchMode):
    """Counts the operations that produce a new tensor with as many elements as the whole field (an in-place
    write into the field returns the field itself: not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        inputs = {a.data_ptr() for a in args if isinstance(a, torch.Tensor)}
        self.count += sum(
            isinstance(o, torch.Tensor) and o.numel() == B * N * W and o.data_ptr() not in inputs for o in outputs
        )
        return out


def _backward_field_sized_ops(steps: int) -> int:
    generator = torch.Generator().manual_seed(1)
    start = torch.randn(B, N, W, generator=generator)
    writes = torch.randn(B, steps, W, generator=generator).requires_grad_()
    field, rows, loss = start.clone(), torch.arange(B)[:, None], torch.zeros(())
    for t in range(steps):
        idx = ((torch.arange(B) * 11 + 2 * t) % N)[:, None]
        read = gather_rows(field, rows, ((torch.arange(B) + t) % N)[:, None])
        loss = loss + read.sum()
        field = put_rows_(field, rows, idx, (read + writes[:, t : t + 1]).tanh())
    with _FieldSizedOutputs() as counter:
        loss.backward()
    return counter.count


def test_the_backward_touches_the_whole_field_once_however_long_the_sequence():
    """Autograd's own in-place writes and gathers give every step a field-sized gradient; the tape allocates one
    buffer for the whole sequence."""
    assert _backward_field_sized_ops(5) == _backward_field_sized_ops(40) <= 1
