"""Training engine: the trainer and its hooks, the default set-up, multi-process start-up
(:func:`launch`, from :mod:`.distributed_launch`) and the console commands (:mod:`.launcher`)."""

from . import hooks
from .defaults import DefaultTrainer, default_argument_parser, default_setup
from .distributed_launch import launch
from .hooks import HookBase
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
