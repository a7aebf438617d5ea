"""DNC-SDAPM models as Hugging Face PreTrainedModels: standalone, or plugged into a frozen base.

Every head holds ``self.model = DNCSDAPMModel(config, base)`` and adds only its head, as transformers' own model
families do. ``DNCSDAPMModel`` is either

* standalone (``text_config=None``): token embeddings → ``MemoryCore`` (core.py) → a linear map of its features
  back to ``hidden_size``; or
* plugged: the frozen base's backbone, run one segment of at most ``segment_length`` tokens at a time, with the
  ``MemoryPlug`` (injection.py) adding the memory's output to the residual stream at layer ``inject_layer``::

    h^ℓ (B, S, D)  ─►  h^ℓ + MemoryPlug(h^ℓ)  ─►  frozen layers above  ─►  last hidden state  ─►  head
                              ▲ memory_state carried from segment to segment (and through generate's KV cache)

The plug's projection starts at zero, so an untrained plugin leaves the base's outputs unchanged. The base never
trains here (no gradients, dropout off); PEFT can add LoRA to it. A plugged causal LM's head is the base's own LM
head. Checkpoints are "whole" (base and memory) or "adapter" (``save_base_weights=False``: the memory's weights and
``base_model_name_or_path`` only); every checkpoint names the four Auto classes, so each loads it as remote code.

The memory's parameters and state are float32 whatever the base's dtype (``_keep_in_fp32_modules_strict``; a bfloat16 or
float16 base plugs in as it is, see injection.py). ``output_memory_states=True`` returns every memory update
(``core.MemoryUpdate``); ``with model.ablation("zero_memory" | "base_alone"):`` switches the memory's reads, or the
whole memory, off.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, DynamicCache, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, cached_file, logging

from .access import last_real
from .configuration_dnc_sdapm import DNCSDAPMConfig
from .controller import Clock
from .core import CoreOutput, MemoryCore, MemoryUpdate, RecurrentState
from .injection import (
    MemoryPlug, Segment, injection_point, layer_states, residual_scale, run_segments, segment_length,
)

logger = logging.get_logger(__name__)

# The switches ``DNCSDAPMPreTrainedModel.ablation`` knows, with what they show.
ABLATIONS = {"zero_memory": "memory reads zeroed", "base_alone": "base alone"}
# Every checkpoint's ``auto_map``: each Auto class loads any checkpoint kind (a head missing from it starts fresh).
AUTO_CLASSES = {
    "AutoModel": "DNCSDAPMModel",
    "AutoModelForCausalLM": "DNCSDAPMForCausalLM",
    "AutoModelForSequenceClassification": "DNCSDAPMForSequenceClassification",
}


@dataclass
class DNCSDAPMModelOutput(ModelOutput):
    """
    last_hidden_state: (B, T, D) the model's outputs (with a base: its last hidden states, memory included).
    memory_state: the recurrent state after the last position (dict of tensors; pass it back to continue).
    memory_states: with ``output_memory_states``: the memory before the first position, then after every update
        (``core.MemoryUpdate``: its reads, read / write / usage weights and the memory's fields).
    cache: the base's KV cache of the current segment, carrying the memory state (``use_cache``).
    ponder_cost: (B, T) ponder cost per position (ACT: N + R; PonderNet in training: KL to its prior; else 0).
    ponder_steps: (B, T) inner read steps per position.
    ponder: (3,) mean steps, p90 and share at the cap over the counted positions.
    clock_resets: (B, T) clock reset ρ per position (clock keys only).
    write_gates: (B, T) the write gate of every position (a memory; what ``write_cost`` charges).
    ponder_hidden: (B, T, K, D) PonderNet in training: the outputs had each of the K inner steps halted there.
    ponder_halting: (B, T, K) PonderNet in training: the halting distribution over the inner steps.
    """

    last_hidden_state: torch.Tensor | None = None
    memory_state: dict[str, torch.Tensor] | None = None
    memory_states: tuple[MemoryUpdate, ...] | None = None
    cache: object | None = None
    ponder_cost: torch.Tensor | None = None
    ponder_steps: torch.Tensor | None = None
    ponder: torch.Tensor | None = None
    clock_resets: torch.Tensor | None = None
    write_gates: torch.Tensor | None = None
    ponder_hidden: torch.Tensor | None = None
    ponder_halting: torch.Tensor | None = None


@dataclass
class DNCSDAPMCausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: object | None = None
    memory_state: dict[str, torch.Tensor] | None = None
    memory_states: tuple[MemoryUpdate, ...] | None = None
    ponder_cost: torch.Tensor | None = None
    ponder_steps: torch.Tensor | None = None
    ponder: torch.Tensor | None = None
    clock_resets: torch.Tensor | None = None
    write_gates: torch.Tensor | None = None


@dataclass
class DNCSDAPMSequenceClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    memory_state: dict[str, torch.Tensor] | None = None
    memory_states: tuple[MemoryUpdate, ...] | None = None
    ponder: torch.Tensor | None = None


class MemoryCache(DynamicCache):
    """The base's KV cache for the current segment, carrying the memory's state with it (standalone: no layers,
    only the state).

    Beam search reorders both; a new segment starts a new cache that inherits the memory state.
    """

    def __init__(self, config=None, memory_state: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__(config=config)
        self.memory_state = memory_state

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        if self.memory_state is not None:
            self.memory_state = {k: v.index_select(0, beam_idx.to(v.device)) for k, v in self.memory_state.items()}


class DNCSDAPMPreTrainedModel(PreTrainedModel):
    config_class = DNCSDAPMConfig
    config: DNCSDAPMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["MemoryCore"]
    _keep_in_fp32_modules_strict = ["memory"]
    base_loader = AutoModel  # how a frozen base of this class is built (from a config or a checkpoint)

    def _init_weights(self, module: nn.Module) -> None:
        """Normal linear weights; modules may carry ``init_std``, ``init_weight`` or ``init_bias`` for another start."""
        if isinstance(module, nn.Linear):
            std = getattr(module, "init_std", self.config.initializer_range)
            if hasattr(module, "init_weight"):
                init.copy_(module.weight, torch.tensor([module.init_weight], dtype=module.weight.dtype))
            elif std > 0:
                init.normal_(module.weight, std=std)
            else:
                init.zeros_(module.weight)
            if module.bias is not None:
                init.constant_(module.bias, getattr(module, "init_bias", 0.0))
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=1.0)
        elif isinstance(module, nn.LSTMCell):
            bound = module.hidden_size**-0.5
            for weight in (module.weight_ih, module.weight_hh):
                init.uniform_(weight, -bound, bound)
            forget = torch.zeros(4 * module.hidden_size)
            forget[module.hidden_size : 2 * module.hidden_size] = 1.0  # forget-gate bias 1
            init.copy_(module.bias_ih, forget)
            init.zeros_(module.bias_hh)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.copy_(module.bias, torch.tensor(getattr(module, "init_bias", [0.0] * module.bias.numel())))
        elif isinstance(module, Clock):
            rotation, origin = module.default_buffers()
            init.copy_(module.rotation, rotation)
            init.copy_(module.origin, origin)

    def memory_costs(
        self, out: DNCSDAPMModelOutput, mask: torch.Tensor, write_cost: float | None = None
    ) -> torch.Tensor | float:
        """The costs every head's loss pays for the memory's own outputs, each averaged over the real tokens (mask
        (B, T) bool): ``clock_reset_cost`` × clock reset + ``write_cost`` (None: the config's) × write gate."""
        real = mask.float()
        count = real.sum().clamp_min(1)
        cost = 0.0
        if out.clock_resets is not None and self.config.clock_reset_cost > 0:
            cost = cost + self.config.clock_reset_cost * (out.clock_resets * real).sum() / count
        write_cost = self.config.write_cost if write_cost is None else write_cost
        if out.write_gates is not None and write_cost > 0:
            cost = cost + write_cost * (out.write_gates * real).sum() / count
        return cost

    # -- the frozen base ---------------------------------------------------------------------------------

    def memory_model(self) -> DNCSDAPMModel:
        """The ``DNCSDAPMModel`` this model is built on (itself, or a head's ``self.model``)."""
        return self.model

    def frozen_base(self) -> nn.Module | None:
        """The frozen base's backbone (its decoder or encoder stack), None when standalone."""
        return self.memory_model().base

    def initial_memory_state(self, batch_size: int, memory_slots: int | None = None) -> dict[str, torch.Tensor]:
        """The ``memory_state`` before the first position, as a forward takes it: an empty memory of the config's
        ``memory_slots``, or of ``memory_slots`` slots (no weight depends on the slot count, so the same model
        runs with a larger or smaller memory)."""
        core = self.memory_model().core()
        device = next(core.parameters()).device
        return core.initial_state(batch_size, core.dtype, device, memory_slots).as_dict()

    def _split_base(self, base: nn.Module | None) -> tuple[nn.Module | None, nn.Module | None]:
        """(backbone, LM head) of the base for this config: the one given (checked) or one built from
        ``text_config`` with ``base_loader``; frozen. The head is None for a base without one."""
        if self.config.text_config is None:
            if base is not None:
                raise ValueError("a base model was given but the config has no text_config (use from_base)")
            return None, None
        if base is None:  # built on the meta device inside from_pretrained, its weights come from the checkpoint
            base = self.base_loader.from_config(self.config.text_config)
        if not any(p.is_meta for p in base.parameters()):
            for module in base.modules():  # a base with real weights keeps them through post_init
                module._is_hf_initialized = True
        hidden = getattr(base.config, "hidden_size", None)
        if hidden != self.config.hidden_size:
            raise ValueError(
                f"the base model's hidden size {hidden} does not match the memory's hidden_size={self.config.hidden_size}"
            )
        base.requires_grad_(False)
        backbone = base.base_model.eval()
        return backbone, (base.get_output_embeddings() if backbone is not base else None)

    def train(self, mode: bool = True) -> DNCSDAPMPreTrainedModel:
        super().train(mode)
        base = self.frozen_base()
        if base is not None:
            base.eval()  # frozen: dropout stays off
        return self

    @classmethod
    def from_base(cls, base: PreTrainedModel, **memory_settings) -> DNCSDAPMPreTrainedModel:
        """The memory plugged into a frozen ``base`` (its config becomes ``text_config``), in eval mode."""
        if not isinstance(base, PreTrainedModel):
            raise TypeError(f"from_base needs a transformers PreTrainedModel, got {type(base).__name__}")
        settings = {
            "hidden_size": base.config.hidden_size,
            "text_config": base.config.to_dict(),
            "base_model_name_or_path": base.name_or_path or None,
            **memory_settings,
        }
        return cls(DNCSDAPMConfig(**settings), base).eval()

    @contextmanager
    def ablation(self, name: str | None) -> Iterator[DNCSDAPMPreTrainedModel]:
        """Inside the block the model runs with an ablation (a key of ``ABLATIONS``; None: none): ``zero_memory``
        zeroes the memory's reads where they enter its output (the controller's path stays), ``base_alone`` skips
        the memory (a plugged model is then its base)."""
        if name is not None and name not in ABLATIONS:
            raise ValueError(f"unknown ablation {name!r}; known: {', '.join(ABLATIONS)}")
        model = self.memory_model()
        if name == "base_alone" and model.base is None:
            raise ValueError("base_alone compares a plugged model with its base; this model has no frozen base")
        if name == "zero_memory" and model.config.memory_type == "none":
            raise ValueError("zero_memory ablates the memory's reads; this model has no memory (memory_type='none')")
        before, model.ablated = model.ablated, name
        try:
            yield self
        finally:
            model.ablated = before

    def compile_memory(self, **options: Any) -> DNCSDAPMPreTrainedModel:
        """Compile the memory's recurrence steps with ``torch.compile(**options)`` (``compiled.py``: one graph per
        position or chunk, so a new sequence length does not recompile; eager where the backend fails). The frozen
        base is left as it is. Returns the model."""
        self.memory_model().core().compile_steps(**options)
        return self

    def base_prefixes(self) -> tuple[str, ...]:
        """The state-dict prefixes of the frozen base's parts (its backbone, and a plugged causal LM's head)."""
        parts = [self.frozen_base(), *self._base_heads()]
        return tuple(next(name for name, module in self.named_modules() if module is part) + "." for part in parts)

    def _base_heads(self) -> list[nn.Module]:
        """The base's modules this model holds outside its backbone (a plugged causal LM's head)."""
        return []

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        """Adapter mode (``save_base_weights=False``) leaves the base's weights out; ``auto_map`` names every Auto
        class."""
        if self.frozen_base() is not None and not self.config.save_base_weights:
            if not self.config.base_model_name_or_path:
                raise ValueError(
                    "adapter checkpoints name their base: set config.base_model_name_or_path (or save_base_weights=True)"
                )
            prefixes = self.base_prefixes()
            state_dict = self.state_dict() if state_dict is None else state_dict
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}
        if self._auto_class is not None:
            self.config.auto_map = {"AutoConfig": "configuration_dnc_sdapm.DNCSDAPMConfig",
                                    **{auto: f"modeling_dnc_sdapm.{name}" for auto, name in AUTO_CLASSES.items()}}
        return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, base: nn.Module | None = None, **kwargs):
        """Whole checkpoints load as usual; adapter checkpoints (or ``base=``) load the memory onto a base."""
        config = kwargs.pop("config", None)
        if not hasattr(config, "save_base_weights"):  # not given, or not this model's config
            config, kwargs = cls.config_class.from_pretrained(
                pretrained_model_name_or_path, return_unused_kwargs=True, **kwargs
            )
        if config.text_config is None or (config.save_base_weights and base is None):
            try:
                model = super().from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)
            except SafetensorError as err:
                raise OSError(f"{pretrained_model_name_or_path}: model.safetensors is corrupt or truncated ({err})") from err
            if model.frozen_base() is not None:
                model.frozen_base().requires_grad_(False)  # loading materialises fresh parameters
            return model
        if base is None:
            if not config.base_model_name_or_path:
                raise ValueError(f"{pretrained_model_name_or_path} is an adapter checkpoint that names no base model")
            base = cls.base_loader.from_pretrained(config.base_model_name_or_path, dtype=kwargs.get("dtype"),
                                                   use_kernels=False)  # nothing fetched at run time
        model = cls(config, base)
        weights = cached_file(str(pretrained_model_name_or_path), "model.safetensors")
        try:
            state = load_file(weights)
        except SafetensorError as err:
            raise OSError(f"{pretrained_model_name_or_path}: model.safetensors is corrupt or truncated ({err})") from err
        model._load_adapter(state, Path(str(weights)).name)
        return model.eval()

    def _load_adapter(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load an adapter's weights (the memory's, and its head's) saved by any of the models: the memory's must all
        fit; another head's are left out and a missing head starts fresh, as transformers does across heads."""
        inner = "" if self.memory_model() is self else f"{self.base_model_prefix}."
        from_head = any(k.startswith("model.") for k in state)  # a DNCSDAPMModel's own keys never start so
        if from_head and not inner:  # a head's checkpoint: its memory model, without the prefix
            state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        elif inner and not from_head:  # a DNCSDAPMModel's checkpoint: the memory model of this head
            state = {inner + k: v for k, v in state.items()}
        missing, unexpected = self.load_state_dict(state, strict=False)
        prefixes = self.base_prefixes()
        memory = lambda keys: [k for k in keys if k.startswith(inner) and not k.startswith(prefixes)]  # noqa: E731
        if memory(missing) or memory(unexpected):
            raise ValueError(f"{source} does not fit this config: missing {memory(missing)[:5]}, "
                             f"unexpected {memory(unexpected)[:5]}")
        fresh = [k for k in missing if inner and not k.startswith(inner) and not k.startswith(prefixes)]
        if fresh:
            logger.warning(f"{source} holds no weights for {fresh}: they start fresh (another head saved it)")


def _check_inputs(
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    width: int,
    vocab: int,
    dtype: torch.dtype | None = None,
) -> tuple[int, int]:
    """(B, T) of exactly one of input_ids (B, T) in [0, vocab) or inputs_embeds (B, T, width) of ``dtype`` (None:
    any floating dtype), with errors that name the problem."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (B, T), got {tuple(input_ids.shape)}")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab):
            raise ValueError(f"input_ids must lie in [0, vocab_size={vocab})")
        return tuple(input_ids.shape)
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != width:
        raise ValueError(f"inputs_embeds must have shape (B, T, {width}), got {tuple(inputs_embeds.shape)}")
    if not inputs_embeds.is_floating_point():
        raise TypeError(f"inputs_embeds must be floating point, got {inputs_embeds.dtype}")
    if dtype is not None and inputs_embeds.dtype != dtype:
        raise TypeError(f"inputs_embeds has dtype {inputs_embeds.dtype}, the model {dtype}: cast them with .to()")
    if not torch.isfinite(inputs_embeds).all():
        raise ValueError("inputs_embeds contains NaN or inf")
    return tuple(inputs_embeds.shape[:2])


def _mask(attention_mask: torch.Tensor | None, b: int, t: int, device: torch.device) -> torch.Tensor:
    """(B, T) bool; attention_mask may be longer (generate passes the whole sequence): its last T columns count."""
    if attention_mask is None:
        return torch.ones(b, t, dtype=torch.bool, device=device)
    if attention_mask.dim() != 2 or attention_mask.shape[0] != b or attention_mask.shape[1] < t:
        raise ValueError(f"attention_mask must have shape ({b}, {t}), got {tuple(attention_mask.shape)}")
    return attention_mask[:, attention_mask.shape[1] - t :].to(device).bool()


class _Trace:
    """The core's outputs collected over the pieces (segments) of one forward pass."""

    def __init__(self, state: RecurrentState | None, zero_reads: bool, record: bool) -> None:
        self.state, self.zero_reads, self.record, self.pieces = state, zero_reads, record, []
        self.offsets: list[int] = []

    def add(self, out: CoreOutput, offset: int) -> None:
        self.state = out.state
        self.pieces.append(out)
        self.offsets.append(offset)

    def fields(self, core: MemoryCore, mask: torch.Tensor) -> dict[str, object]:
        """The output fields over all positions: memory state, memory updates, ponder and clock fields."""
        cat = lambda name: (  # noqa: E731
            None if getattr(self.pieces[0], name) is None else torch.cat([getattr(p, name) for p in self.pieces], 1)
        )
        updates = None
        if self.record:  # every piece starts with the memory before it: keep only the first such entry
            updates = tuple(u.shifted(offset) for i, (piece, offset) in enumerate(zip(self.pieces, self.offsets))
                            for u in piece.memory_states[(1 if i else 0) :])
        steps = cat("ponder_steps")
        return {
            "memory_state": self.state.as_dict(),
            "memory_states": updates,
            "ponder_cost": cat("ponder_cost"),
            "ponder_steps": steps,
            "ponder": core.statistics(steps, mask),
            "clock_resets": cat("clock_resets"),
            "write_gates": cat("write_gates"),
        }


class DNCSDAPMModel(DNCSDAPMPreTrainedModel):
    """Controller + memory over token embeddings (standalone) or over a frozen base's hidden states.

    ``restart_positions`` (set by the causal head): position ids restart at every segment and skip padding, so
    that cached, uncached and left-padded runs of a causal base see the same positions.
    """

    def __init__(self, config: DNCSDAPMConfig, base: nn.Module | None = None, restart_positions: bool = False) -> None:
        super().__init__(config)
        self.base, _ = self._split_base(base)
        self.restart_positions = restart_positions
        self.ablated: str | None = None
        if self.base is None:
            self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
            self.memory = MemoryCore(config)
            self.output = nn.Linear(self.memory.features, config.hidden_size)
        else:
            self.memory = MemoryPlug(config)
            self._inject_path, self._read_path, self._inject_at_top = injection_point(
                self.base, config.inject_layer, config.read_layer)
        self.post_init()

    def memory_model(self) -> DNCSDAPMModel:
        return self

    def core(self) -> MemoryCore:
        """The recurrent memory model."""
        return self.memory if self.base is None else self.memory.core

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens if self.base is None else self.base.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        if self.base is not None:
            raise ValueError("the frozen base's embeddings are not replaced through the memory model")
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        memory_state: dict[str, torch.Tensor] | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: DynamicCache | None = None,
        use_cache: bool | None = None,
        output_memory_states: bool | None = None,
        **kwargs,
    ) -> DNCSDAPMModelOutput:
        """The model's last hidden states over input_ids (B, T) or inputs_embeds (B, T, D).

        With a base and ``use_cache``, the current segment continues in ``cache`` (a ``MemoryCache``, whose memory
        state then replaces ``memory_state``) and the output's cache holds the last segment."""
        record = self.config.output_memory_states if output_memory_states is None else output_memory_states
        if self.base is None:
            b, t = _check_inputs(input_ids, inputs_embeds, self.config.hidden_size, self.config.vocab_size,
                                 self.embed_tokens.weight.dtype)
            mask = _mask(attention_mask, b, t, self.embed_tokens.weight.device)
            if isinstance(cache, MemoryCache) and cache.memory_state is not None:
                memory_state = cache.memory_state
            embeds = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
            core = self.memory
            out = core(embeds.to(core.dtype), mask, self._start(memory_state, b), self.ablated == "zero_memory", record)
            trace = _Trace(out.state, False, record)
            trace.add(out, 0)
            new_cache = None
            if use_cache:
                new_cache = cache if isinstance(cache, MemoryCache) else MemoryCache(None)
                new_cache.memory_state = out.state.as_dict()
            hidden = self.output(out.features.to(self.output.weight.dtype))
            return DNCSDAPMModelOutput(last_hidden_state=hidden, cache=new_cache, ponder_hidden=self._ponder_hidden(out),
                                       ponder_halting=out.ponder_halting, **trace.fields(core, mask))
        b, t = _check_inputs(input_ids, inputs_embeds, self.config.hidden_size, self.base.config.vocab_size,
                             self.base.get_input_embeddings().weight.dtype)
        filled = cache.get_seq_length() if cache is not None else 0
        full_mask = _mask(attention_mask, b, filled + t, self.base.device)
        if isinstance(cache, MemoryCache) and cache.memory_state is not None:
            memory_state = cache.memory_state
        trace = _Trace(self._start(memory_state, b), self.ablated == "zero_memory", record)

        def memory(x: torch.Tensor, segment: Segment) -> torch.Tensor:
            projected, out = self.memory(x, segment.mask, trace.state, trace.zero_reads, trace.record)
            trace.add(out, segment.start)
            return projected

        hidden, new_cache = run_segments(
            self.base, self.base.get_submodule(self._inject_path), self.base.get_submodule(self._read_path),
            self.config.read_from, input_ids, inputs_embeds, full_mask, segment_length(self.config, self.base.config),
            None if self.ablated == "base_alone" else memory,
            cache=cache if use_cache else None, new_cache=(lambda: MemoryCache(self.base.config)) if use_cache else None,
            restart_positions=self.restart_positions, output_scale=self.config.output_scale,
        )
        mask = full_mask[:, filled:]
        if not trace.pieces:  # the base alone: the memory state passes through unchanged
            return DNCSDAPMModelOutput(last_hidden_state=torch.cat(hidden, 1), memory_state=memory_state, cache=new_cache)
        fields = trace.fields(self.core(), mask)
        if new_cache is not None:
            new_cache.memory_state = fields["memory_state"]
        return DNCSDAPMModelOutput(last_hidden_state=torch.cat(hidden, 1), cache=new_cache, **fields)

    def _ponder_hidden(self, out: CoreOutput) -> torch.Tensor | None:
        """(B, T, K, D) the output with each inner step's read in place of the read that went on (PonderNet)."""
        if out.ponder_reads is None:
            return None
        reads = out.ponder_reads
        kept = out.features[..., : out.features.shape[-1] - reads.shape[-1]]
        steps = torch.cat([kept[:, :, None].expand(-1, -1, reads.shape[2], -1), reads], -1)
        return self.output(steps.to(self.output.weight.dtype))

    def _start(self, memory_state: dict[str, torch.Tensor] | None, batch_size: int) -> RecurrentState | None:
        return None if memory_state is None else self.core().state_from_dict(memory_state, batch_size)

    @torch.no_grad()
    def layer_states(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) what the memory reads (the output of ``read_layer``, or the embeddings), segment by segment,
        without the memory (it reads at or below the layer it changes, so its reads do not depend on it) and without
        the layers above. ``over_layer_states`` runs the memory over them."""
        if self.base is None:
            raise ValueError("layer_states needs a frozen base (from_base)")
        b, t = _check_inputs(input_ids, None, self.config.hidden_size, self.base.config.vocab_size)
        return layer_states(self.base, self.base.get_submodule(self._read_path), self.config.read_from, input_ids,
                            None, _mask(attention_mask, b, t, input_ids.device), segment_length(self.config, self.base.config))

    def over_layer_states(
        self,
        states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        memory_state: dict[str, torch.Tensor] | None = None,
        output_memory_states: bool = False,
    ) -> DNCSDAPMModelOutput:
        """The memory over ``states`` (B, T, D) from ``layer_states``: its memory state is the one the model would
        have after the same positions, whatever the layers above do. Its output is ``states`` plus the memory's
        addition: when the memory reads its injection layer, that layer's output with the memory (the model's last
        hidden states when it is the base's last and the base has no final norm, as in BERT)."""
        if self.base is None:
            raise ValueError("over_layer_states runs the memory over a frozen base's states: it needs a base (from_base)")
        b, t = _check_inputs(None, states, self.config.hidden_size, 0)
        mask = _mask(attention_mask, b, t, states.device)
        trace = _Trace(self._start(memory_state, b), self.ablated == "zero_memory", output_memory_states)
        if self.ablated == "base_alone":
            return DNCSDAPMModelOutput(last_hidden_state=states, memory_state=memory_state)
        projected, out = self.memory(states, mask, trace.state, trace.zero_reads, trace.record)
        trace.add(out, 0)
        delta = projected * residual_scale(states, projected.dtype, self.config.output_scale)
        return DNCSDAPMModelOutput(last_hidden_state=states + delta.to(states.dtype), **trace.fields(self.core(), mask))



class DNCSDAPMForCausalLM(DNCSDAPMPreTrainedModel, GenerationMixin):
    """Next-token prediction: a standalone token model, or a frozen causal LM with the memory injected (its LM
    head is the base's).

    loss = cross-entropy over shifted labels (−100 ignored; PonderNet in training: its expectation over the halting
    step, ``act.py``) + ``ponder_cost`` × mean ponder cost
    + ``clock_reset_cost`` × mean clock reset + ``write_cost`` × mean write gate over the real tokens.
    """

    base_loader = AutoModelForCausalLM

    def __init__(self, config: DNCSDAPMConfig, base: nn.Module | None = None) -> None:
        super().__init__(config)
        backbone, head = self._split_base(base)
        if backbone is not None and head is None:
            raise ValueError(f"{type(base).__name__} has no LM head: DNCSDAPMForCausalLM needs a causal LM")
        self.model = DNCSDAPMModel(config, backbone, restart_positions=True)
        if head is None:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        else:
            self.lm_head = head
            embeddings = backbone.get_input_embeddings()
            if head.weight is embeddings.weight:  # a tied base: saved once, as the base's input embeddings
                config.tie_word_embeddings = True
                name = next(n for n, m in self.named_modules() if m is embeddings)
                self._tied_weights_keys = {"lm_head.weight": f"{name}.weight"}
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def _base_heads(self) -> list[nn.Module]:
        return [] if self.model.base is None else [self.lm_head]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        memory_state: dict[str, torch.Tensor] | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: DynamicCache | None = None,
        use_cache: bool | None = None,
        output_memory_states: bool | None = None,
        logits_to_keep: int = 0,
        write_cost: float | None = None,
        **kwargs,
    ) -> DNCSDAPMCausalLMOutput:
        """``logits_to_keep`` k > 0 computes the logits (and the loss) of the last k positions only; ``write_cost``
        replaces the config's in this call's loss (a schedule in training)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, memory_state=memory_state,
                         inputs_embeds=inputs_embeds, cache=cache, use_cache=use_cache,
                         output_memory_states=output_memory_states)
        hidden = out.last_hidden_state
        kept = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
        logits = self._logits(hidden[:, kept])
        loss = None
        if labels is not None:
            if labels.shape != hidden.shape[:2]:
                raise ValueError(f"labels must have shape {tuple(hidden.shape[:2])}, got {tuple(labels.shape)}")
            mask = _mask(attention_mask, *hidden.shape[:2], hidden.device)
            loss = self.loss(out, logits, labels[:, kept], mask, ponder_positions=kept, write_cost=write_cost)
        return DNCSDAPMCausalLMOutput(
            loss=loss, logits=logits, cache=out.cache, memory_state=out.memory_state,
            memory_states=out.memory_states, ponder_cost=out.ponder_cost, ponder_steps=out.ponder_steps,
            ponder=out.ponder, clock_resets=out.clock_resets, write_gates=out.write_gates,
        )

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head over hidden states (B, T, D), with a base's own final soft-capping of the logits."""
        logits = self.lm_head(hidden.to(self.lm_head.weight.dtype))
        cap = getattr(self.config.text_config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """Standalone, the cache is the recurrent state alone (no layers); with a base, the base's KV cache."""
        if self.model.base is None and generation_config.use_cache is not False and model_kwargs.get("cache") is None:
            model_kwargs["cache"] = MemoryCache(None)
            return
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    def loss(
        self, out: DNCSDAPMModelOutput, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
        ponder_positions: slice = slice(None), write_cost: float | None = None,
    ) -> torch.Tensor:
        """The training loss (class docstring) of logits (B, K, V) against labels (B, K) of the positions
        ``ponder_positions`` of the model's output; mask (B, T) bool over all its positions; ``write_cost``
        (None: the config's) weighs the write gates."""
        vocab = logits.shape[-1]
        target = labels[:, 1:]
        counted = target != -100
        if counted.any() and (target[counted].min() < 0 or target[counted].max() >= vocab):
            raise ValueError(f"labels must lie in [0, vocab_size={vocab}) or be -100")
        denominator = counted.sum().clamp_min(1)
        if out.ponder_hidden is None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=-100)
        else:  # PonderNet: the loss expected under the halting distribution, every inner step with its own logits
            step_logits = self._logits(out.ponder_hidden[:, ponder_positions][:, :-1]).float()  # (B, T − 1, K, V)
            per_step = F.cross_entropy(step_logits.permute(0, 3, 1, 2), target[..., None].expand(-1, -1,
                                       step_logits.shape[2]), ignore_index=-100, reduction="none")
            halting = out.ponder_halting[:, ponder_positions][:, :-1]
            loss = ((halting * per_step).sum(-1) * counted).sum() / denominator
        if out.ponder_cost is not None:  # the ponder cost of position t is paid by the prediction made there
            ponder_cost = out.ponder_cost[:, ponder_positions][:, :-1]
            loss = loss + self.config.ponder_cost * (ponder_cost * counted).sum() / denominator
        return loss + self.memory_costs(out, mask, write_cost)


class DNCSDAPMForSequenceClassification(DNCSDAPMPreTrainedModel):
    """A frozen encoder (or decoder) plus memory plus a linear head on the last real position.

    loss = cross-entropy for ``num_labels > 1`` (integer labels), mean squared error for ``num_labels == 1``
    + ``ponder_cost`` × mean ponder cost + ``clock_reset_cost`` × mean clock reset + ``write_cost`` × mean write
    gate, each over the real tokens.
    """

    def __init__(self, config: DNCSDAPMConfig, base: nn.Module | None = None) -> None:
        if config.act_mode == "pondernet":
            raise ValueError("act_mode='pondernet' trains on the loss expected over its inner steps, which only "
                             "DNCSDAPMForCausalLM computes: set act_mode='act' for sequence classification")
        super().__init__(config)
        backbone, _ = self._split_base(base)
        self.model = DNCSDAPMModel(config, backbone)
        self.score = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        memory_state: dict[str, torch.Tensor] | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_memory_states: bool | None = None,
        write_cost: float | None = None,
        **kwargs,
    ) -> DNCSDAPMSequenceClassifierOutput:
        """``write_cost`` replaces the config's in this call's loss (a schedule in training)."""
        out = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                         memory_state=memory_state, output_memory_states=output_memory_states)
        return self.classify(out, attention_mask, labels, write_cost)

    def classify(
        self, out: DNCSDAPMModelOutput, attention_mask: torch.Tensor | None, labels: torch.Tensor | None,
        write_cost: float | None = None,
    ) -> DNCSDAPMSequenceClassifierOutput:
        """The head over the model's output: logits (B, C) at each row's last real position, and the loss (class
        docstring; ``write_cost``: None, the config's)."""
        hidden = out.last_hidden_state
        mask = _mask(attention_mask, *hidden.shape[:2], hidden.device)
        last = last_real(mask)
        logits = self.score(hidden[torch.arange(hidden.shape[0], device=hidden.device), last].to(self.score.weight.dtype))
        loss = None
        if labels is not None:
            if labels.shape[0] != logits.shape[0]:
                raise ValueError(f"labels must have batch size {logits.shape[0]}, got {tuple(labels.shape)}")
            if self.config.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                if labels.min() < 0 or labels.max() >= self.config.num_labels:
                    raise ValueError(f"labels must lie in [0, num_labels={self.config.num_labels})")
                loss = F.cross_entropy(logits, labels)
            if out.ponder_cost is not None:
                loss = loss + self.config.ponder_cost * (out.ponder_cost * mask).sum() / mask.sum().clamp_min(1)
            loss = loss + self.memory_costs(out, mask, write_cost)
        return DNCSDAPMSequenceClassifierOutput(loss=loss, logits=logits, memory_state=out.memory_state,
                                                memory_states=out.memory_states, ponder=out.ponder)

