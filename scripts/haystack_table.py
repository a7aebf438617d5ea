"""The haystack table: runs of one recipe (one per seed) on longer haystacks than they trained on, beside the frozen
base alone, the base with the whole input in its window, and a retrieval memory that keeps every chunk.

    python scripts/haystack_table.py runs/smollm2_passkey_seed0 runs/smollm2_passkey_seed1 runs/smollm2_passkey_seed2 \\
        --lengths 1 16 64 256 --test-size 32 --baselines --out docs/runs/smollm2_passkey/haystack_eval.json

For every run and length (in segments of the model's ``segment_length``): the test split regenerated at that length
(``sdapm-hf evaluate``'s ``--task-args num_segments=L``, as the run's final evaluation otherwise: its
``eval_model``), the generated answers' exact match with the memory and with the base alone (and the share of wrong
answers that another inserted sentence holds, ``haystack.answers_another``), and the bytes of the memory state per
sequence. Then, once per length, the baselines: the base with the whole input in its window where it
fits (``baselines.window_answers``) and the retrieval memory (``baselines.retrieval_answers``, its bytes growing with
the input). Figures are saved after each one: run again with the same ``--out`` and it measures only what is
missing (an interrupted table resumes). The mean write gates of the first 8 rows, at the inserted sentences and at the essays, say what the
memory chose to keep. Writes every figure to ``--out`` (JSON) and prints the table (markdown).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from sdapm_hf.reporting import code_revision, command_line, device_name, machine, table
from sdapm_hf.training.baselines import retrieval_answers, state_bytes, window_answers
from sdapm_hf.training.arguments import parse_assignment
from sdapm_hf.training.evaluation import load_base, load_run
from sdapm_hf.training.haystack import collate, evaluate_haystack, haystack_states, matches, runner


def split_sizes(length: int, rows: int, split: str) -> dict[str, int]:
    """The task arguments that regenerate ``rows`` haystacks of ``length`` segments in ``split`` and none in the
    other splits."""
    sizes = {"train_size": 0, "validation_size": 0, "test_size": 0}
    sizes[f"{split}_size"] = rows
    return {"num_segments": length, **sizes}


def evaluate_run(run: str, lengths: list[int], test_size: int, done: dict, save, device: str = "cpu",
                 batch_size: int = 16, overrides: dict | None = None, split: str = "test") -> dict:
    """The run's exact-match accuracy with the memory and with the base alone, the rows it answered wrongly and the
    segments each row's sentences went into, its memory's bytes and write gates, per length (those in ``done`` kept;
    ``save`` called after each new one), on ``test_size`` haystacks of ``split`` (the test split, or the validation
    split to choose among runs without looking at the test), computed on ``device`` in batches of ``batch_size``
    rows, with the model config's fields in ``overrides`` changed."""
    for length in lengths:
        if str(length) in done:
            continue
        started = time.process_time()
        _, model, dataset = load_run(run, split_sizes(length, test_size, split), final=True, **(overrides or {}))
        model.to(device)
        haystacks = dataset[split]
        outcomes: list[bool] = []
        with_memory = evaluate_haystack(model, haystacks, batch_size, outcomes=outcomes)
        with model.ablation("base_alone"):
            alone = evaluate_haystack(model, haystacks, batch_size)
        batch = collate([haystacks[i] for i in range(min(8, len(haystacks)))], pad_token_id=0)
        with torch.no_grad():  # a graph of every segment's memory update would hold gigabytes at 256x
            state, gates, _ = runner(model, haystacks).remember(batch["haystack"], batch["inserts"])
        wrong = [i for i, right in enumerate(outcomes) if not right]
        done[str(length)] = {"with_memory": with_memory, "wrong_rows": wrong, "base_alone": alone,
                             "inserted_at": [[int(at) for at in row] for row in haystacks["insert_at"]],
                             "memory_bytes": state_bytes(state),
                             "write_gates": write_gates(gates, batch["inserts"], model.config.segment_length),
                             "cpu_seconds": time.process_time() - started}
        print(run, length, json.dumps(done[str(length)]), flush=True)
        save()
    return done


def write_gates(gates: torch.Tensor, inserts: list, segment_length: int) -> dict[str, float]:
    """The mean write gate (B, n·segment_length) at the inserted sentences' tokens and at the essays' tokens, and
    the share of essay tokens whose gate is above 0.5."""
    inserted = torch.zeros_like(gates, dtype=torch.bool)
    for row, found in enumerate(inserts):
        for at, offset, ids in found:
            start = at * segment_length + offset
            inserted[row, start : start + len(ids)] = True
    return {"sentences": float(gates[inserted].mean()), "essays": float(gates[~inserted].mean()),
            "essays_open": float((gates[~inserted] > 0.5).float().mean())}


def evaluate_baselines(run: str, lengths: list[int], test_size: int, window_rows: int, top_k: int, done: dict,
                       save, device: str = "cpu", window_lengths: list[int] | None = None) -> dict:
    """The base with the whole input in its window (at ``window_lengths``, None: every length; "not measured"
    elsewhere) and the retrieval memory, per length, on the run's test rows (lengths in ``done`` kept; ``save``
    called after each new one)."""
    for length in lengths:
        entry = done.setdefault(str(length), {})
        if {"window", "retrieval"} <= entry.keys():
            continue
        experiment, model, dataset = load_run(run, {"num_segments": length, "train_size": 0, "validation_size": 0,
                                                    "test_size": test_size}, final=True)
        rows = list(dataset["test"])
        states = haystack_states(model.to(device))
        base = load_base(experiment.base_model, "causal_lm").to(device).eval()
        if "window" not in entry and window_lengths is not None and length not in window_lengths:
            entry["window"] = "not measured"
        if "window" not in entry:
            answers = window_answers(base, states.corpus, "test", rows[:window_rows], experiment.task)
            entry["window"] = "does not fit" if answers is None else {
                "accuracy": statistics.mean(matches(r["answer"], a) for r, a in zip(rows, answers)), "rows": len(answers)}
            save()
        if "retrieval" not in entry:
            answers, kept = retrieval_answers(base, states, "test", rows, top_k=top_k)
            entry["retrieval"] = {"accuracy": statistics.mean(matches(r["answer"], a) for r, a in zip(rows, answers)),
                                  "bytes": kept, "top_k": top_k, "rows": len(answers)}
            save()
        print("baselines", length, json.dumps(entry), flush=True)
    return done


def markdown(results: dict, labels: dict[str, str] | None = None, targets: dict[int, float] | None = None,
             kv_bytes_per_token: int | None = None) -> str:
    """The table of ``results`` (this script's JSON): exact-match accuracy per run (named by ``labels``, a run's
    folder → its row name) and length, the mean and worst over the runs, the ``targets`` (length in segments →
    least accuracy at every run) met or missed, the base alone, the base with the whole input in its window (its KV
    cache ``kv_bytes_per_token``) and the retrieval memory, with each one's bytes per sequence ("not measured" at
    the lengths a baseline has no figure for)."""
    lengths, segment = results["lengths"], results["segment_length"]
    runs = results["runs"]
    labels = labels or {run: run for run in runs}
    targets = targets or {}

    def accuracies(key: str, n: int) -> list[float]:
        return [runs[run][str(n)][key]["accuracy"] for run in runs]

    def percent(value: float) -> str:
        return f"{100 * value:.1f}%"

    def memory_bytes(run: str) -> str:
        sizes = {runs[run][str(n)]["memory_bytes"] for n in lengths}
        return f"{sizes.pop():,} at every length" if len(sizes) == 1 else ", ".join(
            f"{runs[run][str(n)]['memory_bytes']:,}" for n in lengths)

    header = ["system", *[f"{n}× ({n * segment:,} tokens)" for n in lengths], "bytes per sequence"]
    rows = []
    for run in runs:
        cells = [percent(runs[run][str(n)]["with_memory"]["accuracy"]) for n in lengths]
        cells = [f"**{c}**" if n in targets and runs[run][str(n)]["with_memory"]["accuracy"] >= targets[n] else c
                 for c, n in zip(cells, lengths)]
        rows.append([f"frozen base + memory, {labels[run]}", *cells, memory_bytes(run)])
    if len(runs) > 1:
        rows.append([f"**mean (worst) of {len(runs)}**",
                     *[f"{percent(statistics.mean(accuracies('with_memory', n)))} "
                       f"({percent(min(accuracies('with_memory', n)))})" for n in lengths], "constant"])
    if targets:
        def verdict(n: int) -> str:
            if n not in targets:
                return ""
            missed = [labels[run] for run in runs if runs[run][str(n)]["with_memory"]["accuracy"] < targets[n]]
            need = f"≥ {100 * targets[n]:g}% at every run"
            return f"{need}: **met**" if not missed else f"{need}: **missed** ({', '.join(missed)})"
        rows.append(["target", *[verdict(n) for n in lengths], ""])
    rows.append(["frozen base alone, segment by segment (the question's segment)",
                 *[percent(statistics.mean(accuracies("base_alone", n))) for n in lengths], "0"])
    baselines = results.get("baselines", {})
    if baselines:
        window = [baselines.get(str(n), {}).get("window", "not measured") for n in lengths]
        kv = f"its KV cache: {kv_bytes_per_token:,} per token" if kv_bytes_per_token else "its KV cache (grows)"
        rows.append(["frozen base, whole input in its window",
                     *[w if isinstance(w, str) else f"{percent(w['accuracy'])} ({w['rows']} rows)" for w in window],
                     kv])
        retrieval = [baselines.get(str(n), {}).get("retrieval") for n in lengths]
        measured = [r for r in retrieval if r is not None]
        rows.append([f"retrieval: every token's state kept, top-{measured[0]['top_k']} chunks",
                     *[percent(r["accuracy"]) if r is not None else "not measured" for r in retrieval],
                     " → ".join(f"{r['bytes']:,}" for r in measured) + " (grows)"])
    return table(header, rows)


def gate_table(results: dict, labels: dict[str, str] | None = None) -> str:
    """Per run and length: accuracy and the mean write gate at the inserted sentences and at the essays."""
    labels = labels or {run: run for run in results["runs"]}
    rows = []
    for run, by_length in results["runs"].items():
        for n in results["lengths"]:
            entry = by_length[str(n)]
            gates = entry["write_gates"]
            rows.append([labels[run], f"{n}×", f"{100 * entry['with_memory']['accuracy']:.1f}%",
                         f"{gates['sentences']:.4f}", f"{gates['essays']:.2e}", f"{gates['sentences'] / gates['essays']:.0f}"])
    header = ["run", "length", f"accuracy ({results['test_size']} haystacks)", "mean gate, inserted sentences",
              "mean gate, essay tokens", "ratio"]
    return table(header, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256], help="haystack lengths in segments")
    parser.add_argument("--test-size", type=int, default=64)
    parser.add_argument("--baselines", action="store_true", help="also the whole-window and retrieval baselines")
    parser.add_argument("--window-rows", type=int, default=32, help="rows the whole-window baseline reads")
    parser.add_argument("--window-lengths", type=int, nargs="+", default=None,
                        help="the lengths at which the whole-window baseline runs (default: every length that fits; "
                        "a long input in a window costs minutes per row on a CPU)")
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--out", required=True, help="JSON file of every figure")
    parser.add_argument("--device", default="cpu", help="where the models compute (cpu, cuda)")
    parser.add_argument("--batch-size", type=int, default=16, help="haystacks the memory reads at once")
    parser.add_argument("--set", nargs="*", default=[], type=parse_assignment, metavar="KEY=VALUE",
                        help="model config fields changed for the evaluation (over the run's eval_model)")
    parser.add_argument("--split", choices=["test", "validation"], default="test",
                        help="the haystacks' split: validation to choose among runs without looking at the test")
    args = parser.parse_args(argv)
    if args.baselines and args.split != "test":
        parser.error("--baselines are measured on the test split: leave out --split or --baselines")
    torch.set_num_threads(1)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}  # what an interrupted run of it already measured
    if results and (results["test_size"], results.get("top_k"), results.get("overrides", {}),
                    results.get("split", "test")) != (args.test_size, args.top_k, dict(args.set), args.split):
        raise ValueError(f"{out} holds figures for another --test-size, --top-k, --set or --split: give another --out")
    results.update(command=command_line(argv or sys.argv[1:], "scripts/haystack_table.py"), code=code_revision(),
                   machine=machine(), device=device_name(args.device), lengths=args.lengths, test_size=args.test_size,
                   top_k=args.top_k, overrides=dict(args.set))
    if args.split != "test":
        results["split"] = args.split
    results.setdefault("runs", {})
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # whole or not at all
        partial = out.with_suffix(".partial")
        partial.write_text(json.dumps(results, indent=2))
        partial.replace(out)

    for run in args.runs:
        evaluate_run(run, args.lengths, args.test_size, results["runs"].setdefault(run, {}), save, args.device,
                     args.batch_size, dict(args.set), args.split)
    _, model, _ = load_run(args.runs[0], {"train_size": 0, "validation_size": 0, "test_size": 1})
    results["segment_length"] = model.config.segment_length
    if args.baselines:
        evaluate_baselines(args.runs[0], args.lengths, args.test_size, args.window_rows, args.top_k,
                           results.setdefault("baselines", {}), save, args.device, args.window_lengths)
    save()
    print(markdown(results))


if __name__ == "__main__":
    main()
