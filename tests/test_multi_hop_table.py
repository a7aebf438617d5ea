"""A trained multi-hop recall run answer by answer and read by read (scripts/multi_hop_table.py)."""

import sys
from pathlib import Path

import numpy as np
import torch

from sdapm_hf.training import ExperimentArguments, example_outcomes, load_run, train

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import multi_hop_table  # noqa: E402


def trained_run(tmp_path, monkeypatch, act_mode: str):
    """A multi-hop recall run of two steps, at most 3 reads per answer, 24 test answers."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    run = tmp_path / "run"
    train(ExperimentArguments(
        task="multi_hop_recall", task_args={"symbols": 8, "num_pairs": 4, "max_hops": 3, "queries": 2,
                                            "train_size": 16, "validation_size": 4, "test_size": 12},
        model={"hidden_size": 8, "controller_size": 8, "memory_slots": 4, "word_size": 8, "chunk_size": None,
               "query_values": True, "act_mode": act_mode, "act_max_steps": 3},
        output_dir=str(run), max_steps=2, batch_size=4, eval_every=100, save_every=100))
    return run


def test_pondernet_run_is_scored_at_every_read_and_its_median_read_is_what_it_answers(tmp_path, monkeypatch):
    run = trained_run(tmp_path, monkeypatch, "pondernet")
    table = multi_hop_table.by_hops(run)
    assert table["answers"] == 24 and set(table["by_step"]) == set(table["by_hops"])
    assert all(len(accuracy) == 3 for accuracy in table["by_step"].values())

    _, model, dataset = load_run(run)
    right = multi_hop_table.answers_by_step(model, dataset["test"])
    out = example_outcomes(model, dataset["test"])
    assert not model.model.memory.ponder.training  # the loop is back in evaluation mode
    assert right.shape == (24, 3)
    steps = out["ponder_steps"].astype(int)
    assert np.array_equal(right[np.arange(24), steps - 1], out["answer_correct"])


def test_act_run_is_scored_as_a_fixed_loop_and_with_another_halting_threshold(tmp_path, monkeypatch):
    run = trained_run(tmp_path, monkeypatch, "act")
    trained = multi_hop_table.by_hops(run)
    assert "settings" not in trained
    assert all(len(accuracy) == 3 for accuracy in trained["as_fixed_loop"].values())
    looser = multi_hop_table.by_hops(run, act_epsilon=0.5)
    assert looser["settings"] == {"act_epsilon": 0.5} and looser["answers"] == trained["answers"] == 24
    assert looser["ponder_mean"] <= trained["ponder_mean"]  # a lower threshold halts no later
    assert looser["as_fixed_loop"] == trained["as_fixed_loop"]  # a fixed loop has no threshold


def test_one_consolidated_slot_returns_each_recorded_output_for_its_input():
    import act_compression_table

    g = torch.Generator().manual_seed(0)
    keys, values = torch.randn(3, 4, 8, generator=g), torch.randn(3, 4, 8, generator=g)
    for q in range(4):
        torch.testing.assert_close(act_compression_table.consolidated_read(keys, values, keys[:, q]), values[:, q],
                                   atol=1e-3, rtol=1e-3)


def test_act_run_on_a_stream_that_repeats_its_questions_answers_the_repeats_in_one_read(tmp_path, monkeypatch):
    import act_compression_table

    run = trained_run(tmp_path, monkeypatch, "act")
    _, _, dataset = load_run(run)
    row, repeated = dataset["test"][0], act_compression_table.repeated_questions(dataset["test"])[0]
    assert repeated["input_ids"] == row["input_ids"] + row["input_ids"][-8:] and repeated["hops"] == row["hops"] * 2
    assert repeated["labels"][-8:] == row["labels"][-8:] and repeated["length"] == row["length"] + 8
    table = act_compression_table.table(run)
    scored = multi_hop_table.by_hops(run)
    assert table["sequences"] == 12 and table["questions_per_sequence"] == 2
    # the first pass is the run's own sequences: the same answers and reads as multi_hop_table
    assert table["first_accuracy"] == scored["accuracy"] and table["first_ponder"] == scored["ponder_mean"]
    for one_read in ("consolidated", "raw_slots", "lookup", "replayed"):
        assert table[f"repeat_{one_read}_ponder"] == 1.0
    for gate in act_compression_table.GATES:  # one read where a key is near, the loop's reads and one more elsewhere
        assert 1.0 <= table[f"repeat_consolidated_gated_{gate:g}_ponder"] <= table["repeat_loop_ponder"] + 1
        assert -1.0 <= table[f"repeat_{one_read}_key_cosine"] <= 1.0 and table[f"repeat_{one_read}_read_error"] >= 0
    assert sum(row["answers"] for row in table["by_hops"].values()) == 24
    assert table["repeat_replayed_read_error"] == 0.0  # the recorded output itself
    assert "settings" not in table
    # the control: the loop on new questions where the repeats stand, scored as the run's own 4-question sequences
    _, model, four = load_run(run, {"queries": 4})
    correct = example_outcomes(model, four["test"], 8)["answer_correct"].reshape(12, 4)
    assert table["fresh_loop_accuracy"] == float(correct[:, 2:].mean())
    assert 1.0 <= table["fresh_loop_ponder"] and "fresh_loop_key_cosine" not in table

    more_slots = act_compression_table.table(run, memory_slots=6)
    assert more_slots["settings"] == {"memory_slots": 6} and more_slots["sequences"] == 12
    one_question = act_compression_table.table(run, queries=1)
    assert one_question["settings"] == {"queries": 1} and one_question["questions_per_sequence"] == 1
    assert sum(row["answers"] for row in one_question["by_hops"].values()) == 12


def test_a_repeat_is_keyed_by_its_first_read_word_s_direction_as_the_memory_reads_it():
    import act_compression_table
    from sdapm_hf.act import PonderStep

    g = torch.Generator().manual_seed(0)
    words, reads = torch.randn(2, 3, 1, 4, generator=g), torch.randn(2, 3, 1, 4, generator=g)
    zeros = torch.zeros(3)
    hook = act_compression_table.Consolidating([0, 1], [2], act_compression_table.READS["raw_slots"])
    for position, scale in enumerate((1.0, 1.0, 5.0)):  # the repeat of question 0, its word 5 times as long
        step = PonderStep(reads=reads[position % 2], state=None, steps=zeros + 2, cost=zeros)
        answered = hook(None, (None, scale * words[position % 2], None, None), step)
    assert answered is not None and torch.equal(answered.steps, torch.ones(3))
    torch.testing.assert_close(answered.reads, reads[0])  # the raw slot's map at its own key: its value
    torch.testing.assert_close(hook.key_cosine[0], torch.ones(3))


def test_a_gated_repeat_takes_one_read_only_near_a_recorded_key_and_else_the_loop_s_answer_and_one_read_more():
    import act_compression_table
    from sdapm_hf.act import PonderStep

    keys = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # two questions' first read words (one head of W = 2)
    loop = PonderStep(reads=torch.tensor([[[7.0, 7.0]], [[8.0, 8.0]]]), state=None, steps=torch.tensor([3, 2]),
                      cost=torch.tensor([0.5, 0.5]))
    hook = act_compression_table.Consolidating([0, 1], [2], act_compression_table.READS["lookup"], gate=0.99)
    for position in (0, 1):  # the first pass, two sequences: each records key 0 → (0, 0), then key 1 → (1, 1)
        first = PonderStep(reads=torch.full((2, 1, 2), float(position)), state=None, steps=torch.ones(2),
                           cost=torch.zeros(2))
        hook(None, (None, keys[position].expand(2, 1, 2), None, None), first)
    words = torch.tensor([[[0.1, 1.0]], [[1.0, 1.0]]])  # row 0 at cosine 0.995 of key 1, row 1 at 0.71 of both
    answered = hook(None, (None, words, None, None), loop)
    torch.testing.assert_close(answered.reads, torch.tensor([[[1.0, 1.0]], [[8.0, 8.0]]]))  # key 1's value; the loop's
    assert answered.steps.tolist() == [1, 3] and answered.cost.tolist() == [0.0, 0.5]


def test_lookup_reads_the_value_of_the_key_nearest_in_cosine():
    import act_compression_table

    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    values = torch.tensor([[[5.0, 5.0], [-5.0, 0.0]], [[1.0, 2.0], [3.0, 4.0]]])
    words = torch.tensor([[0.2, 0.9], [3.0, 0.1]])
    torch.testing.assert_close(act_compression_table.lookup_read(keys, values, words),
                               torch.tensor([[-5.0, 0.0], [1.0, 2.0]]))


def test_raw_slots_read_the_map_of_the_slot_nearest_in_cosine():
    import act_compression_table

    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    values = torch.tensor([[[5.0, 5.0], [-5.0, 0.0]]])
    words = torch.tensor([[0.2, 0.9]])  # nearest the second key: (w − k_2) + v_2
    torch.testing.assert_close(act_compression_table.raw_slots_read(keys, values, words), torch.tensor([[-4.8, -0.1]]))
