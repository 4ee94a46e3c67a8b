"""Constructors that take explicit arguments, and the one place each class reads its config.

A module decorated with :func:`configurable` has two ways to be built:

* explicitly, with keyword arguments only: ``FCOSHead(input_shape=..., num_classes=3, ...)``;
* from a config, ``FCOSHead(cfg, input_shape)``: the class's ``from_config(cfg, ...)``
  classmethod reads the config and returns the keyword arguments of the explicit form.

So ``Cls(cfg, *args, **kwargs)`` is ``Cls(**Cls.from_config(cfg, *args, **kwargs))``, and the
config keys a class uses are all in its ``from_config``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["configurable"]


def configurable(init: Callable[..., None]) -> Callable[..., None]:
    """Decorate an ``__init__(self, *, ...)`` whose arguments are all keyword-only.

    A call with a positional argument (or a ``cfg=`` keyword) is the config form: the first
    argument must be a config (a mapping such as :class:`~cvpods.configs.BaseConfig`), and
    ``type(self).from_config(cfg, *rest, **kwargs)`` supplies the keyword arguments of ``init``.
    A call with keyword arguments only is the explicit form and goes to ``init`` unchanged.
    """

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        if "cfg" in kwargs:
            args = (kwargs.pop("cfg"), *args)
        if not args:
            init(self, **kwargs)
            return
        name = type(self).__name__
        if not isinstance(args[0], Mapping):
            raise TypeError(
                f"{name}(...) takes a config as its only positional argument (got a "
                f"{type(args[0]).__name__}); pass the explicit arguments by keyword"
            )
        from_config = getattr(type(self), "from_config", None)
        if from_config is None:
            raise TypeError(f"{name} has no from_config(cfg, ...): build it with keyword arguments")
        init(self, **from_config(*args, **kwargs))

    return wrapper
