"""Training and evaluation on Accelerate: seeded, resumable, logged.

``train(args)`` builds the task and the model, then runs AdamW with warmup and cosine decay, gradient
accumulation and clipping (a step whose loss or gradient is not finite is skipped and logged, or stops the run
with ``on_nonfinite: stop``), evaluates every ``eval_every`` steps, checkpoints with ``Accelerator.save_state``
(written to a temporary folder and renamed, so a kill never leaves a half-written checkpoint) and resumes from
the newest one with ``--resume``. The run folder holds ``log.jsonl``, TensorBoard events (when tensorboard is
installed), ``checkpoints/``, the final ``model/`` and ``metrics.json`` (with the set-up the run ran on: CPU, device,
torch and transformers versions, on which its last digits depend).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from safetensors.torch import load_file
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedModel

from ..configuration_dnc_sdapm import DNCSDAPMConfig
from ..modeling_dnc_sdapm import DNCSDAPMForCausalLM, DNCSDAPMForSequenceClassification
from ..reporting import set_up
from ..tasks import HAYSTACK_TASKS, build_task
from . import haystack
from .arguments import ExperimentArguments
from .data import batches
from .evaluation import build_experiment_task, evaluate_model, load_base, load_run
from .states import OverLayerStates, add_layer_states


def vocab_size_of(dataset) -> int:
    """Smallest vocabulary that holds every token id of every split."""
    return 1 + max(max(max(ids) for ids in split["input_ids"]) for split in dataset.values() if len(split))


def memory_statistics(memory_state: dict[str, torch.Tensor]) -> dict[str, float]:
    """Of a batch's memory after its last position: the largest stored value, key and last read norms (the
    seed's "bigness"), the mean gate of the last write and the mean slot usage. The SDAPM writes one whole slot,
    whose usage becomes the gate (a chunk's strongest); the classic memory's write weights sum to its gate times
    the soft location's total (at most the gate)."""
    out = {}
    for name, key in (("memory_value_max", "memory.value"), ("memory_key_max", "memory.key"),
                      ("memory_dnc_max", "memory.memory"), ("read_max", "reads")):
        if key in memory_state:
            out[name] = memory_state[key].detach().float().norm(dim=-1).max().item()
    if "memory.write_weights" in memory_state:
        weights, usage = memory_state["memory.write_weights"].detach().float(), memory_state["memory.usage"].detach()
        gates = (weights * usage.float()).sum(-1) if "memory.mass" in memory_state else weights.sum(-1)
        out["write_gate_mean"] = gates.mean().item()
        out["usage_mean"] = usage.float().mean().item()
    return out


def build_model(args: ExperimentArguments, dataset) -> PreTrainedModel:
    """A standalone token model, or the memory plugged into the frozen base the experiment names; with the trained
    weights of ``args.init_from`` where it names a run; its memory's steps compiled with ``args.compile_memory``."""
    model = _new_model(args, dataset)
    if args.init_from is not None:
        _load_trained(model, Path(args.init_from), tuple(args.init_fresh))
    if args.compile_memory:
        model.compile_memory()
    return model


def _load_trained(model: PreTrainedModel, run: Path, fresh: tuple[str, ...] = ()) -> None:
    """The weights of the run folder ``run`` (its ``model/``) into ``model``, which must have the same memory;
    parameters whose names start with a prefix in ``fresh`` keep their fresh initialisation."""
    path = run / "model" / "model.safetensors"
    if not path.exists():
        raise ValueError(f"init_from={str(run)!r}: no trained model at {path} (give a finished run's folder)")
    weights = load_file(path)
    unknown = [prefix for prefix in fresh if not any(name.startswith(prefix) for name in weights)]
    if unknown:
        raise ValueError(f"init_fresh names no parameter of {path}: {unknown} (names look like "
                         f"{next(iter(weights))!r})")
    weights = {name: tensor for name, tensor in weights.items() if not name.startswith(fresh)}
    mismatch = ""
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as error:  # a tensor of another shape
        missing, unexpected, mismatch = [], [], str(error).splitlines()[-1].strip()
    base = model.base_prefixes() if model.frozen_base() is not None else ()
    missing = [name for name in missing if not name.startswith(base + fresh)]  # not saved (adapter) or kept fresh
    if missing or unexpected or mismatch:
        raise ValueError(f"init_from={str(run)!r} holds another model: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]} {mismatch} (its config must match this run's model)")


def _new_model(args: ExperimentArguments, dataset) -> PreTrainedModel:
    if not (args.base_model or args.base_config):
        if dataset is None:
            raise ValueError(f"task {args.task!r} reads text with a pretrained base: set base_model")
        return DNCSDAPMForCausalLM(DNCSDAPMConfig(**{"vocab_size": vocab_size_of(dataset), **args.model}))
    causal = args.head == "causal_lm"
    if args.base_model:
        base = load_base(args.base_model, args.head)
        base.name_or_path = args.base_model  # adapter checkpoints name the base by the id the experiment gave
    else:
        loader = AutoModelForCausalLM if causal else AutoModel
        config = dict(args.base_config)
        if "model_type" not in config:
            raise ValueError("base_config needs a model_type (e.g. llama)")
        base = loader.from_config(AutoConfig.for_model(config.pop("model_type"), **config))  # seeded by set_seed
    if causal:
        return DNCSDAPMForCausalLM.from_base(base, **args.model)
    num_labels = dataset["train"].features["label"].num_classes
    return DNCSDAPMForSequenceClassification.from_base(base, num_labels=num_labels, **args.model)


def _schedule(args: ExperimentArguments):
    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / max(args.warmup_steps, 1))
        progress = min(step, args.max_steps) / args.max_steps
        return warm * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    return factor


def _write_cost(args: ExperimentArguments, model: PreTrainedModel, step: int) -> dict[str, float]:
    """The write cost of optimizer step ``step`` (counted from 0) as a forward keyword, where it is scheduled."""
    if not args.write_cost_warmup_steps:
        return {}
    return {"write_cost": model.config.write_cost * min(1.0, step / args.write_cost_warmup_steps)}


def _memory_slots(args: ExperimentArguments, micro: int) -> int | None:
    """The slot count of micro-batch ``micro`` (counted from 1), drawn from ``train_memory_slots`` by a generator
    seeded with the run's seed and ``micro`` (so a resumed run draws the same); None: the model's own."""
    if not args.train_memory_slots:
        return None
    draw = torch.Generator().manual_seed(args.seed * 1_000_003 + micro)
    return args.train_memory_slots[int(torch.randint(len(args.train_memory_slots), (1,), generator=draw))]


def _checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in (output_dir / "checkpoints").glob("step_*") if p.is_dir() and (p / "done").exists()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def _save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, keep: int = 2) -> None:
    final = output_dir / "checkpoints" / f"step_{step}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process's random states are in ``tmp`` before it is renamed
    if accelerator.is_main_process:
        (tmp / "done").write_text(str(step))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in _checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def train(args: ExperimentArguments) -> dict[str, Any]:
    """Run an experiment; returns the final metrics (also written to ``metrics.json``)."""
    torch.set_num_threads(args.num_threads)
    output_dir = Path(args.output_dir)
    set_seed(args.seed)
    if args.task in HAYSTACK_TASKS:  # the corpus is the base's: the model comes first
        model = build_model(args, None)
        dataset = build_experiment_task(args, model)
    else:
        dataset = build_task(args.task, seed=args.seed, **args.task_args)
        model = build_model(args, dataset)
    for split in ("train", *args.eval_splits):
        if split not in dataset or len(dataset[split]) == 0:
            raise ValueError(f"task {args.task!r} has no examples in its {split!r} split (check task_args)")
    runner = model  # what a batch goes through: the model, the memory over cached states, or over haystacks
    if args.cache_base_states:
        dataset = add_layer_states(dataset, model)
        runner = OverLayerStates(model)
    if args.task in HAYSTACK_TASKS:
        runner = haystack.runner(model, dataset["train"])
    tracker = "tensorboard" if _has_tensorboard() else None
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=tracker,
        project_dir=str(output_dir),
        # which memory parameters a batch reaches depends on its data (consolidation runs only when the memory is
        # full), so data-parallel gradients are reduced over the parameters each process actually used
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        step_scheduler_with_optimizer=False,  # the schedule counts optimizer steps, whatever the process count
    )
    if args.task in HAYSTACK_TASKS:
        pad = runner.states.corpus.tokenizer.pad_token_id or 0
        loader = haystack.loader(dataset["train"], pad, args.batch_size, seed=args.seed, shuffle=True)
    else:
        loader = batches(dataset["train"], args.batch_size, seed=args.seed, shuffle=True)
    for slots in args.train_memory_slots:  # a slot count this config cannot run is named before anything is written
        try:
            model.initial_memory_state(1, slots)
        except ValueError as err:
            raise ValueError(f"train_memory_slots: {err}") from err
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(args))
    base = model.frozen_base()
    if base is not None:  # checkpoints hold what trains; the frozen base comes from the experiment again
        outer = "" if runner is model else "model."
        prefixes = tuple(outer + prefix for prefix in model.base_prefixes())
        accelerator.register_save_state_pre_hook(
            lambda models, weights, folder: [w.pop(k) for w in weights for k in list(w) if k.startswith(prefixes)]
        )
    runner, optimizer, loader, scheduler = accelerator.prepare(runner, optimizer, loader, scheduler)

    step = 0
    if args.resume and (found := _checkpoints(output_dir)):
        accelerator.load_state(str(found[-1]), strict=base is None)
        step = int((found[-1] / "done").read_text())
    elif accelerator.is_main_process:
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "log.jsonl").unlink(missing_ok=True)
        (output_dir / "experiment.json").write_text(json.dumps(asdict(args), indent=2))
    if tracker:
        accelerator.init_trackers("tensorboard", config={k: str(v) for k, v in asdict(args).items()})

    # this process's batches per epoch, counted from its batch sampler (with several processes, len(loader) can
    # count batches that the shards then drop)
    micro_per_epoch = sum(1 for _ in loader.batch_sampler)
    if micro_per_epoch == 0:
        raise ValueError(f"the train split gives no batch to each of {accelerator.num_processes} processes")
    micro = step * args.gradient_accumulation_steps
    started, cpu_started = time.perf_counter(), time.process_time()
    runner.train()
    progress = tqdm(total=args.max_steps, initial=step, desc=output_dir.name, unit="step", dynamic_ncols=True,
                    disable=not accelerator.is_local_main_process)
    bad: str | None = None  # what was non-finite in the current optimizer step
    while not _should_stop(accelerator, args, step, cpu_started):
        epoch, offset = divmod(micro, micro_per_epoch)
        loader.set_epoch(epoch)  # the prepared loader's epoch counter and our sampler's order move together
        epoch_loader = accelerator.skip_first_batches(loader, offset) if offset else loader
        for batch in epoch_loader:
            micro += 1
            scheduled = _write_cost(args, model, step)
            slots = _memory_slots(args, micro)
            empty = {}
            if slots is not None:
                empty["memory_state"] = model.initial_memory_state(len(batch["input_ids"]), slots)
            with accelerator.accumulate(runner):
                out = runner(**batch, **scheduled, **empty)
                if torch.isfinite(out.loss):
                    accelerator.backward(out.loss)
                else:
                    bad = bad or "loss"
                grad_norm = None
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                    bad = bad or (None if torch.isfinite(grad_norm) else "gradient")
                    if not bad:
                        optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update()
            skipped, bad = bad, None
            if skipped:  # nothing of this step reached the weights
                _write_log(accelerator, output_dir, {"step": step, "skipped": f"non-finite {skipped}"})
                if args.on_nonfinite == "stop":
                    raise FloatingPointError(
                        f"non-finite {skipped} at step {step}: stopped (on_nonfinite='stop'); the weights are those "
                        f"of step {step - 1} and the last checkpoint in {output_dir / 'checkpoints'} is intact"
                    )
            record = None if skipped else _log_step(args, step, out, grad_norm, scheduler, started)
            if record is not None:
                drawn = {} if slots is None else {"memory_slots": slots}
                _write_log(accelerator, output_dir, {**record, **scheduled, **drawn})
            if step % args.eval_every == 0 or step == args.max_steps:
                record = {"step": step, **_evaluate(model, dataset, args)}
                _write_log(accelerator, output_dir, record)
            if step % args.save_every == 0:
                _save_checkpoint(accelerator, output_dir, step)
            if _should_stop(accelerator, args, step, cpu_started):
                break
        if _should_stop(accelerator, args, step, cpu_started):
            break

    progress.close()
    metrics = {"steps": step, "train_seconds": time.perf_counter() - started,
               "train_cpu_seconds": time.process_time() - cpu_started}
    if accelerator.is_main_process:
        model.save_pretrained(output_dir / "model")
    accelerator.wait_for_everyone()
    if args.eval_task_args or args.eval_model:  # measured as the run folder loads: longer inputs, another memory
        _, model, dataset = load_run(output_dir, final=True)
    metrics.update(_evaluate(model, dataset, args))
    metrics["set_up"] = set_up(str(accelerator.device))
    if accelerator.is_main_process:
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    accelerator.end_training()
    return metrics


def _should_stop(accelerator: Accelerator, args: ExperimentArguments, step: int, cpu_started: float) -> bool:
    over_budget = args.time_budget_s is not None and time.process_time() - cpu_started > args.time_budget_s
    if args.time_budget_s is not None and accelerator.num_processes > 1:  # every process stops at the same step
        over_budget = bool(accelerator.reduce(torch.tensor(float(over_budget)), reduction="sum") > 0)
    return step >= args.max_steps or step == args.stop_at_step or over_budget


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _log_step(args, step, out, grad_norm, scheduler, started) -> dict[str, Any] | None:
    if step % args.log_every and step != 1:
        return None
    record = {
        "step": step,
        "loss": out.loss.item(),
        "lr": scheduler.get_last_lr()[0],
        "grad_norm": float(grad_norm) if grad_norm is not None else None,
        "ponder_mean": out.ponder[0].item(),
        "seconds": time.perf_counter() - started,
        **memory_statistics(out.memory_state),
    }
    return record


def _evaluate(model, dataset, args: ExperimentArguments) -> dict[str, float]:
    """Every metric of every evaluation split, as it is and under each of ``args.eval_ablations``."""
    results = {}
    for split in args.eval_splits:
        for name, value in evaluate_model(model, dataset[split]).items():
            results[f"{split}/{name}"] = value
        for ablation in args.eval_ablations:
            with model.ablation(ablation):
                for name, value in evaluate_model(model, dataset[split]).items():
                    results[f"{split}/{ablation}/{name}"] = value
    return results


def _write_log(accelerator: Accelerator, output_dir: Path, record: dict[str, Any]) -> None:
    if not accelerator.is_main_process:
        return
    with open(output_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
    accelerator.log(numbers, step=record["step"])
    tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
