"""What every benchmark and results page shares: the machine, the code revision, the command that ran, number
formats, markdown tables, and replacing one marked section of a page.

Pages name the command that produced each section (from the repository's root, without any path of the machine it
ran on), the date, the code revision and the machine.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or "unknown CPU"."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine() -> str:
    """The CPU model, core count, torch version, threads and load average of this machine."""
    load = ""
    if hasattr(os, "getloadavg"):
        load = f"; load average {os.getloadavg()[0]:.2f} at start (cores shared with other jobs)"
    threads = torch.get_num_threads()
    return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {threads} thread(s){load}"


def set_up(device: str) -> dict[str, str]:
    """What decides a run's rounding besides its code and arguments, and so whether another machine can repeat it
    digit for digit: the CPU and the vector instructions torch's kernels use on it, the device, and the versions of
    torch and transformers."""
    return {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "device": device_name(device), "torch": torch.__version__, "transformers": version("transformers")}


def device_name(device: str) -> str:
    """What ``device`` ("cpu", "cuda", "cuda:1") is: the GPU's name and CUDA version, or "CPU"."""
    if torch.device(device).type != "cuda":
        return "CPU"
    return f"{torch.cuda.get_device_name(torch.device(device))}, CUDA {torch.version.cuda}"


def code_revision() -> str:
    """The git commit of the checkout, and whether the package differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "sdapm_hf"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"commit {head}" + (" with uncommitted changes in `sdapm_hf/`" if dirty else "")


def command_line(argv: list[str], script: str) -> str:
    """The command that ran ``script`` as typed from the repository root, without any path of this machine."""
    args = []
    for arg in argv:
        path = Path(arg)
        if path.is_absolute():
            try:
                arg = str(path.resolve().relative_to(REPO))
            except ValueError:
                arg = path.name
        args.append(arg)
    return shlex.join(["python", script, *args])


def fmt(ms: float | None) -> str:
    """A duration in ms with three significant digits ("–" for none)."""
    if ms is None or ms != ms:
        return "–"
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def ratio(a: float | None, b: float | None) -> str:
    """``a / b`` as "1.23×" ("–" when either is missing)."""
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.1f}×" if a / b >= 10 else f"{a / b:.2f}×"


def interleaved_seconds(cases: dict[str, Callable[[], object]], rounds: int,
                        device: str = "cpu") -> dict[str, list[float]]:
    """Seconds of each call of every case over ``rounds`` rounds, after one warm-up call each; the order rotates
    from round to round, so that load from other jobs hits every case alike. On the CPU they are CPU seconds (which
    other jobs do not stretch); on a CUDA device wall seconds, the device synchronised before and after each call."""
    cuda = torch.device(device).type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    names = list(cases)
    for run in cases.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            if cuda:
                torch.cuda.synchronize(device)
            started = clock()
            cases[name]()
            if cuda:
                torch.cuda.synchronize(device)
            seconds[name].append(clock() - started)
            print(f"round {round_ + 1}/{rounds} {name}: {seconds[name][-1]:.3f} {'wall' if cuda else 'CPU'} s",
                  flush=True)
    return seconds


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def replace_section(text: str, name: str, body: str, mark: str) -> str:
    """``text`` with the section between the markers ``mark`` of ``name`` replaced by ``body`` (appended if absent);
    ``mark`` is a format string of the section's name and "start" or "end"."""
    start, end = mark.format(name, "start"), mark.format(name, "end")
    block = f"<!-- {start} -->\n{body.rstrip()}\n<!-- {end} -->"
    i, j = text.find(f"<!-- {start} -->"), text.find(f"<!-- {end} -->")
    if i >= 0 and j > i:
        return text[:i] + block + text[j + len(f"<!-- {end} -->") :]
    if not text.strip():
        text = "# Benchmarks\n\nEach section names the command that produced it, the date and the machine.\n"
    return text.rstrip() + "\n\n" + block + "\n"


def add_page_arguments(parser: argparse.ArgumentParser) -> None:
    """A benchmark's ``--write`` and ``--out``: whether and where it writes its section (docs/benchmarks.md)."""
    parser.add_argument("--write", action="store_true", help="replace the section(s) in --out")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"), help="markdown file for --write")


def write_section(path: str | Path, name: str, body: str, mark: str) -> None:
    """Replace (or append) the section ``name`` of the page at ``path`` (``replace_section``)."""
    path = Path(path)
    path.write_text(replace_section(path.read_text() if path.exists() else "", name, body, mark))
