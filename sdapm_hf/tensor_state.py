"""A frozen dataclass of tensors that converts to and from a plain dict (the form models return), when the memory's
step may branch on a tensor's values, and zeros that cost nothing until touched."""

from __future__ import annotations

import dataclasses
import math
import mmap
from typing import Callable, TypeVar

import torch

State = TypeVar("State", bound="TensorState")
# Zeroed CPU tensors of at least this many bytes are mapped rather than filled (``lazy_zeros``).
LAZY_ZEROS_BYTES = 1 << 20


def lazy_zeros(*shape: int, dtype: torch.dtype, device: torch.device | str | None = None) -> torch.Tensor:
    """``torch.zeros(*shape, dtype=dtype, device=device)``; on the CPU, one of ``LAZY_ZEROS_BYTES`` or more is backed
    by a private anonymous mapping, whose pages the kernel supplies as zeros when first touched: allocating it fills
    nothing and faults in no page. A sequence writes a few slots of a large memory (and its backward a few rows of
    each gradient buffer), so most pages of the empty memory are never touched. The mapping goes with the tensor's
    storage.
    """
    device = torch.device(device) if device is not None else torch.get_default_device()
    count = math.prod(shape)
    if device.type != "cpu" or count * dtype.itemsize < LAZY_ZEROS_BYTES or not hasattr(mmap, "MAP_PRIVATE"):
        return torch.zeros(*shape, dtype=dtype, device=device)
    pages = mmap.mmap(-1, count * dtype.itemsize, flags=mmap.MAP_PRIVATE)  # anonymous: zero until written
    storage = torch.frombuffer(pages, dtype=dtype, count=count).untyped_storage()  # holds the mapping
    # a tensor of its own on that storage, not a view: autograd would track in-place writes through a view's base
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def host_reads_free(t: torch.Tensor) -> bool:
    """Whether the step may branch on ``t``'s values (``bool(t.any())``, ``int(t.max())``) without a
    synchronisation: a CPU tensor's values are already in host memory. On an accelerator the read would wait for
    the device, so there the step takes its shape-static path instead: the same result, without the early exit or
    the data-sized shape (which also lets a compiled step on the accelerator be one graph). On the CPU a compiled
    step breaks its graph at such a branch, which measured faster than the shape-static path (it skips
    consolidation while the memory has room)."""
    return t.device.type == "cpu"


class TensorState:
    """Mixin for frozen dataclasses whose fields are batch-first tensors (optional fields may be None)."""

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls: type[State], tensors: dict[str, torch.Tensor]) -> State:
        fields = dataclasses.fields(cls)
        names = {f.name for f in fields}
        required = {f.name for f in fields if f.default is dataclasses.MISSING}
        unknown, missing = set(tensors) - names, required - set(tensors)
        if unknown or missing:
            raise ValueError(f"not a {cls.__name__}: missing {sorted(missing)}, unknown {sorted(unknown)}")
        return cls(**tensors)

    def prefixed(self, prefix: str) -> dict[str, torch.Tensor]:
        """``as_dict`` with keys ``<prefix>.<field>``: how a nested state flattens into a model's ``memory_state``."""
        return {f"{prefix}.{name}": t for name, t in self.as_dict().items()}

    @classmethod
    def from_prefixed(cls: type[State], tensors: dict[str, torch.Tensor], prefix: str) -> State:
        """``from_dict`` of the entries ``<prefix>.<field>`` of a flat dict (the inverse of ``prefixed``)."""
        start = f"{prefix}."
        return cls.from_dict({k[len(start):]: v for k, v in tensors.items() if k.startswith(start)})

    def map(self: State, fn: Callable[[torch.Tensor], torch.Tensor]) -> State:
        """Apply ``fn`` to every tensor field."""
        return type(self)(**{name: fn(t) for name, t in self.as_dict().items()})

    def detach(self: State) -> State:
        return self.map(torch.Tensor.detach)

    def index_select(self: State, index: torch.Tensor) -> State:
        """Reorder or repeat along the batch (beam search)."""
        return self.map(lambda t: t.index_select(0, index.to(t.device)))

    def where(self: State, mask: torch.Tensor, other: State) -> State:
        """``self`` where mask (B,) is True, ``other`` elsewhere, bit for bit."""
        return type(self)(
            **{
                name: torch.where(mask.view(-1, *(1,) * (t.dim() - 1)), t, getattr(other, name))
                for name, t in self.as_dict().items()
            }
        )
