"""The frozen base run once per example: its states at the injection layer as a cached ``datasets`` column, and the
module that trains and evaluates the memory over them.

When the memory sits on an encoder's top layer (``inject_layer=-1``, ``read_from="layer"``, no final norm, as in
BERT), what the model computes above the base is the memory and the head alone: ``add_layer_states`` runs the base
once per example (``DNCSDAPMModel.layer_states``, float16), and ``OverLayerStates`` runs
``DNCSDAPMModel.over_layer_states`` and the classifier's head over that column instead of the token ids.
"""

from __future__ import annotations

import hashlib
import json

import datasets
import numpy as np
import torch
from torch import nn

from ..modeling_dnc_sdapm import DNCSDAPMForSequenceClassification

COLUMN = "layer_states"
FLOAT16_MAX = torch.finfo(torch.float16).max


def cached_states(states: torch.Tensor, what: str) -> np.ndarray:
    """``states`` as the float16 the cached column holds; refused, naming ``what``, where a value lies beyond
    float16's range (it would be cached as inf: some bases carry channels that large at deeper layers)."""
    largest = states.abs().amax().item()
    if not largest <= FLOAT16_MAX:
        raise ValueError(f"{what} reach a magnitude of {largest:.4g}, beyond the {FLOAT16_MAX:.0f} of the float16 "
                         "cache they are stored in: read a layer whose states stay within it (read_layer)")
    return states.half().cpu().numpy()


def add_layer_states(dataset: datasets.DatasetDict, model: DNCSDAPMForSequenceClassification,
                     batch_size: int = 8) -> datasets.DatasetDict:
    """Each split with a ``layer_states`` column (T, D) float16: the frozen base run once per example
    (``datasets`` caches the column, keyed by the split and the base)."""
    memory_model = model.model
    config = memory_model.config
    reads_its_layer = config.read_from == "layer" and memory_model._read_path == memory_model._inject_path
    if memory_model.base is None or not memory_model._inject_at_top or not reads_its_layer:
        raise ValueError("cached layer states stand for the base's top layer as the memory's input: they need a "
                         "frozen base, inject_layer=-1, read_from='layer' and read_layer=None")
    key = json.dumps([COLUMN, config.text_config.to_dict(), config.base_model_name_or_path, config.segment_length,
                      config.inject_layer], default=str)

    def states(batch):
        ids = torch.tensor(batch["input_ids"])
        mask = torch.tensor(batch["attention_mask"]) if "attention_mask" in batch else None
        return {COLUMN: cached_states(memory_model.layer_states(ids, mask), "the base's states the memory reads")}

    out = {}
    for name, split in dataset.items():
        features = split.features.copy()
        features[COLUMN] = datasets.Array2D(shape=(None, config.hidden_size), dtype="float16")
        fingerprint = hashlib.sha256((split._fingerprint + key).encode()).hexdigest()[:16]
        out[name] = split.map(states, batched=True, batch_size=batch_size, features=features,
                              new_fingerprint=fingerprint, desc=f"layer states ({name})")
    return datasets.DatasetDict(out)


class OverLayerStates(nn.Module):
    """A sequence classifier over batches of cached ``layer_states`` (B, T, D) instead of token ids."""

    def __init__(self, model: DNCSDAPMForSequenceClassification) -> None:
        super().__init__()
        self.model = model

    def forward(self, layer_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, memory_state: dict[str, torch.Tensor] | None = None,
                write_cost: float | None = None, **kwargs):
        """The model's ``forward`` with ``layer_states`` in place of the token ids (the other columns ignored)."""
        states = layer_states.to(self.model.model.memory.core.dtype)
        out = self.model.model.over_layer_states(states, attention_mask, memory_state)
        return self.model.classify(out, attention_mask, labels, write_cost)


def runner_for(model: nn.Module, split: datasets.Dataset) -> nn.Module:
    """What runs the batches of ``split``: the model, or ``OverLayerStates`` when they carry cached states."""
    return OverLayerStates(model) if COLUMN in split.column_names else model
