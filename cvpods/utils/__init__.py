"""Utilities: distributed communication, logging, events and metric writers, file helpers.

The names cvpods code imports from ``cvpods.utils`` are here: ``comm``, ``EventStorage``,
``get_event_storage``, ``JSONWriter``, ``CommonMetricPrinter``, ``TensorboardXWriter``,
``setup_logger`` and ``PathManager``.
"""

from . import comm
from .events import (
    CommonMetricPrinter,
    EventStorage,
    EventWriter,
    HistoryBuffer,
    JSONWriter,
    TensorboardXWriter,
    get_event_storage,
)
from .file_io import PathManager
from .logger import log_first_n, setup_logger

__all__ = [
    "CommonMetricPrinter",
    "EventStorage",
    "EventWriter",
    "HistoryBuffer",
    "JSONWriter",
    "PathManager",
    "TensorboardXWriter",
    "comm",
    "get_event_storage",
    "log_first_n",
    "setup_logger",
]
