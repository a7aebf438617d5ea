"""Model cards and Hub uploads of run folders.

``write_card(run_dir, repo_id)`` fills ``model_cards/dnc_sdapm.md`` from the run (experiment, model config, base
model, final metrics, the comparison with the ablated model when ``comparison.json`` exists, plots) and writes
``<run_dir>/README.md``. ``push_run(run_dir, repo_id)`` writes the card and uploads, in one commit, the saved model
at the repository's root (so ``from_pretrained(repo_id)`` loads it) with the card, plots, metrics, experiment and
log; checkpoints stay local. Real publishing needs a token (``HF_TOKEN``, ``hf auth login`` or ``token=``);
``HF_ENDPOINT`` points the client at another Hub.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, ModelCardData, get_token

from .pretrained import hub_id

CARD_TEMPLATE = Path(__file__).resolve().parent.parent / "model_cards" / "dnc_sdapm.md"
RUN_FILES = ("README.md", "metrics.json", "comparison.json", "experiment.json", "log.jsonl")
AUTO_CLASSES = {"causal_lm": "AutoModelForCausalLM", "sequence_classification": "AutoModelForSequenceClassification"}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path.parent} is not a finished run folder: {path.name} is missing") from err


def _number(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _comparison_rows(comparison: dict) -> list[tuple[str, str, str]]:
    rows = []
    for split, ours in comparison["with_memory"].items():
        name = "accuracy" if "accuracy" in ours else "token_accuracy"
        rows.append((f"{split} {name}", _number(ours[name]), _number(comparison["ablated"][split][name])))
    return rows


def render_card(run_dir: str | Path, repo_id: str, template: str | Path = CARD_TEMPLATE) -> ModelCard:
    """The model card of a finished run folder (``experiment.json``, ``metrics.json``, ``model/``)."""
    run_dir = Path(run_dir)
    template = Path(template)
    if not template.exists():
        raise FileNotFoundError(f"model card template {template} not found (it ships in the repository's model_cards/)")
    experiment = _read_json(run_dir / "experiment.json")
    metrics = _read_json(run_dir / "metrics.json")
    config = _read_json(run_dir / "model" / "config.json")
    comparison = json.loads((run_dir / "comparison.json").read_text()) if (run_dir / "comparison.json").exists() else None
    base_model = hub_id(experiment.get("base_model")) or None
    head = experiment["head"]
    adapter = bool(config.get("text_config")) and not config.get("save_base_weights", True)
    weights = run_dir / "model" / "model.safetensors"
    card_data = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        base_model=base_model,
        pipeline_tag="text-classification" if head == "sequence_classification" else "text-generation",
        tags=["sdapm-hf", "dnc-sdapm", "memory-augmented", "differentiable-neural-computer", experiment["task"]],
        model_name=repo_id,
    )
    settings = ("memory_type", "memory_slots", "word_size", "read_heads", "max_rank", "consolidation",
                "controller_size", "chunk_size", "segment_length", "act_mode")
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        repo_id=repo_id,
        base_model=base_model,
        adapter=adapter,
        read_from=config.get("read_from", "layer"),
        memory_megabytes=f"{weights.stat().st_size / 1e6:.2f}" if weights.exists() else "?",
        task=experiment["task"],
        task_args=json.dumps(experiment["task_args"]),
        steps=metrics["steps"],
        cpu_minutes=f"{metrics['train_cpu_seconds'] / 60:.1f}",
        metrics=[(name, _number(value)) for name, value in metrics.items() if "/" in name],
        comparison=_comparison_rows(comparison) if comparison else None,
        comparison_label=comparison["label"] if comparison else None,
        plots=sorted(p.name for p in (run_dir / "plots").glob("*.png")),
        auto_class=AUTO_CLASSES[head],
        experiment_yaml=yaml.safe_dump(
            {k: v for k, v in experiment.items() if k not in ("output_dir", "resume")}, sort_keys=False
        ).strip(),
        memory_summary=", ".join(f"`{k}={config[k]}`" for k in settings if config.get(k) is not None),
    )


def write_card(run_dir: str | Path, repo_id: str, template: str | Path = CARD_TEMPLATE) -> Path:
    """Render the run's card into ``<run_dir>/README.md``."""
    path = Path(run_dir) / "README.md"
    render_card(run_dir, repo_id, template).save(path)
    return path


def push_run(
    run_dir: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    template: str | Path = CARD_TEMPLATE,
) -> str:
    """Write the card and upload the run in one commit; returns the commit's URL."""
    run_dir = Path(run_dir)
    token = token or get_token()
    if not token:
        raise PermissionError(
            "pushing needs a Hugging Face token: set HF_TOKEN, run `hf auth login`, or pass --token "
            "(nothing was uploaded)"
        )
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise RuntimeError("HF_HUB_OFFLINE is set: unset it to push (nothing was uploaded)")
    if not (run_dir / "model" / "config.json").exists():
        raise FileNotFoundError(f"{run_dir} holds no saved model (model/config.json): train it first")
    write_card(run_dir, repo_id, template)
    files = {p.name: p for p in sorted((run_dir / "model").iterdir()) if p.is_file()}
    files |= {name: run_dir / name for name in RUN_FILES if (run_dir / name).exists()}
    files |= {f"plots/{p.name}": p for p in sorted((run_dir / "plots").glob("*.png"))}
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()]
    commit = api.create_commit(repo_id, operations=operations, commit_message=f"Upload run {run_dir.name} (sdapm-hf)")
    return commit.commit_url
