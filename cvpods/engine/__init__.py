"""Training engine: the trainer and its hooks, the default set-up, multi-process launching."""

from . import hooks
from .defaults import DefaultTrainer, default_argument_parser, default_setup
from .hooks import HookBase
from .launch import launch
from .train_loop import SimpleTrainer, TrainerBase

__all__ = [
    "DefaultTrainer",
    "HookBase",
    "SimpleTrainer",
    "TrainerBase",
    "default_argument_parser",
    "default_setup",
    "hooks",
    "launch",
]
