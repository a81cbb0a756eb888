"""The end-to-end RL trainer (:class:`Trainer`, :func:`train`) and its configuration (:class:`TrainConfig`)."""

from .config import ConfigError, TrainConfig, load_config
from .trainer import Trainer, train

__all__ = ["ConfigError", "TrainConfig", "Trainer", "load_config", "train"]
