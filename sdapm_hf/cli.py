"""`sdapm-hf`: train and evaluate experiments described by YAML files in ``configs/``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def _train(args: argparse.Namespace) -> None:
    from .training import load_experiment, train

    overrides = {"output_dir": args.output_dir, "seed": args.seed, "max_steps": args.max_steps,
                 "resume": args.resume or None, "time_budget_s": args.time_budget_s}
    print(json.dumps(train(load_experiment(args.config, **overrides)), indent=2))


def _evaluate(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from .core import MemoryCore
    from .tasks import build_task
    from .training import ExperimentArguments, evaluate_model

    run = Path(args.run)
    experiment = ExperimentArguments(**json.loads((run / "experiment.json").read_text()))
    torch.set_num_threads(experiment.num_threads)
    overrides = dict(_assignment(item) for item in args.set)
    loader = AutoModelForCausalLM if experiment.head == "causal_lm" else AutoModelForSequenceClassification
    model = loader.from_pretrained(run / "model", **overrides)
    dataset = build_task(experiment.task, seed=experiment.seed, **experiment.task_args)
    core = next(module for module in model.modules() if isinstance(module, MemoryCore))
    hook = None
    if args.zero_memory:  # the reads that enter the output are zeroed; the controller path stays
        hook = core.output.register_forward_pre_hook(
            lambda module, inputs: (torch.cat([inputs[0][..., : -core.read_size], inputs[0][..., -core.read_size :] * 0], -1),)
        )
    if args.base_alone:
        if model.frozen_base() is None:
            raise ValueError(f"{run} has no frozen base: --base-alone compares a plugged model with its base")
        hook = core.output.register_forward_hook(lambda module, inputs, output: output * 0)
    results = {split: evaluate_model(model, dataset[split]) for split in args.splits}
    if hook is not None:
        hook.remove()
    print(json.dumps(results, indent=2))


def _assignment(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set takes KEY=VALUE, got {text!r}")
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):  # YAML reads 1e-6 as a string
        try:
            parsed = float(parsed)
        except ValueError:
            pass
    return key, parsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sdapm-hf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="run an experiment YAML")
    train.add_argument("config")
    train.add_argument("--output-dir")
    train.add_argument("--seed", type=int)
    train.add_argument("--max-steps", type=int)
    train.add_argument("--time-budget-s", type=float)
    train.add_argument("--resume", action="store_true")
    train.set_defaults(command_fn=_train)
    evaluate = commands.add_parser("evaluate", help="evaluate a run folder")
    evaluate.add_argument("run")
    evaluate.add_argument("--splits", nargs="+", default=["test"])
    ablation = evaluate.add_mutually_exclusive_group()
    ablation.add_argument("--zero-memory", action="store_true", help="zero the memory's reads (ablation)")
    ablation.add_argument("--base-alone", action="store_true", help="a plugged model without its memory's output")
    evaluate.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                          help="config fields changed for evaluation, e.g. top_k=1")
    evaluate.set_defaults(command_fn=_evaluate)
    args = parser.parse_args(argv)
    args.command_fn(args)


if __name__ == "__main__":
    main()
