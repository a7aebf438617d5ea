"""Algorithmic memory tasks over small synthetic vocabularies: copy, repeat copy, associative recall, MQAR.

Every row has ``input_ids``, ``labels`` and ``attention_mask`` (lists of the same length) and ``length``.
Labels follow the Hugging Face causal convention: ``labels[t]`` is the token expected *at* position t
(usually ``input_ids[t]``), -100 where there is no loss, and the model shifts internally, so the logits at
position t-1 are scored against ``labels[t]``. The loss covers only the answer part of each sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import datasets
import numpy as np

from .core import (
    IGNORE_INDEX,
    build_splits,
    require_int,
    require_range,
    standard_splits,
    token_example,
    token_features,
)

# --- vocabularies ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SymbolVocab:
    """Layout shared by the symbol tasks: marker ids first (``pad`` = 0), then ``symbols`` data symbols."""

    symbols: int = 16
    pad: ClassVar[int] = 0
    first_symbol: ClassVar[int] = 1

    def __post_init__(self) -> None:
        require_int("symbols", self.symbols, 1)

    @property
    def vocab_size(self) -> int:
        """Number of token ids an embedding table needs: markers plus symbols."""
        return self.first_symbol + self.symbols

    def sample(self, rng: np.random.Generator, count: int) -> list[int]:
        """``count`` symbol ids drawn uniformly with replacement."""
        return (self.first_symbol + rng.integers(0, self.symbols, size=count)).tolist()


@dataclass(frozen=True)
class CopyVocab(SymbolVocab):
    """Copy tasks: ``pad=0``, ``delimiter=1``, symbols ``2 .. symbols+1``; ``CopyVocab(16).vocab_size == 18``."""

    delimiter: ClassVar[int] = 1
    first_symbol: ClassVar[int] = 2


@dataclass(frozen=True)
class RepeatCopyVocab(SymbolVocab):
    """Repeat copy: ``pad=0``, ``delimiter=1``, ``end=2``, count tokens ``3 .. max_repeats+2`` (k -> k+2),
    then the symbols; ``RepeatCopyVocab(16, 10).vocab_size == 29``."""

    max_repeats: int = 10
    delimiter: ClassVar[int] = 1
    end: ClassVar[int] = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        require_int("max_repeats", self.max_repeats, 1)

    def repeat_token(self, repeats: int) -> int:
        """The id that encodes the repeat count ``repeats`` (1 <= repeats <= max_repeats)."""
        return self.end + repeats

    @property
    def first_symbol(self) -> int:  # type: ignore[override]
        return self.end + self.max_repeats + 1


@dataclass(frozen=True)
class AssociativeRecallVocab(SymbolVocab):
    """Associative recall: ``pad=0``, ``separator=1``, ``query=2``, ``delimiter=3``, symbols from 4;
    ``AssociativeRecallVocab(16).vocab_size == 20``."""

    separator: ClassVar[int] = 1
    query: ClassVar[int] = 2
    delimiter: ClassVar[int] = 3
    first_symbol: ClassVar[int] = 4


@dataclass(frozen=True)
class MQARVocab:
    """MQAR (Zoology): 0 fills the query region (and pads), keys are ``1 .. V/2-1``, values ``V/2 .. V-1``."""

    vocab_size: int = 8192
    pad: ClassVar[int] = 0
    first_key: ClassVar[int] = 1

    def __post_init__(self) -> None:
        require_int("vocab_size", self.vocab_size, 4)

    @property
    def first_value(self) -> int:
        return self.vocab_size // 2


# --- copy ----------------------------------------------------------------------------------------------


def _copy_example(rng: np.random.Generator, vocab: CopyVocab, min_length: int, max_length: int) -> dict[str, Any]:
    count = int(rng.integers(min_length, max_length + 1))
    symbols = vocab.sample(rng, count)
    return token_example(symbols + [vocab.delimiter] + symbols, [IGNORE_INDEX] * (count + 1) + symbols, num_items=count)


_COPY_FEATURES = token_features(num_items="int32")


def _copy_params(symbols: int, min_length: int, max_length: int) -> dict[str, Any]:
    require_range("min_length", min_length, "max_length", max_length)
    return {"vocab": CopyVocab(symbols), "min_length": min_length, "max_length": max_length}


def copy(
    *,
    symbols: int = 16,
    min_length: int = 1,
    max_length: int = 20,
    train_size: int = 1000,
    validation_size: int = 100,
    test_size: int = 100,
    seed: int = 0,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """The NTM copy task over ``symbols`` discrete symbols (layout :class:`CopyVocab`).

    An example of L ~ U{min_length..max_length} symbols is ``s_1..s_L DELIM s_1..s_L`` (2L+1 tokens); the
    labels are -100 on the first L+1 positions and then ``s_1..s_L``, so the model predicts ``s_1`` at the
    delimiter. With symbols a=2, b=3, c=4 and DELIM=1::

        input_ids  [2, 3, 4, 1, 2, 3, 4]
        labels     [-100, -100, -100, -100, 2, 3, 4]

    Metadata: ``length`` (tokens), ``num_items`` (L).
    """
    params = _copy_params(symbols, min_length, max_length)
    splits = standard_splits(params, train_size, validation_size, test_size)
    return build_splits("copy", _copy_example, splits, _COPY_FEATURES, seed, cache_dir)


def copy_beyond_capacity(
    *,
    symbols: int = 16,
    min_length: int = 8,
    max_length: int = 32,
    eval_lengths: tuple[int, ...] = (32, 64),
    train_size: int = 1000,
    validation_size: int = 100,
    test_size: int = 100,
    seed: int = 0,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """:func:`copy` with more items than a small memory has slots, plus fixed-length evaluation splits.

    ``train``/``validation``/``test`` draw L from ``min_length..max_length``; each length n in
    ``eval_lengths`` adds a split ``test_len{n}`` of ``test_size`` examples with exactly n symbols.
    """
    params = _copy_params(symbols, min_length, max_length)
    splits = standard_splits(params, train_size, validation_size, test_size)
    for length in eval_lengths:
        require_int("eval_lengths", length, 1)
        splits[f"test_len{length}"] = (test_size, {**params, "min_length": length, "max_length": length})
    return build_splits("copy", _copy_example, splits, _COPY_FEATURES, seed, cache_dir)


# --- repeat copy -------------------------------------------------------------------------------------


def _repeat_copy_example(
    rng: np.random.Generator, vocab: RepeatCopyVocab, min_length: int, max_length: int
) -> dict[str, Any]:
    count = int(rng.integers(min_length, max_length + 1))
    repeats = int(rng.integers(1, vocab.max_repeats + 1))
    symbols = vocab.sample(rng, count)
    prompt = symbols + [vocab.delimiter, vocab.repeat_token(repeats)]
    answer = symbols * repeats + [vocab.end]
    return token_example(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer, num_items=count, repeats=repeats)


def repeat_copy(
    *,
    symbols: int = 16,
    min_length: int = 1,
    max_length: int = 10,
    max_repeats: int = 10,
    train_size: int = 1000,
    validation_size: int = 100,
    test_size: int = 100,
    seed: int = 0,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """The NTM repeat-copy task (layout :class:`RepeatCopyVocab`).

    ``s_1..s_L DELIM REPEAT_k`` then the answer ``(s_1..s_L) * k END``; the loss covers the answer and END.
    L ~ U{min_length..max_length}, k ~ U{1..max_repeats}. With a=13, b=14 (max_repeats 10), k=2::

        input_ids  [13, 14, 1, 4, 13, 14, 13, 14, 2]
        labels     [-100, -100, -100, -100, 13, 14, 13, 14, 2]

    Metadata: ``length``, ``num_items`` (L), ``repeats`` (k).
    """
    require_range("min_length", min_length, "max_length", max_length)
    params = {"vocab": RepeatCopyVocab(symbols, max_repeats), "min_length": min_length, "max_length": max_length}
    splits = standard_splits(params, train_size, validation_size, test_size)
    features = token_features(num_items="int32", repeats="int32")
    return build_splits("repeat_copy", _repeat_copy_example, splits, features, seed, cache_dir)


# --- associative recall ------------------------------------------------------------------------------


def _associative_recall_example(
    rng: np.random.Generator, vocab: AssociativeRecallVocab, item_length: int, min_items: int, max_items: int
) -> dict[str, Any]:
    count = int(rng.integers(min_items, max_items + 1))
    codes = rng.choice(vocab.symbols**item_length, size=count, replace=False)
    digits = np.stack(np.unravel_index(codes, (vocab.symbols,) * item_length), axis=1)
    items = (vocab.first_symbol + digits).tolist()
    queried = int(rng.integers(0, count - 1))
    context = [token for item in items for token in [vocab.separator, *item]]
    prompt = context + [vocab.query, *items[queried], vocab.delimiter]
    answer = items[queried + 1]
    return token_example(
        prompt + answer,
        [IGNORE_INDEX] * len(prompt) + answer,
        num_items=count,
        query_index=queried,
        distance=(count - queried - 2) * (item_length + 1),
    )


def associative_recall(
    *,
    symbols: int = 16,
    item_length: int = 1,
    min_items: int = 2,
    max_items: int = 6,
    train_size: int = 1000,
    validation_size: int = 100,
    test_size: int = 100,
    seed: int = 0,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """NTM associative recall (layout :class:`AssociativeRecallVocab`; the NTM used ``item_length=3``).

    N ~ U{min_items..max_items} distinct items of ``item_length`` symbols, each preceded by SEP; then QUERY,
    a copy of item q (any but the last), DELIM, and the answer: item q+1. The loss covers the answer.
    With items a=4, b=5, c=6 (SEP=1, QUERY=2, DELIM=3) and query b::

        input_ids  [1, 4, 1, 5, 1, 6, 2, 5, 3, 6]
        labels     [-100] * 9 + [6]

    Metadata: ``length``, ``num_items`` (N), ``query_index`` (q, 0-based), ``distance`` (tokens from the end
    of item q+1 in the context to QUERY).
    """
    require_int("item_length", item_length, 1)
    require_range("min_items", min_items, "max_items", max_items, minimum=2)
    vocab = AssociativeRecallVocab(symbols)
    if symbols**item_length < max_items:
        raise ValueError(
            f"symbols={symbols} gives fewer distinct items of length {item_length} than max_items={max_items}"
        )
    if symbols**item_length >= 2**63:
        raise ValueError(f"item_length={item_length} gives more than 2**63 possible items; use shorter items")
    params = {"vocab": vocab, "item_length": item_length, "min_items": min_items, "max_items": max_items}
    splits = standard_splits(params, train_size, validation_size, test_size)
    features = token_features(num_items="int32", query_index="int32", distance="int32")
    return build_splits("associative_recall", _associative_recall_example, splits, features, seed, cache_dir)


# --- multi-hop recall ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultiHopVocab(SymbolVocab):
    """Multi-hop recall: ``pad=0``, ``query=1``, hop tokens ``2 .. max_hops+1`` (k -> k+1), then the symbols;
    ``MultiHopVocab(16, 4).vocab_size == 22``."""

    max_hops: int = 4
    query: ClassVar[int] = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        require_int("max_hops", self.max_hops, 1)

    def hop_token(self, hops: int) -> int:
        """The id that asks for ``hops`` hops (1 <= hops <= max_hops)."""
        return self.query + hops

    @property
    def first_symbol(self) -> int:  # type: ignore[override]
        return self.query + self.max_hops + 1


def _multi_hop_example(
    rng: np.random.Generator, vocab: MultiHopVocab, num_pairs: int, queries: int, hops_asked: int
) -> dict[str, Any]:
    chain = (vocab.first_symbol + rng.permutation(vocab.symbols)[: num_pairs + 1]).tolist()
    order = rng.permutation(num_pairs)
    tokens = [token for i in order for token in (chain[i], chain[i + 1])]
    labels = [IGNORE_INDEX] * len(tokens)
    hops = rng.integers(1, hops_asked + 1, size=queries)
    for k in hops.tolist():
        start = int(rng.integers(0, num_pairs + 1 - k))
        answer = chain[start + k]
        tokens += [vocab.query, chain[start], vocab.hop_token(k), answer]
        labels += [IGNORE_INDEX] * 3 + [answer]
    return token_example(tokens, labels, hops=hops.tolist())


def multi_hop_recall(
    *,
    symbols: int = 16,
    num_pairs: int = 8,
    max_hops: int = 4,
    queries: int = 1,
    hops_asked: int | None = None,
    train_size: int = 1000,
    validation_size: int = 100,
    test_size: int = 100,
    seed: int = 0,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """Follow a chain of stored pairs: the answer is the symbol ``k`` hops from the queried one.

    A chain of ``num_pairs + 1`` distinct symbols is shown as its ``num_pairs`` pairs ``a b`` in random order;
    then ``queries`` questions, each QUERY, a start symbol, the hop token for k ~ U{1..max_hops} (the chain always
    has k more links) and the answer; the loss covers the answers. A memory that stores each pair as a map
    ``a ↦ b`` answers by reading k times, each read's output being the next read word, which is what adaptive
    computation time is for. With the chain 5 → 7 → 6 (QUERY=1, hop k -> k+1) and one question, two hops from 5::

        input_ids  [7, 6, 5, 7, 1, 5, 3, 6]
        labels     [-100] * 7 + [6]

    ``hops_asked`` (default ``max_hops``) bounds the k the questions draw while the vocabulary keeps a hop token for
    every k up to ``max_hops``, so the stages of a curriculum over hop counts share one model.

    Metadata: ``length``, ``hops`` (k of each question, in order).
    """
    require_int("num_pairs", num_pairs, 1)
    require_int("queries", queries, 1)
    vocab = MultiHopVocab(symbols, max_hops)
    hops_asked = require_int("hops_asked", max_hops if hops_asked is None else hops_asked, 1, max_hops)
    if symbols < num_pairs + 1:
        raise ValueError(f"symbols={symbols} is too few for a chain of num_pairs={num_pairs} pairs")
    if max_hops > num_pairs:
        raise ValueError(f"max_hops={max_hops} exceeds num_pairs={num_pairs}")
    params = {"vocab": vocab, "num_pairs": num_pairs, "queries": queries, "hops_asked": hops_asked}
    splits = standard_splits(params, train_size, validation_size, test_size)
    features = token_features(hops=datasets.List(datasets.Value("int32")))
    return build_splits("multi_hop_recall", _multi_hop_example, splits, features, seed, cache_dir)


# --- multi-query associative recall (Zoology) --------------------------------------------------------


def _interleave(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    pairs = np.empty(2 * len(keys), dtype=np.int64)
    pairs[0::2], pairs[1::2] = keys, values
    return pairs


def _mqar_example(
    rng: np.random.Generator,
    vocab: MQARVocab,
    seq_len: int,
    num_kv_pairs: int,
    num_updates: int,
    num_passes: int,
    power_a: float,
    random_non_queries: bool,
    queries_after: int | tuple[int, int],
) -> dict[str, Any]:
    size, half = vocab.vocab_size, vocab.first_value
    if isinstance(queries_after, tuple):  # a range: each example draws its own gap
        queries_after = int(rng.integers(queries_after[0], queries_after[1] + 1))
    keys = rng.choice(np.arange(vocab.first_key, half), size=num_kv_pairs, replace=False)
    values = rng.choice(np.arange(half, size), size=num_kv_pairs, replace=False)
    # Forgetting variant: some keys get a new value (different from their first) later in the context.
    updated = rng.choice(num_kv_pairs, size=num_updates, replace=False)
    new_values = rng.integers(half, size - 1, size=num_updates)
    new_values += new_values >= values[updated]
    latest = values.copy()
    latest[updated] = new_values
    context = np.tile(np.concatenate([_interleave(keys, values), _interleave(keys[updated], new_values)]), num_passes)

    # Query placement: distinct gaps drawn with p(i) ∝ a * i**(a-1), i = 1..space (favours small gaps).
    start = len(context) + queries_after
    space = (seq_len - start) // 2
    weights = power_a * np.arange(1, space + 1) ** (power_a - 1)
    gaps = rng.choice(space, size=num_kv_pairs, replace=False, p=weights / weights.sum())
    queries = np.zeros(seq_len - start + 1, dtype=np.int64)
    queries[2 * gaps] = keys
    sequence = np.concatenate([context, np.zeros(queries_after, dtype=np.int64), queries])[:seq_len]
    # labels[t] is scored at position t-1 (the model shifts), so the value lands on the queried key's position.
    labels = np.full(seq_len, IGNORE_INDEX, dtype=np.int64)
    labels[start + 2 * gaps + 1] = latest
    if random_non_queries:
        filler = sequence == vocab.pad
        sequence[filler] = rng.integers(0, size, size=int(filler.sum()))
    return token_example(sequence, labels, num_pairs=num_kv_pairs, num_updates=num_updates)


def _check_mqar(
    vocab_size: int, seq_len: int, num_kv_pairs: int, num_updates: int, num_passes: int, power_a: float,
    queries_after: int,
) -> None:
    require_int("seq_len", seq_len, 2)
    require_int("num_kv_pairs", num_kv_pairs, 1)
    require_int("num_updates", num_updates, 0)
    require_int("num_passes", num_passes, 1)
    require_int("queries_after", queries_after, 0)
    if seq_len % 2:
        raise ValueError(f"seq_len must be even, got {seq_len}")
    if num_kv_pairs >= vocab_size // 2:
        raise ValueError(
            f"num_kv_pairs ({num_kv_pairs}) must be below vocab_size // 2 ({vocab_size // 2}) distinct keys"
        )
    if num_updates > num_kv_pairs:
        raise ValueError(f"num_updates ({num_updates}) must not exceed num_kv_pairs ({num_kv_pairs})")
    needed = 2 * (num_kv_pairs + num_updates) * num_passes + queries_after + 2 * num_kv_pairs
    if needed > seq_len:
        raise ValueError(
            f"seq_len ({seq_len}) is too short: the context, queries_after and queries need {needed} tokens"
        )
    if not power_a > 0:
        raise ValueError(f"power_a must be positive, got {power_a!r}")


def mqar(
    *,
    vocab_size: int = 8192,
    seq_len: int = 64,
    num_kv_pairs: int = 4,
    num_updates: int = 0,
    num_passes: int = 1,
    power_a: float = 0.01,
    random_non_queries: bool = True,
    queries_after: int = 0,
    train_queries_after: tuple[int, int] | None = None,
    train_size: int = 1000,
    validation_size: int = 100,
    test_size: int = 100,
    seed: int = 0,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """Multi-query associative recall, the Zoology recipe (layout :class:`MQARVocab`), ``seq_len`` tokens.

    D = ``num_kv_pairs`` distinct keys from ``[1, V/2)`` and distinct values from ``[V/2, V)`` form the context
    ``k_1 v_1 .. k_D v_D`` (tiled ``num_passes`` times, the JRT variant). Each key is then queried once in
    the rest of the sequence, at even offsets ``2 * gap`` with distinct power-law gaps (``power_a``); other
    positions hold 0, or random tokens from ``[0, V)`` if ``random_non_queries``. The loss covers only the
    queried values: ``labels[t + 1] = v`` for a key queried at position t, so after the model's shift ``v``
    is predicted *at the key's position* (Zoology's inputs and shifted labels, in the unshifted convention).
    ``input_ids[t + 1]`` keeps the filler, so the answer is never visible. ``queries_after`` > 0 keeps the
    first that many tokens after the context free of queries (filler only): the long-gap variant, where the
    pairs sit in the first segments of a long input and the queries come many segments later.
    ``train_queries_after`` = ``(lo, hi)`` gives each training example its own ``queries_after``, drawn uniformly
    from ``lo..hi`` (gaps of every length in one training set); validation and test keep ``queries_after``.

    ``num_updates`` > 0 is Zoology's forgetting variant (see :func:`forgetting_mqar`): that many keys appear a
    second time, after all first pairs, with a different value, and the target is the latest value.

    With V=16, D=2, seq_len=12, no random filler, keys 2, 5 -> values 9, 12::

        input_ids  [2, 9, 5, 12, 0, 0, 5, 0, 0, 0, 2, 0]
        labels     [-100] * 7 + [12, -100, -100, -100, 9]

    Metadata: ``length``, ``num_pairs`` (D), ``num_updates``.
    """
    vocab = MQARVocab(vocab_size)
    _check_mqar(vocab_size, seq_len, num_kv_pairs, num_updates, num_passes, power_a, queries_after)
    if train_queries_after is not None:
        train_queries_after = _queries_after_range(train_queries_after)
        _check_mqar(vocab_size, seq_len, num_kv_pairs, num_updates, num_passes, power_a, train_queries_after[1])
    params = {
        "vocab": vocab,
        "seq_len": seq_len,
        "num_kv_pairs": num_kv_pairs,
        "num_updates": num_updates,
        "num_passes": num_passes,
        "power_a": float(power_a),
        "random_non_queries": bool(random_non_queries),
        "queries_after": int(queries_after),
    }
    splits = standard_splits(params, train_size, validation_size, test_size)
    if train_queries_after is not None:
        splits["train"] = (splits["train"][0], params | {"queries_after": train_queries_after})
    features = token_features(num_pairs="int32", num_updates="int32")
    return build_splits("mqar", _mqar_example, splits, features, seed, cache_dir)


def _queries_after_range(bounds: Any) -> tuple[int, int]:
    """``train_queries_after`` as ``(lo, hi)``, checked: two integers with 0 <= lo <= hi."""
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        raise ValueError(f"train_queries_after must be a pair [lo, hi], got {bounds!r}")
    require_range("train_queries_after[0]", bounds[0], "train_queries_after[1]", bounds[1], minimum=0)
    return int(bounds[0]), int(bounds[1])


def forgetting_mqar(*, num_updates: int = 2, **kwargs: Any) -> datasets.DatasetDict:
    """Zoology's forgetting MQAR: :func:`mqar` with ``num_updates`` keys re-assigned later in the context.

    Takes :func:`mqar`'s arguments. For each re-assigned key the context holds ``k v`` and later ``k v'``
    (v' != v); its query is labelled with the latest value v'.
    """
    require_int("num_updates", num_updates, 1)
    return mqar(num_updates=num_updates, **kwargs)
