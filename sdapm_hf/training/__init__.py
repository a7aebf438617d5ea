"""Training and evaluation of DNC-SDAPM models on Accelerate."""

from .arguments import ExperimentArguments, load_experiment
from .loop import evaluate_model, train

__all__ = ["ExperimentArguments", "evaluate_model", "load_experiment", "train"]
