"""The allocator settings the ``sdapm-hf`` command applies: a freed large buffer is reused, not faulted in afresh;
and ``lazy_zeros``: a large empty memory costs no page until it is touched."""

import platform
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdapm_hf import sdapm
from sdapm_hf.allocator import ALLOCATOR_VARIABLES, keep_freed_memory
from sdapm_hf.tensor_state import LAZY_ZEROS_BYTES, lazy_zeros

# In a fresh process: write a 40 MB buffer and free it, three times; print the page faults of a fourth.
LATER_BUFFER_FAULTS = """
import resource, sys, torch
from sdapm_hf.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
for _ in range(3):
    torch.ones(10_000_000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(10_000_000)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def later_buffer_faults(mode: str) -> tuple[str, int]:
    env = {"PATH": "", "OMP_NUM_THREADS": "1"}  # no allocator variables from the caller's environment
    out = subprocess.run([sys.executable, "-c", LATER_BUFFER_FAULTS, mode], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_kept_freed_memory_is_reused_without_page_faults():
    applied, kept = later_buffer_faults("keep")
    _, default = later_buffer_faults("default")
    pages = 40_000_000 // 4096
    assert applied == "True"
    assert default > pages // 2  # glibc maps a block this large afresh: every page faults in again
    assert kept < pages // 10


@pytest.mark.parametrize("variable", ALLOCATOR_VARIABLES)
def test_an_allocator_setting_in_the_environment_stands(monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    assert keep_freed_memory() is False


@pytest.mark.parametrize("shape", [(3, 5), (2, 1024, 8, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.long])
def test_lazy_zeros_are_zeros_of_their_own(shape, dtype):
    t = lazy_zeros(*shape, dtype=dtype)
    assert t.shape == shape and t.dtype == dtype and t.device.type == "cpu" and t.is_contiguous()
    assert t._base is None  # not a view: autograd would route in-place writes through the base
    assert torch.equal(t, torch.zeros(shape, dtype=dtype))
    t[(0,) * len(shape)] = 7
    assert t.sum().item() == 7


def test_lazy_zeros_elsewhere_are_torch_zeros():
    t = lazy_zeros(1024, 1024, dtype=torch.float32, device="meta")
    assert t.device.type == "meta" and t.shape == (1024, 1024)


def mapped_bytes() -> int:
    """The process's virtual size in bytes (Linux ``/proc/self/statm`` counts it in pages)."""
    return int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the process's virtual size (Linux)")
def test_a_large_empty_memory_touches_no_page_and_is_released():
    count = 10_000_000  # 40 MB of float32, ten thousand pages
    assert count * 4 >= LAZY_ZEROS_BYTES
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = lazy_zeros(count, dtype=torch.float32)
    t[count // 2] = 1.0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 100 and t[count // 2 - 1 : count // 2 + 1].tolist() == [0.0, 1.0]
    mapped = mapped_bytes()
    del t
    assert mapped - mapped_bytes() >= count * 4  # the mapping went with the tensor


def test_the_empty_memory_is_lazy_and_not_views():
    settings = sdapm.SDAPMSettings(slots=4096, word_size=16, max_rank=4)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    state = sdapm.init_state(settings, batch_size=32)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < state.key_factors.nbytes // resource.getpagesize() // 2  # filled, one field alone faults more
    for name, field in state.as_dict().items():
        assert field._base is None, name
        assert not field.any(), name
