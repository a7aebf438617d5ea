"""DNC-SDAPM models as Hugging Face PreTrainedModels: standalone, or plugged into a frozen base.

Standalone (``text_config=None``) a model embeds tokens and runs the ``MemoryCore`` (core.py) over them.
Plugged into a frozen base (``from_base`` or ``text_config``), the base runs one segment of at most
``segment_length`` tokens at a time, and a hook on layer ``inject_layer`` (injection.py) adds the core's output to
the residual stream there::

    h^ℓ (B, S, D)  ─►  h^ℓ + MemoryCore(h^ℓ)  ─►  frozen layers above  ─►  head
                              ▲ memory_state carried from segment to segment (and through generate's KV cache)

The core's output projection starts at zero, so an untrained plugin leaves the base's outputs unchanged. The base
never trains here (no gradients, dropout off); PEFT can add LoRA to it. Checkpoints are "whole" (base and memory)
or "adapter" (``save_base_weights=False``: the memory's weights and ``base_model_name_or_path`` only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, DynamicCache, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, cached_file

from .configuration_dnc_sdapm import DNCSDAPMConfig
from .controller import Clock
from .core import MemoryCore, RecurrentState
from .access import last_real
from .injection import injection_point, memory_reader, residual_hook, segment_bounds


@dataclass
class DNCSDAPMModelOutput(ModelOutput):
    """
    last_hidden_state: (B, T, D) the model's outputs (with a base: its last hidden states, memory included).
    memory_state: the recurrent state after the last position (dict of tensors; pass it back to continue).
    ponder_cost: (B, T) ponder cost per position (ACT: N + R; PonderNet: KL to the prior; else 0).
    ponder_steps: (B, T) inner read steps per position.
    ponder: (3,) mean steps, p90 and share at the cap over the counted positions.
    ponder_hidden_states: (B, T, K, D) every inner step's output (PonderNet only).
    ponder_probs: (B, T, K) halting distribution (PonderNet only).
    clock_resets: (B, T) clock reset ρ per position (clock keys only).
    """

    last_hidden_state: torch.Tensor | None = None
    memory_state: dict[str, torch.Tensor] | None = None
    ponder_cost: torch.Tensor | None = None
    ponder_steps: torch.Tensor | None = None
    ponder: torch.Tensor | None = None
    ponder_hidden_states: torch.Tensor | None = None
    ponder_probs: torch.Tensor | None = None
    clock_resets: torch.Tensor | None = None


@dataclass
class DNCSDAPMCausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: object | None = None
    memory_state: dict[str, torch.Tensor] | None = None
    ponder_cost: torch.Tensor | None = None
    ponder_steps: torch.Tensor | None = None
    ponder: torch.Tensor | None = None
    clock_resets: torch.Tensor | None = None


@dataclass
class DNCSDAPMSequenceClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    memory_state: dict[str, torch.Tensor] | None = None
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

    # -- the frozen base -------------------------------------------------------------------------------------

    def frozen_base(self) -> nn.Module | None:
        """The frozen base model, None when standalone."""
        return None

    def _attach_base(self, base: nn.Module | None) -> nn.Module | None:
        """The base for this config: the one given (checked) or one built from ``text_config``; frozen."""
        if self.config.text_config is None:
            if base is not None:
                raise ValueError("a base model was given but the config has no text_config (use from_base)")
            return None
        if base is None:  # its weights come from the checkpoint; the base initialises its own buffers
            base = self.base_loader.from_config(self.config.text_config)
        else:
            for module in base.modules():  # a given base keeps its weights through post_init
                module._is_hf_initialized = True
        hidden = getattr(base.config, "hidden_size", None)
        if hidden != self.config.hidden_size:
            raise ValueError(
                f"the base model's hidden size {hidden} does not match the memory's hidden_size={self.config.hidden_size}"
            )
        base.requires_grad_(False)
        return base.eval()

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

    def _base_prefix(self) -> str:
        base = self.frozen_base()
        return next(name for name, module in self.named_modules() if module is base) + "."

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        """Adapter mode (``save_base_weights=False``) leaves the base's weights out."""
        if self.frozen_base() is not None and not self.config.save_base_weights:
            if not self.config.base_model_name_or_path:
                raise ValueError(
                    "adapter checkpoints name their base: set config.base_model_name_or_path (or save_base_weights=True)"
                )
            prefix = self._base_prefix()
            state_dict = self.state_dict() if state_dict is None else state_dict
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
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
            base = cls.base_loader.from_pretrained(config.base_model_name_or_path, dtype=kwargs.get("dtype"))
        model = cls(config, base)
        weights = cached_file(str(pretrained_model_name_or_path), "model.safetensors")
        try:
            state = load_file(weights)
        except SafetensorError as err:
            raise OSError(f"{pretrained_model_name_or_path}: model.safetensors is corrupt or truncated ({err})") from err
        missing, unexpected = model.load_state_dict(state, strict=False)
        prefix = model._base_prefix()
        unexpected = [k for k in unexpected if not k.startswith(prefix)]
        missing = [k for k in missing if not k.startswith(prefix)]
        if missing or unexpected:
            raise ValueError(
                f"{Path(str(weights)).name} does not fit this config: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        return model.eval()


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
    """The core's outputs collected over the segments of one forward pass."""

    def __init__(self, core: MemoryCore, state: RecurrentState | None) -> None:
        self.core, self.state, self.pieces = core, state, []

    def run(self, x: torch.Tensor, mask: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        out = self.core(x, mask, self.state, residual)
        self.state = out.state
        self.pieces.append(out)
        return out.hidden

    def joined(self, mask: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """The ponder and clock fields over all positions (B, T, ...)."""
        cat = lambda name: (  # noqa: E731
            None if getattr(self.pieces[0], name) is None else torch.cat([getattr(p, name) for p in self.pieces], 1)
        )
        steps = cat("ponder_steps")
        return {
            "ponder_cost": cat("ponder_cost"),
            "ponder_steps": steps,
            "ponder": self.core.statistics(steps, mask),
            "ponder_hidden_states": cat("ponder_hidden_states"),
            "ponder_probs": cat("ponder_probs"),
            "clock_resets": cat("clock_resets"),
        }


def _start_state(core: MemoryCore, memory_state: dict | None, b: int) -> RecurrentState | None:
    return None if memory_state is None else core.state_from_dict(memory_state, b)


class DNCSDAPMModel(DNCSDAPMPreTrainedModel):
    """Controller + memory over token embeddings (standalone) or over a frozen base's hidden states."""

    def __init__(self, config: DNCSDAPMConfig, base: nn.Module | None = None) -> None:
        super().__init__(config)
        self.base = self._attach_base(base)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size) if self.base is None else None
        self.memory = MemoryCore(config)
        if self.base is not None:
            self._inject_path, self._inject_at_top = injection_point(self.base, config.inject_layer)
        self.post_init()

    def frozen_base(self) -> nn.Module | None:
        return self.base

    def get_input_embeddings(self) -> nn.Module | None:
        return self.embed_tokens if self.base is None else self.base.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        if self.base is not None:
            raise ValueError("the frozen base's embeddings are not replaced through the memory model")
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        memory_state: dict[str, torch.Tensor] | None = None,
        base_hidden_states: torch.Tensor | None = None,
        **kwargs,
    ) -> DNCSDAPMModelOutput:
        """``base_hidden_states`` (B, T, D): the base's output at the top layer, computed once (``base_states``),
        instead of running the frozen base again (only where the memory sits on the top layer)."""
        if base_hidden_states is not None:
            return self._over_base_states(base_hidden_states, attention_mask, memory_state)
        vocab = self.config.vocab_size if self.base is None else self.base.config.vocab_size
        b, t = _check_inputs(input_ids, inputs_embeds, self.config.hidden_size, vocab, self.dtype)
        device = self.memory.output.weight.device
        mask = _mask(attention_mask, b, t, device)
        trace = _Trace(self.memory, _start_state(self.memory, memory_state, b))
        if self.base is None:
            hidden = trace.run(inputs_embeds if input_ids is None else self.embed_tokens(input_ids), mask)
        else:
            hidden = self._through_base(input_ids, inputs_embeds, mask, trace.run)
        return DNCSDAPMModelOutput(last_hidden_state=hidden, memory_state=trace.state.as_dict(), **trace.joined(mask))

    @torch.no_grad()
    def base_states(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) the frozen base's hidden states at the injection layer, segment by segment, without the memory:
        what ``base_hidden_states`` takes, so that training computes the base once per example."""
        if self.base is None:
            raise ValueError("base_states needs a frozen base (from_base)")
        b, t = _check_inputs(input_ids, None, self.config.hidden_size, self.base.config.vocab_size)
        seen = []
        self._through_base(input_ids, None, _mask(attention_mask, b, t, input_ids.device),
                           lambda x, piece, h: seen.append(h) or torch.zeros_like(h))
        return torch.cat(seen, 1)

    def _over_base_states(self, states: torch.Tensor, attention_mask, memory_state) -> DNCSDAPMModelOutput:
        if self.base is None or not self._inject_at_top or self.config.read_from != "layer":
            raise ValueError(
                "base_hidden_states stand for the base's top layer as the memory's input: they need a frozen base, "
                "inject_layer=-1 and read_from='layer'"
            )
        b, t = _check_inputs(None, states, self.config.hidden_size, 0)
        mask = _mask(attention_mask, b, t, states.device)
        trace = _Trace(self.memory, _start_state(self.memory, memory_state, b))
        states = states.to(self.memory.output.weight.dtype)
        hidden = states + trace.run(states, mask)
        return DNCSDAPMModelOutput(last_hidden_state=hidden, memory_state=trace.state.as_dict(), **trace.joined(mask))

    def _through_base(self, input_ids, inputs_embeds, mask: torch.Tensor, add) -> torch.Tensor:
        """Each segment through the base on its own, ``add(x, piece_mask, h)`` added to the injection layer's output
        h, with x what the memory reads (``memory_reader``)."""
        layer = self.base.get_submodule(self._inject_path)
        segment = _segment_length(self.config, self.base.config)
        hidden = []
        for start, end in segment_bounds(0, mask.shape[1], segment):
            piece_mask = mask[:, start:end]
            ids = None if input_ids is None else input_ids[:, start:end]
            embeds = None if inputs_embeds is None else inputs_embeds[:, start:end]
            read = memory_reader(self.base, self.config.read_from, ids, embeds)
            with residual_hook(layer, lambda h: add(read(h), piece_mask, h)):
                out = self.base(input_ids=ids, inputs_embeds=embeds, attention_mask=piece_mask.long())
            hidden.append(out.last_hidden_state)
        return torch.cat(hidden, 1)


def _segment_length(config: DNCSDAPMConfig, base_config) -> int:
    window = getattr(base_config, "max_position_embeddings", None)
    segment = config.segment_length or window
    if segment is None:
        raise ValueError("the base model states no max_position_embeddings: set segment_length")
    if window is not None and segment > window:
        raise ValueError(f"segment_length={segment} exceeds the base's max_position_embeddings={window}")
    return segment


class DNCSDAPMForCausalLM(DNCSDAPMPreTrainedModel, GenerationMixin):
    """Next-token prediction: a standalone token model, or a frozen causal LM with the memory injected.

    loss = cross-entropy over shifted labels (−100 ignored) + ``ponder_cost`` × mean ponder cost
    (PonderNet: the expected cross-entropy over halting steps + ``ponder_cost`` × KL to the prior)
    + ``clock_reset_cost`` × mean clock reset over the real tokens.
    """

    base_loader = AutoModelForCausalLM

    def __init__(self, config: DNCSDAPMConfig, base: nn.Module | None = None) -> None:
        super().__init__(config)
        self.base_lm = self._attach_base(base)
        if self.base_lm is None:
            self.model = DNCSDAPMModel(config)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        else:
            if config.act_mode == "pondernet":
                raise ValueError("act_mode='pondernet' needs the standalone model (its loss reads every inner step)")
            if self.base_lm.get_output_embeddings() is None:
                raise ValueError(f"{type(self.base_lm).__name__} has no LM head: DNCSDAPMForCausalLM needs a causal LM")
            self.memory = MemoryCore(config)
            self._inject_path, _ = injection_point(self.base_lm, config.inject_layer)
        self.post_init()

    def frozen_base(self) -> nn.Module | None:
        return self.base_lm

    def get_input_embeddings(self) -> nn.Module | None:
        return self.model.embed_tokens if self.base_lm is None else self.base_lm.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head if self.base_lm is None else self.base_lm.get_output_embeddings()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        memory_state: dict[str, torch.Tensor] | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: DynamicCache | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> DNCSDAPMCausalLMOutput:
        if self.base_lm is None:  # the recurrent state is the whole cache
            if isinstance(cache, MemoryCache) and cache.memory_state is not None:
                memory_state = cache.memory_state
            out = self.model(
                input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, memory_state=memory_state
            )
            logits, fields = self.lm_head(out.last_hidden_state), out
            new_cache = (cache if isinstance(cache, MemoryCache) else MemoryCache(None)) if use_cache else None
            if new_cache is not None:
                new_cache.memory_state = out.memory_state
            mask = _mask(attention_mask, *logits.shape[:2], logits.device)
        else:
            vocab = self.base_lm.config.vocab_size
            b, t = _check_inputs(input_ids, inputs_embeds, self.config.hidden_size, vocab, self.dtype)
            logits, trace, new_cache, mask = self._through_base(
                input_ids, inputs_embeds, attention_mask, memory_state, cache, bool(use_cache), b, t
            )
            fields = DNCSDAPMModelOutput(memory_state=trace.state.as_dict(), **trace.joined(mask))
        loss = None if labels is None else self._loss(fields, logits, labels, mask)
        return DNCSDAPMCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=new_cache,
            memory_state=fields.memory_state,
            ponder_cost=fields.ponder_cost,
            ponder_steps=fields.ponder_steps,
            ponder=fields.ponder,
            clock_resets=fields.clock_resets,
        )

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """Standalone, the cache is the recurrent state alone (no layers); with a base, the base's KV cache."""
        if self.base_lm is None and generation_config.use_cache is not False and model_kwargs.get("cache") is None:
            model_kwargs["cache"] = MemoryCache(None)
            return
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    def _through_base(self, input_ids, inputs_embeds, attention_mask, memory_state, cache, use_cache, b, t):
        """Segments through the frozen LM; with a cache, the current segment continues in it.

        Positions restart at every segment and skip padding (cumulative sum of the mask), so cached, uncached and
        left-padded runs see the same positions.
        """
        filled = cache.get_seq_length() if cache is not None else 0
        full_mask = _mask(attention_mask, b, filled + t, self.memory.output.weight.device).long()
        if isinstance(cache, MemoryCache) and cache.memory_state is not None:
            memory_state = cache.memory_state
        trace = _Trace(self.memory, _start_state(self.memory, memory_state, b))
        segment = _segment_length(self.config, self.base_lm.config)
        layer = self.base_lm.get_submodule(self._inject_path)
        logits, current = [], None
        for i, (start, end) in enumerate(segment_bounds(0, t, segment, filled)):
            continues = i == 0 and 0 < filled < segment
            first = 0 if continues else filled + start  # the segment's first column in full_mask
            seg_mask = full_mask[:, first : filled + end]
            positions = (seg_mask.cumsum(-1) - 1).clamp_min(0)[:, -(end - start) :]
            if use_cache:
                current = cache if continues else MemoryCache(self.base_lm.config)
            piece_mask = full_mask[:, filled + start : filled + end].bool()
            ids = None if input_ids is None else input_ids[:, start:end]
            embeds = None if inputs_embeds is None else inputs_embeds[:, start:end]
            read = memory_reader(self.base_lm, self.config.read_from, ids, embeds)
            with residual_hook(layer, lambda h: trace.run(read(h), piece_mask, h)):
                out = self.base_lm(
                    input_ids=ids,
                    inputs_embeds=embeds,
                    attention_mask=seg_mask,
                    position_ids=positions,
                    cache=current,
                    use_cache=use_cache,
                )
            logits.append(out.logits)
        if current is not None:
            current.memory_state = trace.state.as_dict()
        return torch.cat(logits, 1), trace, current, full_mask[:, filled:].bool()

    def _loss(
        self, out: DNCSDAPMModelOutput, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        if labels.shape != logits.shape[:2]:
            raise ValueError(f"labels must have shape {tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
        vocab = logits.shape[-1]
        target = labels[:, 1:]
        counted = target != -100
        if counted.any() and (target[counted].min() < 0 or target[counted].max() >= vocab):
            raise ValueError(f"labels must lie in [0, vocab_size={vocab}) or be -100")
        denominator = counted.sum().clamp_min(1)
        if out.ponder_probs is None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=-100)
        else:
            step_logits = self.lm_head(out.ponder_hidden_states[:, :-1])  # (B, T-1, K, V)
            k = step_logits.shape[2]
            per_step = F.cross_entropy(
                step_logits.flatten(0, 2), target[:, :, None].expand(-1, -1, k).flatten(), ignore_index=-100,
                reduction="none",
            ).view(*target.shape, k)
            loss = (out.ponder_probs[:, :-1] * per_step).sum(-1).sum() / denominator
        # The ponder cost of position t is paid by the prediction made there (of token t + 1).
        ponder = (out.ponder_cost[:, :-1] * counted).sum() / denominator
        loss = loss + self.config.ponder_cost * ponder
        if out.clock_resets is not None and self.config.clock_reset_cost > 0:
            real = mask.to(logits.dtype)
            resets = (out.clock_resets * real).sum() / real.sum().clamp_min(1)
            loss = loss + self.config.clock_reset_cost * resets
        return loss


class DNCSDAPMForSequenceClassification(DNCSDAPMPreTrainedModel):
    """A frozen encoder (or decoder) plus memory plus a linear head on the last real position.

    loss: cross-entropy for ``num_labels > 1`` (integer labels), mean squared error for ``num_labels == 1``.
    """

    def __init__(self, config: DNCSDAPMConfig, base: nn.Module | None = None) -> None:
        super().__init__(config)
        self.model = DNCSDAPMModel(config, base)
        self.score = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def frozen_base(self) -> nn.Module | None:
        return self.model.base

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        memory_state: dict[str, torch.Tensor] | None = None,
        inputs_embeds: torch.Tensor | None = None,
        base_hidden_states: torch.Tensor | None = None,
        **kwargs,
    ) -> DNCSDAPMSequenceClassifierOutput:
        out = self.model(
            input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, memory_state=memory_state,
            base_hidden_states=base_hidden_states,
        )
        hidden = out.last_hidden_state
        last = last_real(_mask(attention_mask, *hidden.shape[:2], hidden.device))
        logits = self.score(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
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
        return DNCSDAPMSequenceClassifierOutput(loss=loss, logits=logits, memory_state=out.memory_state, ponder=out.ponder)
