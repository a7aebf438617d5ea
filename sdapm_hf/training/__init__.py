"""Training and evaluation of DNC-SDAPM models on Accelerate."""

from .arguments import ExperimentArguments, load_experiment
from .evaluation import ablated, compare, evaluate_model, example_outcomes, load_run, save_comparison
from .loop import train

__all__ = ["ExperimentArguments", "ablated", "compare", "evaluate_model", "example_outcomes", "load_experiment",
           "load_run", "save_comparison", "train"]
