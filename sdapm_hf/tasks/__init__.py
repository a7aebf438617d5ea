"""Seeded, deterministic task generators for memory models, returned as ``datasets.DatasetDict``.

Every builder takes keyword arguments only, including ``train_size``, ``validation_size``, ``test_size``,
``seed`` and ``cache_dir``, and returns the splits ``train``, ``validation`` and ``test`` (plus named
evaluation splits for some tasks). Rows are a pure function of the arguments: each split has its own
generator derived from ``seed`` and the split name, and ``datasets`` caches them by fingerprint.

>>> ds = build_task("copy", symbols=8, train_size=4, validation_size=2, test_size=2)  # doctest: +SKIP
>>> batch = pad_collate(list(ds["train"]), pad_token_id=CopyVocab.pad)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import datasets

from .algorithmic import (
    AssociativeRecallVocab,
    CopyVocab,
    MQARVocab,
    MultiHopVocab,
    RepeatCopyVocab,
    SymbolVocab,
    associative_recall,
    copy,
    copy_beyond_capacity,
    forgetting_mqar,
    mqar,
    multi_hop_recall,
    repeat_copy,
)
from .core import IGNORE_INDEX, pad_collate
from .haystack import HaystackCorpus, haystack_multi_needle, haystack_passkey, haystack_qa1
from .text import (
    CODE_WORDS,
    ENTITIES,
    LOCATIONS,
    PEOPLE,
    babi_qa1,
    default_tokenizer_path,
    fact_recall,
    load_tokenizer,
    passkey,
)

TASKS: dict[str, Callable[..., datasets.DatasetDict]] = {
    "copy": copy,
    "copy_beyond_capacity": copy_beyond_capacity,
    "repeat_copy": repeat_copy,
    "associative_recall": associative_recall,
    "mqar": mqar,
    "forgetting_mqar": forgetting_mqar,
    "multi_hop_recall": multi_hop_recall,
    "passkey": passkey,
    "babi_qa1": babi_qa1,
    "fact_recall": fact_recall,
    "haystack_passkey": haystack_passkey,
    "haystack_multi_needle": haystack_multi_needle,
    "haystack_qa1": haystack_qa1,
}
# Tasks whose rows are haystacks of a corpus of real text (``corpus=HaystackCorpus(...)``), read by a plugged LM.
HAYSTACK_TASKS = ("haystack_passkey", "haystack_multi_needle", "haystack_qa1")


def build_task(name: str, **kwargs: object) -> datasets.DatasetDict:
    """Build the task registered as ``name`` in :data:`TASKS` with the builder's keyword arguments."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    parameters = inspect.signature(TASKS[name]).parameters
    unknown = sorted(set(kwargs) - set(parameters))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        raise ValueError(f"task {name!r} takes no argument {', '.join(map(repr, unknown))} (check task_args); "
                         f"its arguments: {', '.join(parameters)}")
    return TASKS[name](**kwargs)


__all__ = [
    "CODE_WORDS",
    "ENTITIES",
    "HAYSTACK_TASKS",
    "IGNORE_INDEX",
    "LOCATIONS",
    "PEOPLE",
    "TASKS",
    "AssociativeRecallVocab",
    "CopyVocab",
    "HaystackCorpus",
    "MQARVocab",
    "MultiHopVocab",
    "RepeatCopyVocab",
    "SymbolVocab",
    "associative_recall",
    "babi_qa1",
    "build_task",
    "copy",
    "copy_beyond_capacity",
    "default_tokenizer_path",
    "fact_recall",
    "forgetting_mqar",
    "haystack_multi_needle",
    "haystack_passkey",
    "haystack_qa1",
    "load_tokenizer",
    "mqar",
    "multi_hop_recall",
    "pad_collate",
    "passkey",
    "repeat_copy",
]
