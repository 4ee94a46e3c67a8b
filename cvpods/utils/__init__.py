"""Utilities: distributed communication, logging, events, environment."""

from . import comm
from .events import EventStorage, get_event_storage
from .logger import setup_logger

__all__ = ["EventStorage", "comm", "get_event_storage", "setup_logger"]
