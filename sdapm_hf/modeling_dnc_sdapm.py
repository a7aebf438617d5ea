"""DNC-SDAPM models: a DNC controller with an SDAPM memory, as Hugging Face PreTrainedModels.

One time step (``DNCSDAPMModel._step``)::

    h, state_c  = Controller([x_t ; r_{t−1}])                    controller.py
    ξ           = Interface(h, x_t)                              controller.py
    r_t         = Ponder(read, read keys ⊕ clock)                act.py (read output → next read word)
    memory      = consolidate if full, write (k ⊕ clock, v)      access.py, sdapm.py
    o_t         = W_o [Dropout_bypass(h) ; r_t]                  the model's output (B, D)

The recurrent state (controller, last reads, clock, memory) comes back as ``memory_state``, a plain dict of
tensors; passing it back in continues the sequence exactly. Positions where ``attention_mask`` is 0 leave the
state untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .access import AccessState, MemoryAccess
from .act import Ponder, ponder_statistics
from .configuration_dnc_sdapm import DNCSDAPMConfig
from .controller import Clock, Controller, Interface


@dataclass
class DNCSDAPMModelOutput(ModelOutput):
    """
    last_hidden_state: (B, T, D) the model's outputs.
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
    memory_state: dict[str, torch.Tensor] | None = None
    ponder_cost: torch.Tensor | None = None
    ponder_steps: torch.Tensor | None = None
    ponder: torch.Tensor | None = None
    clock_resets: torch.Tensor | None = None


class DNCSDAPMPreTrainedModel(PreTrainedModel):
    config_class = DNCSDAPMConfig
    config: DNCSDAPMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["DNCSDAPMModel"]

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


@dataclass(frozen=True)
class RecurrentState:
    """Controller state, last reads and memory access state of a batch."""

    h: torch.Tensor  # (B, H)
    c: torch.Tensor  # (B, H)
    reads: torch.Tensor  # (B, R·W)
    access: AccessState

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"controller.h": self.h, "controller.c": self.c, "reads": self.reads, **self.access.as_dict()}

    def where(self, mask: torch.Tensor, other: RecurrentState) -> RecurrentState:
        pick = lambda a, b: torch.where(mask[:, None], a, b)  # noqa: E731
        return RecurrentState(
            pick(self.h, other.h), pick(self.c, other.c), pick(self.reads, other.reads), self.access.where(mask, other.access)
        )


class DNCSDAPMModel(DNCSDAPMPreTrainedModel):
    """Controller + memory over a sequence of vectors (or tokens, with its own embeddings)."""

    def __init__(self, config: DNCSDAPMConfig) -> None:
        super().__init__(config)
        self.read_size = 0 if config.memory_type == "none" else config.read_heads * config.word_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size) if config.text_config is None else None
        self.controller = Controller(config, self.read_size)
        self.interface = Interface(config)
        self.access = MemoryAccess(config)
        self.ponder = Ponder(config)
        self.bypass = nn.Dropout(config.bypass_dropout)
        self.output = nn.Linear(config.controller_size + self.read_size, config.hidden_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module | None:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value

    def initial_state(self, batch_size: int, dtype: torch.dtype, device: torch.device) -> RecurrentState:
        zeros = torch.zeros(batch_size, self.config.controller_size, dtype=dtype, device=device)
        reads = torch.zeros(batch_size, self.read_size, dtype=dtype, device=device)
        return RecurrentState(zeros, zeros.clone(), reads, self.access.init_state(batch_size, dtype, device))

    def state_from_dict(self, tensors: dict[str, torch.Tensor]) -> RecurrentState:
        try:
            return RecurrentState(
                tensors["controller.h"], tensors["controller.c"], tensors["reads"], self.access.state_from_dict(tensors)
            )
        except (KeyError, ValueError) as err:
            raise ValueError(f"memory_state does not come from a model with this config: {err}") from err

    def _step(
        self, x: torch.Tensor, state: RecurrentState, mask: torch.Tensor
    ) -> tuple[RecurrentState, torch.Tensor, object, dict[str, torch.Tensor]]:
        h, (hh, cc) = self.controller(x, state.reads, (state.h, state.c))
        if self.access.kind == "none":
            out = self.output(self.bypass(h))
            new = RecurrentState(hh, cc, state.reads, state.access)
            return new.where(mask, state), out, None, {}
        iface = self.interface(h, x)
        access = self.access.advance_clock(iface, state.access, mask)
        words = self.access.first_words(iface, access)
        step = self.ponder(lambda w, st, active: self.access.read(iface, w, st, active & mask), words, access, h)
        access = self.access.update(iface, step.state, mask)
        reads = step.reads.flatten(1)
        out = self.output(torch.cat([self.bypass(h), reads], dim=-1))
        if step.step_reads is not None:
            k = step.step_reads.shape[1]
            per_step = torch.cat([self.bypass(h)[:, None].expand(-1, k, -1), step.step_reads.flatten(2)], dim=-1)
            step.step_reads = self.output(per_step)  # (B, K, D): every inner step's output
        new = RecurrentState(hh, cc, reads, access)
        return new.where(mask, state), out, step, iface

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        memory_state: dict[str, torch.Tensor] | None = None,
        **kwargs,
    ) -> DNCSDAPMModelOutput:
        x = self._embed(input_ids, inputs_embeds)
        b, t, _ = x.shape
        mask = self._mask(attention_mask, b, t, x.device)
        if memory_state is None:
            state = self.initial_state(b, x.dtype, x.device)
        else:
            state = self.state_from_dict(memory_state)
            if state.h.shape[0] != b:
                raise ValueError(f"memory_state has batch size {state.h.shape[0]}, the input has {b}")
        outputs, steps, costs, step_outs, step_probs, resets = [], [], [], [], [], []
        for i in range(t):
            state, out, step, iface = self._step(x[:, i], state, mask[:, i])
            outputs.append(out)
            if "clock_reset" in iface:
                resets.append(iface["clock_reset"])
            if step is not None:
                steps.append(step.steps)
                costs.append(step.cost)
                if step.step_probs is not None:
                    step_outs.append(step.step_reads)
                    step_probs.append(step.step_probs)
        zeros = torch.zeros(b, t, dtype=x.dtype, device=x.device)
        ponder_steps = torch.stack(steps, 1) if steps else zeros + 1
        cap = self.ponder.max_steps
        stats = ponder_statistics(ponder_steps.detach(), mask, cap)
        return DNCSDAPMModelOutput(
            last_hidden_state=torch.stack(outputs, 1),
            memory_state=state.as_dict(),
            ponder_cost=torch.stack(costs, 1) if costs else zeros,
            ponder_steps=ponder_steps,
            ponder=torch.tensor(list(stats.values())),
            ponder_hidden_states=torch.stack(step_outs, 1) if step_outs else None,
            ponder_probs=torch.stack(step_probs, 1) if step_probs else None,
            clock_resets=torch.stack(resets, 1) if resets else None,
        )

    def _embed(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            if self.embed_tokens is None:
                raise ValueError("this model reads a base model's hidden states: pass inputs_embeds (B, T, D)")
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must have shape (B, T), got {tuple(input_ids.shape)}")
            if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
                raise ValueError(f"input_ids must lie in [0, vocab_size={self.config.vocab_size})")
            return self.embed_tokens(input_ids)
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"inputs_embeds must have shape (B, T, {self.config.hidden_size}), got {tuple(inputs_embeds.shape)}"
            )
        if not inputs_embeds.is_floating_point():
            raise TypeError(f"inputs_embeds must be floating point, got {inputs_embeds.dtype}")
        if not torch.isfinite(inputs_embeds).all():
            raise ValueError("inputs_embeds contains NaN or inf")
        return inputs_embeds

    @staticmethod
    def _mask(attention_mask: torch.Tensor | None, b: int, t: int, device: torch.device) -> torch.Tensor:
        if attention_mask is None:
            return torch.ones(b, t, dtype=torch.bool, device=device)
        if tuple(attention_mask.shape) != (b, t):
            raise ValueError(f"attention_mask must have shape ({b}, {t}), got {tuple(attention_mask.shape)}")
        return attention_mask.to(device).bool()


class DNCSDAPMForCausalLM(DNCSDAPMPreTrainedModel, GenerationMixin):
    """Next-token prediction; standalone it is a token model with its own embeddings.

    loss = cross-entropy over shifted labels (−100 ignored) + ``ponder_cost`` × mean ponder cost
    (PonderNet: the expected cross-entropy over halting steps + ``ponder_cost`` × KL to the prior)
    + ``clock_reset_cost`` × mean clock reset over the real tokens.
    """

    def __init__(self, config: DNCSDAPMConfig) -> None:
        super().__init__(config)
        self.model = DNCSDAPMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module | None:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        memory_state: dict[str, torch.Tensor] | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> DNCSDAPMCausalLMOutput:
        out = self.model(
            input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, memory_state=memory_state
        )
        logits = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = self._loss(out, logits, labels, attention_mask)
        return DNCSDAPMCausalLMOutput(
            loss=loss,
            logits=logits,
            memory_state=out.memory_state,
            ponder_cost=out.ponder_cost,
            ponder_steps=out.ponder_steps,
            ponder=out.ponder,
            clock_resets=out.clock_resets,
        )

    def _loss(
        self, out: DNCSDAPMModelOutput, logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        if labels.shape != logits.shape[:2]:
            raise ValueError(f"labels must have shape {tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
        target = labels[:, 1:]
        counted = target != -100
        if counted.any() and (target[counted].min() < 0 or target[counted].max() >= self.config.vocab_size):
            raise ValueError(f"labels must lie in [0, vocab_size={self.config.vocab_size}) or be -100")
        denominator = counted.sum().clamp_min(1)
        if out.ponder_probs is None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), target.flatten(), ignore_index=-100)
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
            real = torch.ones_like(out.clock_resets) if attention_mask is None else attention_mask.to(logits.dtype)
            resets = (out.clock_resets * real).sum() / real.sum().clamp_min(1)
            loss = loss + self.config.clock_reset_cost * resets
        return loss
