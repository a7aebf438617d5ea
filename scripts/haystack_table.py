"""The haystack table: runs of one recipe (one per seed) on longer haystacks than they trained on, beside the frozen
base alone, the base with the whole input in its window, and a retrieval memory that keeps every chunk.

    python scripts/haystack_table.py runs/smollm2_passkey_seed0 runs/smollm2_passkey_seed1 runs/smollm2_passkey_seed2 \\
        --lengths 16 64 256 --out docs/runs/smollm2_passkey/haystack_eval.json

For every run and length (in segments of the model's ``segment_length``): the test split regenerated at that length
(``sdapm-hf evaluate``'s ``--task-args num_segments=L``, as the run's final evaluation otherwise: its
``eval_model``), the generated answers' exact match with the memory and with the base alone, and the bytes of the
memory state per sequence. Then, once per length, the baselines: the base with the whole input in its window where it
fits (``baselines.window_answers``) and the retrieval memory (``baselines.retrieval_answers``, its bytes growing with
the input). Writes every figure to ``--out`` (JSON) and prints the table (markdown).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from sdapm_hf.reporting import code_revision, command_line, machine, table
from sdapm_hf.training.baselines import retrieval_answers, state_bytes, window_answers
from sdapm_hf.training.evaluation import base_path, load_run
from sdapm_hf.training.haystack import collate, evaluate_haystack, haystack_states, matches, runner


def evaluate_run(run: str, lengths: list[int], test_size: int) -> dict:
    """The run's exact-match accuracy with the memory and with the base alone, and its memory's bytes, per length."""
    out = {}
    for length in lengths:
        started = time.process_time()
        _, model, dataset = load_run(run, {"num_segments": length, "train_size": 0, "validation_size": 0,
                                           "test_size": test_size}, final=True)
        test = dataset["test"]
        with_memory = evaluate_haystack(model, test)
        with model.ablation("base_alone"):
            alone = evaluate_haystack(model, test)
        batch = collate([test[0]], pad_token_id=0)
        state, _, _ = runner(model, test).remember(batch["haystack"], batch["inserts"])
        out[str(length)] = {"with_memory": with_memory, "base_alone": alone, "memory_bytes": state_bytes(state),
                            "cpu_seconds": time.process_time() - started}
        print(run, length, json.dumps(out[str(length)]), flush=True)
    return out


def evaluate_baselines(run: str, lengths: list[int], test_size: int, window_rows: int, top_k: int) -> dict:
    """The base with the whole input in its window and the retrieval memory, per length, on the run's test rows."""
    out = {}
    for length in lengths:
        experiment, model, dataset = load_run(run, {"num_segments": length, "train_size": 0, "validation_size": 0,
                                                    "test_size": test_size}, final=True)
        rows = list(dataset["test"])
        states = haystack_states(model)
        base = AutoModelForCausalLM.from_pretrained(base_path(experiment.base_model)).eval()
        entry = {}
        answers = window_answers(base, states.corpus, "test", rows[:window_rows], experiment.task)
        if answers is not None:
            entry["window"] = {"accuracy": statistics.mean(matches(r["answer"], a) for r, a in zip(rows, answers)),
                               "rows": len(answers)}
        answers, kept = retrieval_answers(base, states, "test", rows, top_k=top_k)
        entry["retrieval"] = {"accuracy": statistics.mean(matches(r["answer"], a) for r, a in zip(rows, answers)),
                              "bytes": kept, "top_k": top_k, "rows": len(answers)}
        out[str(length)] = entry
        print("baselines", length, json.dumps(entry), flush=True)
    return out


def markdown(results: dict) -> str:
    """Accuracy (mean and worst over the runs) and bytes per sequence, per length and system."""
    lengths = results["lengths"]
    runs = list(results["runs"].values())
    segment = results["segment_length"]

    def over_runs(key: str, length: int) -> str:
        values = [run[str(length)][key]["accuracy"] for run in runs]
        return f"{100 * statistics.mean(values):.1f}% (worst {100 * min(values):.1f}%)"

    header = ["system", *[f"{n}× ({n * segment:,} tokens)" for n in lengths], "bytes per sequence"]
    memory_bytes = ", ".join(f"{runs[0][str(n)]['memory_bytes']:,}" for n in lengths)
    rows = [["frozen base + memory", *[over_runs("with_memory", n) for n in lengths], f"{memory_bytes} (constant)"],
            ["frozen base alone (question's segment)", *[over_runs("base_alone", n) for n in lengths], "0"]]
    baselines = results.get("baselines", {})
    if baselines:
        rows.append(["frozen base, whole input in its window",
                     *[f"{100 * baselines[str(n)]['window']['accuracy']:.1f}% ({baselines[str(n)]['window']['rows']} rows)"
                       if "window" in baselines[str(n)] else "does not fit" for n in lengths], "the KV cache"])
        rows.append([f"retrieval, top-{baselines[str(lengths[0])]['retrieval']['top_k']} chunks",
                     *[f"{100 * baselines[str(n)]['retrieval']['accuracy']:.1f}%" for n in lengths],
                     ", ".join(f"{baselines[str(n)]['retrieval']['bytes']:,}" for n in lengths) + " (grows)"])
    return table(header, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256], help="haystack lengths in segments")
    parser.add_argument("--test-size", type=int, default=64)
    parser.add_argument("--baselines", action="store_true", help="also the whole-window and retrieval baselines")
    parser.add_argument("--window-rows", type=int, default=32, help="rows the whole-window baseline reads")
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--out", required=True, help="JSON file of every figure")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {"command": command_line(argv or __import__("sys").argv[1:], "scripts/haystack_table.py"),
               "code": code_revision(), "machine": machine(), "lengths": args.lengths, "test_size": args.test_size,
               "runs": {run: evaluate_run(run, args.lengths, args.test_size) for run in args.runs}}
    _, model, _ = load_run(args.runs[0], {"train_size": 0, "validation_size": 0, "test_size": 1})
    results["segment_length"] = model.config.segment_length
    if args.baselines:
        results["baselines"] = evaluate_baselines(args.runs[0], args.lengths, args.test_size, args.window_rows,
                                                  args.top_k)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
