"""``torch.compile`` of the memory's steps, with eager as the fallback.

The recurrence calls one function per position (``MemoryCore.step``, per-token mode) or per chunk
(``MemoryCore._chunk_piece``, chunked mode). Those functions never see the sequence length, so compiling them, and
not the loop around them, gives graphs that a new length does not recompile. Where the memory's control flow
depends on its contents (skipping consolidation while the memory has room, the rank a merge needs, ACT's early
stop), a CPU step breaks its graph and runs that part eager; on an accelerator the step takes its shape-static
path (``tensor_state.host_reads_free``) and is one graph.

A backend that cannot compile (no C++ compiler for inductor on CPU, an unsupported device) raises at the first
call; the step then warns once, naming the error, and runs eager from then on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch


class CompiledStep:
    """``fn`` through ``torch.compile(fn, **options)``; eager ``fn`` once the backend has failed."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        self.eager = fn
        self.compiled = torch.compile(fn, **options)
        self.failure: str | None = None

    def __call__(self, *args: Any) -> Any:
        if self.failure is None:
            try:
                return self.compiled(*args)
            except torch._dynamo.exc.BackendCompilerFailed as error:
                cause = getattr(error, "inner_exception", None) or error
                self.failure = f"{type(cause).__name__}: {cause}"
                warnings.warn(f"torch.compile of the memory's {self.eager.__name__} failed, running it eager: "
                              f"{self.failure}", RuntimeWarning, stacklevel=2)
        return self.eager(*args)
