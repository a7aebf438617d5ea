"""The plug: where and how the memory meets a frozen base, and the one segment loop every model and ``generate`` use.

A base of L layers with hidden states ``h^ℓ`` is changed at one layer only::

    h^ℓ  ←  h^ℓ + Δ,   Δ_t = (W_o f_t) · rms(h^ℓ_t),   f = MemoryCore(LayerNorm(x))      (MemoryPlug)

or, with ``output_scale="median"``, ``Δ_t = (W_o f_t) · median_d |h^ℓ_td|``: where a few channels of huge magnitude
set the RMS (as in Gemma-3's residual stream), the median is the scale of the other channels.

or, with ``input_norm="robust"``, ``f = MemoryCore(LayerNorm(c · tanh(x / (c · median_d |x_d|))))`` with ``c = 8``
(``robust_squash``): some bases carry a few channels of huge, nearly constant magnitude (Gemma-3's layer-2 states
have one channel about 870 times their median one); a LayerNorm then gives every position nearly the same vector
(mean cosine 0.95 between the positions of an essay, against 0.08 after the squash).

with ``x = h^ℓ`` itself, the output ``h^k`` of a lower layer ``k = read_layer``, or (``read_from="embeddings"``)
the base's input token embeddings of the same positions. ``W_o`` starts at zero, so an untrained plug changes
nothing; the memory reads its input normalised and writes back at the stream's own scale, so a projection of order
one can steer a stream of any norm (a random or pretrained base's residual is often 10–100 × the memory's own
outputs). The hooks are registered first on layers ``k`` and ``ℓ = inject_layer mod L`` (one hook when they are
the same), so that the layers above see the change and ``output_hidden_states`` shows it. The layers are found
generically: the ``nn.ModuleList`` of ``num_hidden_layers`` blocks of one class.

The memory's parameters and state stay in their own dtype (float32 unless the model was cast): the plug casts what
it reads to it and casts Δ back to the base's dtype, so a bfloat16 or float16 base plugs in as it is.

Inputs longer than the base's window run segment by segment (``run_segments``): the base sees each segment on its
own (positions restart), the memory carries what matters across them. What the memory reads of a segment does not
depend on the memory (it reads at or below the layer it changes), so ``layer_states`` computes it without the
memory and without the layers above.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .core import CoreOutput, MemoryCore, RecurrentState, piece_bounds

if TYPE_CHECKING:
    from .configuration_dnc_sdapm import DNCSDAPMConfig


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


def injection_point(base: nn.Module, inject_layer: int, read_layer: int | None = None) -> tuple[str, str, bool]:
    """Where the memory hooks into ``base``: the qualified names of layers ``inject_layer`` and ``read_layer``
    (negative counts from the top; None: the inject layer) of its block stack, for ``base.get_submodule``, and
    whether the inject layer is the top one."""
    num_layers = base.config.num_hidden_layers
    index = _layer_index("inject_layer", inject_layer, num_layers)
    read = index if read_layer is None else _layer_index("read_layer", read_layer, num_layers)
    if read > index:
        raise ValueError(f"read_layer={read_layer} is above inject_layer={inject_layer}: the memory's output at a "
                         "position would depend on what it adds there; read at or below the inject layer")
    stack = decoder_layers(base, num_layers)
    name = next(name for name, module in base.named_modules() if module is stack)
    return f"{name}.{index}", f"{name}.{read}", index == num_layers - 1


def _layer_index(field: str, layer: int, num_layers: int) -> int:
    if not -num_layers <= layer < num_layers:
        raise ValueError(f"{field}={layer} is outside the base's {num_layers} layers")
    return layer % num_layers


def segment_length(config: DNCSDAPMConfig, base_config) -> int:
    """Tokens the base sees at once: ``segment_length``, at most the base's window."""
    window = getattr(base_config, "max_position_embeddings", None)
    segment = config.segment_length or window
    if segment is None:
        raise ValueError("the base model states no max_position_embeddings: set segment_length")
    if window is not None and segment > window:
        raise ValueError(f"segment_length={segment} exceeds the base's max_position_embeddings={window}")
    return segment


ROBUST_LIMIT = 8.0


def robust_squash(x: torch.Tensor, limit: float = ROBUST_LIMIT) -> torch.Tensor:
    """(…, D) → (…, D): ``limit · tanh(x / (limit · m))``, m = the median of |x| over the D channels of each
    position: channels of the median's order pass nearly unchanged, channels far larger are held near ±limit."""
    scale = x.abs().median(dim=-1, keepdim=True).values.clamp_min(torch.finfo(x.dtype).tiny) * limit
    return limit * torch.tanh(x / scale)


class MemoryPlug(nn.Module):
    """The memory on a frozen base's residual stream (module docstring): input norm, core, zero-initialised
    projection; ``residual_scale`` brings the projection to the stream's scale."""

    def __init__(self, config: DNCSDAPMConfig) -> None:
        super().__init__()
        self.robust = config.input_norm == "robust"
        self.norm = nn.LayerNorm(config.hidden_size)
        self.core = MemoryCore(config)
        self.output = nn.Linear(self.core.features, config.hidden_size)
        self.output.init_std = 0.0  # the memory's path into a frozen base starts closed

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, state: RecurrentState | None = None, zero_reads: bool = False,
        record: bool = False,
    ) -> tuple[torch.Tensor, CoreOutput]:
        """x (B, T, D) what the memory reads, mask (B, T) bool → ``W_o f`` (B, T, D) in the memory's dtype (Δ before
        its scaling by the stream's RMS), and the core's outputs."""
        x = x.to(self.output.weight.dtype)
        out = self.core(self.norm(robust_squash(x) if self.robust else x), mask, state, zero_reads, record)
        return self.output(out.features), out


def residual_scale(residual: torch.Tensor, dtype: torch.dtype, rule: str = "rms") -> torch.Tensor:
    """(B, T, 1) the scale of the residual stream (B, T, D) at each position, in ``dtype``: the RMS of its channels
    (``rule="rms"``) or the median of their magnitudes (``"median"``)."""
    residual = residual.to(dtype)
    if rule == "median":
        return residual.abs().median(-1, keepdim=True).values
    return residual.pow(2).mean(-1, keepdim=True).sqrt()


@contextmanager
def residual_hook(layer: nn.Module, add: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """While open, the layer's output hidden states h (B, T, D) become ``h + add(h)`` (cast to h's dtype)."""

    def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> torch.Tensor | tuple:
        hidden = output[0] if isinstance(output, tuple) else output
        changed = hidden + add(hidden).to(hidden.dtype)
        return (changed, *output[1:]) if isinstance(output, tuple) else changed

    handle = layer.register_forward_hook(hook, prepend=True)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class Segment:
    """One segment of a call's input: positions [start, end) of the T new ones, their mask (B, end − start) bool,
    and its ids or embeddings."""

    start: int
    end: int
    mask: torch.Tensor
    input_ids: torch.Tensor | None
    inputs_embeds: torch.Tensor | None


def run_segments(
    base: nn.Module,
    layer: nn.Module,
    read_layer: nn.Module,
    read_from: str,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    mask: torch.Tensor,
    length: int,
    memory: Callable[[torch.Tensor, Segment], torch.Tensor] | None,
    cache=None,
    new_cache: Callable[[], object] | None = None,
    restart_positions: bool = False,
    output_scale: str = "rms",
) -> tuple[list[torch.Tensor], object]:
    """Run T new positions through the frozen ``base`` one segment of ``length`` at a time, adding
    ``Δ = memory(x, segment) · scale(h)`` (``residual_scale`` by ``output_scale``) to ``layer``'s output h, where x
    is what the memory reads (``read_layer``'s output, or the segment's input embeddings with
    ``read_from="embeddings"``); ``memory=None`` runs the base alone.

    Args:
        mask: (B, filled + T) the attention mask of the positions already in ``cache`` and the new ones.
        cache: a KV cache holding ``filled`` positions of the current segment, which the first segment continues;
            ``new_cache()`` makes the cache of each later segment (None: no cache).
        restart_positions: pass position ids that restart at every segment and skip padding (the cumulative sum
            of the mask), so that cached, uncached and left-padded runs see the same positions (a causal LM).

    Returns:
        each segment's ``last_hidden_state`` (B, S, D), and the cache of the last segment.
    """
    filled = cache.get_seq_length() if cache is not None else 0
    t = mask.shape[1] - filled
    hidden, current = [], cache
    for i, (start, end) in enumerate(piece_bounds(0, t, length, filled)):
        continues = i == 0 and 0 < filled < length
        seg_mask = mask[:, (0 if continues else filled + start) : filled + end]
        segment = Segment(start, end, mask[:, filled + start : filled + end].bool(),
                          None if input_ids is None else input_ids[:, start:end],
                          None if inputs_embeds is None else inputs_embeds[:, start:end])
        kwargs = {}
        if restart_positions:  # a causal LM: positions from the mask, and its KV cache only where asked for
            kwargs["position_ids"] = (seg_mask.cumsum(-1) - 1).clamp_min(0)[:, -(end - start) :]
            kwargs["use_cache"] = new_cache is not None
        if new_cache is not None:
            current = cache if continues else new_cache()
            kwargs.update(cache=current, use_cache=True)
        with _plugged(base, layer, read_layer, read_from, memory, segment, output_scale):
            out = base(input_ids=segment.input_ids, inputs_embeds=segment.inputs_embeds, attention_mask=seg_mask.long(),
                       **kwargs)
        hidden.append(out.last_hidden_state)
    return hidden, current


@contextmanager
def _plugged(base: nn.Module, layer: nn.Module, read_layer: nn.Module, read_from: str,
             memory: Callable[[torch.Tensor, Segment], torch.Tensor] | None, segment: Segment,
             output_scale: str) -> Iterator[None]:
    """The hooks of one segment: the memory reads at ``read_layer`` (or the embeddings) and adds at ``layer``."""
    if memory is None:
        yield
        return

    def _scaled(projected: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return projected * residual_scale(residual, projected.dtype, output_scale)

    if read_from == "embeddings":
        embeds = segment.inputs_embeds
        if embeds is None:
            embeds = base.get_input_embeddings()(segment.input_ids)
        with residual_hook(layer, lambda h: _scaled(memory(embeds, segment), h)):
            yield
        return
    if read_layer is layer:
        with residual_hook(layer, lambda h: _scaled(memory(h, segment), h)):
            yield
        return
    read: list[torch.Tensor] = []

    def on_read(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
        read.append(memory(output[0] if isinstance(output, tuple) else output, segment))

    handle = read_layer.register_forward_hook(on_read, prepend=True)
    try:
        with residual_hook(layer, lambda h: _scaled(read.pop(), h)):
            yield
    finally:
        handle.remove()


class _Stop(Exception):
    """Raised by ``layer_states``' hook once the layer the memory reads has run: the layers above are not needed."""


def layer_states(base: nn.Module, read_layer: nn.Module, read_from: str, input_ids: torch.Tensor | None,
                 inputs_embeds: torch.Tensor | None, mask: torch.Tensor, length: int) -> torch.Tensor:
    """(B, T, D) what the memory reads (see ``run_segments``), segment by segment, without the memory and without
    running the layers above ``read_layer`` (none at all for the embeddings)."""
    if read_from == "embeddings":
        return inputs_embeds if inputs_embeds is not None else base.get_input_embeddings()(input_ids)
    seen = []

    def stop(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
        seen.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    for start, end in piece_bounds(0, mask.shape[1], length):
        handle = read_layer.register_forward_hook(stop, prepend=True)
        try:
            base(input_ids=None if input_ids is None else input_ids[:, start:end],
                 inputs_embeds=None if inputs_embeds is None else inputs_embeds[:, start:end],
                 attention_mask=mask[:, start:end].long())
        except _Stop:
            pass
        finally:
            handle.remove()
    return torch.cat(seen, 1)
