"""Speed of the memory on the frozen real SmolLM2 against the base alone, in tokens per second.

    python scripts/bench_haystack.py configs/smollm2_passkey.yaml --segments 16 --out docs/runs/bench_haystack.json

The model is the experiment's (its ``model`` with its ``eval_model`` over it: the memory it is measured with), at
initialisation: speed does not depend on the weights. Rows, each the median of ``--rounds`` interleaved rounds:

* reading a haystack of ``--segments`` segments live, segment by segment (the plugged model's forward, no
  gradient), against the base's forward over the same segments one at a time;
* reading it from the cached layer states (``HaystackStates``: only the memory runs, what training and evaluation
  do), against the same base row;
* generating ``--new-tokens`` greedy tokens after a question with the memory's state, against ``base.generate``;
* a training step (forward, backward, AdamW) on a batch of training haystacks (``OverHaystack``), in tokens of
  haystack and question per second, against the base's forward over the same tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from sdapm_hf import DNCSDAPMForCausalLM
from sdapm_hf.reporting import code_revision, command_line, machine, ratio, table
from sdapm_hf.tasks import build_task
from sdapm_hf.training import load_experiment
from sdapm_hf.training.evaluation import base_path, load_base
from sdapm_hf.training.haystack import OverHaystack, collate, haystack_states


def seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--segments", type=int, default=16, help="haystack length read, in segments")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="JSON file of every figure")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    experiment = load_experiment(args.config)
    path = base_path(experiment.base_model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = load_base(experiment.base_model, "causal_lm").eval()
    model = DNCSDAPMForCausalLM.from_base(base, **{**experiment.model, **experiment.eval_model}).eval()
    states = haystack_states(model, tokenizer)
    length = model.config.segment_length
    sizes = {"train_size": args.batch_size, "validation_size": 0, "test_size": args.batch_size}
    train = build_task(experiment.task, seed=0, corpus=states.corpus, **{**experiment.task_args, **sizes})["train"]
    test = build_task(experiment.task, seed=0, corpus=states.corpus,
                      **{**experiment.task_args, **sizes, "num_segments": args.segments})["test"]
    rows = [test[i] for i in range(args.batch_size)]
    batch = collate(rows, tokenizer.pad_token_id)
    haystack = torch.stack([torch.as_tensor(states.corpus.tokens("test", row)[: args.segments * length]) for row in rows])
    over_test = OverHaystack(model, states, "test")
    state, _, _ = over_test.remember(batch["haystack"], batch["inserts"])
    prompt = batch["input_ids"][:, : int(batch["prompt_length"].min())]
    train_batch = collate([train[i] for i in range(args.batch_size)], tokenizer.pad_token_id)
    over_train = OverHaystack(model, states, "train")
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-4)
    train_tokens = int(train_batch["haystack"].numel() * length + train_batch["attention_mask"].sum())
    train_ids = torch.cat([torch.stack([torch.as_tensor(states.corpus.tokens("train", train[i]))[: train_batch[
        "haystack"].shape[1] * length] for i in range(args.batch_size)]), train_batch["input_ids"]], 1)

    def base_read(ids: torch.Tensor) -> None:
        with torch.no_grad():
            for start in range(0, ids.shape[1], length):
                base(input_ids=ids[:, start : start + length], logits_to_keep=1)

    def memory_read_live() -> None:
        with torch.no_grad():
            model(input_ids=haystack, logits_to_keep=1)

    def memory_read_cached() -> None:
        with torch.no_grad():
            over_test.remember(batch["haystack"], batch["inserts"])

    def generate(plugged: bool) -> None:
        kwargs = {"memory_state": state} if plugged else {}
        (model if plugged else base).generate(
            input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id, **kwargs)

    def training_step() -> None:
        model.train()
        out = over_train(**train_batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        model.eval()

    cases = {
        "read, base alone": (lambda: base_read(haystack), haystack.numel()),
        "read, with memory (live)": (memory_read_live, haystack.numel()),
        "read, with memory (cached states)": (memory_read_cached, haystack.numel()),
        "generate, base alone": (lambda: generate(False), args.new_tokens * args.batch_size),
        "generate, with memory": (lambda: generate(True), args.new_tokens * args.batch_size),
        "read training inputs, base alone": (lambda: base_read(train_ids), train_tokens),
        "train step, with memory (cached states)": (training_step, train_tokens),
    }
    for fn, _ in cases.values():  # warm up
        fn()
    timings = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (fn, _) in cases.items():
            timings[name].append(seconds(fn))
    speed = {name: cases[name][1] / statistics.median(times) for name, times in timings.items()}
    against = {"read, with memory (live)": "read, base alone", "read, with memory (cached states)": "read, base alone",
               "generate, with memory": "generate, base alone",
               "train step, with memory (cached states)": "read training inputs, base alone"}
    rows_out = [[name, f"{speed[name]:,.0f}", ratio(speed[name], speed[against[name]]) if name in against else "1×"]
                for name in cases]
    print(f"{experiment.base_model}, batch {args.batch_size}, haystacks of {args.segments} x {length} tokens, "
          f"{args.threads} thread(s), {machine()}")
    print(table(["case", "tokens/s", "against the base alone"], rows_out))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "command": command_line(argv or sys.argv[1:], "scripts/bench_haystack.py"),
            "code": code_revision(), "machine": machine(), "tokens_per_second": speed,
            "seconds": timings}, indent=2))


if __name__ == "__main__":
    main()
