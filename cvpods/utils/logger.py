"""Logging set-up: a coloured console on the main process and a ``log.txt`` file per rank."""

from __future__ import annotations

import collections
import logging
import os
import sys
from typing import Any

__all__ = ["setup_logger", "log_first_n"]

# Attribute set on the handlers this module installs, so a second call replaces them.
_HANDLER_TAG = "_cvpods_handler"

_LEVEL_COLOURS = {
    logging.DEBUG: "\x1b[36m",  # cyan
    logging.WARNING: "\x1b[33m",  # yellow
    logging.ERROR: "\x1b[31m",  # red
    logging.CRITICAL: "\x1b[1;31m",  # bold red
}
_GREEN = "\x1b[32m"
_RESET = "\x1b[0m"


class _ColourfulFormatter(logging.Formatter):
    """Green ``[time name]:`` prefix; warnings and errors carry a coloured level tag."""

    def __init__(self, root_name: str, abbrev_name: str, datefmt: str) -> None:
        super().__init__(datefmt=datefmt)
        self._root_name = root_name + "."
        self._abbrev_name = abbrev_name + "." if abbrev_name else ""

    def format(self, record: logging.LogRecord) -> str:
        name = record.name
        if name.startswith(self._root_name):
            name = self._abbrev_name + name[len(self._root_name) :]
        stamp = self.formatTime(record, self.datefmt)
        prefix = f"{_GREEN}[{stamp} {name}]:{_RESET} "
        if record.levelno >= logging.WARNING or record.levelno == logging.DEBUG:
            colour = _LEVEL_COLOURS.get(record.levelno, _LEVEL_COLOURS[logging.ERROR])
            prefix += f"{colour}{record.levelname}{_RESET} "
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return prefix + message


def _log_file_path(output: str, distributed_rank: int) -> str:
    """``output`` if it is a .txt/.log file, else ``output/log.txt``; ``.rankN`` for rank N > 0."""
    path = output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")
    if distributed_rank > 0:
        path = f"{path}.rank{distributed_rank}"
    return path


def setup_logger(
    output: str | None = None,
    distributed_rank: int = 0,
    *,
    color: bool = True,
    name: str = "cvpods",
    abbrev_name: str | None = None,
    level: int = logging.DEBUG,
) -> logging.Logger:
    """Configure the logger ``name`` (and so every ``name.*`` module logger).

    Args:
        output: a folder (the log goes to ``output/log.txt``) or a ``.txt``/``.log`` file path;
            ``None`` logs to the console only. Rank N > 0 writes ``log.txt.rankN``.
        distributed_rank: this process's rank; only rank 0 logs to the console.
        color: colour the console output (the file is always plain text).
        name: the logger to configure.
        abbrev_name: shown instead of ``name`` in console prefixes (default: ``name``).
        level: the logger's level; the console shows INFO and above, the file everything.

    Calling it again replaces the handlers installed by a previous call (no duplicate lines).
    """
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    for handler in [h for h in logger.handlers if getattr(h, _HANDLER_TAG, False)]:
        logger.removeHandler(handler)
        handler.close()

    datefmt = "%m/%d %H:%M:%S"
    if distributed_rank == 0:
        console = logging.StreamHandler(stream=sys.stdout)
        console.setLevel(logging.INFO)
        if color:
            console.setFormatter(_ColourfulFormatter(name, abbrev_name or name, datefmt))
        else:
            console.setFormatter(
                logging.Formatter("[%(asctime)s %(name)s]: %(message)s", datefmt=datefmt)
            )
        setattr(console, _HANDLER_TAG, True)
        logger.addHandler(console)

    if output is not None:
        path = _log_file_path(output, distributed_rank)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(
            logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s", datefmt=datefmt)
        )
        setattr(file_handler, _HANDLER_TAG, True)
        logger.addHandler(file_handler)
    return logger


# How many times each (caller or message) key has been logged by log_first_n.
_LOG_COUNTER: collections.Counter = collections.Counter()


def _caller_key() -> tuple[str, int]:
    frame = sys._getframe(2)
    return frame.f_code.co_filename, frame.f_lineno


def log_first_n(
    level: int,
    msg: str,
    n: int = 1,
    *,
    name: str = "cvpods",
    key: str = "caller",
    args: tuple[Any, ...] = (),
) -> bool:
    """Log ``msg`` only the first ``n`` times this call site (or message) is reached.

    Args:
        level: a ``logging`` level.
        msg: the message (``%``-style, formatted with ``args``).
        n: how many times to log it at most.
        name: the logger to use.
        key: ``"caller"`` counts per call site, ``"message"`` per message text,
            ``"caller,message"`` per both.

    Returns:
        whether the message was logged this time.
    """
    parts = set(key.split(","))
    if not parts or not parts <= {"caller", "message"}:
        raise ValueError(f"log_first_n: key must name 'caller' and/or 'message', got {key!r}")
    counter_key: tuple = ()
    if "caller" in parts:
        counter_key += _caller_key()
    if "message" in parts:
        counter_key += (msg,)
    _LOG_COUNTER[counter_key] += 1
    if _LOG_COUNTER[counter_key] > n:
        return False
    logging.getLogger(name).log(level, msg, *args)
    return True
