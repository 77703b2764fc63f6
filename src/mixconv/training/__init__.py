"""Training, validation and prediction for MixNet models (``mixconv train|validate|predict``)."""
from mixconv.training.config import TrainConfig, load_recipe, make_config, recipe_names
from mixconv.training.main import TrainingError, run, train

__all__ = ["TrainConfig", "TrainingError", "load_recipe", "make_config", "recipe_names", "run", "train"]
