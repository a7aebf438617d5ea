"""DNCSDAPMConfig: memory, controller, ACT and injection settings of a DNC-SDAPM model."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .sdapm import SDAPMSettings

MEMORY_TYPES = ("sdapm", "dnc", "none")
CONSOLIDATION_MODES = ("learned", "auto", "similar", "off")
ACT_MODES = ("none", "act", "pondernet", "fixed")
READ_FORMS = ("mixture", "averaged")
READ_SOURCES = ("layer", "embeddings")
# What chunked mode supports: one read per token, no clock (a per-token chain), consolidation without the learned head.
CHUNKED_MODE = {
    "memory_type": ("sdapm",),
    "act_mode": ("none",),
    "clock_keys": (False,),
    "consolidation": ("auto", "similar", "off"),
}


@strict
class DNCSDAPMConfig(PreTrainedConfig):
    r"""Configuration of a DNC-SDAPM model.

    Standalone (``text_config=None``) it is a token model with its own embeddings of width ``hidden_size``.
    With ``text_config`` (the frozen base's config) the memory reads the base's hidden states at decoder layer
    ``inject_layer`` and adds its output there.

    Args:
        vocab_size: tokens of the standalone model (ignored with a frozen base).
        hidden_size: width of the model's input and output vectors (the base's hidden size with a base).
        controller_size: LSTM controller units.
        memory_type: ``"sdapm"`` (affine-map memory), ``"dnc"`` (classic erase/add DNC memory, same controller)
            or ``"none"`` (the controller alone).
        memory_slots: N, slots of the memory.
        word_size: W, size of keys, values and read words.
        read_heads: R.
        max_rank: largest rank a consolidated slot stores (None: ``word_size``).
        ridge, value_max, gain_max, mass_max: the memory's consolidation ridge and stability rules
            (see ``sdapm.SDAPMSettings``).
        top_k: sparse reads over the best K slots (None: dense).
        read_candidates: shortlist size for two-stage sparse reads (needs ``top_k``).
        temporal_links: DNC forward/backward read modes.
        read_form: ``"mixture"`` or ``"averaged"`` (the seed's averaged parameters).
        consolidation: ``"learned"`` (the controller's gate and group selection, which sees slot metadata),
            ``"auto"`` (whenever the memory is full, merge its lightest slot with the slot nearest to it),
            ``"similar"`` (whenever it is full, merge the two slots with the most similar keys) or ``"off"`` (a full
            memory overwrites its least-used slot).
        consolidation_group: slots merged per consolidation.
        clock_keys: give the controller a clock addressing mode: keys from a fixed random rotation of the
            previous clock, with a learned reset gate (position keys that extend to any length).
        clock_reset_cost: loss per unit of clock reset, averaged over the real tokens (keeps the clock from leaking).
        chunk_size: None steps the memory token by token; C runs it in chunks of C positions (counted from the
            start of the memory's stream, across calls): the controller still steps every token, but every token of
            a chunk reads the memory as it was at the chunk's start (all C reads in one call) and gets the reads
            of the previous chunk's last real token as its controller input, and the chunk's end writes its C
            pairs as ONE least-squares slot (``sdapm.write_chunk``). ``chunk_size=1`` is the per-token model.
            Needs ``memory_type="sdapm"``, ``act_mode="none"``, ``clock_keys=False`` and ``consolidation`` in
            ``("auto", "similar", "off")``.
        chunk_members: M, the steps of a chunk its slot keeps: the M most strongly gated real ones (None: all C).
            Needs ``chunk_size``; M ≤ ``max_rank`` + 1 keeps the slot an exact map of its members.
        act_mode: ``"none"`` (one read per step), ``"act"`` (Graves' adaptive computation time), ``"pondernet"``
            or ``"fixed"`` (always ``act_max_steps`` reads); in each inner step the read output is the next
            read word.
        act_max_steps: cap on inner read steps.
        act_epsilon: ACT halting threshold ``1 − ε``.
        ponder_cost: weight of the ponder cost (ACT) or of the KL to the geometric prior (PonderNet) in the loss.
        pondernet_prior: λ_p of PonderNet's geometric prior.
        halting_bias_init: initial bias of the halting unit.
        read_strength_bias_init: initial bias of the read strengths' pre-activation b, so that they start near
            β = exp(2 + 3 tanh(b / 3)): 1.0 gives β ≈ 20 (sharp first reads, mostly of the best-matching slot),
            −3.0 gives β ≈ 0.75 (first reads spread over every slot, so that every slot gets gradient).
        interface_window: K, inputs the interface's direct path sees, ``[x_t ; … ; x_{t−K+1}]`` (the last K real
            positions, zeros before the first; ``controller.py``): 1 is the current input alone.
        bypass_dropout: dropout on the controller → output path that does not go through memory.
        controller_clip: clip of the controller's outputs.
        text_config: config of a frozen base model (dict or config), None for a standalone model.
        base_model_name_or_path: where to load the frozen base from (adapter checkpoints).
        inject_layer: decoder layer whose output the memory reads and modifies (negative counts from the top).
        read_from: what the memory reads with a base: ``"layer"`` (the output of ``inject_layer``) or
            ``"embeddings"`` (the base's input token embeddings at the same positions: exact token identity, for
            bases whose upper layers blur it); its output is added at ``inject_layer`` either way.
        segment_length: tokens the base sees at once (None: the base's maximum positions).
        save_base_weights: save the base's weights with the memory ("whole") or only name the base ("adapter").
        initializer_range: std of the normal initialisation of linear layers.
    """

    model_type = "dnc_sdapm"
    keys_to_ignore_at_inference = ["cache", "memory_state", "hidden_states", "ponder", "ponder_cost", "ponder_steps",
                                   "clock_resets"]
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", optional=True),
    }

    vocab_size: int = 32
    hidden_size: int = 128
    controller_size: int = 128
    memory_type: str = "sdapm"
    memory_slots: int = 16
    word_size: int = 32
    read_heads: int = 1
    max_rank: int | None = None
    ridge: float = 1e-4
    value_max: float | None = 1.0
    gain_max: float | None = 8.0
    mass_max: float | None = 256.0
    top_k: int | None = None
    read_candidates: int | None = None
    temporal_links: bool = False
    read_form: str = "mixture"
    consolidation: str = "learned"
    consolidation_group: int = 2
    clock_keys: bool = True
    clock_reset_cost: float = 0.1
    chunk_size: int | None = None
    chunk_members: int | None = None
    act_mode: str = "none"
    act_max_steps: int = 4
    act_epsilon: float = 0.01
    ponder_cost: float = 1e-3
    pondernet_prior: float = 0.5
    halting_bias_init: float = 1.0
    read_strength_bias_init: float = 1.0
    interface_window: int = 1
    bypass_dropout: float = 0.1
    controller_clip: float = 20.0
    text_config: dict | PreTrainedConfig | None = None
    base_model_name_or_path: str | None = None
    inject_layer: int = -1
    read_from: str = "layer"
    segment_length: int | None = None
    save_base_weights: bool = True
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def validate_fields(self) -> None:
        """Every field, in an order where later checks can rely on earlier ones (sizes first)."""
        self._check_sizes()
        self._check_choices()
        self._check_memory()
        self._check_chunking()
        self._check_rates()
        self._check_base()

    def _check_sizes(self) -> None:
        for name in ("vocab_size", "hidden_size", "controller_size", "memory_slots", "word_size", "read_heads",
                     "interface_window"):
            _positive(self, name)
        if self.act_max_steps < 1:
            raise ValueError(f"act_max_steps must be >= 1, got {self.act_max_steps}")
        if not 2 <= self.consolidation_group <= self.memory_slots:
            raise ValueError(
                f"consolidation_group must be in [2, memory_slots={self.memory_slots}], got {self.consolidation_group}"
            )
        if self.segment_length is not None and self.segment_length < 1:
            raise ValueError(f"segment_length must be >= 1 or None, got {self.segment_length}")

    def _check_choices(self) -> None:
        for name, choices in (
            ("memory_type", MEMORY_TYPES),
            ("consolidation", CONSOLIDATION_MODES),
            ("act_mode", ACT_MODES),
            ("read_form", READ_FORMS),
            ("read_from", READ_SOURCES),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")

    def _check_memory(self) -> None:
        if self.top_k is not None and not 1 <= self.top_k <= self.memory_slots:
            raise ValueError(f"top_k must be in [1, memory_slots={self.memory_slots}] or None, got {self.top_k}")
        if self.read_candidates is not None and (self.top_k is None or self.read_candidates < self.top_k):
            raise ValueError(f"read_candidates needs top_k and must be >= top_k, got {self.read_candidates}")
        self.sdapm_settings()  # the memory checks its own fields (max_rank, ridge, value_max, ...)

    def _check_chunking(self) -> None:
        if self.chunk_members is not None and self.chunk_size is None:
            raise ValueError("chunk_members needs chunk_size (it selects the steps of a chunk's write)")
        if self.chunk_size is None:
            return
        if not isinstance(self.chunk_size, int) or isinstance(self.chunk_size, bool) or self.chunk_size < 1:
            raise ValueError(f"chunk_size must be an integer >= 1 or None, got {self.chunk_size!r}")
        if self.chunk_members is not None and (
            not isinstance(self.chunk_members, int) or isinstance(self.chunk_members, bool)
            or not 1 <= self.chunk_members <= self.chunk_size
        ):
            raise ValueError(f"chunk_members must be an integer in [1, chunk_size={self.chunk_size}] or None, "
                             f"got {self.chunk_members!r}")
        for name, supported in CHUNKED_MODE.items():
            if getattr(self, name) not in supported:
                raise ValueError(
                    f"chunk_size={self.chunk_size} needs {name} in {supported}, got {getattr(self, name)!r}"
                )

    def sdapm_settings(self) -> SDAPMSettings:
        """The SDAPM memory's settings for this config."""
        return SDAPMSettings(
            slots=self.memory_slots,
            word_size=self.word_size,
            read_heads=self.read_heads,
            max_rank=self.max_rank,
            ridge=self.ridge,
            value_max=self.value_max,
            gain_max=self.gain_max,
            mass_max=self.mass_max,
            top_k=self.top_k,
            candidates=self.read_candidates,
            temporal_links=self.temporal_links,
            read_form=self.read_form,
        )

    def _check_rates(self) -> None:
        for name in ("act_epsilon", "bypass_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.pondernet_prior <= 1:
            raise ValueError(f"pondernet_prior must be in (0, 1], got {self.pondernet_prior}")
        for name in ("ponder_cost", "initializer_range", "clock_reset_cost"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.controller_clip > 0:
            raise ValueError(f"controller_clip must be > 0, got {self.controller_clip}")

    def _check_base(self) -> None:
        if self.text_config is None:
            return
        base_hidden = getattr(self.text_config, "hidden_size", None)
        if base_hidden is not None and base_hidden != self.hidden_size:
            raise ValueError(
                f"hidden_size={self.hidden_size} does not match the base model's hidden size {base_hidden}"
            )


def _positive(config: DNCSDAPMConfig, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
