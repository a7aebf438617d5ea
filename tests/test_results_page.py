"""docs/results.md against the committed runs under docs/runs/: its generated tables are what the runs give, and
each run's command reproduces the run's arguments."""

import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from sdapm_hf.training.arguments import ExperimentArguments, ExperimentParser

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
results_table = pytest.importorskip("results_table")

RUNS = sorted(path.parent for path in results_table.RUNS.glob("*/*/experiment.json"))
# Memory settings whose default changed after runs were made: a config made before pins the value the run had.
FORMER_DEFAULTS = {"predictive_writes": False}


def test_the_generated_tables_are_what_the_committed_runs_give():
    page = results_table.PAGE.read_text()
    for name in results_table.SECTIONS:
        assert f"<!-- results:{name}:start -->" in page, name
    assert results_table.generated_page(page) == page, "python scripts/results_table.py --write"


@pytest.mark.parametrize("run", RUNS, ids=lambda run: f"{run.parent.name}/{run.name}")
def test_each_committed_run_is_its_command(run):
    experiment = json.loads((run / "experiment.json").read_text())
    words = shlex.split(results_table.command(results_table.run_config(run.parent.name), experiment))
    assert words[:2] == ["sdapm-hf", "train"]
    parsed = json.loads(json.dumps(asdict(ExperimentParser().parse_experiment(words[2:]))))
    defaults = json.loads(json.dumps(asdict(ExperimentArguments())))
    pinned = parsed["model"].keys() - experiment["model"].keys()
    assert {name: parsed["model"].pop(name) for name in pinned} == {name: FORMER_DEFAULTS[name] for name in pinned}
    assert {name: parsed[name] for name in experiment} == experiment
    # fields added since the run was made hold their defaults, which is what the run did
    assert all(parsed[name] == defaults[name] for name in parsed.keys() - experiment.keys())
    assert {"steps", "train_cpu_seconds"} <= json.loads((run / "metrics.json").read_text()).keys()
    assert (run / "log.jsonl").read_text().strip()


def test_the_passkey_checkpoint_is_chosen_by_validation_then_the_later_stage_then_the_default_rule():
    choose = results_table.choose
    assert choose({(2, "usage"): 0.9, (2, "relative_usage"): 0.95, (3, "usage"): 0.8}) == (2, "relative_usage")
    assert choose({(2, "usage"): 1.0, (3, "relative_usage"): 1.0}) == (3, "relative_usage")
    assert choose({(3, "usage"): 1.0, (3, "relative_usage"): 1.0, (2, "usage"): 1.0}) == (3, "usage")
