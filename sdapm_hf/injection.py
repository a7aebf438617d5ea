"""Where the memory meets a frozen base: its decoder layers, the hook that adds the memory there, segments.

A base of L layers with hidden states ``h^ℓ`` is changed at one layer only::

    h^ℓ  ←  h^ℓ + MemoryCore(h^ℓ)       (hook on layer ℓ = inject_layer mod L, registered first)

so the layers above see the memory's output and ``output_hidden_states`` shows it. The memory reads ``h^ℓ``
itself, or (``read_from="embeddings"``) the base's input token embeddings of the same positions while still adding
at layer ℓ. The layers are found generically: the ``nn.ModuleList`` of ``num_hidden_layers`` blocks of one class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


def decoder_layers(base: nn.Module, num_layers: int) -> nn.ModuleList:
    """The base's stack of ``num_layers`` transformer blocks (an ``nn.ModuleList`` of one block class)."""
    stacks = [
        module
        for module in base.modules()
        if isinstance(module, nn.ModuleList)
        and len(module) == num_layers
        and len({type(layer) for layer in module}) == 1
    ]
    if len(stacks) != 1:
        found = "none" if not stacks else f"{len(stacks)} candidates"
        raise ValueError(
            f"cannot inject the memory into {type(base).__name__}: looked for one nn.ModuleList of "
            f"num_hidden_layers={num_layers} blocks of one class and found {found}"
        )
    return stacks[0]


def layer_index(inject_layer: int, num_layers: int) -> int:
    """``inject_layer`` (negative counts from the top) as an index in [0, num_layers)."""
    if not -num_layers <= inject_layer < num_layers:
        raise ValueError(f"inject_layer={inject_layer} is outside the base's {num_layers} layers")
    return inject_layer % num_layers


def injection_point(base: nn.Module, inject_layer: int) -> tuple[str, bool]:
    """Where the memory hooks into ``base``: the qualified name of layer ``inject_layer`` of its block stack (for
    ``base.get_submodule``, found once instead of at every call) and whether it is the top layer."""
    num_layers = base.config.num_hidden_layers
    index = layer_index(inject_layer, num_layers)
    stack = decoder_layers(base, num_layers)
    name = next(name for name, module in base.named_modules() if module is stack)
    return f"{name}.{index}", index == num_layers - 1


def memory_reader(
    base: nn.Module, read_from: str, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """For one piece of input (ids (B, T) or embeddings (B, T, D)): what the memory reads, given the injection
    layer's output h (B, T, D): h itself (``"layer"``) or the base's input token embeddings (``"embeddings"``)."""
    if read_from == "layer":
        return lambda hidden: hidden
    embeds = inputs_embeds if inputs_embeds is not None else base.get_input_embeddings()(input_ids)
    return lambda hidden: embeds


@contextmanager
def residual_hook(layer: nn.Module, add: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """While open, the layer's output hidden states h (B, T, D) become ``h + add(h)``."""

    def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> torch.Tensor | tuple:
        hidden = output[0] if isinstance(output, tuple) else output
        changed = hidden + add(hidden).to(hidden.dtype)
        return (changed, *output[1:]) if isinstance(output, tuple) else changed

    handle = layer.register_forward_hook(hook, prepend=True)
    try:
        yield
    finally:
        handle.remove()


def segment_bounds(start: int, length: int, segment_length: int, filled: int = 0) -> list[tuple[int, int]]:
    """Split positions [start, start + length) into base segments of ``segment_length``.

    ``filled`` positions of the current segment are already in the base's cache, so the first piece is at most
    ``segment_length − filled`` long (0 < filled = segment_length opens a new segment).
    """
    bounds, at, room = [], start, segment_length - filled
    if room <= 0:
        room = segment_length
    while at < start + length:
        end = min(at + room, start + length)
        bounds.append((at, end))
        at, room = end, segment_length
    return bounds
