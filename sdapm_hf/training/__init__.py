"""Training and evaluation of DNC-SDAPM models on Accelerate."""

from .arguments import ExperimentArguments, ExperimentParser, load_experiment
from .evaluation import compare, evaluate_model, example_outcomes, load_run, save_comparison
from .loop import train

__all__ = ["ExperimentArguments", "ExperimentParser", "compare", "evaluate_model", "example_outcomes",
           "load_experiment", "load_run", "save_comparison", "train"]
