"""`sdapm-hf`: train, evaluate, plot and publish experiments described by YAML files in ``configs/``.

    sdapm-hf train CONFIG [any ExperimentArguments field as --name VALUE] [--set KEY=VALUE ...] [--task-args KEY=VALUE ...]
    sdapm-hf evaluate RUN [--splits ...] [--zero-memory | --base-alone] [--set KEY=VALUE ...] [--task-args KEY=VALUE ...]
    sdapm-hf plot RUN [--split test]
    sdapm-hf push RUN --repo-id NAMESPACE/NAME [--private] [--token TOKEN]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .allocator import keep_freed_memory
from .training.arguments import ExperimentParser, parse_assignment


def _train(argv: list[str]) -> None:
    from .training import train

    args = ExperimentParser(prog="sdapm-hf train", description="run an experiment YAML").parse_experiment(argv)
    print(json.dumps(train(args), indent=2))


def _evaluate(args: argparse.Namespace) -> None:
    from .training import compare, evaluate_model, load_run, save_comparison

    run = Path(args.run)
    task_args = dict(args.task_args)
    _, model, dataset = load_run(run, task_args, final=True, **dict(args.set))
    ablation = "zero_memory" if args.zero_memory else "base_alone" if args.base_alone else None
    if ablation is None:
        print(json.dumps({split: evaluate_model(model, dataset[split]) for split in args.splits}, indent=2))
        return
    comparison = compare(model, dataset, args.splits, ablation)
    if not task_args:  # the model card reads it; a variant of the task is printed only
        save_comparison(run, comparison)
    print(json.dumps({"task_args": task_args, **comparison} if task_args else comparison, indent=2))


def _plot(args: argparse.Namespace) -> None:
    from .plots import plot_run

    for path in plot_run(args.run, split=args.split):
        print(path)


def _push(args: argparse.Namespace) -> None:
    from .publish import CARD_TEMPLATE, push_run

    print(push_run(args.run, args.repo_id, token=args.token, private=args.private,
                   template=args.card_template or CARD_TEMPLATE))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    keep_freed_memory()  # this process is ours: reuse freed buffers rather than fault fresh ones in (allocator.py)
    if argv[:1] == ["train"]:  # every experiment field is an option: HfArgumentParser over the dataclass
        _train(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="sdapm-hf", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("train", help="run an experiment YAML (sdapm-hf train --help)", add_help=False)
    evaluate = commands.add_parser("evaluate", help="evaluate a run folder (as its final evaluation: with its "
                                                    "eval_task_args and eval_model, under --task-args and --set)")
    evaluate.add_argument("run")
    evaluate.add_argument("--splits", nargs="+", default=["test"])
    ablation = evaluate.add_mutually_exclusive_group()
    ablation.add_argument("--zero-memory", action="store_true",
                          help="also evaluate with the memory's reads zeroed; both go into <run>/comparison.json")
    ablation.add_argument("--base-alone", action="store_true",
                          help="also evaluate the frozen base without the memory; both go into <run>/comparison.json")
    evaluate.add_argument("--set", nargs="*", default=[], type=parse_assignment, metavar="KEY=VALUE",
                          help="config fields changed for evaluation, e.g. read_top_k=1")
    evaluate.add_argument("--task-args", nargs="*", default=[], type=parse_assignment, metavar="KEY=VALUE",
                          help="task arguments changed for evaluation, e.g. seq_len=512 (another length or gap; "
                               "the comparison is then printed, not saved)")
    evaluate.set_defaults(command_fn=_evaluate)
    plot = commands.add_parser("plot", help="write a run folder's plots (PNG) into <run>/plots/")
    plot.add_argument("run")
    plot.add_argument("--split", default="test", help="the split whose examples the memory plots follow")
    plot.set_defaults(command_fn=_plot)
    push = commands.add_parser("push", help="write a run's model card and upload the run to the Hugging Face Hub")
    push.add_argument("run")
    push.add_argument("--repo-id", required=True, help="namespace/name on the Hub")
    push.add_argument("--token", help="a Hub token with write access (default: HF_TOKEN or the stored login)")
    push.add_argument("--private", action="store_true")
    push.add_argument("--card-template", help="a model card template (default: model_cards/dnc_sdapm.md)")
    push.set_defaults(command_fn=_push)
    args = parser.parse_args(argv)
    args.command_fn(args)


if __name__ == "__main__":
    main()
