"""The short soak: streaming inference with memory_state carried, bounded norms and flat resident memory."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "soak.py"


@pytest.mark.parametrize("extra", [[], ["--chunk-size", "16"]])
def test_short_soak_stays_bounded_and_flat(extra):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "2000", "--piece", "50", *extra], capture_output=True, text=True
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0 and report["failures"] == [], report
    assert report["steps"] == 2000 and report["largest_read_norm"] <= report["read_bound"]
