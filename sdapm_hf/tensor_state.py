"""A frozen dataclass of tensors that converts to and from a plain dict (the form models return), and when the memory's
step may branch on a tensor's values."""

from __future__ import annotations

import dataclasses
from typing import Callable, TypeVar

import torch

State = TypeVar("State", bound="TensorState")


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
