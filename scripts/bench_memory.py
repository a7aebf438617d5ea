#!/usr/bin/env python
"""Benchmark of the SDAPM memory core: speed against plain softmax attention, read forms, shortlist recall.

Two sections, each written into ``docs/benchmarks.md`` between its own markers (other sections of the file
are left as they are):

* ``speed``: B = 32, W = 64, R = 4, ``max_rank = 8``, N ∈ {64, 256, 1024, 4096}. Read (dense exact, top-8
  exact, top-8 of a 32-slot shortlist), write, consolidate (groups of 2 and 8) and a full step
  (consolidate when full, write, read), forward only (no_grad; in place and functional) and forward+backward
  (functional; gradients w.r.t. the read words and strengths, the written key and value, the consolidation
  selection), each interleaved with plain softmax attention over the same N slots. The memory is full and
  realistic: half raw slots, half consolidated slots of 2–12 member pairs (rank 1–8).
* ``forms``: (i) read time of the low-rank slots against dense ``M`` (one bmm over (B, R, N·W) @ (B, N·W, W));
  (ii) error of the mixture read at member keys under soft addressing;
  (iii) recall of P ≫ N stored pairs with exact dense, exact top-K and shortlisted top-K reads.

Usage::

    python scripts/bench_memory.py                # both sections, about 5-10 minutes on one core
    python scripts/bench_memory.py --forms        # the forms section only
    python scripts/bench_memory.py --speed        # the speed section only
    python scripts/bench_memory.py --quick        # smoke run (small sizes, prints only unless --out is given)

Every timing is the median over ``--rounds`` rounds; in each round every case of one N runs once (or a few
times for calls under ``--target-ms``), in a rotated order, so that load from other jobs hits all cases alike.
Runs on one thread (``torch.set_num_threads(1)``) unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent

from sdapm_hf import sdapm  # noqa: E402
from sdapm_hf.addressing import content_weights, subspace_fit, top_k_weights  # noqa: E402
from sdapm_hf.sdapm_read import gather_candidates  # noqa: E402
from sdapm_hf.reporting import code_revision, command_line, fmt, machine, ratio, replace_section, table  # noqa: E402
from sdapm_hf.sdapm import MemoryState, SDAPMSettings, SlotContents  # noqa: E402

BATCH, WORD, HEADS, RANK, TOP_K, SHORTLIST = 32, 64, 4, 8, 8, 32
STRENGTH = 10.0  # β of the benchmark reads: softmax over fit ∈ [−1, 1]
MARK = "bench_memory:{}:{}"


# --------------------------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, flush=True)


def unit(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=gen), dim=-1)


def build_state(settings: SDAPMSettings, batch: int, seed: int, max_group: int = 12) -> MemoryState:
    """A full, valid memory: half raw slots (one unit pair each), half consolidated slots.

    Consolidated slots come from ``sdapm.merge_slots`` on groups of 2..max_group random unit pairs (a pool of
    at most 2048 merges, so rank 1..r, least squares beyond r + 1 members). Each slot of the memory takes a pool
    slot under its own random signed permutation of the coordinates, an orthogonal change of basis applied to
    keys, values and both factors: ``X Xᵀ`` (hence ``gram_inv``), the mass, radius, rank and the spectral norm of
    ``M − I`` are unchanged, so every slot is still the exact ridge merge of its (rotated) members.
    """
    gen = torch.Generator().manual_seed(seed)
    n, w, r = settings.slots, settings.word_size, settings.rank
    pool = min(2048, batch * n)
    sizes = torch.randint(2, max_group + 1, (pool,), generator=gen)
    member = torch.arange(max_group) < sizes[:, None]
    zeros = lambda *shape, **kw: torch.zeros(pool, max_group, *shape, **kw)  # noqa: E731
    members = SlotContents(
        key=unit(pool, max_group, w, gen=gen),
        value=unit(pool, max_group, w, gen=gen),
        mass=member.float(),
        radius=zeros(),
        key_factors=zeros(r, w),
        value_factors=zeros(r, w),
        gram_inv=zeros(r, r),
        key_offsets=zeros(r),
        rank=zeros(dtype=torch.long),
    )
    merged = sdapm.merge_slots(members, member.float(), member, settings).as_dict()

    pick = torch.randint(0, pool, (batch, n), generator=gen)
    perm = torch.argsort(torch.rand(batch, n, w, generator=gen), dim=-1)
    sign = torch.randint(0, 2, (batch, n, w), generator=gen).float() * 2 - 1

    def rotate(t: torch.Tensor) -> torch.Tensor:  # (B, N, ..., W)
        shape = (batch, n, *(1,) * (t.dim() - 3), w)
        return t.gather(-1, perm.view(shape).expand_as(t)) * sign.view(shape)

    consolidated = {name: t[pick] for name, t in merged.items()}
    for name in ("key", "value", "key_factors", "value_factors"):
        consolidated[name] = rotate(consolidated[name])
    raw = torch.rand(batch, n, generator=gen) < 0.5
    raw_slot = {"key": unit(batch, n, w, gen=gen), "value": unit(batch, n, w, gen=gen), "mass": torch.ones(batch, n)}
    fields = {}
    for name in sdapm.SLOT_FIELDS:
        c = consolidated[name]
        is_raw = raw.view(batch, n, *(1,) * (c.dim() - 2))
        # contiguous, as a memory's fields are (merges write into them): torch.linalg.inv returns G column-major
        fields[name] = torch.where(is_raw, raw_slot.get(name, torch.zeros_like(c)), c).contiguous()
    state = dataclasses.replace(
        sdapm.init_state(settings, batch),
        **fields,
        usage=torch.ones(batch, n),
        age=torch.randint(0, 4 * n, (batch, n), generator=gen).float(),
    )
    check_valid(state, settings)
    return state


def check_valid(state: MemoryState, settings: SDAPMSettings, samples: int = 512) -> None:
    """Spot-check that ``gram_inv = (X Xᵀ + λA I)⁻¹`` on the used rows, norms and ranks are consistent."""
    sdapm.check_state(state, settings)
    b, n = state.mass.shape
    gen = torch.Generator().manual_seed(1)
    flat = torch.randint(0, b * n, (samples,), generator=gen)
    xf = state.key_factors.reshape(b * n, settings.rank, -1)[flat].double()
    rank = state.rank.reshape(-1)[flat]
    live = (torch.arange(settings.rank) < rank[:, None]).double()
    gram = xf @ xf.transpose(1, 2) + settings.ridge * state.mass.reshape(-1)[flat].double()[:, None, None] * torch.eye(
        settings.rank, dtype=torch.float64
    )
    expected = torch.linalg.inv(gram) * live[:, :, None] * live[:, None, :]
    got = state.gram_inv.reshape(b * n, settings.rank, settings.rank)[flat].double()
    err = ((got - expected).norm(dim=(1, 2)) / expected.norm(dim=(1, 2)).clamp_min(1e-30)).max().item()
    if err > 1e-3:
        raise RuntimeError(f"benchmark memory is inconsistent: gram_inv relative error {err:.2e}")
    if not (state.occupied.all() and (state.key.norm(dim=-1) <= 1 + 1e-4).all()):
        raise RuntimeError("benchmark memory is not full or has keys outside the unit ball")
    if (xf.abs().sum(-1) > 0).sum(-1).gt(rank).any():
        raise RuntimeError("benchmark memory has factor rows beyond the slot rank")


# --------------------------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Case:
    """One measured call: ``fn()`` runs it once and returns the seconds of its timed region."""

    key: tuple
    fn: object
    inner: int = 1
    samples: list = dataclasses.field(default_factory=list)
    parts: dict = dataclasses.field(default_factory=dict)
    max_samples: int | None = None

    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.samples)

    def spread(self) -> float:
        """Interquartile range over median of the samples (round-to-round noise)."""
        if len(self.samples) < 4:
            return (max(self.samples) - min(self.samples)) / statistics.median(self.samples)
        q1, _, q3 = statistics.quantiles(self.samples, n=4)
        return (q3 - q1) / statistics.median(self.samples)

    def part_ms(self) -> dict[str, float]:
        return {name: 1e3 * statistics.median(v) for name, v in self.parts.items()}


def measure(cases: list[Case], args, label: str) -> None:
    """Warm up and calibrate every case, then run interleaved rounds (rotated order): at least
    ``args.rounds``, more (up to ``args.max_rounds``) while this N's time is under ``args.budget_s``."""
    start = time.perf_counter()
    for case in cases:  # warm-up and calibration (inner loop for fast calls)
        first = case.fn()
        if first > args.slow_s:
            case.max_samples = 3
        else:
            first = case.fn()
            case.inner = max(1, min(64, math.ceil(args.target_ms / 1e3 / max(first, 1e-7))))
        case.parts.clear()
    log(f"  {label}: {len(cases)} cases calibrated in {time.perf_counter() - start:.1f}s")
    rnd = 0
    while rnd < args.rounds or (rnd < args.max_rounds and time.perf_counter() - start < args.budget_s):
        shift = rnd % len(cases)
        for case in cases[shift:] + cases[:shift]:
            if case.max_samples is not None and len(case.samples) >= case.max_samples:
                continue
            total = sum(case.fn() for _ in range(case.inner))
            case.samples.append(total / case.inner)
        rnd += 1
        log(f"  {label}: round {rnd} done, {time.perf_counter() - start:.1f}s")


class Inputs:
    """A cycling pool of fresh random inputs, so that streamed writes do not repeat one key."""

    def __init__(self, settings: SDAPMSettings, batch: int, seed: int, size: int = 16):
        gen = torch.Generator().manual_seed(seed)
        w, h, n = settings.word_size, settings.read_heads, settings.slots
        self.keys = unit(size, batch, w, gen=gen)
        self.values = unit(size, batch, w, gen=gen) * 0.9
        self.words = unit(size, batch, h, w, gen=gen)
        self.selection = 0.5 + 0.5 * torch.rand(size, batch, n, generator=gen)
        self.cot_read = torch.randn(batch, h, w, generator=gen)
        self.i = 0
        self.strengths = torch.full((batch, h), STRENGTH)

    def next(self) -> int:
        self.i = (self.i + 1) % self.keys.shape[0]
        return self.i


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def field_loss(state: MemoryState, cot: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum((getattr(state, name) * c).sum() for name, c in cot.items())


# --------------------------------------------------------------------------------------------- speed


# The two forms of plain attention's scores (``attention``), and how the tables name them.
ATTENTION_FORMS = {"q KT": "`q Kᵀ`", "K qT": "`K qᵀ`"}
READS = {
    "dense": "read, dense exact",
    "topk": f"read, top-{TOP_K} exact",
    "short": f"read, top-{TOP_K} of {SHORTLIST} shortlisted",
}
# Parts of the reads, timed alone (forward) to explain where read time goes.
READ_PARTS = {
    "scoring": f"scoring only: subspace fit of all N + top-{TOP_K}",
    "shortlist": f"shortlist pass only: centroid cosine + top-{SHORTLIST}",
    "candidates": f"candidates' gather only: each head's {SHORTLIST} shortlisted slots' addressing fields",
}
# The part that grows with N in each read, and its name in the verdicts.
GROWING_PART = {"dense": "scoring", "topk": "scoring", "short": "shortlist"}
PART_NAMES = {"scoring": "scoring of all N slots", "shortlist": "shortlist pass"}
POLICIES = {
    "most-read": "consolidate the 2 slots most read by head 0 (O(N))",
    "closest-pair": "`closest_pair_selection` (O(N W))",
}


def read_settings(settings: SDAPMSettings) -> dict[str, SDAPMSettings]:
    return {
        "dense": settings,
        "topk": dataclasses.replace(settings, read_top_k=TOP_K),
        "short": dataclasses.replace(settings, read_top_k=TOP_K, read_candidates=min(SHORTLIST, settings.slots)),
    }


def attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, form: str) -> torch.Tensor:
    """``softmax(q Kᵀ) V``: q (B, R, W), keys and values (B, N, W); the scores computed as ``q Kᵀ`` (B, R, N) or
    as ``K qᵀ`` (B, N, R), the keys the left factor of the product (``ATTENTION_FORMS``)."""
    if form == "K qT":
        return torch.softmax(keys @ q.transpose(1, 2), 1).transpose(1, 2) @ values
    return torch.softmax(q @ keys.transpose(1, 2), -1) @ values


def policy_selection(policy: str, state: MemoryState) -> torch.Tensor:
    if policy == "closest-pair":
        return sdapm.closest_pair_selection(state)
    return state.read_weights[:, 0]


def speed_cases(n: int, batch: int, seed: int, groups: tuple[int, ...]) -> tuple[list[Case], dict]:
    settings = SDAPMSettings(slots=n, word_size=WORD, read_heads=HEADS, max_rank=RANK)
    base = build_state(settings, batch, seed)
    rs = read_settings(settings)
    inp = Inputs(settings, batch, seed + 1)
    with torch.no_grad():
        _, base = sdapm.read(base, inp.words[0], inp.strengths, settings)  # realistic last read weights
    box = {"state": base.map(torch.clone)}  # the streaming memory, updated in place by every in-place case
    gen = torch.Generator().manual_seed(seed + 2)
    cot_kv = {"key": torch.randn(batch, n, WORD, generator=gen), "value": torch.randn(batch, n, WORD, generator=gen)}
    cot_slot = {name: torch.randn(batch, RANK, WORD, generator=gen) for name in ("key_factors", "value_factors")}
    rows = torch.arange(batch)
    info = {
        "raw": base.rank.eq(0).float().mean().item(),
        "rank8": base.rank.eq(RANK).float().mean().item(),
        "mean_rank": base.rank.float().mean().item(),
        "mib": sum(t.numel() * t.element_size() for t in base.as_dict().values()) / 2**20,
    }
    cases: list[Case] = []

    def add(key, fn):
        cases.append(Case(key, fn))

    # attention: softmax(q Kᵀ) V over the same N slots
    keys, values = base.key, base.value

    def attention_fwd(form):
        def run():
            i = inp.next()
            with torch.no_grad():
                return timed(lambda: attention(inp.words[i], keys, values, form))

        return run

    def attention_fb(form):
        def run():
            q = inp.words[inp.next()].clone().requires_grad_()
            return timed(lambda: (attention(q, keys, values, form) * inp.cot_read).sum().backward())

        return run

    for form in ATTENTION_FORMS:
        add((f"attention:{form}", "fwd"), attention_fwd(form))
        add((f"attention:{form}", "fwd+bwd"), attention_fb(form))

    for name, s in rs.items():

        def read_fwd(s=s):
            i = inp.next()
            with torch.no_grad():
                return timed(lambda: sdapm.read(base, inp.words[i], inp.strengths, s))

        def read_fb(s=s):
            words = inp.words[inp.next()].clone().requires_grad_()
            strengths = inp.strengths.clone().requires_grad_()

            def run():
                out, _ = sdapm.read(base, words, strengths, s)
                (out * inp.cot_read).sum().backward()

            return timed(run)

        add((name, "fwd"), read_fwd)
        add((name, "fwd+bwd"), read_fb)

    # each part of a read of input i
    def scoring(i):
        fit, _ = subspace_fit(inp.words[i], base.key, base.key_factors, base.key_offsets, base.gram_inv, base.radius)
        return top_k_weights(fit, inp.strengths, base.occupied, TOP_K, presence=base.usage)

    def shortlist(i):
        return sdapm.shortlist_slots(base, inp.words[i], min(SHORTLIST, n))

    shortlists = [shortlist(i) for i in range(len(inp.words))]

    def candidates(i):
        return gather_candidates(base, shortlists[i])

    for name, part in (("scoring", scoring), ("shortlist", shortlist), ("candidates", candidates)):

        def part_fwd(part=part):
            i = inp.next()
            with torch.no_grad():
                return timed(lambda: part(i))

        add((name, "fwd"), part_fwd)

    # write
    def write_inplace():
        i = inp.next()
        with torch.no_grad():
            def run():
                box["state"] = sdapm.write(box["state"], inp.keys[i], inp.values[i], settings, inplace=True)
            return timed(run)

    def write_functional():
        i = inp.next()
        with torch.no_grad():
            return timed(lambda: sdapm.write(base, inp.keys[i], inp.values[i], settings))

    def write_fb():
        i = inp.next()
        k, v = inp.keys[i].clone().requires_grad_(), inp.values[i].clone().requires_grad_()
        return timed(lambda: field_loss(sdapm.write(base, k, v, settings), cot_kv).backward())

    add(("write", "fwd in-place"), write_inplace)
    add(("write", "fwd functional"), write_functional)
    add(("write", "fwd+bwd"), write_fb)

    # consolidate a group of g (selection: random weights in [0.5, 1] on occupied slots)
    for g in groups:

        def cons_inplace(g=g):
            i = inp.next()
            with torch.no_grad():
                def run():
                    box["state"] = sdapm.consolidate(box["state"], inp.selection[i], settings, g, inplace=True)
                elapsed = timed(run)
                for j in range(g - 1):  # refill the freed slots (untimed) so the memory stays full
                    box["state"] = sdapm.write(
                        box["state"], inp.keys[(i + j) % 16], inp.values[(i + j) % 16], settings, inplace=True
                    )
            return elapsed

        def cons_functional(g=g):
            i = inp.next()
            with torch.no_grad():
                return timed(lambda: sdapm.consolidate(base, inp.selection[i], settings, g))

        def cons_fb(g=g):
            selection = inp.selection[inp.next()].clone().requires_grad_()
            target = (selection.detach() * base.occupied).argmax(-1)  # the slot that receives the merge

            def run():
                new = sdapm.consolidate(base, selection, settings, g)
                loss = field_loss(new, cot_kv) + sum(
                    (getattr(new, name)[rows, target] * c).sum() for name, c in cot_slot.items()
                )
                loss.backward()

            return timed(run)

        add((f"consolidate{g}", "fwd in-place"), cons_inplace)
        add((f"consolidate{g}", "fwd functional"), cons_functional)
        add((f"consolidate{g}", "fwd+bwd"), cons_fb)

    # step: consolidate (group 2) when full, write, read
    def make_steps(policy: str, read_name: str, modes: tuple[str, ...]):
        s_read = rs[read_name]
        key = f"step:{policy}:{read_name}"

        def step_inplace(case_ref):
            i = inp.next()
            parts = case_ref[0].parts
            with torch.no_grad():
                st = box["state"]
                t0 = time.perf_counter()
                full = sdapm.is_full(st)
                selection = policy_selection(policy, st)
                t1 = time.perf_counter()
                st = sdapm.consolidate(st, selection, settings, 2, mask=full, inplace=True)
                t2 = time.perf_counter()
                st = sdapm.write(st, inp.keys[i], inp.values[i], settings, inplace=True)
                t3 = time.perf_counter()
                _, st = sdapm.read(st, inp.words[i], inp.strengths, s_read)
                t4 = time.perf_counter()
                box["state"] = st
            for part, dt in (("select", t1 - t0), ("consolidate", t2 - t1), ("write", t3 - t2), ("read", t4 - t3)):
                parts.setdefault(part, []).append(dt)
            return t4 - t0

        def step_functional():
            i = inp.next()

            def run():
                st = base
                full = sdapm.is_full(st)
                st = sdapm.consolidate(st, policy_selection(policy, st), settings, 2, mask=full)
                st = sdapm.write(st, inp.keys[i], inp.values[i], settings)
                return sdapm.read(st, inp.words[i], inp.strengths, s_read)

            with torch.no_grad():
                return timed(run)

        def step_fb():
            i = inp.next()
            k, v = inp.keys[i].clone().requires_grad_(), inp.values[i].clone().requires_grad_()
            words = inp.words[i].clone().requires_grad_()
            strengths = inp.strengths.clone().requires_grad_()

            def run():
                st = base
                full = sdapm.is_full(st)
                st = sdapm.consolidate(st, policy_selection(policy, st), settings, 2, mask=full)
                st = sdapm.write(st, k, v, settings)
                out, _ = sdapm.read(st, words, strengths, s_read)
                (out * inp.cot_read).sum().backward()

            return timed(run)

        if "fwd in-place" in modes:
            ref: list[Case] = []
            case = Case((key, "fwd in-place"), lambda: step_inplace(ref))
            ref.append(case)
            cases.append(case)
        if "fwd functional" in modes:
            add((key, "fwd functional"), step_functional)
        if "fwd+bwd" in modes:
            add((key, "fwd+bwd"), step_fb)

    for read_name in rs:
        make_steps("most-read", read_name, ("fwd in-place", "fwd functional", "fwd+bwd"))
    make_steps("closest-pair", "short", ("fwd in-place",))
    return cases, info


def run_speed(args) -> tuple[dict, dict, dict]:
    results: dict[tuple, float] = {}
    parts: dict[tuple, dict] = {}
    infos: dict[int, dict] = {}
    for n in args.sizes:
        log(f"speed: N = {n}")
        t0 = time.perf_counter()
        cases, info = speed_cases(n, BATCH, args.seed, tuple(args.groups))
        infos[n] = info
        log(
            f"  memory built in {time.perf_counter() - t0:.1f}s: {info['raw']:.0%} raw slots, "
            f"{info['rank8']:.0%} of rank {RANK}, mean rank {info['mean_rank']:.1f}, state {info['mib']:.0f} MiB"
        )
        measure(cases, args, f"N={n}")
        spreads = sorted(case.spread() for case in cases)
        infos[n]["spread"] = (statistics.median(spreads), spreads[-1])
        infos[n]["rounds"] = max(len(case.samples) for case in cases)
        for case in cases:
            results[(*case.key, n)] = case.median_ms()
            if case.parts:
                parts[(*case.key, n)] = case.part_ms()
        for mode in ("fwd", "fwd+bwd"):  # the baseline: attention in its faster form
            results[("attention", mode, n)] = min(results[(f"attention:{form}", mode, n)] for form in ATTENTION_FORMS)
        for case in cases:
            log(
                f"    {case.key[0]:>28} {case.key[1]:>15}: {fmt(case.median_ms()):>8} ms "
                f"({len(case.samples)} samples, spread {case.spread():.0%})"
            )
        del cases
    return results, parts, infos


def speed_markdown(args, results, parts, infos) -> tuple[str, list[str]]:
    sizes = args.sizes
    head = ["operation", "mode"] + [f"N={n}" for n in sizes]
    rows = []

    def row(label, key, mode):
        rows.append([label, mode] + [fmt(results.get((key, mode, n))) for n in sizes])

    for mode in ("fwd", "fwd+bwd"):
        for form in ATTENTION_FORMS:
            row(f"plain softmax attention, scores as {ATTENTION_FORMS[form]}", f"attention:{form}", mode)
        for name, label in READS.items():
            row(label, name, mode)
        if mode == "fwd":
            for name, label in READ_PARTS.items():
                row(label, name, mode)
    for mode in ("fwd in-place", "fwd functional", "fwd+bwd"):
        row("write", "write", mode)
    for g in args.groups:
        for mode in ("fwd in-place", "fwd functional", "fwd+bwd"):
            row(f"consolidate, group of {g}", f"consolidate{g}", mode)
    for policy in POLICIES:
        for name in READS:
            for mode in ("fwd in-place", "fwd functional", "fwd+bwd"):
                key = f"step:{policy}:{name}"
                if any((key, mode, n) in results for n in sizes):
                    row(f"step ({policy}), {READS[name].removeprefix('read, ')}", key, mode)
    speed_table = table(head, rows)

    ratio_rows = []
    for mode in ("fwd", "fwd+bwd"):
        for name, label in READS.items():
            ratio_rows.append(
                [label, mode]
                + [ratio(results.get((name, mode, n)), results.get(("attention", mode, n))) for n in sizes]
            )
    ratio_table = table(["read / attention", "mode"] + [f"N={n}" for n in sizes], ratio_rows)

    n0, n1 = sizes[0], sizes[-1]
    step_rows = []
    for policy in POLICIES:
        for name in READS:
            for mode in ("fwd in-place", "fwd functional", "fwd+bwd"):
                key = f"step:{policy}:{name}"
                a, b = results.get((key, mode, n1)), results.get((key, mode, n0))
                if a is not None and b is not None:
                    step_rows.append(
                        [f"step ({policy}), {READS[name].removeprefix('read, ')}", mode, fmt(b), fmt(a), ratio(a, b)]
                    )
    step_table = table(["step", "mode", f"N={n0} ms", f"N={n1} ms", f"N={n1} / N={n0}"], step_rows)

    part_rows = []
    for policy in POLICIES:
        for name in READS:
            key = f"step:{policy}:{name}"
            for n in sizes:
                p = parts.get((key, "fwd in-place", n))
                if p:
                    part_rows.append(
                        [f"{policy}, {READS[name].removeprefix('read, ')}", str(n)]
                        + [fmt(p[k]) for k in ("select", "consolidate", "write", "read")]
                        + [fmt(results[(key, "fwd in-place", n)])]
                    )
    part_table = table(
        ["step (in place)", "N", "is_full + selection", "consolidate", "write", "read", "step (median of totals)"],
        part_rows,
    )

    # targets, each with the measurement that explains it
    verdicts = []
    att = lambda mode, n: results.get(("attention", mode, n))  # noqa: E731
    part = lambda key, n: results.get((key, "fwd", n))  # noqa: E731
    a_n = 1024 if 1024 in sizes else sizes[-1]
    for name in ("topk", "short"):
        fwd, base_ms = results.get((name, "fwd", a_n)), att("fwd", a_n)
        if fwd is None or base_ms is None:
            continue
        met = fwd <= 2 * base_ms
        line = (
            f"* (a) {READS[name]} within 2× of plain attention at N={a_n}: forward {fmt(fwd)} ms vs {fmt(base_ms)} ms "
            f"= {ratio(fwd, base_ms)}, **{'met' if met else 'missed'}**"
        )
        fb, base_fb = results.get((name, "fwd+bwd", a_n)), att("fwd+bwd", a_n)
        if fb is not None and base_fb is not None:
            line += (
                f"; forward and backward {fmt(fb)} ms vs {fmt(base_fb)} ms = {ratio(fb, base_fb)}, "
                f"**{'met' if fb <= 2 * base_fb else 'missed'}**"
            )
        line += "."
        if not met and name == "topk":
            line += (
                f" Exact top-K must score every slot before it can choose K: scoring alone (subspace fit of all N"
                f" slots + top-{TOP_K}) takes {fmt(part('scoring', a_n))} ms of the {fmt(fwd)} ms. It streams the key"
                f" factors of every slot (N·r·W floats against the 2·N·W of attention's keys and values) and"
                f" multiplies by each slot's r × r `gram_inv` per head. The value side runs over the {TOP_K} chosen"
                f" slots only (the dense read, whose value side runs over all N, takes"
                f" {fmt(results.get(('dense', 'fwd', a_n)))} ms)."
            )
        if not met and name == "short":
            sl, sl0, read0 = part("shortlist", a_n), part("shortlist", n0), results.get((name, "fwd", n0))
            gather = part("candidates", a_n)
            line += (
                f" The shortlist pass over all N slots (centroid cosine + top-{SHORTLIST}) takes {fmt(sl)} ms at"
                f" N={a_n} ({ratio(sl, base_ms)} attention). The rest, gathering each head's {SHORTLIST} candidates"
                f" (factors and `gram_inv`), scoring them and reading {TOP_K}, takes {fmt(fwd - sl)} ms, and"
                f" {fmt(read0 - sl0)} ms at N={n0}, where attention takes {fmt(att('fwd', n0))} ms: the same work at"
                f" every N, slower at large N as the gathers from a larger memory miss the cache more."
                f" The gather alone (each candidate's addressing fields copied out, nothing computed) takes"
                f" {fmt(gather)} ms ({ratio(gather, base_ms)} attention): with the shortlist pass,"
                f" {fmt(sl + gather)} ms = {ratio(sl + gather, base_ms)} attention before any candidate is scored."
                f" Each candidate's key factors are r·W floats, so the {SHORTLIST} candidates of {HEADS} heads copy"
                f" {SHORTLIST * HEADS * RANK}·W floats per sequence, against the 2·N·W = {2 * a_n}·W that attention"
                f" reads, and eager torch copies them out before a matmul can read them again."
            )
        verdicts.append(line)
    for policy in POLICIES:
        for name in READS:
            key = f"step:{policy}:{name}"
            a, b = results.get((key, "fwd in-place", n1)), results.get((key, "fwd in-place", n0))
            if a is None or b is None:
                continue
            met = a <= 2 * b
            line = (
                f"* (b) step ({policy}), {READS[name].removeprefix('read, ')}, fwd in-place: N={n1} / N={n0} = "
                f"{fmt(a)} / {fmt(b)} ms = {ratio(a, b)}, **{'met' if met else 'missed'}**"
            )
            p0, p1 = parts.get((key, "fwd in-place", n0)), parts.get((key, "fwd in-place", n1))
            if p0 and p1:
                growth = sorted(((p1[k] - p0[k], k) for k in p0), reverse=True)
                named = {"select": "is_full + selection"}
                line += "; growth by part: " + ", ".join(
                    f"{named.get(k, k)} {'+' if d >= 0 else '−'}{fmt(abs(d))} ms" for d, k in growth
                )
                grows = GROWING_PART[name]
                g0, g1 = results.get((grows, "fwd", n0)), results.get((grows, "fwd", n1))
                if g0 is not None and g1 is not None:
                    line += f"; the {PART_NAMES[grows]} alone takes {fmt(g0)} ms at N={n0}, {fmt(g1)} ms at N={n1}"
            verdicts.append(line + ".")
    rounds_line = ", ".join(f"N={n}: {i['rounds']}" for n, i in infos.items())
    spread_line = "; ".join(f"N={n}: {i['spread'][0]:.0%}, {i['spread'][1]:.0%}" for n, i in infos.items())
    info_lines = "\n".join(
        f"* N={n}: {i['raw']:.0%} raw slots, {i['rank8']:.0%} of rank {RANK}, mean rank {i['mean_rank']:.1f}, "
        f"state {i['mib']:.0f} MiB" for n, i in infos.items()
    )
    body = f"""Setup: B = {BATCH}, W = {WORD}, R = {HEADS} read heads, **`max_rank = {RANK}`**, other settings at their
defaults (ridge 1e-4, gain bound 8, mass bound 256, unit words); float32; β = {STRENGTH:g} for every read.

The memory is full and realistic: every slot occupied (usage 1), about half raw slots (one unit pair,
rank 0) and half consolidated slots built by `merge_slots` from 2–12 random unit pairs (rank 1–{RANK}, least
squares beyond {RANK + 1} members), each under its own random signed permutation of the coordinates (an
orthogonal change of basis, so `gram_inv` stays exact; the script checks it):

{info_lines}

What is measured:

* Modes: `fwd in-place` = no_grad with `inplace=True` on one streaming memory (the in-place consolidation
  is followed by untimed writes that refill the freed slots); `fwd functional` = no_grad, functional
  updates; `fwd+bwd` = functional updates with autograd, then `backward()` of a fixed random projection: of
  the read output (gradients w.r.t. the read words and strengths; for attention w.r.t. the queries), of the
  new state's key and value (write: gradients w.r.t. the written key and value), of its key and value and
  the merged slot's factors (consolidate: gradient w.r.t. the selection weights).
* Plain attention: `softmax(q Kᵀ) V` with q the (unit) read words (B, R, W) and K, V the N slot keys and
  values, interleaved with the memory calls at every N, in two forms: the scores computed as `q Kᵀ`, and as
  `K qᵀ` (the keys the left factor of the product; the shortlist pass computes its centroid scores so). Each
  ratio to attention below is to the faster of the two in that mode and at that N.
* Reads: dense exact (softmax over all N subspace-fit scores); top-{TOP_K} exact (all N scored, softmax over
  the best {TOP_K}, only their maps applied); top-{TOP_K} of a {SHORTLIST}-slot shortlist (`read_candidates={SHORTLIST}`:
  centroid cosine picks {SHORTLIST} slots per head, only those are scored exactly). Three parts are also timed
  alone: the scoring of all N slots with the top-{TOP_K} choice (`subspace_fit` + `top_k_weights`, the part of
  the exact reads that grows with N), the shortlist pass (`shortlist_slots`, the part of the shortlisted
  read that grows with N) and the gather of the shortlisted candidates' addressing fields (`gather_candidates`,
  the copy the shortlisted read makes before it scores them). They are separate calls: at N={sizes[-1]},
  where memory-bound calls vary with what ran just before them (see the spread), a part can measure above the
  read that contains it.
* Consolidate: a group of g chosen by random selection weights in [0.5, 1] (soft membership).
* Step: if `is_full`, consolidate 2 slots chosen by the policy; then write a fresh pair (allocation takes
  the freed slot); then read. Every step of a full memory consolidates. Policies: most-read =
  {POLICIES['most-read']}; closest-pair = {POLICIES['closest-pair']}, the policy of
  `sdapm_hf.memory_demo.stream_recall` (the capacity test uses it too).

ms per call, median over interleaved rounds ({rounds_line}; calls above {args.slow_s:g} s: 3 rounds).
Round-to-round spread (interquartile range / median; median and largest over the cases): {spread_line}.

{speed_table}

Read time relative to plain attention at the same N:

{ratio_table}

Step growth from N={n0} to N={n1}:

{step_table}

Where the in-place step spends its time (median of each part over the step calls):

{part_table}

Targets:

{chr(10).join(verdicts)}
"""
    return body, verdicts


# --------------------------------------------------------------------------------------------- forms


def dense_map_read(words, strengths, state, maps):
    """Mixture read over materialised maps: addressing as in ``sdapm.read``, then one bmm
    (B, R, N·W) @ (B, N·W, W) for Σ_n a_n (x − b_n) M_n, plus a @ c."""
    b, heads, w = words.shape
    n = state.key.shape[1]
    x = F.normalize(words, dim=-1)
    fit, _ = subspace_fit(x, state.key, state.key_factors, state.key_offsets, state.gram_inv, state.radius)
    a = content_weights(fit, strengths, state.occupied)
    z = a.unsqueeze(-1) * (x.unsqueeze(2) - state.key.unsqueeze(1))  # (B, R, N, W)
    return z.reshape(b, heads, n * w) @ maps.reshape(b, n * w, w) + a @ state.value


def address_only(words, strengths, state):
    x = F.normalize(words, dim=-1)
    fit, _ = subspace_fit(x, state.key, state.key_factors, state.key_offsets, state.gram_inv, state.radius)
    return content_weights(fit, strengths, state.occupied)


def forms_speed(args) -> tuple[str, list[list[str]]]:
    rows = []
    for n in args.form_sizes:
        settings = SDAPMSettings(slots=n, word_size=WORD, read_heads=HEADS, max_rank=RANK)
        state = build_state(settings, BATCH, args.seed)
        inp = Inputs(settings, BATCH, args.seed + 1)
        with torch.no_grad():
            _, maps, _ = sdapm.slot_maps(state)
            maps = maps.contiguous()
            low_rank, _ = sdapm.read(state, inp.words[0], inp.strengths, settings)
            check = (dense_map_read(inp.words[0], inp.strengths, state, maps) - low_rank).abs().max().item()

        def case(fn):
            def run():
                i = inp.next()
                with torch.no_grad():
                    return timed(lambda: fn(inp.words[i]))
            return Case((), run)

        cases = [
            case(lambda x: attention(x, state.key, state.value, "q KT")),
            case(lambda x: address_only(x, inp.strengths, state)),
            case(lambda x: sdapm.read(state, x, inp.strengths, settings)),
            case(lambda x: dense_map_read(x, inp.strengths, state, maps)),
        ]
        log(f"forms: read representations, N = {n}")
        measure(cases, args, f"N={n}")
        low_mib = sum(t.numel() * t.element_size() for t in state.as_dict().values()) / 2**20
        dense_mib = (maps.numel() + state.key.numel() + state.value.numel()) * 4 / 2**20
        rows.append(
            [str(n)]
            + [fmt(c.median_ms()) for c in cases]
            + [ratio(cases[3].median_ms(), cases[2].median_ms()), f"{low_mib:.0f} / {dense_mib:.0f}", f"{check:.1e}"]
        )
        del maps, state
    header = [
        "N", "attention", "addressing only", "low-rank, mixture", "dense M, mixture (bmm)",
        "dense / low-rank", "state MiB low-rank / dense", "max |dense − low-rank|",
    ]
    return table(header, rows), rows


def forms_accuracy(args) -> str:
    w, groups, size, raws, batch = 32, 8, 6, 16, args.form_batch
    settings = SDAPMSettings(slots=groups * size + raws, word_size=w)
    gen = torch.Generator().manual_seed(args.seed + 5)
    keys = unit(batch, groups * size + raws, w, gen=gen)
    values = unit(batch, groups * size + raws, w, gen=gen)
    state = sdapm.init_state(settings, batch)
    with torch.no_grad():
        for i in range(groups * size):
            state = sdapm.write(state, keys[:, i], values[:, i], settings)
        for gi in range(groups):
            # the group's members sit where they were written; find them by their keys
            member_keys = keys[:, gi * size : (gi + 1) * size]
            hit = (torch.einsum("bnw,bgw->bng", state.key, member_keys) > 1 - 1e-5).any(-1) & (state.rank == 0)
            state = sdapm.consolidate(state, hit.float(), settings, size)
        for i in range(groups * size, groups * size + raws):
            state = sdapm.write(state, keys[:, i], values[:, i], settings)
    assert state.occupied.sum(-1).eq(groups + raws).all() and state.rank.gt(0).sum(-1).eq(groups).all()
    rows = []
    for beta in args.betas:
        cells = [f"{beta:g}"]
        for query in ("member", "raw"):
            sl = slice(0, groups * size) if query == "member" else slice(groups * size, None)
            q, v = keys[:, sl], values[:, sl]
            s = dataclasses.replace(settings, read_heads=q.shape[1])
            st = dataclasses.replace(state, read_weights=torch.zeros(batch, q.shape[1], settings.slots))
            with torch.no_grad():
                out, _ = sdapm.read(st, q, torch.full(q.shape[:2], float(beta)), s)
            err = (out - v).norm(dim=-1) / v.norm(dim=-1)
            cells.append(f"{err.mean():.3g} (max {err.max():.3g})")
        rows.append(cells)
    return table(["β", "member keys", "raw keys"], rows)


def forms_recall(args) -> str:
    w, batch = 32, 4
    columns = ["dense exact", f"top-{TOP_K} exact"]
    columns += [f"top-{TOP_K} of {c} shortlisted" for c in args.recall_candidates]
    rows = []
    for n in args.recall_slots:
        settings = SDAPMSettings(slots=n, word_size=w)
        variants = {"dense exact": settings, f"top-{TOP_K} exact": dataclasses.replace(settings, read_top_k=TOP_K)}
        for c in args.recall_candidates:
            if TOP_K <= c < n:
                variants[f"top-{TOP_K} of {c} shortlisted"] = dataclasses.replace(
                    settings, read_top_k=TOP_K, read_candidates=c)
        checkpoints = {n * r for r in args.recall_ratios}
        pairs = max(checkpoints)
        gen = torch.Generator().manual_seed(args.seed + 7)
        keys, values = unit(batch, pairs, w, gen=gen), unit(batch, pairs, w, gen=gen)
        state = sdapm.init_state(settings, batch)
        start = time.perf_counter()
        log(f"forms: shortlist recall, N = {n}, up to P = {pairs}")
        with torch.no_grad():
            for i in range(pairs):
                full = sdapm.is_full(state)
                selection = sdapm.closest_pair_selection(state)
                state = sdapm.consolidate(state, selection, settings, 2, mask=full, inplace=True)
                state = sdapm.write(state, keys[:, i], values[:, i], settings, inplace=True)
                p = i + 1
                if p not in checkpoints:
                    continue
                cells = [str(n), f"{p} ({p // n})", str(int(state.rank.amax()))]
                for name in columns:
                    if name not in variants:
                        cells.append("–")
                        continue
                    hits = 0
                    for lo in range(0, p, 64):
                        q = keys[:, lo : min(p, lo + 64)]
                        sh = dataclasses.replace(variants[name], read_heads=q.shape[1])
                        st = dataclasses.replace(state, read_weights=torch.zeros(batch, q.shape[1], n))
                        out, _ = sdapm.read(st, q, torch.full(q.shape[:2], 1e4), sh)
                        decoded = torch.cdist(out, values[:, :p]).argmin(-1)
                        hits += (decoded == torch.arange(lo, lo + q.shape[1])).sum().item()
                    cells.append(f"{hits / (batch * p):.3f}")
                rows.append(cells)
                log(f"  N={n}, P={p}: {cells[3:]} ({time.perf_counter() - start:.1f}s)")
    return table(["N", "P (pairs per slot)", "max rank"] + columns, rows)


def run_forms(args) -> str:
    speed, _ = forms_speed(args)
    log("forms: read-form accuracy")
    accuracy = forms_accuracy(args)
    log("forms: shortlist recall")
    recall = forms_recall(args)
    return f"""(i) Read time of the low-rank slots against dense maps. B = {BATCH}, W = {WORD}, R = {HEADS},
`max_rank = {RANK}`, dense softmax (no top-K), β = {STRENGTH:g}, the same kind of full memory as the speed
section. "dense M" materialises `M_n = I + X_nᵀ G_n Y_n` with `slot_maps` (untimed) and reads the mixture
as one bmm (B, R, N·W) @ (B, N·W, W) after the same addressing; "addressing only" is `subspace_fit` +
`content_weights`.
ms per read, median over at least {args.rounds} interleaved rounds; the last column checks that both
compute the same read.

{speed}

(ii) Accuracy of the mixture read under soft addressing: W = 32, 8 consolidated slots of 6 member pairs each
(rank 5) plus 16 raw slots, all keys and values random unit vectors, default settings; each stored key read
back by its own head at strength β; relative error ‖y − v‖ / ‖v‖, mean (max) over {args.form_batch} memories
× 48 member keys (or × 16 raw keys).

{accuracy}

(iii) Recall cost of the shortlist: N slots, W = 32, default settings (`max_rank = W`), a stream of P
random unit pairs written one by one, consolidating the closest pair (`closest_pair_selection`, group 2)
whenever the memory is full, as in `sdapm_hf.memory_demo.stream_recall` (the capacity test uses it too). Then every stored key is read
(β = 10⁴, one head per key) and decoded to the nearest of the P values; fraction recalled over 4 memories.

{recall}
"""


# --------------------------------------------------------------------------------------------- output


def header(args, title: str) -> str:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    quick = " (**quick smoke run: small sizes, not for citation**)" if args.quick else ""
    return (
        f"## {title}{quick}\n\n"
        f"Command: `{args.command}` (from the repository root)  \n"
        f"Date: {date}  \n"
        f"Code: {code_revision()}  \n"
        f"Machine: {args.machine}\n"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument("--forms", action="store_true", help="run only the read-form / recall section")
    what.add_argument("--speed", action="store_true", help="run only the speed section")
    p.add_argument("--quick", action="store_true", help="small sizes and few rounds (smoke test, ~1 minute)")
    p.add_argument(
        "--out",
        default=None,
        help="markdown file whose bench_memory sections are replaced (default docs/benchmarks.md; with --quick, "
        "nothing is written unless --out is given; '-' writes nothing)",
    )
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="slot counts N of the speed section")
    p.add_argument("--groups", type=int, nargs="+", default=None, help="consolidation group sizes (default 2 8)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 5)")
    p.add_argument("--target-ms", type=float, default=20.0, help="repeat calls shorter than this inside one sample")
    p.add_argument("--slow-s", type=float, default=2.0, help="calls slower than this get only 3 samples")
    p.add_argument(
        "--budget-s", type=float, default=None, help="keep adding rounds while one N took less than this (default 30)"
    )
    p.add_argument("--max-rounds", type=int, default=15, help="most interleaved rounds per N")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.command = command_line(argv, "scripts/bench_memory.py")
    quick = args.quick
    args.sizes = args.sizes or ([64, 256] if quick else [64, 256, 1024, 4096])
    args.groups = args.groups or ([2] if quick else [2, 8])
    args.rounds = args.rounds or (2 if quick else 5)
    args.budget_s = args.budget_s if args.budget_s is not None else (0.0 if quick else 30.0)
    args.form_sizes = [64, 256] if quick else [64, 256, 1024]
    args.form_batch = 4 if quick else 16
    args.betas = [5, 20, 100]
    args.recall_slots = [32] if quick else [64, 256]
    args.recall_ratios = [2, 4] if quick else [2, 4, 8, 16]
    args.recall_candidates = [16] if quick else [16, 32]
    if args.out is None:
        args.out = "-" if quick else str(REPO / "docs" / "benchmarks.md")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    args.machine = machine()
    log(f"{args.command}\nmachine: {args.machine}")
    start = time.perf_counter()
    sections = {}
    if not args.forms:
        results, parts, infos = run_speed(args)
        body, verdicts = speed_markdown(args, results, parts, infos)
        sections["speed"] = header(args, "Memory core speed against plain attention") + "\n" + body
        log("\n" + body)
    if not args.speed:
        body = run_forms(args)
        sections["forms"] = header(args, "Read representations, read forms and shortlist recall") + "\n" + body
        log("\n" + body)
    log(f"total {time.perf_counter() - start:.0f}s")
    if args.out != "-":
        out = Path(args.out)
        text = out.read_text() if out.exists() else ""
        for name, body in sections.items():
            text = replace_section(text, name, body, MARK)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        log(f"wrote the {' and '.join(sections)} section(s) of {out.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
