"""The allocator settings the ``sdapm-hf`` command applies: a freed large buffer is reused, not faulted in afresh."""

import platform
import subprocess
import sys

import pytest

from sdapm_hf.allocator import ALLOCATOR_VARIABLES, keep_freed_memory

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
