"""The tables of docs/results.md, generated from the committed runs under docs/runs/.

    python scripts/results_table.py --write          # regenerate every generated section of docs/results.md
    python scripts/results_table.py --check          # exit 1 if the page differs from what docs/runs/ gives

A committed run is a folder with the run's ``experiment.json`` (the arguments it ran with), ``metrics.json`` (what
training reported at its end) and ``log.jsonl``; an evaluation over lengths is the JSON of
``scripts/haystack_table.py``. Each section of ``SECTIONS`` names its committed files and the config its runs came
from; the page holds it between ``<!-- results:NAME:start -->`` and ``<!-- results:NAME:end -->``. A run's command is
its config plus every field where the run differs from the config, as ``sdapm-hf train`` takes them.

    python scripts/results_table.py runs/copy_beyond_capacity runs/copy_beyond_capacity_lstm \\
        --metrics test_len32/token_accuracy test_len64/token_accuracy

prints the rows of any run folders (the config named by the folder's name), and

    python scripts/results_table.py runs/copy_beyond_capacity --stability test_len64/token_accuracy

prints instead, from ``log.jsonl``, the training loss per quarter of the run (median and largest), the largest
stored value norm and read norm seen, and the evaluations over time.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from act_compression_table import GATES  # noqa: E402
from capacity_curve import markdown as capacity_markdown  # noqa: E402
from haystack_table import gate_table, markdown  # noqa: E402

from sdapm_hf import DNCSDAPMConfig  # noqa: E402
from sdapm_hf.access import MemoryAccess  # noqa: E402
from sdapm_hf.reporting import REPO, replace_section, table  # noqa: E402
from sdapm_hf.training.arguments import MAPPING_FIELDS, load_experiment  # noqa: E402

PAGE = REPO / "docs" / "results.md"
RUNS = REPO / "docs" / "runs"
MARK = "results:{}:{}"


def committed_runs(folder: str) -> list[Path]:
    """The committed run folders ``docs/runs/FOLDER/*/`` (each with its ``experiment.json``), in name order."""
    return sorted(p.parent for p in (RUNS / folder).glob("*/experiment.json"))


def command(config: str, experiment: dict) -> str:
    """``sdapm-hf train CONFIG`` with the options that make ``config`` (a YAML under the repository) into the run
    ``experiment`` (its ``experiment.json``)."""
    planned = asdict(load_experiment(REPO / config))
    words = ["sdapm-hf", "train", config]
    for name, value in experiment.items():
        if name in MAPPING_FIELDS:
            option = {"model": "--set", "task_args": "--task-args"}.get(name, f"--{name}")
            changed = [f"{k}={json.dumps(v)}" for k, v in value.items() if planned[name].get(k) != v]
            if changed:
                words += [option, *changed]
        elif planned[name] != value:
            words += [f"--{name}", str(value)]
    return shlex.join(words)


def run_rows(config: str, runs: list[Path], metrics: list[str]) -> list[list[str]]:
    """Per committed run folder: its command, seed, steps, wall and CPU minutes of training and ``metrics``."""
    rows = []
    for run in runs:
        experiment = json.loads((run / "experiment.json").read_text())
        results = json.loads((run / "metrics.json").read_text())
        rows.append([f"`{command(config, experiment)}`", str(experiment["seed"]), str(results["steps"]),
                     f"{results['train_seconds'] / 60:.1f}", f"{results['train_cpu_seconds'] / 60:.1f}",
                     *[f"{results[m]:.4f}" if m in results else "–" for m in metrics]])
    return rows


def runs_table(folders: list[str], metrics: list[str]) -> str:
    """The table of the committed runs ``docs/runs/FOLDER/*/`` of each folder, whose config is
    ``run_config(folder)``."""
    rows = []
    for folder in folders:
        runs = committed_runs(folder)
        rows += run_rows(run_config(folder), runs, metrics)
    return table(["command", "seed", "steps", "wall min", "CPU min", *metrics], rows)


def seed_labels(folder: str) -> dict[str, str]:
    """The runs' output folders as evaluations name them → "seed S", from the committed runs of ``folder``."""
    labels = {}
    for path in (RUNS / folder).glob("*/experiment.json"):
        experiment = json.loads(path.read_text())
        labels[experiment["output_dir"]] = f"seed {experiment['seed']}"
    return labels


def kv_bytes_per_token(folder: str) -> int:
    """Bytes per token of the base's float32 KV cache (keys and values of every layer), from the runs' base."""
    from transformers import AutoConfig

    from sdapm_hf.training.evaluation import base_path

    experiment = json.loads(next((RUNS / folder).glob("*/experiment.json")).read_text())
    config = AutoConfig.from_pretrained(base_path(experiment["base_model"]))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4


def haystack_section(folder: str, evaluations: list[str], targets: dict[int, float]) -> Callable[[], str]:
    """The haystack table of the evaluations (``scripts/haystack_table.py`` JSONs of the same lengths, each of some
    of the runs; the baselines from the first) in ``docs/runs/FOLDER/``, and the commands that made them."""
    def render() -> str:
        parts = [json.loads((RUNS / folder / name).read_text()) for name in evaluations]
        labels = seed_labels(folder)
        runs = sorted(((run, by_length) for part in parts for run, by_length in part["runs"].items()),
                      key=lambda item: labels[item[0]])
        results = {**parts[0], "runs": dict(runs)}
        body = markdown(results, labels, targets, kv_bytes_per_token(folder))
        made = "\n".join(f"`{part['command']}` ({part['code']}; {part['machine']})" for part in parts)
        if "baselines_from" in results:  # the same test rows measured with another evaluation
            made += f"\nThe baselines' figures: {results['baselines_from']}."
        return f"{body}\n\n{made}"
    return render


# The passkey checkpoints chosen per seed on validation haystacks: (stage, merge rule) → the folder of the stage's runs
# and, per seed, its test evaluation under docs/runs/ (``scripts/haystack_table.py`` JSONs).
PASSKEY_CANDIDATES: dict[tuple[int, str], tuple[str, dict[int, str]]] = {
    (2, "usage"): ("smollm2_passkey_stage2", {0: "haystack_eval_seed0.json", 1: "haystack_eval.json",
                                              2: "haystack_eval_seed2.json"}),
    (2, "relative_usage"): ("smollm2_passkey_stage2",
                            {seed: f"haystack_eval_relative_usage_seed{seed}.json" for seed in range(3)}),
    (3, "usage"): ("smollm2_passkey_stage3", {seed: f"haystack_eval_seed{seed}.json" for seed in range(3)}),
    (3, "relative_usage"): ("smollm2_passkey_stage3",
                            {seed: f"haystack_eval_relative_usage_seed{seed}.json" for seed in range(3)}),
}
SELECTION = "smollm2_passkey_selection"
DEFAULT_MERGE_RULE = "usage"


def validation_score(evaluation: dict) -> float:
    """The mean exact match of a validation evaluation (one run) over its lengths."""
    (by_length,) = evaluation["runs"].values()
    return sum(by_length[str(n)]["with_memory"]["accuracy"] for n in evaluation["lengths"]) / len(evaluation["lengths"])


def choose(scores: dict[tuple[int, str], float]) -> tuple[int, str]:
    """The candidate (stage, merge rule) of the best validation score; ties go to the later stage (it trained on
    the longest inputs), then to the default merge rule."""
    return max(scores, key=lambda c: (scores[c], c[0], c[1] == DEFAULT_MERGE_RULE))


def passkey_selection_section(lengths: list[int], targets: dict[int, float]) -> Callable[[], str]:
    """Per seed, every candidate's validation and test accuracy and the one ``choose`` takes; then the test table
    of the chosen checkpoints (the baselines from the first passkey evaluation, on the same test haystacks)."""
    def render() -> str:
        rows, chosen, checked_lengths = [], {}, []
        for seed in range(3):
            validation = {c: json.loads((RUNS / SELECTION / f"validation_stage{c[0]}_{c[1]}_seed{seed}.json")
                                        .read_text()) for c in PASSKEY_CANDIDATES}
            scores = {c: validation_score(v) for c, v in validation.items()}
            best = choose(scores)
            for candidate, (folder, tests) in PASSKEY_CANDIDATES.items():
                test = json.loads((RUNS / folder / tests[seed]).read_text())
                (by_length,) = test["runs"].values()
                (checked,) = validation[candidate]["runs"].values()
                checked_lengths = validation[candidate]["lengths"]
                rows.append([f"seed {seed}", f"stage {candidate[0]}", f"`{candidate[1]}`",
                             *[f"{100 * checked[str(n)]['with_memory']['accuracy']:.1f}%" for n in checked_lengths],
                             *[f"{100 * by_length[str(n)]['with_memory']['accuracy']:.1f}%" for n in lengths],
                             "**chosen**" if candidate == best else ""])
                if candidate == best:
                    chosen[next(iter(test["runs"]))] = (f"seed {seed} (stage {best[0]}, `{best[1]}`)", by_length)
        first = json.loads((RUNS / "smollm2_passkey" / "haystack_eval.json").read_text())
        header = ["seed", "checkpoint", "merge rule", *[f"validation {n}×" for n in checked_lengths],
                  *[f"test {n}×" for n in lengths], ""]
        results = {"lengths": lengths, "segment_length": first["segment_length"], "baselines": first["baselines"],
                   "runs": {run: by_length for run, (_, by_length) in chosen.items()}}
        labels = {run: label for run, (label, _) in chosen.items()}
        body = markdown(results, labels, targets, kv_bytes_per_token("smollm2_passkey"))
        made = "\n".join(f"`{json.loads(path.read_text())['command']}`"
                         for path in sorted((RUNS / SELECTION).glob("validation_*.json")))
        return (f"{table(header, rows)}\n\n{made}\n\nThe chosen checkpoints on the test haystacks:\n\n{body}\n\n"
                "The baselines' figures: docs/runs/smollm2_passkey/haystack_eval.json, measured there on the same "
                "test haystacks (seed 0's, the first run's).")
    return render


def haystack_variants_section(folder: str, variants: dict[str, str], length: int) -> Callable[[], str]:
    """Per seed, the accuracy at ``length`` of each evaluation variant (label → a ``haystack_table.py`` JSON name
    with ``{seed}``, the first the reference), the share of answers that are another inserted sentence's, and how
    many of its wrong rows the reference got wrong too."""
    def render() -> str:
        rows, commands = [], []
        for seed in range(3):
            entries = {}
            for label, name in variants.items():
                evaluation = json.loads((RUNS / folder / name.format(seed=seed)).read_text())
                (by_length,) = evaluation["runs"].values()
                entries[label] = by_length[str(length)]
                commands.append(f"`{evaluation['command']}`")
            reference = set(next(iter(entries.values()))["wrong_rows"])
            for label, entry in entries.items():
                wrong = set(entry["wrong_rows"])
                rows.append([f"seed {seed}", label, f"{100 * entry['with_memory']['accuracy']:.1f}%",
                             f"{100 * entry['with_memory']['another_sentence']:.1f}%",
                             f"{len(wrong & reference)} of {len(wrong)}"])
        header = ["run", "evaluated with", f"accuracy at {length}×", "answers that are another needle's value",
                  f"wrong rows also wrong with {next(iter(variants))}"]
        return f"{table(header, rows)}\n\n" + "\n".join(commands)
    return render


def gate_section(folder: str, evaluation: str) -> Callable[[], str]:
    def render() -> str:
        results = json.loads((RUNS / folder / evaluation).read_text())
        return f"{gate_table(results, seed_labels(folder))}\n\n`{results['command']}` ({results['code']})"
    return render


def capacity_section(evaluation: str) -> Callable[[], str]:
    def render() -> str:
        results = json.loads((RUNS / evaluation).read_text())
        return f"{capacity_markdown(results)}\n\n`{results['command']}` ({results['code']}; {results['machine']})"
    return render


def evaluations_section(folder: str, splits: list[str], ablation: str, metric: str) -> Callable[[], str]:
    """Every evaluation of the committed run ``docs/runs/FOLDER/seed0`` over training: the training loss of the
    steps since the one before (median, largest), and ``metric`` on each split as the model is and under
    ``ablation``."""
    def render() -> str:
        records = [json.loads(line) for line in (RUNS / folder / "seed0" / "log.jsonl").read_text().splitlines()]
        losses = {r["step"]: r["loss"] for r in records if "loss" in r}
        rows, before = [], 0
        for record in records:
            if f"{splits[0]}/{metric}" not in record:
                continue
            step = record["step"]
            recent = sorted(loss for s, loss in losses.items() if before < s <= step)
            before = step
            cells = [f"{record[f'{split}/{metric}']:.4f} / {record[f'{split}/{ablation}/{metric}']:.4f}"
                     for split in splits]
            rows.append([str(step), f"{recent[len(recent) // 2]:.4f}", f"{recent[-1]:.4f}", *cells])
        header = ["step", "training loss (median)", "(largest)",
                  *[f"{split} {metric}: as is / {ablation}" for split in splits]]
        return table(header, rows)
    return render


def mean_worst(values: list[float] | tuple[float, ...]) -> str:
    """"mean (worst)" of the seeds' values, four decimals."""
    return f"{sum(values) / len(values):.4f} ({min(values):.4f})"


def memory_floats(experiment: dict) -> int:
    """Floats of one sequence's memory state (the memory's own tensors; not the controller's or the clock's) for a
    run's model settings."""
    state = MemoryAccess(DNCSDAPMConfig(**experiment["model"])).init_state(1, torch.float32, torch.device("cpu"))
    return 0 if state.memory is None else sum(t.numel() for t in state.memory.as_dict().values())


def seeds_section(rows: dict[str, tuple[str, str]], metrics: list[str]) -> Callable[[], str]:
    """One row per folder of committed runs (``rows``: folder → (label, budget)): the memory's floats per
    sequence, the seeds, steps and CPU minutes (mean), and each metric's mean and worst over the seeds."""
    def render() -> str:
        out = []
        for folder, (label, budget) in rows.items():
            runs = sorted((RUNS / folder).glob("*/experiment.json"))
            experiments = [json.loads(path.read_text()) for path in runs]
            results = [json.loads((path.parent / "metrics.json").read_text()) for path in runs]
            cells = []
            for metric in metrics:
                values = [r[metric] for r in results if metric in r]
                cells.append(mean_worst(values) if values else "–")
            out.append([label, f"{memory_floats(experiments[0]):,}", budget,
                        ", ".join(str(e["seed"]) for e in experiments),
                        f"{sum(r['steps'] for r in results) / len(results):.0f}",
                        f"{sum(r['train_cpu_seconds'] for r in results) / len(results) / 60:.1f}", *cells])
        return table(["memory", "memory floats / sequence", "budget", "seeds", "steps", "CPU min",
                      *[f"{m}: mean (worst)" for m in metrics]], out)
    return render


def runs_section(folders: list[str], metrics: list[str]) -> Callable[[], str]:
    return lambda: runs_table(folders, metrics)


STABILITY_HEADER = ["quarter of training", "steps", "median loss", "largest loss", "largest ‖value‖", "largest ‖read‖"]


def stability(run: Path, metric: str) -> tuple[list[list[str]], str]:
    """From a run's ``log.jsonl``: per quarter of training the steps, the median and largest training loss, the
    largest stored value norm and read norm; and ``metric`` at every evaluation, as a line."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    last = train[-1]["step"]
    rows = []
    for q in range(4):
        part = [r for r in train if q * last / 4 < r["step"] <= (q + 1) * last / 4]
        losses = sorted(r["loss"] for r in part)
        rows.append([str(q + 1), f"{part[0]['step']}–{part[-1]['step']}", f"{losses[len(losses) // 2]:.4f}",
                     f"{losses[-1]:.4f}", f"{max(r.get('memory_value_max', 0) for r in part):.3f}",
                     f"{max(r.get('read_max', 0) for r in part):.3f}"])
    evaluations = ", ".join(f"{r['step']}: {r[metric]:.4f}" for r in records if metric in r)
    return rows, f"{metric} by step: {evaluations}"


def stability_section(folder: str, metric: str) -> Callable[[], str]:
    """``stability`` of every committed run of ``folder``, one table with the seed in front."""
    def render() -> str:
        rows, lines = [], []
        for path in sorted((RUNS / folder).glob("*/experiment.json")):
            seed = str(json.loads(path.read_text())["seed"])
            quarters, line = stability(path.parent, metric)
            rows += [[seed, *row] for row in quarters]
            lines.append(f"seed {seed}, {line}")
        return table(["seed", *STABILITY_HEADER], rows) + "\n\n" + "\n".join(lines)
    return render


def lengths_section(folder: str, evaluation: str) -> Callable[[], str]:
    """The committed runs of ``folder`` (copy) evaluated at longer lengths (``evaluation``: the JSON that
    ``sdapm-hf evaluate`` printed, in each run's folder): per length the writes of a sequence (2L + 1 positions)
    against what the memory stores exactly (slots × (max_rank + 1)), and the accuracies' mean and worst."""
    def render() -> str:
        runs = sorted(p.parent for p in (RUNS / folder).glob(f"*/{evaluation}"))
        model = json.loads((runs[0] / "experiment.json").read_text())["model"]
        exact = model["memory_slots"] * (model["max_rank"] + 1)
        results = [json.loads((run / evaluation).read_text()) for run in runs]
        rows = []
        for split in results[0]:
            length = int(split.removeprefix("test_len"))
            cells = []
            for metric in ("token_accuracy", "sequence_accuracy"):
                values = [r[split][metric] for r in results]
                cells.append(mean_worst(values))
            rows.append([str(length), str(2 * length + 1), f"{(2 * length + 1) / exact:.2f}", *cells])
        seeds = ", ".join(str(json.loads((run / "experiment.json").read_text())["seed"]) for run in runs)
        return (f"Exact storage: {model['memory_slots']} slots × (rank {model['max_rank']} + 1) = {exact} pairs; "
                f"seeds {seeds}.\n\n" + table(["length L", "writes (2L + 1)", "writes / exact storage",
                                                "token accuracy: mean (worst)", "sequence accuracy: mean (worst)"],
                                               rows))
    return render


def past_storage_section(folder: str, evaluation: str) -> Callable[[], str]:
    """The committed runs of ``folder`` (associative recall) with filler between their pairs and queries
    (``evaluation``: the JSON of ``scripts/recall_past_storage.py`` in each run's folder): per filler, writes before
    the queries and consolidation, the accuracies' mean and worst over the seeds."""
    def render() -> str:
        runs = sorted(p.parent for p in (RUNS / folder).glob(f"*/{evaluation}"))
        results = [json.loads((run / evaluation).read_text()) for run in runs]
        exact = results[0]["exact_storage"]
        rows = []
        for i, case in enumerate(results[0]["results"]):
            cells = []
            for metric in ("token_accuracy", "sequence_accuracy"):
                values = [r["results"][i][metric] for r in results]
                cells.append(mean_worst(values))
            rows.append([case["filler"], str(case["writes_before_queries"]), f"{case['ratio']:g}",
                         case["consolidation"], *cells])
        seeds = ", ".join(str(json.loads((run / "experiment.json").read_text())["seed"]) for run in runs)
        return (f"Writes counted in units of {exact} (the SDAPM's exact storage); "
                f"{results[0]['pairs']} pairs queried; seeds {seeds}.\n\n"
                + table(["filler", "writes before the queries", "/ exact storage", "consolidation",
                         "token accuracy: mean (worst)", "sequence accuracy: mean (worst)"], rows))
    return render


def ablations_section(folder: str, trained: str, evaluations: list[str], metric: str) -> Callable[[], str]:
    """The committed runs of ``folder`` evaluated on another task (``evaluations``: the JSONs that
    ``sdapm-hf evaluate --task-args … --base-alone`` / ``--zero-memory`` printed, in each run's folder): per seed
    the training run's test ``trained`` metric, the model on the evaluation's task (with the sequence accuracy for
    ``token_accuracy``; neither where the evaluations ran the trained task itself, no ``--task-args``) and each
    ablation; a last row with the mean and the worst seed."""
    def render() -> str:
        runs = committed_runs(folder)
        loaded = [[json.loads((run / name).read_text()) for name in evaluations] for run in runs]
        first = loaded[0]
        task = " ".join(f"{k}={v}" for k, v in first[0].get("task_args", {}).items()
                        if not k.endswith("_size"))
        columns: list[list[float]] = []
        for run, results in zip(runs, loaded):
            memory = results[0]["with_memory"]["test"]
            cells = [json.loads((run / "metrics.json").read_text())[trained]]
            if task:
                cells.append(memory[metric])
                if metric == "token_accuracy":
                    cells.append(memory["sequence_accuracy"])
            columns.append(cells + [r["ablated"]["test"][metric] for r in results])
        header = ["seed", f"trained task: {trained}"]
        if task:
            header.append(f"{task}: {metric}")
            if metric == "token_accuracy":
                header.append("sequences")
        header += [f"{r['label']}: {metric}" for r in first]
        rows = [[str(json.loads((run / "experiment.json").read_text())["seed"]), *(f"{v:.4f}" for v in cells)]
                for run, cells in zip(runs, columns)]
        rows.append(["**mean (worst)**", *(mean_worst(c) for c in zip(*columns))])
        return table(header, rows)
    return render


def stages_section(first: str, second: str, evaluation: str, metric: str) -> Callable[[], str]:
    """A curriculum of two stages, seed by seed: the committed runs of ``first`` (test ``metric`` on their own task
    and on the second stage's: ``evaluation``, the JSON of ``sdapm-hf evaluate --task-args …`` in each run) and of
    ``second`` (initialised from them: test ``metric``, and each ablation evaluated, ``base_alone.json`` /
    ``zero_memory.json``); a last row with the mean and the worst seed."""
    def render() -> str:
        firsts, seconds = committed_runs(first), committed_runs(second)
        ablations = [name for name in ("base_alone.json", "zero_memory.json") if (seconds[0] / name).exists()]
        columns, seeds, labels = [], [], []
        for one, two in zip(firsts, seconds, strict=True):
            seed = json.loads((one / "experiment.json").read_text())["seed"]
            if json.loads((two / "experiment.json").read_text())["seed"] != seed:
                raise ValueError(f"{one} and {two} are runs of different seeds")
            seeds.append(str(seed))
            ablated = [json.loads((two / name).read_text()) for name in ablations]
            labels = [result["label"] for result in ablated]
            columns.append([json.loads((one / "metrics.json").read_text())[f"test/{metric}"],
                            json.loads((one / evaluation).read_text())["with_memory"]["test"][metric],
                            json.loads((two / "metrics.json").read_text())[f"test/{metric}"],
                            *[result["ablated"]["test"][metric] for result in ablated]])
        header = ["seed", f"stage 1, its own task: {metric}", f"stage 1, stage 2's task: {metric}",
                  f"stage 2: {metric}", *[f"stage 2, {label}: {metric}" for label in labels]]
        rows = [[seed, *(f"{v:.4f}" for v in cells)] for seed, cells in zip(seeds, columns)]
        rows.append(["**mean (worst)**", *(mean_worst(c) for c in zip(*columns))])
        return table(header, rows)
    return render


def variants_section(folder: str, rows: dict[str, str], metric: str) -> Callable[[], str]:
    """The committed runs of ``folder`` on variants of their task (``rows``: label → the JSON that
    ``sdapm-hf evaluate`` printed, in each run's folder): ``metric`` of the model with its memory per seed, and the
    mean and the worst seed."""
    def render() -> str:
        runs = committed_runs(folder)
        seeds = [json.loads((run / "experiment.json").read_text())["seed"] for run in runs]
        out = []
        for label, name in rows.items():
            values = []
            for run in runs:
                result = json.loads((run / name).read_text())
                values.append(result.get("with_memory", result)["test"][metric])
            out.append([label, *(f"{v:.4f}" for v in values), mean_worst(values)])
        return table(["variant", *(f"seed {s}" for s in seeds), "mean (worst)"], out)
    return render


class Experiment(NamedTuple):
    """A row of ``summary_section``: the committed runs of ``folder``, measured on their own test split
    (``evaluation`` None: ``metrics.json``) or by the ``sdapm-hf evaluate`` JSON ``evaluation`` in each run's
    folder; ``target`` None where the experiment has none."""

    label: str
    folder: str
    evaluation: str | None
    metric: str
    chance: str
    target: float | None


def scores_with_base_alone(run: Path, evaluation: str | None, metric: str) -> tuple[float, float | None]:
    """A committed run's test ``metric`` with its memory and, where measured, for its base alone: the evaluation's
    own ablation, else the run's ``base_alone.json`` (``sdapm-hf evaluate RUN --splits test --base-alone``), else
    what training measured (``test/base_alone/…``)."""
    if evaluation is not None:
        result = json.loads((run / evaluation).read_text())
        if result.get("ablation") == "base_alone":
            return result["with_memory"]["test"][metric], result["ablated"]["test"][metric]
        return result.get("with_memory", result)["test"][metric], None
    metrics = json.loads((run / "metrics.json").read_text())
    if (run / "base_alone.json").exists():
        return metrics[f"test/{metric}"], json.loads((run / "base_alone.json").read_text())["ablated"]["test"][metric]
    return metrics[f"test/{metric}"], metrics.get(f"test/base_alone/{metric}")


def percent(value: float) -> str:
    """A fraction as a percentage, two decimals."""
    return f"{100 * value:.2f}%"


def summary_section(experiments: list[Experiment]) -> Callable[[], str]:
    """One row per experiment: the seeds, the test metric with the memory (mean and worst over the seeds), the base
    alone (its range over the seeds) and the target, met at every seed or missed (at which seeds)."""
    def render() -> str:
        rows = []
        for experiment in experiments:
            runs = committed_runs(experiment.folder)
            seeds = [json.loads((run / "experiment.json").read_text())["seed"] for run in runs]
            values, bases = zip(*(scores_with_base_alone(run, experiment.evaluation, experiment.metric)
                                  for run in runs))
            memory = percent(values[0]) if len(values) == 1 else (
                f"{percent(sum(values) / len(values))} mean, {percent(min(values))} worst")
            known = [b for b in bases if b is not None]
            base = "—" if not known else (
                percent(known[0]) if len(known) == 1 else f"{percent(min(known))}–{percent(max(known))}")
            if experiment.target is None:
                verdict = "—"
            else:
                short = [f"seed {s}" for s, v in zip(seeds, values) if v < experiment.target]
                verdict = f"≥ {100 * experiment.target:g}%: " + (
                    f"**missed** ({', '.join(short)})" if short else "**met**")
            rows.append([experiment.label, ", ".join(map(str, seeds)), memory, base, experiment.chance, verdict])
        return table(["experiment", "seeds", "with memory", "base alone", "chance", "target"], rows)
    return render


def across_seeds(columns: list[list[dict]], accuracy: str, steps: str, unit: str) -> list[str]:
    """Per cell of the seeds' ``columns`` (one list of cells per seed, each cell a dict holding ``accuracy`` and
    ``steps``): "mean (worst); mean steps ``unit``" over the seeds."""
    summary = []
    for cell in zip(*columns):
        values = [c[accuracy] for c in cell]
        mean_steps = sum(c[steps] for c in cell) / len(cell)
        summary.append(f"{sum(values) / len(values):.2%} ({min(values):.2%}); {mean_steps:.2f} {unit}")
    return summary


def hops_section(systems: dict[str, str], evaluation: str) -> Callable[[], str]:
    """``hops_rows_section`` of each folder → label of ``systems``, all scored by ``evaluation``."""
    return hops_rows_section([(folder, label, evaluation) for folder, label in systems.items()])


def hops_rows_section(systems: list[tuple[str, str, str]]) -> Callable[[], str]:
    """Multi-hop recall answer by answer (per system: a folder, its label, and the JSON of
    ``scripts/multi_hop_table.py`` in each committed run of the folder that scores it): per seed and hop count the
    accuracy and the mean inner read steps, then the mean and the worst seed of each system."""
    def render() -> str:
        out, hops = [], None
        for folder, label, evaluation in systems:
            runs = committed_runs(folder)
            results = [json.loads((run / evaluation).read_text()) for run in runs]
            hops = hops or list(results[0]["by_hops"])
            columns = []
            for run, result in zip(runs, results):
                seed = json.loads((run / "experiment.json").read_text())["seed"]
                cells = [result["by_hops"][k] for k in hops] + [result]
                columns.append(cells)
                out.append([label, str(seed), *(f"{c['accuracy']:.2%} ({c['ponder_mean']:.2f})" for c in cells)])
            if len(columns) > 1:  # one seed: no mean to give
                out.append([f"**{label}: mean (worst)**", "", *across_seeds(columns, "accuracy", "ponder_mean", "steps")])
        header = [f"{k} hop{'s' if k != '1' else ''}: accuracy (mean inner steps)" for k in hops]
        return table(["system", "seed", *header, "all answers"], out)
    return render


COMPRESSION_PASSES = (("first", "first questions, the loop"), ("repeat_loop", "repeats, the loop"),
                      ("fresh_loop", "control: new questions where the repeats stand, the loop"),
                      ("repeat_consolidated", "repeats, one read of one consolidated slot"),
                      ("repeat_raw_slots", "repeats, one read of the pairs as raw slots"),
                      ("repeat_lookup", "repeats, one read of the pairs as a table (the nearest key's value)"),
                      ("repeat_replayed", "repeats, the first occurrence's output replayed (a bound, not a read)"),
                      *((f"repeat_consolidated_gated_{gate:g}", f"repeats, the consolidated slot where a recorded key"
                         f" is at cosine ≥ {gate:g}, else the loop (its reads + 1)") for gate in GATES))
COMPRESSION_READS = ("repeat_consolidated", "repeat_raw_slots", "repeat_lookup")  # with key cosine and read error


def compression_section(folder: str, evaluation: str, per_seed: bool = True) -> Callable[[], str]:
    """ACT's reads compressed into one read (``scripts/act_compression_table.py``'s JSON ``evaluation`` in each
    committed run of ``folder``): per seed and pass the accuracy and mean reads of every hop count (for the one-read
    passes also the repeats' key cosine and relative read error; without ``per_seed``, none of these rows), then the
    mean and the worst seed of each pass."""
    def render() -> str:
        out, columns = [], {name: [] for name, _ in COMPRESSION_PASSES}
        runs = committed_runs(folder)
        results = [json.loads((run / evaluation).read_text()) for run in runs]
        hops = list(results[0]["by_hops"])
        for run, result in zip(runs, results):
            seed = json.loads((run / "experiment.json").read_text())["seed"]
            cells = [result["by_hops"][k] for k in hops] + [result]
            for name, label in COMPRESSION_PASSES:
                columns[name].append(cells)
                if not per_seed:
                    continue
                out.append([label, str(seed), *(f"{c[name + '_accuracy']:.2%} ({c[name + '_ponder']:.2f})" for c in cells)])
                if name in COMPRESSION_READS:
                    out.append([f"{label}: key cosine; relative read error", str(seed),
                                *(f"{c[name + '_key_cosine']:.3f}; {c[name + '_read_error']:.3f}" for c in cells)])
        for name, label in COMPRESSION_PASSES:
            out.append([f"**{label}: mean (worst)**", "",
                        *across_seeds(columns[name], f"{name}_accuracy", f"{name}_ponder", "reads")])
        header = [f"{k} hop{'s' if k != '1' else ''}: accuracy (mean reads)" for k in hops]
        return table(["pass", "seed", *header, "all answers"], out)
    return render


def by_step_section(systems: dict[str, str], evaluation: str, key: str = "by_step") -> Callable[[], str]:
    """Multi-hop recall read by read (``evaluation``'s ``key`` in each committed run of each folder; ``systems``:
    folder → label): per seed and hop count the accuracy had every answer been read at inner step n
    (``by_step``, PonderNet) or with the loop fixed at n reads (``as_fixed_loop``, ACT)."""
    def render() -> str:
        out, steps = [], 0
        for folder, label in systems.items():
            for run in committed_runs(folder):
                seed = json.loads((run / "experiment.json").read_text())["seed"]
                for hops, accuracy in json.loads((run / evaluation).read_text())[key].items():
                    steps = max(steps, len(accuracy))
                    out.append([label, str(seed), hops, *(f"{a:.1%}" for a in accuracy)])
        out = [row + [""] * (3 + steps - len(row)) for row in out]  # systems with fewer reads leave cells empty
        return table(["system", "seed", "hops asked", *(f"read {n}" for n in range(1, steps + 1))], out)
    return render


# The variants of the short fact-recall config: each overrides one setting of it on the command line.
SHORT_VARIANTS = {f"plugin_minilm_fact_recall_short_{name}": "configs/plugin_minilm_fact_recall_short.yaml"
                  for name in ("slots_12", "consolidation_off", "window_4", "members_4")}
# The committed runs' folders under docs/runs/ whose config is not configs/FOLDER.yaml.
OTHER_CONFIGS = {"copy_beyond_capacity_dnc_equal_memory_clock": "configs/copy_beyond_capacity_dnc_equal_memory.yaml",
                 "multi_hop_pondernet_curriculum_weak_prior": "configs/multi_hop_pondernet_curriculum.yaml",
                 "multi_hop_pondernet_curriculum_prior_half": "configs/multi_hop_pondernet_curriculum.yaml",
                 "multi_hop_pondernet_curriculum_longer_twice": "configs/multi_hop_pondernet_curriculum_longer.yaml",
                 "multi_hop_fixed_curriculum_longer_twice": "configs/multi_hop_fixed_curriculum_longer.yaml",
                 "multi_hop_act_curriculum_longer_twice": "configs/multi_hop_act_curriculum_longer.yaml",
                 "multi_hop_fixed_three_reads_one_hop": "configs/multi_hop_fixed_one_hop.yaml",
                 "multi_hop_fixed_three_reads_curriculum": "configs/multi_hop_fixed_curriculum.yaml",
                 "multi_hop_fixed_three_reads_curriculum_longer": "configs/multi_hop_fixed_curriculum_longer.yaml",
                 "multi_hop_fixed_three_reads_curriculum_longer_twice": "configs/multi_hop_fixed_curriculum_longer.yaml",
                 "multi_hop_act_six_reads_curriculum_fresh_halting":
                     "configs/multi_hop_act_curriculum_fresh_halting.yaml",
                 "multi_hop_act_six_reads_curriculum_longer": "configs/multi_hop_act_curriculum_longer.yaml",
                 "multi_hop_act_six_reads_curriculum_longer_twice": "configs/multi_hop_act_curriculum_longer.yaml",
                 "multi_hop_act_epsilon_curriculum_fresh_halting": "configs/multi_hop_act_curriculum_fresh_halting.yaml",
                 "multi_hop_act_epsilon_curriculum_longer": "configs/multi_hop_act_curriculum_longer.yaml",
                 "multi_hop_act_epsilon_curriculum_longer_twice": "configs/multi_hop_act_curriculum_longer.yaml",
                 "multi_hop_act_epsilon_curriculum_longer_thrice": "configs/multi_hop_act_curriculum_longer.yaml",
                 "multi_hop_fixed_curriculum_longer_thrice": "configs/multi_hop_fixed_curriculum_longer.yaml",
                 "multi_hop_act_epsilon_curriculum_longer_four_times": "configs/multi_hop_act_curriculum_longer.yaml",
                 "multi_hop_fixed_curriculum_longer_four_times": "configs/multi_hop_fixed_curriculum_longer.yaml",
                 "multi_hop_act_epsilon_curriculum_longer_five_times": "configs/multi_hop_act_curriculum_longer.yaml",
                 "multi_hop_act_epsilon_curriculum_anneal": "configs/multi_hop_act_curriculum_anneal.yaml",
                 "smollm2_passkey_stage4_relative_usage": "configs/smollm2_passkey_stage4.yaml",
                 "smollm2_passkey_stage4_eight_slots": "configs/smollm2_passkey_stage4.yaml",
                 "smollm2_multi_needle_robust_longer_twice": "configs/smollm2_multi_needle_robust_longer.yaml",
                 "plugin_minilm_fact_recall_soft_reads_stage1": "configs/plugin_minilm_fact_recall_soft_reads.yaml",
                 "plugin_minilm_fact_recall_write_cost_window_1": "configs/plugin_minilm_fact_recall_write_cost.yaml",
                 "plugin_minilm_fact_recall_write_cost_all_members":
                     "configs/plugin_minilm_fact_recall_write_cost.yaml",
                 **SHORT_VARIANTS}


def run_config(folder: str) -> str:
    """The config every committed run of ``docs/runs/FOLDER/`` came from."""
    return OTHER_CONFIGS.get(folder, f"configs/{folder}.yaml")


COPY = {  # folder: (the memory, the budget)
    "copy_beyond_capacity": ("SDAPM, 8 slots of rank 16, clock keys", "1,000 steps"),
    "copy_beyond_capacity_content_keys": ("SDAPM, 8 slots of rank 16, learned content keys (clock off)",
                                          "1,000 steps"),
    "copy_beyond_capacity_dnc_equal_memory": ("DNC, 88 slots, temporal links, content keys", "equal steps"),
    "copy_beyond_capacity_dnc_equal_cpu": ("DNC, 88 slots, temporal links, content keys", "equal CPU time"),
    "copy_beyond_capacity_dnc_equal_memory_clock": ("DNC, 88 slots, temporal links, clock keys", "equal steps"),
    "copy_beyond_capacity_lstm": ("none (the LSTM controller alone)", "equal steps"),
    "copy_beyond_capacity_lstm_equal_cpu": ("none (the LSTM controller alone)", "equal CPU time"),
}
COPY_METRICS = ["test_len32/token_accuracy", "test_len64/token_accuracy", "test_len64/sequence_accuracy",
                "test_len64/zero_memory/token_accuracy"]
ASSOCIATIVE_RECALL = {  # folder: (the memory, the budget)
    "associative_recall": ("SDAPM, 8 slots of rank 16, content keys", "1,800 steps"),
    "associative_recall_dnc_equal_memory": ("DNC, 88 slots, temporal links, content keys", "equal steps"),
    "associative_recall_dnc_equal_cpu": ("DNC, 88 slots, temporal links, content keys", "equal CPU time"),
    "associative_recall_lstm": ("none (the LSTM controller alone)", "equal steps"),
    "associative_recall_lstm_equal_cpu": ("none (the LSTM controller alone)", "equal CPU time"),
}
TEST_METRICS = ["test/token_accuracy", "test/sequence_accuracy", "validation/token_accuracy"]
VALIDATION = ["validation/accuracy", "validation/token_accuracy", "validation/loss"]
MQAR_DISTRACTORS_METRICS = ["test/token_accuracy", "test/sequence_accuracy", "test/base_alone/token_accuracy"]
MULTI_HOP_FRESH_HALTING_RUNS = [
    "multi_hop_act_curriculum_fresh_halting", "multi_hop_act_curriculum_longer", "multi_hop_act_curriculum_longer_twice",
    "multi_hop_fixed_three_reads_one_hop", "multi_hop_fixed_three_reads_curriculum",
    "multi_hop_fixed_three_reads_curriculum_longer", "multi_hop_fixed_three_reads_curriculum_longer_twice"]
MULTI_HOP_SIX_READS_RUNS = ["multi_hop_act_six_reads_curriculum_fresh_halting",
                            "multi_hop_act_six_reads_curriculum_longer",
                            "multi_hop_act_six_reads_curriculum_longer_twice"]
MULTI_HOP_EPSILON_RUNS = ["multi_hop_act_epsilon_curriculum_fresh_halting", "multi_hop_act_epsilon_curriculum_longer",
                          "multi_hop_act_epsilon_curriculum_longer_twice", "multi_hop_act_epsilon_curriculum_longer_thrice",
                          "multi_hop_fixed_curriculum_longer_thrice", "multi_hop_act_epsilon_curriculum_longer_four_times",
                          "multi_hop_fixed_curriculum_longer_four_times",
                          "multi_hop_act_epsilon_curriculum_longer_five_times",
                          "multi_hop_act_epsilon_curriculum_anneal", "multi_hop_fixed_curriculum_anneal"]
# ACT's halting thresholds 1 − ε tried at evaluation on the validation split (the trained runs used 0.01).
ACT_EPSILONS = ["0.01", "0.1", "0.2", "0.3", "0.5"]
# The MiniLM write-cost recipe's variants (folder plugin_minilm_fact_recall_write_cost_NAME): what each changes.
MINILM_WRITE_COST_VARIANTS = {
    "train_1000": "with 1,000 training documents (`plugin_minilm_fact_recall_write_cost_train_1000.yaml`, below)",
    "plain": "without `chunk_members: 4` and `interface_window: 3` (`plugin_minilm_fact_recall_write_cost_plain.yaml`, "
             "below)",
    "window_1": "without `interface_window: 3` (below)",
    "all_members": "without `chunk_members: 4` (below)",
    "window_8": "without `chunk_members: 4`, with `interface_window: 8` "
                "(`plugin_minilm_fact_recall_write_cost_window_8.yaml`, below)",
    "window_8_members_4": "with `interface_window: 8` (`plugin_minilm_fact_recall_write_cost_window_8_members_4.yaml`, "
                          "below)",
    "window_8_train_8000": "without `chunk_members: 4`, with `interface_window: 8`, on 8,000 training documents "
                           "(`plugin_minilm_fact_recall_write_cost_window_8_train_8000.yaml`, below)",
}
PLUGGED_EXPERIMENTS = [
    Experiment("frozen all-MiniLM-L6-v2, fact recall over 8 × 128 tokens (8 classes)", "plugin_minilm_fact_recall",
               None, "accuracy", "12.5%", 0.9),
    Experiment("the same with `chunk_members: 4`, `interface_window: 3` (below)", "plugin_minilm_fact_recall_selective",
               None, "accuracy", "12.5%", 0.9),
    Experiment("trained on 3 segments with soft first reads (`read_strength_bias_init: -3`), measured on 8 (below)",
               "plugin_minilm_fact_recall_soft_reads", "segments_8.json", "accuracy", "12.5%", 0.9),
    Experiment("the same config made again (commit 62aa828, another machine), measured on 8 (below)",
               "plugin_minilm_fact_recall_soft_reads_stage1", "segments_8.json", "accuracy", "12.5%", 0.9),
    Experiment("those runs trained 600 steps more on the 8-segment documents "
               "(`plugin_minilm_fact_recall_soft_reads_stage2.yaml`, below)",
               "plugin_minilm_fact_recall_soft_reads_stage2", None, "accuracy", "12.5%", 0.9),
    Experiment("the first stage alone with 4,000 training documents instead of 1,000 "
               "(`plugin_minilm_fact_recall_soft_reads_train_4000.yaml`), measured on 8 (below)",
               "plugin_minilm_fact_recall_soft_reads_train_4000", "segments_8.json", "accuracy", "12.5%", 0.9),
    Experiment("those 4,000 documents with a write cost (`plugin_minilm_fact_recall_write_cost.yaml`), measured on 8 "
               "(below)", "plugin_minilm_fact_recall_write_cost", "segments_8.json", "accuracy", "12.5%", 0.9),
    *(Experiment(f"the write-cost recipe {what}", f"plugin_minilm_fact_recall_write_cost_{name}", "segments_8.json",
                 "accuracy", "12.5%", 0.9) for name, what in MINILM_WRITE_COST_VARIANTS.items()),
    Experiment("those 8,000-document runs trained 600 steps more on the 8-segment documents "
               "(`plugin_minilm_fact_recall_write_cost_window_8_stage2.yaml`, below): no setting fitted to the template",
               "plugin_minilm_fact_recall_write_cost_window_8_stage2", None, "accuracy", "12.5%", 0.9),
    Experiment("frozen tiny random Llama (64-token window), MQAR over 512 tokens", "plugin_llama_mqar", None,
               "token_accuracy", "0.20%", 0.9),
    Experiment("the one-segment version (64 tokens), 5× longer (`plugin_llama_mqar_short_long.yaml`)",
               "plugin_llama_mqar_short_long", None, "token_accuracy", "1.6%", None),
    Experiment("that model on 512 tokens (vocabulary 128), one repeated filler token, queries 6+ segments after the "
               "pairs (below)", "plugin_llama_mqar_short_long", "long_512.json", "token_accuracy", "1.6%", 0.9),
    Experiment("the same, random filler tokens (below)", "plugin_llama_mqar_short_long",
               "long_512_random_filler.json", "token_accuracy", "1.6%", 0.9),
    Experiment("the one-segment task trained among random distractors, 512 tokens with random filler (below)",
               "plugin_llama_mqar_short_long_distractors", "long_512_random_filler.json", "token_accuracy", "1.6%",
               0.9),
    Experiment("the defaults' tiny Llama (32-token window), MQAR among random distractors trained on the task itself: "
               "256 tokens, queries 6.5 windows after the pairs, predictive writes (below)", "plugin_mqar_distractors",
               None, "token_accuracy", "1.6%", 0.9),
    Experiment("those models with the queries 30.5 windows after the pairs (1,024 tokens)", "plugin_mqar_distractors",
               "length_1024.json", "token_accuracy", "1.6%", 0.9),
    Experiment("those models trained ten more CPU minutes on 1,024 tokens (`plugin_mqar_distractors_stage2.yaml`), "
               "queries 30.5 windows after the pairs (below)", "plugin_mqar_distractors_stage2", None,
               "token_accuracy", "1.6%", 0.9),
]
DEMO_EXPERIMENTS = [
    Experiment("`demo_minilm`: one fact per document", "demo_minilm", None, "accuracy", "12.5%", None),
    Experiment("`demo_minilm_two_facts`: two facts per document, one asked", "demo_minilm_two_facts", None, "accuracy",
               "12.5%", None),
]


def seeds_haystack_sections(folder: str, targets: dict[int, float]) -> dict[str, Callable[[], str]]:
    """The two sections of a haystack recipe run at seeds 0, 1, 2: ``FOLDER_runs`` (its runs) and ``FOLDER`` (their
    test haystacks, ``haystack_eval_seedS.json``)."""
    return {f"{folder}_runs": runs_section([folder], VALIDATION),
            folder: haystack_section(folder, [f"haystack_eval_seed{seed}.json" for seed in range(3)], targets)}


SECTIONS: dict[str, Callable[[], str]] = {
    "smollm2_passkey_runs": runs_section(["smollm2_passkey"], VALIDATION),
    "smollm2_passkey": haystack_section("smollm2_passkey", ["haystack_eval.json"], {64: 0.95, 256: 0.90}),
    "smollm2_passkey_gates": gate_section("smollm2_passkey", "write_gates_64.json"),
    "smollm2_passkey_stage2_runs": runs_section(["smollm2_passkey_stage2"], VALIDATION),
    "smollm2_passkey_stage2": haystack_section(
        "smollm2_passkey_stage2", ["haystack_eval.json", "haystack_eval_seed0.json", "haystack_eval_seed2.json"],
        {64: 0.95, 256: 0.90}),
    "smollm2_passkey_stage2_relative_usage": haystack_section(
        "smollm2_passkey_stage2", [f"haystack_eval_relative_usage_seed{seed}.json" for seed in range(3)],
        {64: 0.95, 256: 0.90}),
    **seeds_haystack_sections("smollm2_passkey_stage3", {64: 0.95, 256: 0.90}),
    "smollm2_passkey_selection": passkey_selection_section([1, 16, 64, 256], {64: 0.95, 256: 0.90}),
    "smollm2_passkey_stage4_runs": runs_section(["smollm2_passkey_stage4"], VALIDATION),
    "smollm2_passkey_stage4": haystack_section(
        "smollm2_passkey_stage4", ["haystack_eval_seed1.json"], {}),
    "multi_hop_act_compression": compression_section("multi_hop_act_epsilon_curriculum_anneal", "compression.json"),
    "multi_hop_act_compression_slots24": compression_section("multi_hop_act_epsilon_curriculum_anneal",
                                                             "compression_slots24.json", per_seed=False),
    "multi_hop_act_compression_queries2": compression_section("multi_hop_act_epsilon_curriculum_anneal",
                                                              "compression_queries2.json", per_seed=False),
    "smollm2_passkey_stage4_at_relative_usage": haystack_section(
        "smollm2_passkey_stage4", ["haystack_eval_relative_usage_seed1.json"], {}),
    "smollm2_passkey_stage4_relative_usage_runs": runs_section(["smollm2_passkey_stage4_relative_usage"], VALIDATION),
    "smollm2_passkey_stage4_relative_usage": haystack_section(
        "smollm2_passkey_stage4_relative_usage", ["haystack_eval_seed1.json"], {}),
    "smollm2_passkey_stage4_eight_slots_runs": runs_section(["smollm2_passkey_stage4_eight_slots"], VALIDATION),
    "smollm2_passkey_stage4_eight_slots": haystack_section(
        "smollm2_passkey_stage4_eight_slots", ["haystack_eval_seed1.json"], {}),
    "smollm2_passkey_stage4_drawn_slots_runs": runs_section(["smollm2_passkey_stage4_drawn_slots"], VALIDATION),
    "smollm2_passkey_stage4_drawn_slots": haystack_section(
        "smollm2_passkey_stage4_drawn_slots", ["haystack_eval_seed1.json"], {}),
    "smollm2_passkey_stage3_two_slots": haystack_section(
        "smollm2_passkey_stage3", [f"haystack_eval_two_slots_seed{seed}.json" for seed in range(3)], {64: 0.95}),
    "smollm2_passkey_one_segment_runs": runs_section(["smollm2_passkey_one_segment"], VALIDATION),
    **seeds_haystack_sections("smollm2_passkey_after_one_segment", {64: 0.95, 256: 0.90}),
    **seeds_haystack_sections("smollm2_passkey_one_segment_eight_segments", {64: 0.95, 256: 0.90}),
    "smollm2_multi_needle_runs": runs_section(["smollm2_multi_needle"], VALIDATION),
    "smollm2_multi_needle": haystack_section(
        "smollm2_multi_needle", ["haystack_eval.json", "haystack_eval_seed1.json", "haystack_eval_seed2.json"],
        {64: 0.90}),
    "smollm2_multi_needle_write_warmup_runs": runs_section(["smollm2_multi_needle_write_warmup"], VALIDATION),
    "smollm2_multi_needle_write_warmup": haystack_section(
        "smollm2_multi_needle_write_warmup",
        ["haystack_eval_seed0.json", "haystack_eval_seed1.json", "haystack_eval_seed2.json"], {64: 0.90}),
    "smollm2_multi_needle_read_layer_15_runs": runs_section(["smollm2_multi_needle_read_layer_15"], VALIDATION),
    "smollm2_multi_needle_read_layer_15": haystack_section(
        "smollm2_multi_needle_read_layer_15", ["haystack_eval_seed0.json", "haystack_eval_seed1.json"], {64: 0.90}),
    **seeds_haystack_sections("smollm2_multi_needle_robust", {64: 0.90}),
    **seeds_haystack_sections("smollm2_multi_needle_robust_longer", {64: 0.90}),
    **seeds_haystack_sections("smollm2_multi_needle_robust_longer_twice", {64: 0.90}),
    "gemma3_passkey_median_scale": haystack_section("gemma3_passkey_median_scale", ["haystack_eval_seed0.json"], {}),
    "gemma3_passkey_median_scale_longer": haystack_section(
        "gemma3_passkey_median_scale_longer", ["haystack_eval_seed0.json"], {}),
    **seeds_haystack_sections("smollm2_multi_needle_window_8", {64: 0.90}),
    **seeds_haystack_sections("smollm2_multi_needle_window_8_longer", {64: 0.90}),
    "smollm2_multi_needle_confusions": haystack_variants_section("smollm2_multi_needle_robust_longer_twice", {
        "32 slots (as trained and measured)": "haystack_eval_seed{seed}.json",
        "128 slots (no merge at 4×)": "haystack_eval_128_slots_seed{seed}.json",
        "32 slots, each read from its best slot alone (`read_top_k=1`)": "haystack_eval_top_1_seed{seed}.json"}, 4),
    "gemma3_passkey_runs": runs_section(["gemma3_passkey", "gemma3_passkey_robust", "gemma3_passkey_median_scale",
                                         "gemma3_passkey_median_scale_longer"], VALIDATION),
    "gemma3_passkey_one_segment_runs": runs_section(["gemma3_passkey_one_segment"], VALIDATION),
    **seeds_haystack_sections("gemma3_passkey_after_one_segment", {64: 0.95}),
    **seeds_haystack_sections("gemma3_passkey_eight_segments", {64: 0.95, 256: 0.90}),
    "smollm2_qa1_runs": runs_section(["smollm2_qa1"], VALIDATION),
    "smollm2_qa1": haystack_section("smollm2_qa1", ["haystack_eval.json", "haystack_eval_seed1.json", "haystack_eval_seed2.json"], {}),
    **seeds_haystack_sections("smollm2_qa1_window_8", {}),
    **seeds_haystack_sections("smollm2_qa1_window_8_400_steps", {}),
    "smollm2_qa1_window_8_one_move_runs": runs_section(["smollm2_qa1_window_8_one_move"], VALIDATION),
    **seeds_haystack_sections("smollm2_qa1_window_8_after_one_move", {}),
    "smollm2_qa1_window_8_after_one_move_longer_runs": runs_section(
        ["smollm2_qa1_window_8_after_one_move_longer"], VALIDATION),
    "smollm2_qa1_window_8_after_one_move_longer": haystack_section(
        "smollm2_qa1_window_8_after_one_move_longer", ["haystack_eval_seed2.json"], {}),
    "smollm2_qa1_window_8_one_move_one_segment_runs": runs_section(
        ["smollm2_qa1_window_8_one_move_one_segment"], VALIDATION),
    **seeds_haystack_sections("smollm2_qa1_window_8_after_one_move_one_segment", {}),
    **seeds_haystack_sections("smollm2_qa1_window_8_one_segment_eight_segments", {}),
    **seeds_haystack_sections("smollm2_qa1_window_8_one_segment_eight_segments_longer", {}),
    **{f"{folder}_validation": haystack_section(folder, [f"validation_seed{seed}.json" for seed in range(3)], {})
       for folder in ["smollm2_qa1_window_8_one_segment_eight_segments",
                      "smollm2_qa1_window_8_one_segment_eight_segments_longer"]},
    "capacity_curve": capacity_section("capacity/curve.json"),
    "copy_beyond_capacity": seeds_section(COPY, COPY_METRICS),
    "copy_beyond_capacity_runs": runs_section(list(COPY), COPY_METRICS),
    "copy_beyond_capacity_lengths": lengths_section("copy_beyond_capacity", "lengths.json"),
    "copy_beyond_capacity_content_keys_lengths": lengths_section("copy_beyond_capacity_content_keys", "lengths.json"),
    "copy_beyond_capacity_stability": stability_section("copy_beyond_capacity", "test_len64/token_accuracy"),
    "associative_recall": seeds_section(ASSOCIATIVE_RECALL, TEST_METRICS),
    "associative_recall_runs": runs_section(list(ASSOCIATIVE_RECALL), TEST_METRICS),
    "associative_recall_past_storage": past_storage_section("associative_recall", "past_storage.json"),
    "associative_recall_dnc_past_storage": past_storage_section("associative_recall_dnc_equal_cpu",
                                                                "past_storage.json"),
    "plugin_llama_mqar_short_long_runs": runs_section(["plugin_llama_mqar_short_long"], TEST_METRICS),
    "plugin_llama_mqar_short_long": ablations_section(
        "plugin_llama_mqar_short_long", "test/token_accuracy", ["long_512.json", "long_512_zero_memory.json"],
        "token_accuracy"),
    "plugin_llama_mqar_short_long_variants": variants_section("plugin_llama_mqar_short_long", {
        "512 tokens, one repeated filler token (as trained)": "long_512.json",
        "512 tokens, random filler tokens from the whole vocabulary": "long_512_random_filler.json",
        "1,024 tokens, repeated filler, queries in the last segment": "length_1024.json",
        "2,048 tokens, the same": "length_2048.json",
        "2,048 tokens, `--set consolidation=similar`": "length_2048_similar.json",
    }, "token_accuracy"),
    "plugin_llama_mqar_short_long_distractors_runs": runs_section(["plugin_llama_mqar_short_long_distractors"],
                                                                  TEST_METRICS),
    "plugin_llama_mqar_short_long_distractors": variants_section("plugin_llama_mqar_short_long_distractors", {
        "512 tokens, random filler tokens from the whole vocabulary": "long_512_random_filler.json",
        "512 tokens, one repeated filler token": "long_512.json",
    }, "token_accuracy"),
    "plugin_mqar_distractors_runs": runs_section(["plugin_mqar_distractors"], MQAR_DISTRACTORS_METRICS),
    "plugin_mqar_distractors": variants_section("plugin_mqar_distractors", {
        "256 tokens (8 windows), queries 208 tokens (6.5 windows) after the pairs, as trained": "length_256.json",
        "512 tokens (16 windows), queries 464 tokens (14.5 windows) after the pairs": "length_512.json",
        "1,024 tokens (32 windows), queries 976 tokens (30.5 windows) after the pairs": "length_1024.json",
    }, "token_accuracy"),
    "plugin_mqar_distractors_stage2_runs": runs_section(["plugin_mqar_distractors_stage2"], MQAR_DISTRACTORS_METRICS),
    "plugin_mqar_distractors_stages": seeds_section({
        "plugin_mqar_distractors": ("SDAPM plugged, 8 slots, defaults; 256 tokens, queries 6.5 windows later",
                                    "600 CPU s"),
        "plugin_mqar_distractors_stage2": ("the same, then 1,024 tokens, queries 30.5 windows later",
                                           "600 + 600 CPU s"),
    }, MQAR_DISTRACTORS_METRICS),
    "plugin_first_runs": runs_section(["plugin_minilm_fact_recall", "plugin_llama_mqar"],
                                      ["test/accuracy", "test/token_accuracy", "validation/accuracy",
                                       "validation/token_accuracy"]),
    "plugin_summary": summary_section(PLUGGED_EXPERIMENTS),
    "plugin_minilm_fact_recall_selective_runs": runs_section(["plugin_minilm_fact_recall_selective"],
                                                             ["test/accuracy", "validation/accuracy"]),
    "plugin_minilm_fact_recall_selective": ablations_section(
        "plugin_minilm_fact_recall_selective", "test/accuracy", ["base_alone.json", "zero_memory.json"], "accuracy"),
    "plugin_minilm_fact_recall_short_variants": runs_section(
        ["plugin_minilm_fact_recall_short", *SHORT_VARIANTS, "plugin_minilm_fact_recall_short_selective"],
        ["test/accuracy", "validation/accuracy"]),
    "plugin_llama_mqar_short_runs": runs_section(["plugin_llama_mqar_short", "plugin_llama_mqar_short_embeddings",
                                                  "mqar_short_chunked"], TEST_METRICS),
    "demo_minilm_runs": summary_section(DEMO_EXPERIMENTS),
    "plugin_minilm_fact_recall_soft_reads_runs": runs_section(["plugin_minilm_fact_recall_soft_reads"],
                                                              ["test/accuracy", "validation/accuracy"]),
    "plugin_minilm_fact_recall_soft_reads": ablations_section(
        "plugin_minilm_fact_recall_soft_reads", "test/accuracy", ["segments_8.json"], "accuracy"),
    "plugin_minilm_fact_recall_soft_reads_stage2_runs": runs_section(
        ["plugin_minilm_fact_recall_soft_reads_stage1", "plugin_minilm_fact_recall_soft_reads_stage2"],
        ["test/accuracy", "validation/accuracy"]),
    "plugin_minilm_fact_recall_soft_reads_train_4000_runs": runs_section(
        ["plugin_minilm_fact_recall_soft_reads_train_4000"], ["test/accuracy", "validation/accuracy"]),
    "plugin_minilm_fact_recall_soft_reads_stage2": stages_section(
        "plugin_minilm_fact_recall_soft_reads_stage1", "plugin_minilm_fact_recall_soft_reads_stage2", "segments_8.json",
        "accuracy"),
    "plugin_minilm_fact_recall_soft_reads_train_4000": ablations_section(
        "plugin_minilm_fact_recall_soft_reads_train_4000", "test/accuracy", ["segments_8.json"], "accuracy"),
    "plugin_minilm_fact_recall_write_cost_runs": runs_section(
        ["plugin_minilm_fact_recall_write_cost"], ["test/accuracy", "validation/accuracy"]),
    "plugin_minilm_fact_recall_write_cost": ablations_section(
        "plugin_minilm_fact_recall_write_cost", "test/accuracy", ["segments_8.json", "segments_8_zero_memory.json"],
        "accuracy"),
    "plugin_minilm_fact_recall_write_cost_window_8_stage2_runs": runs_section(
        ["plugin_minilm_fact_recall_write_cost_window_8_stage2"], ["test/accuracy", "validation/accuracy"]),
    "plugin_minilm_fact_recall_write_cost_window_8_stage2": stages_section(
        "plugin_minilm_fact_recall_write_cost_window_8_train_8000", "plugin_minilm_fact_recall_write_cost_window_8_stage2",
        "segments_8.json", "accuracy"),
    "plugin_minilm_fact_recall_write_cost_variants_runs": runs_section(
        [f"plugin_minilm_fact_recall_write_cost_{name}" for name in MINILM_WRITE_COST_VARIANTS],
        ["test/accuracy", "validation/accuracy"]),
    "multi_hop_runs": runs_section(["multi_hop_act", "multi_hop_act_long", "multi_hop_fixed"], TEST_METRICS),
    "multi_hop": hops_section({"multi_hop_act": "ACT (at most 5 reads), 1,500 steps",
                               "multi_hop_act_long": "ACT (at most 5 reads), 3,000 steps",
                               "multi_hop_fixed": "fixed loop, 3 reads, 1,500 steps"}, "by_hops.json"),
    "multi_hop_pondernet_runs": runs_section(["multi_hop_act_one_hop", "multi_hop_act_curriculum",
                                              "multi_hop_pondernet", "multi_hop_pondernet_one_hop",
                                              "multi_hop_pondernet_curriculum_weak_prior",
                                              "multi_hop_pondernet_curriculum"], TEST_METRICS),
    "multi_hop_pondernet": hops_section({
        "multi_hop_act_curriculum": "ACT, 500 steps of one hop, then 1,500 of 1 to 4",
        "multi_hop_pondernet": "PonderNet (at most 5 reads), 1,500 steps",
        "multi_hop_pondernet_curriculum_weak_prior": "PonderNet, 500 steps of one hop, then 1,500 of 1 to 4 (KL 0.01)",
        "multi_hop_pondernet_curriculum": "PonderNet, 500 steps of one hop, then 1,500 of 1 to 4 (KL 0.1)",
    }, "by_hops.json"),
    "multi_hop_pondernet_by_step": by_step_section(
        {"multi_hop_pondernet_curriculum": "PonderNet, one hop, then 1 to 4 (KL 0.1)"}, "by_hops.json"),
    "multi_hop_stages_runs": runs_section(["multi_hop_pondernet_curriculum_prior_half", "multi_hop_pondernet_to_2_hops",
                                           "multi_hop_pondernet_to_3_hops", "multi_hop_pondernet_to_4_hops",
                                           "multi_hop_fixed_one_hop", "multi_hop_fixed_curriculum",
                                           "multi_hop_pondernet_curriculum_longer", "multi_hop_fixed_curriculum_longer",
                                           "multi_hop_pondernet_curriculum_longer_twice",
                                           "multi_hop_fixed_curriculum_longer_twice"],
                                          TEST_METRICS),
    "multi_hop_stages": hops_section({
        "multi_hop_pondernet_curriculum": "PonderNet, one hop, then 1 to 4 (λ_p = 0.2; the section above)",
        "multi_hop_pondernet_curriculum_prior_half": "PonderNet, one hop, then 1 to 4 (λ_p = 0.5)",
        "multi_hop_pondernet_to_4_hops": "PonderNet, one hop, then up to 2, 3 and 4 (λ_p = 0.5)",
        "multi_hop_fixed_curriculum": "fixed loop, 4 reads, one hop, then 1 to 4",
        "multi_hop_pondernet_curriculum_longer": "PonderNet, one hop, then 1 to 4, then 750 steps more (λ_p = 0.2)",
        "multi_hop_fixed_curriculum_longer": "fixed loop, 4 reads, one hop, then 1 to 4, then 750 steps more",
        "multi_hop_pondernet_curriculum_longer_twice": "PonderNet, as above, then 750 steps more again (λ_p = 0.2)",
        "multi_hop_fixed_curriculum_longer_twice": "fixed loop, as above, then 750 steps more again",
    }, "by_hops.json"),
    "multi_hop_stages_by_step": by_step_section({
        "multi_hop_pondernet_curriculum_prior_half": "PonderNet, one hop, then 1 to 4 (λ_p = 0.5)",
        "multi_hop_pondernet_to_2_hops": "PonderNet, one hop, then up to 2 (λ_p = 0.5)",
        "multi_hop_pondernet_to_4_hops": "PonderNet, one hop, then up to 2, 3 and 4 (λ_p = 0.5)",
    }, "by_hops.json"),
    "multi_hop_act_fresh_halting_runs": runs_section(MULTI_HOP_FRESH_HALTING_RUNS, TEST_METRICS),
    "multi_hop_act_fresh_halting": hops_section({
        "multi_hop_act_curriculum": "ACT, one hop, then 1 to 4 (the halting unit of the one-hop stage)",
        "multi_hop_act_curriculum_fresh_halting": "ACT, one hop, then 1 to 4 (a fresh halting unit)",
        "multi_hop_fixed_three_reads_curriculum": "fixed loop, 3 reads, one hop, then 1 to 4",
        "multi_hop_fixed_curriculum": "fixed loop, 4 reads, one hop, then 1 to 4",
        "multi_hop_act_curriculum_longer": "ACT (a fresh halting unit), then 750 steps more",
        "multi_hop_fixed_three_reads_curriculum_longer": "fixed loop, 3 reads, then 750 steps more",
        "multi_hop_fixed_curriculum_longer": "fixed loop, 4 reads, then 750 steps more",
        "multi_hop_act_curriculum_longer_twice": "ACT (a fresh halting unit), then 750 steps more again",
        "multi_hop_fixed_three_reads_curriculum_longer_twice": "fixed loop, 3 reads, then 750 steps more again",
        "multi_hop_fixed_curriculum_longer_twice": "fixed loop, 4 reads, then 750 steps more again",
    }, "by_hops.json"),
    "multi_hop_act_as_fixed_loop": by_step_section({
        "multi_hop_act_curriculum_longer_twice": "ACT, at most 5 reads, after the three stages",
        "multi_hop_act_six_reads_curriculum_longer_twice": "ACT, at most 6 reads, after the three stages",
    }, "by_hops.json", "as_fixed_loop"),
    "multi_hop_act_epsilon_validation": hops_rows_section([
        ("multi_hop_act_curriculum_longer_twice", f"ACT, ε = {epsilon}, validation",
         f"by_hops_validation_epsilon_{epsilon}.json") for epsilon in ACT_EPSILONS]),
    "multi_hop_act_epsilon": hops_rows_section([
        ("multi_hop_act_curriculum_longer_twice", "ACT, ε = 0.01 (as trained)", "by_hops.json"),
        ("multi_hop_act_curriculum_longer_twice", "ACT, ε = 0.2 at evaluation", "by_hops_epsilon_0.2.json"),
        ("multi_hop_fixed_three_reads_curriculum_longer_twice", "fixed loop, 3 reads", "by_hops.json"),
        ("multi_hop_fixed_curriculum_longer_twice", "fixed loop, 4 reads", "by_hops.json"),
    ]),
    "multi_hop_act_epsilon_trained_runs": runs_section(MULTI_HOP_EPSILON_RUNS, TEST_METRICS),
    "multi_hop_act_epsilon_trained": hops_section({
        "multi_hop_act_epsilon_curriculum_fresh_halting": "ACT at ε = 0.2, one hop, then 1 to 4 (fresh halting)",
        "multi_hop_act_epsilon_curriculum_longer": "ACT at ε = 0.2, then 750 steps more",
        "multi_hop_act_epsilon_curriculum_longer_twice": "ACT at ε = 0.2, then 750 steps more again",
        "multi_hop_fixed_three_reads_curriculum_longer_twice": "fixed loop, 3 reads, after the same stages",
        "multi_hop_fixed_curriculum_longer_twice": "fixed loop, 4 reads, after the same stages",
        "multi_hop_act_epsilon_curriculum_longer_thrice": "ACT at ε = 0.2, then 750 steps more a third time",
        "multi_hop_fixed_curriculum_longer_thrice": "fixed loop, 4 reads, then 750 steps more a third time",
        "multi_hop_act_epsilon_curriculum_longer_four_times": "ACT at ε = 0.2, then 750 steps more a fourth time",
        "multi_hop_fixed_curriculum_longer_four_times": "fixed loop, 4 reads, then 750 steps more a fourth time",
        "multi_hop_act_epsilon_curriculum_longer_five_times": "ACT at ε = 0.2, then 750 steps more a fifth time "
                                                              "(seed 1 only)",
        "multi_hop_act_epsilon_curriculum_anneal": "ACT at ε = 0.2, then 750 steps annealed (learning rate 0.001 → 0) "
                                                   "after the fifth stage",
        "multi_hop_fixed_curriculum_anneal": "fixed loop, 4 reads, then 750 steps annealed (learning rate 0.001 → 0) "
                                             "after the fifth stage",
    }, "by_hops.json"),
    "multi_hop_act_epsilon_trained_as_fixed_loop": by_step_section({
        "multi_hop_act_epsilon_curriculum_longer_twice": "ACT at ε = 0.2, after the three stages",
        "multi_hop_act_epsilon_curriculum_longer_thrice": "ACT at ε = 0.2, after a fourth stage",
        "multi_hop_act_epsilon_curriculum_longer_four_times": "ACT at ε = 0.2, after a fifth stage",
        "multi_hop_act_epsilon_curriculum_anneal": "ACT at ε = 0.2, after the annealed stage",
    }, "by_hops.json", "as_fixed_loop"),
    "multi_hop_act_six_reads_runs": runs_section(MULTI_HOP_SIX_READS_RUNS, TEST_METRICS),
    "multi_hop_act_six_reads": hops_section({
        "multi_hop_act_six_reads_curriculum_fresh_halting": "ACT, at most 6 reads, one hop, then 1 to 4 (fresh halting)",
        "multi_hop_act_six_reads_curriculum_longer": "ACT, at most 6 reads, then 750 steps more",
        "multi_hop_act_six_reads_curriculum_longer_twice": "ACT, at most 6 reads, then 750 steps more again",
    }, "by_hops.json"),
    "copy_seed_regime_runs": runs_section(["copy_seed_regime"], ["test_len32/token_accuracy", "test_len64/token_accuracy"]),
    "copy_seed_regime": evaluations_section("copy_seed_regime", ["validation", "test_len32", "test_len64"],
                                            "zero_memory", "token_accuracy"),
}


def generated_page(text: str) -> str:
    """``text`` (the page) with every section of ``SECTIONS`` regenerated."""
    for name, render in SECTIONS.items():
        text = replace_section(text, name, render(), MARK)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--metrics", nargs="+", default=[])
    parser.add_argument("--stability", metavar="METRIC", help="summarise log.jsonl of the (single) run instead")
    parser.add_argument("--write", action="store_true", help="regenerate the generated sections of docs/results.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/results.md differs from docs/runs/")
    args = parser.parse_args()
    if args.write or args.check:
        text = PAGE.read_text()
        generated = generated_page(text)
        if args.write:
            PAGE.write_text(generated)
        elif generated != text:
            sys.exit("docs/results.md differs from the tables its committed runs give: "
                     "python scripts/results_table.py --write")
        return
    if args.stability:
        rows, line = stability(args.runs[0], args.stability)
        print(f"{table(STABILITY_HEADER, rows)}\n\n{line}")
        return
    rows = [[f"`{run.name}`", *row] for run in args.runs
            for row in run_rows(f"configs/{run.name}.yaml", [run], args.metrics)]
    print(table(["run", "command", "seed", "steps", "wall min", "CPU min", *args.metrics], rows))


if __name__ == "__main__":
    main()
