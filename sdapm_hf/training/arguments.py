"""What an experiment is: one dataclass, parsed the Hugging Face way (``HfArgumentParser``): a YAML file per run,
and the command line over it, with the same fields.

    sdapm-hf train configs/x.yaml --seed 1 --output_dir runs/x_seed1 --set chunk_size=16 --task-args seq_len=512

Every field is an option; the two mappings take ``KEY=VALUE`` items (values read as YAML) that change single
entries of the file's mapping: ``--set`` (or ``--model``) the model config's fields, ``--task-args`` the task's.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from ..modeling_dnc_sdapm import ABLATIONS


class ExperimentYamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2's booleans and floats, for experiment files and ``KEY=VALUE`` options alike.

    YAML 1.1 reads ``off``, ``on``, ``yes`` and ``no`` as booleans, so ``consolidation: off`` would mean ``False``
    instead of the mode ``"off"``; here only ``true`` and ``false`` are booleans. YAML 1.1 also needs a dot in a
    float, so ``1e-6`` would be a string; here it is a float."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


ExperimentYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
ExperimentYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


@dataclass
class ExperimentArguments:
    """A training run: the task, the model config, the optimisation and where the run folder goes."""

    task: str = field(default="copy", metadata={"help": "task name in sdapm_hf.tasks.TASKS"})
    task_args: dict[str, Any] = field(default_factory=dict, metadata={"help": "keyword arguments of the task"})
    model: dict[str, Any] = field(default_factory=dict, metadata={"help": "DNCSDAPMConfig fields", "aliases": ["--set"]})
    base_model: str | None = field(
        default=None, metadata={"help": "name or path of a frozen pretrained base to plug the memory into"}
    )
    base_config: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "config (with model_type) of a frozen random base, seeded by seed"}
    )
    eval_task_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "task arguments changed for the final evaluation (metrics.json), e.g. longer inputs"},
    )
    eval_model: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "model config fields changed for the final evaluation, e.g. the memory a smaller one trained"},
    )
    head: str = field(default="causal_lm", metadata={"help": "causal_lm or sequence_classification (label column)"})
    cache_base_states: bool = field(
        default=False,
        metadata={"help": "compute the frozen base's top-layer states once per example (memory on the top layer)"},
    )
    init_from: str | None = field(
        default=None,
        metadata={"help": "run folder whose trained memory this run starts from (a curriculum in stages: short inputs, "
                          "then longer ones); the model's config must match"},
    )
    init_fresh: list[str] = field(
        default_factory=list,
        metadata={"help": "with init_from: parameters whose names start with one of these keep this run's fresh "
                          "initialisation instead of the earlier run's weights, e.g. a halting unit that saturated "
                          "on an easier stage (model.memory.ponder.halting)"},
    )
    output_dir: str = field(default="runs/experiment", metadata={"help": "run folder"})
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    train_memory_slots: list[int] = field(
        default_factory=list,
        metadata={"help": "slot counts of the memory in training, one drawn per batch (seeded), e.g. [2, 32]: the "
                          "fewest make the write gates choose what to keep, the most make the reads choose among as "
                          "many slots as an evaluation with eval_model's memory_slots (empty: the model's own)"},
    )
    write_cost_warmup_steps: int = field(
        default=0,
        metadata={"help": "the write cost rises linearly from 0 to the model's write_cost over this many steps, so "
                          "that the reads learn what storing pays before the gates pay for it (0: the whole cost "
                          "from the first step)"},
    )
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = field(default="no", metadata={"help": "no or bf16"})
    eval_every: int = 100
    eval_splits: list[str] = field(default_factory=lambda: ["validation"])
    eval_ablations: list[str] = field(
        default_factory=list,
        metadata={"help": "ablations also measured at every evaluation (zero_memory, base_alone), as SPLIT/ABLATION/METRIC"},
    )
    save_every: int = 500
    log_every: int = 25
    time_budget_s: float | None = field(default=None, metadata={"help": "stop after this many CPU seconds of training"})
    stop_at_step: int | None = field(
        default=None, metadata={"help": "end this invocation after this step (the schedule still spans max_steps)"}
    )
    num_threads: int = 1
    compile_memory: bool = field(
        default=False, metadata={"help": "run the memory's steps through torch.compile (eager where it fails)"}
    )
    on_nonfinite: str = field(
        default="skip", metadata={"help": "a non-finite loss or gradient: 'skip' the step (logged) or 'stop' the run"}
    )
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in output_dir"})

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "eval_every", "save_every",
                     "log_every", "num_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.on_nonfinite not in ("skip", "stop"):
            raise ValueError(f"on_nonfinite must be 'skip' or 'stop', got {self.on_nonfinite!r}")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        if self.head not in ("causal_lm", "sequence_classification"):
            raise ValueError(f"head must be 'causal_lm' or 'sequence_classification', got {self.head!r}")
        if self.base_model and self.base_config:
            raise ValueError("give base_model (pretrained) or base_config (random), not both")
        if self.head == "sequence_classification" and not (self.base_model or self.base_config):
            raise ValueError("head 'sequence_classification' needs a frozen base (base_model or base_config)")
        if self.cache_base_states and self.head != "sequence_classification":
            raise ValueError("cache_base_states needs head 'sequence_classification' (the memory on an encoder's top)")
        if self.init_fresh and self.init_from is None:
            raise ValueError(f"init_fresh={self.init_fresh} keeps parameters fresh in place of init_from's weights: "
                             "set init_from as well")
        unknown = [name for name in self.eval_ablations if name not in ABLATIONS]
        if unknown:
            raise ValueError(f"eval_ablations: unknown {unknown}; known: {', '.join(ABLATIONS)}")
        if self.write_cost_warmup_steps < 0:
            raise ValueError(f"write_cost_warmup_steps must be >= 0, got {self.write_cost_warmup_steps}")
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in self.train_memory_slots):
            raise ValueError(f"train_memory_slots must be slot counts >= 1, got {self.train_memory_slots}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


def read_experiment_yaml(path: str | Path) -> dict[str, Any]:
    """The fields an experiment YAML sets. ``base: other.yaml`` (relative to the file) is read first and
    this file's fields are merged over it (mappings such as ``model`` merge key by key)."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=ExperimentYamlLoader) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    except OSError as err:
        raise ValueError(f"cannot read experiment file {path}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of ExperimentArguments fields, got {type(data).__name__}")
    if "base" not in data:
        return data
    merged = read_experiment_yaml(path.parent / data.pop("base"))
    for key, value in data.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def load_experiment(path: str | Path, **overrides: Any) -> ExperimentArguments:
    """Read an experiment YAML (fields of ``ExperimentArguments``); ``overrides`` replace top-level fields (None
    leaves a field as the file has it)."""
    return _experiment(read_experiment_yaml(path), {k: v for k, v in overrides.items() if v is not None})


MAPPING_FIELDS = ("model", "task_args", "base_config", "eval_task_args", "eval_model")


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line → (key, value read as an experiment file reads it:
    ``ExperimentYamlLoader``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.load(value, Loader=ExperimentYamlLoader)


class ExperimentParser(HfArgumentParser):
    """``HfArgumentParser`` over ``ExperimentArguments`` for ``sdapm-hf train CONFIG [options]`` (module
    docstring): an option given on the command line replaces the file's field, an option not given leaves it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(ExperimentArguments, **kwargs)
        for action in self._actions:
            if action.dest == "help":
                continue
            action.default = argparse.SUPPRESS  # only what is given reaches the namespace
            if action.dest in MAPPING_FIELDS:
                action.type, action.nargs, action.metavar = parse_assignment, "+", "KEY=VALUE"
        self.add_argument("config", help="the experiment's YAML file (fields of ExperimentArguments)")

    def parse_experiment(self, argv: list[str] | None = None) -> ExperimentArguments:
        given = vars(self.parse_args(argv))
        data = read_experiment_yaml(given.pop("config"))
        for name in MAPPING_FIELDS:
            if name in given:
                given[name] = {**data.get(name, {}), **dict(given[name])}
        return _experiment(data, given)


def _experiment(data: dict[str, Any], overrides: dict[str, Any]) -> ExperimentArguments:
    """The experiment of a file's fields with ``overrides`` over them (an unknown field is named)."""
    (args,) = HfArgumentParser(ExperimentArguments).parse_dict({**data, **overrides})
    return args
