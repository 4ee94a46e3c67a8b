"""Registries: classes selected by name from a config key.

A :class:`Registry` maps names (``"FCOSDynamicHead"``) to classes, and knows the config key that
holds the name (``MODEL.FCOS.HEAD_NAME``), so that a name nobody registered is reported with the
key, the value and every registered name. Library classes register themselves where they are
defined; an experiment registers its own in ``net.py`` (or a module next to it)::

    from cvpods.modeling import FCOS_HEAD_REGISTRY, FCOSHead

    @FCOS_HEAD_REGISTRY.register()
    class MyHead(FCOSHead):
        ...

and selects it with ``MODEL.FCOS.HEAD_NAME = "MyHead"`` in its ``config.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..configs.base_config import ConfigError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry:
    """Names -> classes (or functions) for one config key.

    Args:
        what: what the entries are, for messages (e.g. ``"FCOS head"``).
        config_key: the dotted config key that names an entry (e.g. ``"MODEL.FCOS.HEAD_NAME"``).
    """

    def __init__(self, what: str, config_key: str) -> None:
        self.what = what
        self.config_key = config_key
        self._entries: dict[str, Any] = {}

    def register(self, obj: T | None = None, *, name: str | None = None) -> Any:
        """Register ``obj`` under ``name`` (default: ``obj.__name__``); returns ``obj``.

        Use it as a decorator (``@REGISTRY.register()`` or ``@REGISTRY.register(name="X")``) or
        call it (``REGISTRY.register(MyHead)``). Registering again the same class, or a class
        of the same module and qualified name (a module executed again, as the launchers do
        with ``net.py``), replaces the entry; another class under a taken name is a ValueError.
        """

        def add(item: T) -> T:
            key = name or item.__name__
            old = self._entries.get(key)
            if old is not None and old is not item and _origin(old) != _origin(item):
                raise ValueError(
                    f"{self.config_key} name {key!r} is already registered for "
                    f"{_origin(old)}; cannot register {_origin(item)} under it"
                )
            self._entries[key] = item
            return item

        if obj is None:
            return add
        return add(obj)

    def get(self, name: str) -> Any:
        """The entry registered as ``name``.

        Raises:
            ConfigError (a ValueError): no entry has that name; the message names the config
                key, the value and the registered names.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(
                f"unknown {self.config_key} {name!r}: no {self.what} is registered under that "
                f"name; registered: {', '.join(self.names()) or '(none)'}"
            ) from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {self.config_key!r}, names={self.names()})"


def _origin(obj: Callable | type) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
