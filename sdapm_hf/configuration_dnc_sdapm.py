"""DNCSDAPMConfig: the settings of a DNC-SDAPM model, in four groups (memory, controller, ACT, plug).

A leaf of the package: it imports nothing of the memory. The memory builds its own settings object from these
fields where it is constructed, and checks its own rules there (``sdapm_state.SDAPMSettings``).
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

MEMORY_TYPES = ("sdapm", "dnc", "none")
CONSOLIDATION_MODES = ("auto", "usage", "relative_usage", "similar", "learned", "off")
ACT_MODES = ("none", "act", "pondernet", "fixed")
READ_SOURCES = ("layer", "embeddings")
INPUT_NORMS = ("layer", "robust")
OUTPUT_SCALES = ("rms", "median")
# What chunked mode supports (one read per token, no per-token clock chain, a fixed consolidation rule), with the
# value that makes the other field work.
CHUNKED_MODE = {
    "memory_type": (("sdapm",), "sdapm"),
    "act_mode": (("none",), "none"),
    "clock_keys": ((False,), False),
    "consolidation": (("auto", "usage", "relative_usage", "similar", "off"), "auto"),
}


@strict
class DNCSDAPMConfig(PreTrainedConfig):
    r"""Configuration of a DNC-SDAPM model.

    Standalone (``text_config=None``) it is a token model with its own embeddings of width ``hidden_size``.
    With ``text_config`` (the frozen base's config) the memory reads the base's hidden states at decoder layer
    ``inject_layer`` and adds its output there. The defaults are those of the common use, a plug on a frozen LM
    in chunked mode (parallel reads within a chunk of 32 positions, one least-squares slot per chunk, automatic
    consolidation); ``chunk_size=None`` is the exact per-token recurrence, which clock keys, learned consolidation
    and ACT need.

    Memory (``sdapm_state.SDAPMSettings`` checks ``max_rank`` … ``read_candidates`` when the model is built):
        memory_type: ``"sdapm"`` (affine-map memory), ``"dnc"`` (classic erase/add DNC memory, same controller)
            or ``"none"`` (the controller alone).
        memory_slots: N, slots of the memory.
        word_size: W, size of keys, values and read words.
        read_heads: R.
        max_rank: largest rank a consolidated slot stores (None: ``word_size``).
        ridge, value_max, gain_max, mass_max: the memory's consolidation ridge and stability rules (the bound on
            every stored norm, ``sdapm_state``'s docstring).
        read_top_k: sparse reads over the best K slots (None: dense).
        read_candidates: shortlist size for two-stage sparse reads (needs ``read_top_k``).
        temporal_links: DNC forward/backward read modes.
        consolidation: what happens when the memory is full: ``"auto"`` (merge its lightest slot with the slot
            nearest to it), ``"usage"`` (the same with usage for mass: merge the least-used slot, the one written
            with the smallest gates, with the little-used slot nearest to it, so that what was gated high stays
            exact), ``"relative_usage"`` (the same with usages relative to the largest, so that the partner's
            usage weighs against its key's cosine on one scale), ``"similar"`` (merge the two slots with the most
            similar keys), ``"learned"`` (the controller's gate and pair selection, which sees slot metadata;
            per-token mode) or ``"off"`` (the least-used slot is overwritten). Merges are pairwise.
        chunk_size: C; None steps the memory token by token. In chunked mode (counted from the start of the
            memory's stream, across calls) the controller still steps every token, but every token of a chunk
            reads the memory as it was at the chunk's start (all C reads in one call) and gets the reads of the
            previous chunk's last real token as its controller input, and the chunk's end writes its C pairs as ONE
            least-squares slot (``sdapm_write.write_chunk``). ``chunk_size=1`` is the per-token model.
        chunk_members: M, the steps of a chunk its slot keeps: the M most strongly gated real ones (None: all C).
            M ≤ ``max_rank`` + 1 keeps the slot an exact map of its members.
        predictive_writes: the key a position writes is the read query (of the first head) of the real position
            before it, and its value is the position's own: a pair stores what followed a context (kNN-LM's
            datastore: key the context before a token, value the token), so a later read with the same query gets
            what came next; write and read keys are then one function, not two to be aligned by training.
            None (the default): on with a frozen base (``text_config`` set), off for a standalone model, on with
            ``query_values``.
        query_values: with predictive writes, a position's value is its own read query (of the first head)
            instead of the interface's value: the memory holds the map from each query to the next one, so a
            read's output is itself a query, and the k reads of a ponder loop (``act_mode``) follow k stored links.

    Controller:
        vocab_size: tokens of the standalone model (ignored with a frozen base).
        hidden_size: width of the model's input and output vectors (the base's hidden size with a base).
        controller_size: LSTM controller units.
        interface_window: K, inputs the interface's direct path sees, ``[x_t ; … ; x_{t−K+1}]`` (the last K real
            positions, zeros before the first): 1 is the current input alone.
        read_strength_bias_init: initial bias of the read strengths' pre-activation b, so that they start near
            β = exp(2 + 3 tanh(b / 3)): 1.0 gives β ≈ 20 (sharp first reads), −3.0 gives β ≈ 0.75 (first reads
            spread over every slot, so that every slot gets gradient).
        clock_keys: give the controller a clock addressing mode: keys from a fixed random rotation of the
            previous clock, with a learned reset gate (position keys that extend to any length; per-token mode).
        clock_reset_cost: loss per unit of clock reset, averaged over the real tokens (keeps the clock from leaking).
        write_cost: loss per unit of write gate, averaged over the real tokens: writing costs, so the controller
            gates high only what the task needs (which ``consolidation="usage"`` then keeps exact).
        bypass_dropout: dropout on the controller → output path that does not go through memory.
        initializer_range: std of the normal initialisation of linear layers.

    ACT (per-token mode):
        act_mode: ``"none"`` (one read per step), ``"act"`` (Graves' adaptive computation time), ``"pondernet"``
            (Banino et al.'s halting distribution and expected loss; standalone models only, the loss runs the head
            on every inner step's read) or ``"fixed"`` (always ``act_max_steps`` reads); in each inner step the read
            output is the next read word (act.py).
        act_max_steps: cap on inner read steps.
        act_epsilon: ACT's ε: the loop halts once the halting probabilities sum to at least 1 − ε, in (0, 1)
            (Graves used 0.01).
        ponder_cost: weight of the ponder cost in the loss (ACT: steps + remainder; PonderNet: the KL of the halting
            distribution to the geometric prior).
        ponder_prior: PonderNet's prior halting probability λ_p per step, in (0, 1) (prior mean about 1/λ_p steps).

    Plug (a frozen base):
        text_config: config of a frozen base model (dict or config), None for a standalone model.
        base_model_name_or_path: where to load the frozen base from (adapter checkpoints).
        inject_layer: decoder layer whose output the memory modifies (negative counts from the top).
        read_from: what the memory reads with a base: ``"layer"`` (the output of decoder layer ``read_layer``) or
            ``"embeddings"`` (the base's input token embeddings at the same positions); it adds its output at
            ``inject_layer`` either way.
        read_layer: the decoder layer the memory reads (negative counts from the top; None: ``inject_layer``), at
            or below ``inject_layer``: keys and values from the base's states at one depth, the answer added at
            another.
        input_norm: how the memory normalises what it reads: ``"layer"`` (LayerNorm) or ``"robust"`` (each
            position divided by the median of its channels' magnitudes and each channel squashed into a bounded
            range before the LayerNorm, so that a few channels of huge constant magnitude, as in Gemma's residual
            stream, do not make every position look the same; injection.py).
        output_scale: the stream's scale the memory's addition is multiplied by at each position: ``"rms"`` (the
            root mean square of its channels) or ``"median"`` (the median of their magnitudes; a few channels of
            huge magnitude set the RMS, not the median; injection.py).
        segment_length: tokens the base sees at once (None: the base's maximum positions).
        save_base_weights: save the base's weights with the memory ("whole") or only name the base ("adapter").
        tie_word_embeddings: a plugged causal LM's output embeddings are its base's input embeddings (set from
            the base).

    ``output_memory_states``: models return every memory update's read, write and usage weights and the memory
    after it (``DNCSDAPMModelOutput.memory_states``) unless a forward call says otherwise.
    """

    model_type = "dnc_sdapm"
    keys_to_ignore_at_inference = ["cache", "memory_state", "memory_states", "hidden_states", "ponder", "ponder_cost",
                                   "ponder_steps", "clock_resets", "write_gates"]
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", optional=True),
    }

    # memory
    memory_type: str = "sdapm"
    memory_slots: int = 16
    word_size: int = 32
    read_heads: int = 1
    max_rank: int | None = None
    ridge: float = 1e-4
    value_max: float | None = 1.0
    gain_max: float | None = 8.0
    mass_max: float | None = 256.0
    read_top_k: int | None = None
    read_candidates: int | None = None
    temporal_links: bool = False
    consolidation: str = "auto"
    chunk_size: int | None = 32
    chunk_members: int | None = None
    predictive_writes: bool | None = None
    query_values: bool = False
    # controller
    vocab_size: int = 32
    hidden_size: int = 128
    controller_size: int = 128
    interface_window: int = 1
    read_strength_bias_init: float = 1.0
    clock_keys: bool = False
    clock_reset_cost: float = 0.1
    write_cost: float = 0.0
    bypass_dropout: float = 0.1
    initializer_range: float = 0.02
    # ACT
    act_mode: str = "none"
    act_max_steps: int = 4
    act_epsilon: float = 0.01
    ponder_cost: float = 1e-3
    ponder_prior: float = 0.2
    # plug
    text_config: dict | PreTrainedConfig | None = None
    base_model_name_or_path: str | None = None
    inject_layer: int = -1
    read_from: str = "layer"
    read_layer: int | None = None
    input_norm: str = "layer"
    output_scale: str = "rms"
    segment_length: int | None = None
    save_base_weights: bool = True
    tie_word_embeddings: bool = False
    output_memory_states: bool = False

    def validate_fields(self) -> None:
        """Each group's rules, once (the memory checks its own numeric rules when it is built)."""
        if self.predictive_writes is None:
            self.predictive_writes = self.text_config is not None or self.query_values
        self._check_memory()
        self._check_writes()
        self._check_controller()
        self._check_act()
        self._check_plug()
        self._check_chunking()

    def _check_memory(self) -> None:
        for name in ("memory_slots", "word_size", "read_heads"):
            _positive(self, name)
        _choice(self, "memory_type", MEMORY_TYPES)
        _choice(self, "consolidation", CONSOLIDATION_MODES)

    def _check_writes(self) -> None:
        if self.query_values and not self.predictive_writes:
            raise ValueError("query_values writes each query under the one before it, which needs predictive writes: "
                             "set predictive_writes=True (or None) or query_values=False")

    def _check_chunking(self) -> None:
        """What chunked mode supports, checked once every choice is known to be valid."""
        if self.chunk_members is not None and self.chunk_size is None:
            raise ValueError("chunk_members needs chunk_size (it selects the steps of a chunk's write): set chunk_size")
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
        for name, (supported, works) in CHUNKED_MODE.items():
            if getattr(self, name) not in supported:
                raise ValueError(
                    f"chunk_size={self.chunk_size} needs {name} in {supported}, got {getattr(self, name)!r}: set "
                    f"chunk_size=None (the per-token recurrence) or {name}={works!r}"
                )

    def _check_controller(self) -> None:
        for name in ("vocab_size", "hidden_size", "controller_size", "interface_window"):
            _positive(self, name)
        if not 0 <= self.bypass_dropout < 1:
            raise ValueError(f"bypass_dropout must be in [0, 1), got {self.bypass_dropout}")
        for name in ("initializer_range", "clock_reset_cost", "write_cost"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def _check_act(self) -> None:
        _choice(self, "act_mode", ACT_MODES)
        if self.act_max_steps < 1:
            raise ValueError(f"act_max_steps must be >= 1, got {self.act_max_steps}")
        if not 0 < self.act_epsilon < 1:
            raise ValueError(f"act_epsilon must be in (0, 1), got {self.act_epsilon}")
        if self.ponder_cost < 0:
            raise ValueError(f"ponder_cost must be >= 0, got {self.ponder_cost}")
        if not 0 < self.ponder_prior < 1:
            raise ValueError(f"ponder_prior must be in (0, 1), got {self.ponder_prior}")
        if self.act_mode == "pondernet" and self.text_config is not None:
            raise ValueError("act_mode='pondernet' trains on the head's loss at every inner step, which a frozen base's "
                             "upper layers would have to run once per step: set act_mode='act' in a plugged model")

    def _check_plug(self) -> None:
        _choice(self, "read_from", READ_SOURCES)
        _choice(self, "input_norm", INPUT_NORMS)
        _choice(self, "output_scale", OUTPUT_SCALES)
        if self.read_layer is not None and self.read_from != "layer":
            raise ValueError(f"read_layer={self.read_layer} names a layer to read, read_from={self.read_from!r} "
                             "reads the embeddings: set read_layer=None or read_from='layer'")
        if self.segment_length is not None and self.segment_length < 1:
            raise ValueError(f"segment_length must be >= 1 or None, got {self.segment_length}")
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


def _choice(config: DNCSDAPMConfig, name: str, choices: tuple[str, ...]) -> None:
    if getattr(config, name) not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {getattr(config, name)!r}")
