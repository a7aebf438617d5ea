import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def clean_python(tmp_path):
    """Run a script in a fresh process where ``import sdapm_hf`` fails (remote code only); return its stdout."""

    def run(script: str) -> str:
        body = 'import sys\nsys.modules["sdapm_hf"] = None  # importing the package now fails\n' + textwrap.dedent(script)
        env = {**os.environ, "HF_HOME": str(tmp_path / "hf-remote"), "HF_HUB_OFFLINE": "1"}
        result = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    return run
