"""Training LCIRC / QD-LCIRC: config, engines (plain / DeepSpeed), the loop, checkpoints."""
from .config import TrainConfig, config_from_dict, load_config
from .trainer import Trainer, run_training

__all__ = ["TrainConfig", "config_from_dict", "load_config", "Trainer", "run_training"]
