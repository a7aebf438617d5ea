"""The SDAPM memory in one namespace: N slots, each an affine map, written exactly and consolidated by ridge least
squares. Pure torch, batch-first, differentiable.

One module per mechanism; this one only gathers their public functions::

    sdapm_state      the slots (SDAPMSettings, MemoryState, SlotContents), the stability bound, saving, checks
    sdapm_read       read: subspace addressing and the mixture of the addressed maps
    sdapm_write      write: a pair as a raw slot; write_chunk: a chunk of pairs as one least-squares slot
    sdapm_merge      consolidate / merge_slots: a group of slots as one slot
    sdapm_selection  which slots to merge: the fixed rules and the learned head

>>> settings = SDAPMSettings(slots=16, word_size=32)                     # doctest: +SKIP
>>> state = init_state(settings, batch_size=4)                           # doctest: +SKIP
>>> state = write(state, key, value, settings)                           # doctest: +SKIP
>>> out, state = read(state, words, strengths, settings)                 # doctest: +SKIP
"""

from .sdapm_merge import consolidate, merge_slots
from .sdapm_read import read, read_queries, shortlist_slots
from .sdapm_selection import (
    ConsolidationHead, closest_pair_selection, is_full, least_used_pair_selection, most_similar_pair_selection,
    relative_usage_pair_selection, slot_metadata,
)
from .sdapm_state import (
    SLOT_FIELDS, MemoryState, SDAPMSettings, SlotContents, check_state, init_state, load_state, reset_state,
    save_state, slot_maps, stability_bound,
)
from .sdapm_write import write, write_chunk

__all__ = [
    "SLOT_FIELDS", "ConsolidationHead", "MemoryState", "SDAPMSettings", "SlotContents", "check_state",
    "closest_pair_selection", "consolidate", "least_used_pair_selection", "init_state", "is_full", "load_state",
    "merge_slots", "most_similar_pair_selection", "read", "read_queries", "relative_usage_pair_selection",
    "reset_state", "save_state", "shortlist_slots", "slot_maps", "slot_metadata", "stability_bound", "write",
    "write_chunk",
]
