"""Where models are made: :func:`create_model` (a registered name, a YAML file, a spec or a hub folder) and
models rebuilt from checkpoint files. The one place that composes :mod:`mixconv.models` with
:mod:`mixconv.files`.
"""
from mixconv.factory.checkpoint import (
    model_from_checkpoint,
    model_from_training_checkpoint,
    model_with_extra,
)
from mixconv.factory.create import create_model, load_hub_model, resolve_model_name

__all__ = ["create_model", "load_hub_model", "model_from_checkpoint", "model_from_training_checkpoint",
           "model_with_extra", "resolve_model_name"]
