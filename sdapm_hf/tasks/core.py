"""Machinery shared by every task: argument checks, per-split seeding, cached generation, padding.

A task is a pure function ``make_example(rng, **params) -> dict`` plus a call to :func:`build_splits`,
which turns it into a :class:`datasets.DatasetDict` through :meth:`datasets.Dataset.from_generator`.

Caching: ``datasets`` pickles a generator defined in an importable module *by reference*, so its own
fingerprint would not change when the task code changes and a stale cache would be reused. Each split
therefore gets an explicit fingerprint: a hash of the task name, split, seed, size, parameters and the
source of this package. Same arguments -> the cached Arrow files are reused; any change -> fresh rows.

Splits are disjoint: a split redraws any example whose input the splits built before it already hold (so no
evaluation input was seen in training, however small the task's space of inputs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

IGNORE_INDEX = -100
"""Label value that the loss ignores (the Hugging Face / PyTorch convention)."""

SplitSpec = tuple[int, Mapping[str, Any]]
"""``(num_examples, params)`` of one split; ``params`` are the keyword arguments of ``make_example``."""


# --- argument checks ---------------------------------------------------------------------------------


def require_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` if it is an integer in ``[minimum, maximum]``; otherwise raise ``ValueError`` naming it."""
    valid = not isinstance(value, bool) and isinstance(value, (int, np.integer))
    if not valid or value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an integer {bounds}, got {value!r}")
    return int(value)


def require_range(low_name: str, low: Any, high_name: str, high: Any, minimum: int = 1) -> None:
    """Check that ``minimum <= low <= high`` for an inclusive integer range given by two arguments."""
    require_int(low_name, low, minimum)
    require_int(high_name, high, minimum)
    if low > high:
        raise ValueError(f"{low_name} ({low}) must not exceed {high_name} ({high})")


def require_fraction(name: str, value: float | None) -> float | None:
    """Check an optional fraction in [0, 1] (``None`` means "sample it per example")."""
    if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be None or a number in [0, 1], got {value!r}")
    return None if value is None else float(value)


# --- examples and features ---------------------------------------------------------------------------


def token_example(input_ids: Sequence[int], labels: Sequence[int] | None = None, **metadata: Any) -> dict[str, Any]:
    """One row: ``input_ids``, aligned ``labels`` (omitted when ``None``), an all-ones ``attention_mask``,
    ``length`` (the number of tokens) and the given metadata columns."""
    row: dict[str, Any] = {"input_ids": [int(t) for t in input_ids]}
    if labels is not None:
        row["labels"] = [int(t) for t in labels]
    return {**row, "attention_mask": [1] * len(input_ids), "length": len(input_ids), **metadata}


def token_features(
    with_labels: bool = True, **metadata: str | datasets.Value | datasets.ClassLabel
) -> datasets.Features:
    """Features matching :func:`token_example`: the token columns, ``length`` and typed metadata columns.

    A metadata type is a ``datasets.Value`` dtype name (``"int32"``, ``"float32"``, ``"string"``) or a feature.
    """
    columns = {"input_ids": datasets.List(datasets.Value("int64"))}
    if with_labels:
        columns["labels"] = datasets.List(datasets.Value("int64"))
    columns |= {"attention_mask": datasets.List(datasets.Value("int8")), "length": datasets.Value("int32")}
    for name, kind in metadata.items():
        columns[name] = datasets.Value(kind) if isinstance(kind, str) else kind
    return datasets.Features(columns)


# --- seeding, fingerprints, generation ---------------------------------------------------------------


def split_rng(seed: int, task: str, split: str) -> np.random.Generator:
    """The random generator of one split, derived from ``seed`` and the task and split names (so two tasks
    or two splits built with the same seed do not share a random stream)."""
    return np.random.default_rng([seed, zlib.crc32(task.encode()), zlib.crc32(split.encode())])


@lru_cache(maxsize=1)
def _source_digest() -> str:
    """Hash of this package's source, so that editing a task invalidates its cached datasets."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _describe(value: Any) -> Any:
    """JSON fallback for parameters: dataclasses by field values, other objects by their ``identity``."""
    if dataclasses.is_dataclass(value):
        return {"type": type(value).__name__, **dataclasses.asdict(value)}
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "identity"):
        return value.identity
    raise TypeError(f"cannot fingerprint a parameter of type {type(value).__name__}")


def _fingerprint(task: str, split: str, seed: int, size: int, params: Mapping[str, Any], earlier: list[str]) -> str:
    """The cache key of one split; ``earlier``: the fingerprints of the splits it must not repeat."""
    payload = json.dumps([task, split, seed, size, params, earlier, _source_digest()], sort_keys=True,
                         default=_describe)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def input_key(example: Mapping[str, Any], columns: Sequence[str] = ("input_ids",)) -> bytes:
    """A short digest of one example's input (its integer ``columns``, nested lists allowed), to tell repeated
    inputs apart across splits."""
    digest = hashlib.blake2b(digest_size=16)
    for name in columns:
        digest.update(json.dumps(example[name], default=int).encode())
    return digest.digest()


# How many draws a split may spend per example it keeps before its task is declared too small to fill it.
DRAWS_PER_EXAMPLE = 100


def _generate(
    make_example: Callable[..., dict[str, Any]],
    num_examples: int,
    seed: int,
    task: str,
    split: str,
    params: Mapping[str, Any],
    exclude: frozenset[bytes],
    input_columns: Sequence[str],
) -> Iterator[dict[str, Any]]:
    """``num_examples`` rows drawn from the split's own generator, skipping inputs (``input_columns``) that
    ``exclude`` holds."""
    rng = split_rng(seed, task, split)
    kept = 0
    for _ in range(DRAWS_PER_EXAMPLE * num_examples):
        example = make_example(rng, **params)
        if exclude and input_key(example, input_columns) in exclude:
            continue
        yield example
        kept += 1
        if kept == num_examples:
            return
    raise ValueError(f"{task}: only {kept} of {num_examples} {split} inputs differ from the earlier splits' after "
                     f"{DRAWS_PER_EXAMPLE * num_examples} draws: the task has too few distinct inputs for these "
                     "sizes (make its sequences longer or its vocabulary larger, or its splits smaller)")


def standard_splits(
    params: Mapping[str, Any], train_size: int, validation_size: int, test_size: int
) -> dict[str, SplitSpec]:
    """``train``/``validation``/``test`` specs sharing ``params``; checks the sizes."""
    sizes = {"train": train_size, "validation": validation_size, "test": test_size}
    return {split: (require_int(f"{split}_size", size, 0), params) for split, size in sizes.items()}


def build_splits(
    task: str,
    make_example: Callable[..., dict[str, Any]],
    splits: Mapping[str, SplitSpec],
    features: datasets.Features,
    seed: int,
    cache_dir: str | None = None,
    input_columns: Sequence[str] = ("input_ids",),
) -> datasets.DatasetDict:
    """Generate (or load from the ``datasets`` cache) every split of a task; ``input_columns``: the columns that
    make up an example's input (what the model sees), by which the splits are kept disjoint.

    Each split draws from its own generator (:func:`split_rng`), so adding a split or resizing one leaves the
    rows of the others unchanged, and skips any input that a split before it holds (the order of ``splits``:
    train first). A ``ValueError`` raised while generating (an argument that only proves invalid for a concrete
    example, such as a too short ``length``) is re-raised as is.
    """
    require_int("seed", seed, 0)
    built = {}
    seen: set[bytes] = set()
    earlier: list[str] = []
    last = list(splits)[-1]
    for split, (size, params) in splits.items():
        if size == 0:  # datasets cannot cache a generator that yields nothing
            built[split] = datasets.Dataset.from_dict(
                {name: [] for name in features}, features, split=datasets.NamedSplit(split)
            )
            continue
        fingerprint = _fingerprint(task, split, seed, size, params, earlier)
        try:
            built[split] = datasets.Dataset.from_generator(
                _generate,
                features=features,
                cache_dir=cache_dir,
                gen_kwargs={
                    "make_example": make_example,
                    "num_examples": size,
                    "seed": seed,
                    "task": task,
                    "split": split,
                    "params": params,
                    "exclude": frozenset(seen),
                    "input_columns": tuple(input_columns),
                },
                split=datasets.NamedSplit(split),
                fingerprint=fingerprint,
            )
        except datasets.exceptions.DatasetGenerationError as error:
            if isinstance(error.__cause__, ValueError):
                raise error.__cause__ from None
            raise
        earlier.append(fingerprint)
        if split != last:  # the inputs the splits after this one must not repeat
            seen.update(input_key(row, input_columns) for row in built[split].select_columns(list(input_columns)))
    return datasets.DatasetDict(built)


# --- batching ----------------------------------------------------------------------------------------


def _as_tensor(values: list[Any]) -> torch.Tensor | None:
    """A tensor of numbers or equal-length number lists; ``None`` for strings, ``None`` and ragged lists."""
    if isinstance(values[0], np.ndarray):
        return torch.from_numpy(np.stack(values))
    try:
        return torch.tensor(values)
    except (TypeError, ValueError, RuntimeError):
        return None


def pad_collate(features: Sequence[Mapping[str, Any]], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad a list of rows to the longest ``input_ids`` and stack them into tensors.

    ``input_ids`` is padded with ``pad_token_id``, ``labels`` with -100 and ``attention_mask`` with 0; the
    three come back as ``long`` tensors of shape ``(batch, longest)``. Other numeric columns are stacked
    as they are (``label`` is renamed ``labels``, as in ``transformers``' collators); string and ragged
    columns are dropped. Use it with ``functools.partial(pad_collate, pad_token_id=...)`` in a
    ``DataLoader`` or as a ``Trainer``'s ``data_collator``.

    >>> batch = pad_collate([{"input_ids": [5, 6], "labels": [-100, 6]}, {"input_ids": [7], "labels": [7]}])
    >>> batch["input_ids"].tolist(), batch["labels"].tolist()
    ([[5, 6], [7, 0]], [[-100, 6], [7, -100]])
    """
    if not features:
        raise ValueError("features must contain at least one row")
    longest = max(len(row["input_ids"]) for row in features)
    fill = {"input_ids": pad_token_id, "labels": IGNORE_INDEX, "attention_mask": 0}
    batch: dict[str, torch.Tensor] = {}
    for key in features[0]:
        values = [row[key] for row in features]
        if key in fill:
            padded = [list(v) + [fill[key]] * (longest - len(v)) for v in values]
            batch[key] = torch.tensor(padded, dtype=torch.long)
        elif (tensor := _as_tensor(values)) is not None:
            batch["labels" if key == "label" else key] = tensor
    return batch
