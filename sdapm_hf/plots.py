"""PNG plots of a run folder: training curves, the memory's matrices, usage and read weights over time, inner read
steps, accuracy against distance. ``plot_run(run_dir)`` writes them all into ``<run_dir>/plots/``.

The memory plots follow one test example through the trained model, which returns the memory after every update
(``output_memory_states=True``: every position, or every chunk in chunked mode); the final memory's slots are drawn
as the seed's dense triple ``(Bv, M, Bw)`` (``sdapm_state.slot_maps``).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .core import MemoryUpdate  # noqa: E402
from .metrics import load_metric  # noqa: E402
from .sdapm_state import MemoryState, slot_maps  # noqa: E402
from .tasks import pad_collate  # noqa: E402
from .training import example_outcomes, haystack, load_run  # noqa: E402
from .training.data import COLUMNS  # noqa: E402


def read_log(run_dir: Path) -> list[dict]:
    """The records of ``log.jsonl`` (training steps and evaluations)."""
    path = run_dir / "log.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} has no log.jsonl: is it a run folder?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(records: list[dict], path: Path) -> Path:
    """Training loss, and every evaluated accuracy, against the step."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [(r["step"], r["loss"]) for r in records if "loss" in r]
    if steps:
        loss_ax.plot(*zip(*steps), label="train loss")
    for name in sorted({k for r in records for k in r if k.endswith("/loss")}):
        loss_ax.plot(*zip(*[(r["step"], r[name]) for r in records if name in r]), marker="o", label=name)
    loss_ax.set(xlabel="step", ylabel="loss", yscale="log", title="loss")
    loss_ax.legend()
    for name in sorted({k for r in records for k in r if k.endswith("accuracy")}):
        acc_ax.plot(*zip(*[(r["step"], r[name]) for r in records if name in r]), marker="o", label=name)
    acc_ax.set(xlabel="step", ylabel="accuracy", ylim=(0, 1.02), title="evaluation")
    acc_ax.legend(fontsize=8)
    return _save(fig, path)


@torch.no_grad()
def memory_trace(model, split, index: int = 0) -> tuple[MemoryUpdate, ...]:
    """The memory before and after each update while ``model`` reads one example of a split (its haystack, for a
    haystack task)."""
    model.eval()
    if "haystack" in split.column_names:
        run = haystack.runner(model, split)
        batch = haystack.collate([split[index]], pad_token_id=0)
        return run.remember(batch["haystack"], batch["inserts"], record=True)[2]
    batch = pad_collate([{k: v for k, v in split[index].items() if k in COLUMNS and k != "layer_states"}])
    return model(**batch, output_memory_states=True).memory_states


def plot_memory_maps(memory: MemoryState, path: Path) -> Path:
    """The final memory of batch row 0: ``Bv`` and ``Bw`` of every slot, and ``M − I`` of the heaviest slot."""
    keys, maps, values = (t[0].float() for t in slot_maps(memory))
    heaviest = int(memory.mass[0].argmax())
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    _heatmap(fig, axes[0], keys, "Bv: pre-bias (slot × word)", "word", "slot")
    _heatmap(fig, axes[1], maps[heaviest] - torch.eye(maps.shape[-1]), f"M − I of slot {heaviest} (mass "
             f"{float(memory.mass[0, heaviest]):.1f}, rank {int(memory.rank[0, heaviest])})", "output", "input")
    _heatmap(fig, axes[2], values, "Bw: post-bias (slot × word)", "word", "slot")
    return _save(fig, path)


def plot_dnc_memory(memory: torch.Tensor, path: Path) -> Path:
    """The classic DNC memory matrix (N, W) of batch row 0."""
    fig, ax = plt.subplots(figsize=(6, 4))
    _heatmap(fig, ax, memory[0].float(), "DNC memory (slot × word)", "word", "slot")
    return _save(fig, path)


def plot_usage_and_reads(updates: tuple[MemoryUpdate, ...], path: Path) -> Path:
    """Usage, read weights (head 0) and write weights of every slot after each memory update, batch row 0."""
    memories = [u.memory for u in updates[1:]]
    panels = [("usage", "usage"), ("read weights (head 0)", "read_weights"), ("write weights", "write_weights")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 7), sharex=True)
    for ax, (title, field) in zip(axes, panels, strict=True):
        rows = [m[field][0] for m in memories]
        rows = [r[0] if r.dim() == 2 else r for r in rows]  # read weights (R, N): head 0
        _heatmap(fig, ax, torch.stack(rows, 1).float(), title, None, "slot", vmin=0, vmax=1)
    axes[-1].set_xlabel("memory update (position, or chunk in chunked mode)")
    return _save(fig, path)


def plot_ponder_histogram(steps: np.ndarray, path: Path) -> Path:
    """How many inner read steps the counted positions took."""
    fig, ax = plt.subplots(figsize=(6, 4))
    top = int(steps.max())
    ax.hist(steps, bins=np.arange(0.5, top + 1.5), rwidth=0.85)
    ax.set(xlabel="inner read steps", ylabel="positions", title=f"ponder steps (mean {steps.mean():.2f})")
    return _save(fig, path)


def plot_accuracy_by_distance(result: dict[str, float], path: Path) -> Path:
    """Accuracy per bucket of evidence distance (the ``accuracy_by_distance`` metric's result), with counts."""
    edges = [key.removeprefix("accuracy@<=") for key in result if key.startswith("accuracy@<=")]
    edges = [e for e in edges if result[f"count@<={e}"] > 0]
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar(range(len(edges)), [result[f"accuracy@<={e}"] for e in edges])
    for bar, edge in zip(bars, edges, strict=True):
        ax.annotate(f"n={result[f'count@<={edge}']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(edges)), [f"≤{e}" for e in edges])
    ax.set(xlabel="tokens from the evidence to the question", ylabel="accuracy", ylim=(0, 1.1),
           title=f"accuracy by distance (overall {result['accuracy']:.3f})")
    return _save(fig, path)


def plot_run(run_dir: str | Path, split: str = "test") -> list[Path]:
    """Every plot that applies to the run, written into ``<run_dir>/plots/``; returns their paths."""
    run_dir = Path(run_dir)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = [plot_curves(read_log(run_dir), out / "curves.png")]
    _, model, dataset = load_run(run_dir, final=True)
    if split not in dataset or len(dataset[split]) == 0:
        raise ValueError(f"the run's task has no examples in split {split!r}")
    data = dataset[split]
    if model.config.memory_type != "none":
        updates = memory_trace(model, data)
        if len(updates) > 1:
            memory = updates[-1].memory
            if model.config.memory_type == "sdapm":
                written.append(plot_memory_maps(MemoryState.from_dict(memory), out / "memory_maps.png"))
            else:
                written.append(plot_dnc_memory(memory["memory"], out / "memory_matrix.png"))
            written.append(plot_usage_and_reads(updates, out / "usage_and_reads.png"))
    if "haystack" in data.column_names:  # answered exactly, against where the (asked) sentence sat
        answered: list[bool] = []
        haystack.evaluate_haystack(model, data, outcomes=answered)
        distances = [int((1 - depth[asked]) * length) for depth, asked, length in zip(data["depth"], data["asked"],
                                                                                      data["length"])]
        correct = np.asarray(answered, dtype=int)
    else:
        outcomes = example_outcomes(model, data)
        if outcomes["ponder_steps"].size:
            written.append(plot_ponder_histogram(outcomes["ponder_steps"], out / "ponder_steps.png"))
        correct = outcomes["correct"].astype(int)
        distances = data["distance"] if "distance" in data.column_names else None
    if distances is not None:
        result = load_metric("accuracy_by_distance").compute(
            predictions=correct.tolist(), references=[1] * len(correct), distances=distances
        )
        written.append(plot_accuracy_by_distance(result, out / "accuracy_by_distance.png"))
    return written


def _heatmap(fig, ax, values: torch.Tensor, title: str, xlabel: str | None, ylabel: str, **limits) -> None:
    if not limits:
        bound = float(values.abs().max()) or 1.0
        limits = {"vmin": -bound, "vmax": bound}
    image = ax.imshow(values.numpy(), aspect="auto", cmap="viridis" if limits["vmin"] == 0 else "RdBu_r",
                      interpolation="nearest", **limits)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(image, ax=ax, fraction=0.04)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
