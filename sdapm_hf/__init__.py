"""sdapm-hf: the DNC-SDAPM as a Hugging Face plugin. Importing this package registers the Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from .configuration_dnc_sdapm import DNCSDAPMConfig
from .modeling_dnc_sdapm import (
    DNCSDAPMForCausalLM,
    DNCSDAPMForSequenceClassification,
    DNCSDAPMModel,
    DNCSDAPMPreTrainedModel,
)

AutoConfig.register(DNCSDAPMConfig.model_type, DNCSDAPMConfig)
AutoModel.register(DNCSDAPMConfig, DNCSDAPMModel)
AutoModelForCausalLM.register(DNCSDAPMConfig, DNCSDAPMForCausalLM)
AutoModelForSequenceClassification.register(DNCSDAPMConfig, DNCSDAPMForSequenceClassification)
DNCSDAPMConfig.register_for_auto_class()
DNCSDAPMModel.register_for_auto_class("AutoModel")
DNCSDAPMForCausalLM.register_for_auto_class("AutoModelForCausalLM")
DNCSDAPMForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "DNCSDAPMConfig",
    "DNCSDAPMForCausalLM",
    "DNCSDAPMForSequenceClassification",
    "DNCSDAPMModel",
    "DNCSDAPMPreTrainedModel",
]
