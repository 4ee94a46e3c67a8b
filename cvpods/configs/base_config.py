"""The configuration object: nested dicts with attribute access, cvpods style.

A config is a tree of :class:`ConfigDict` nodes whose leaves are plain Python literals (numbers,
strings, booleans, ``None``, tuples, lists, dicts). Library classes such as
:class:`~cvpods.configs.fcos_config.FCOSConfig` register their defaults in ``__init__``; an
experiment's ``config.py`` subclasses one of them and registers its own settings on top::

    class MyConfig(FCOSConfig):
        def __init__(self):
            super().__init__()
            self._register_configuration({"MODEL": {"FCOS": {"NUM_CONVS": 8}}})

    config = MyConfig()
    config.merge_from_list(["SOLVER.BASE_LR", "0.02"])   # command-line overrides
"""

from __future__ import annotations

import ast
import copy
import difflib
import math
from collections.abc import Sequence
from typing import Any


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message names the key and what was expected."""


class ConfigDict(dict):
    """A dict whose keys are also attributes; nested plain dicts are converted on assignment."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, dict) and not isinstance(value, ConfigDict):
            value = ConfigDict(value)
        super().__setitem__(key, value)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]

    def __deepcopy__(self, memo: dict) -> ConfigDict:
        result = self.__class__.__new__(self.__class__)
        memo[id(self)] = result
        for key, value in self.items():
            dict.__setitem__(result, key, copy.deepcopy(value, memo))
        for key, value in getattr(self, "__dict__", {}).items():
            object.__setattr__(result, key, copy.deepcopy(value, memo))
        return result

    def to_dict(self) -> dict:
        """A deep copy made of plain dicts."""
        return {
            k: v.to_dict() if isinstance(v, ConfigDict) else copy.deepcopy(v)
            for k, v in self.items()
        }


def _deep_update(target: ConfigDict, updates: dict) -> None:
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"A": {"B": 1}}`` -> ``{"A.B": 1}``; only dict nodes are descended into."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


# ---------------------------------------------------------------------------------------------
# Literal text: dump() writes it, parse_literal() reads it back (inf/nan included).
# ---------------------------------------------------------------------------------------------


def _format_scalar(value: Any) -> str:
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return f'float("{value}")'
    return repr(value)


def format_literal(value: Any, indent: int = 0) -> str:
    """Python-literal text for ``value``, one dict entry per line, readable and re-parsable."""
    pad = "    " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = [
            f"{pad}{key!r}: {format_literal(item, indent + 1)}," for key, item in value.items()
        ]
        return "{\n" + "\n".join(lines) + "\n" + "    " * indent + "}"
    if isinstance(value, (list, tuple)):
        items = [format_literal(item, indent + 1) for item in value]
        open_, close = ("[", "]") if isinstance(value, list) else ("(", ")")
        if isinstance(value, tuple) and len(items) == 1:
            items[0] += ","
        return open_ + ", ".join(items) + close
    return _format_scalar(value)


def _eval_node(node: ast.AST, text: str) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_eval_node(elt, text) for elt in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict):
        return {_eval_node(k, text): _eval_node(v, text) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _eval_node(node.operand, text)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "float"
        and len(node.args) == 1
        and not node.keywords
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
        and node.args[0].value.lower().lstrip("+-") in ("inf", "nan", "infinity")
    ):
        return float(node.args[0].value)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        if not node.args:
            return {kw.arg: _eval_node(kw.value, text) for kw in node.keywords}
    raise ConfigError(f"not a plain literal: {ast.get_source_segment(text, node)!r}")


def parse_literal(text: str) -> Any:
    """Read a Python literal (as :func:`format_literal` writes it); anything else is an error."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"cannot parse {text!r} as a Python literal: {exc.msg}") from None
    return _eval_node(tree.body, text)


def _parse_override(text: str) -> Any:
    """A command-line value: a Python literal if it parses as one, else the string itself."""
    try:
        return parse_literal(text)
    except ConfigError:
        return text


def _coerce(key: str, old: Any, new: Any) -> Any:
    """``new`` converted to the type of the current value ``old``, or a ConfigError."""
    if old is None or new is None:
        return new
    if isinstance(old, bool):
        if isinstance(new, bool):
            return new
    elif isinstance(old, float) and isinstance(new, (int, float)) and not isinstance(new, bool):
        return float(new)
    elif isinstance(old, int) and isinstance(new, int) and not isinstance(new, bool):
        return new
    elif isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return type(old)(new)
    elif isinstance(old, (list, tuple)) and isinstance(new, (int, float, str)) and len(old) == 1:
        return type(old)([new])
    elif isinstance(old, dict) and isinstance(new, dict):
        return new
    elif isinstance(old, str) and isinstance(new, str):
        return new
    elif isinstance(old, str) and not isinstance(new, (dict, list, tuple)):
        return str(new)
    raise ConfigError(
        f"config key {key}: expected a value of type {type(old).__name__} "
        f"(like its current value {old!r}), got {new!r} of type {type(new).__name__}"
    )


class BaseConfig(ConfigDict):
    """Root of every config. Subclasses call :meth:`_register_configuration` in ``__init__``."""

    def __init__(self, defaults: dict | None = None) -> None:
        super().__init__()
        if defaults:
            self._register_configuration(defaults)

    def _register_configuration(self, config: dict) -> None:
        """Deep-merge ``config`` into this config (new keys are allowed: this defines defaults)."""
        _deep_update(self, config)

    # ------------------------------------------------------------------ lookup
    def flat_keys(self) -> list[str]:
        return list(flatten(self).keys())

    def _node_of(self, key: str) -> tuple[ConfigDict, str]:
        """The dict holding ``key`` and the last name; a ConfigError with suggestions if absent."""
        parts = key.split(".")
        node: Any = self
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(self._unknown_key_message(key, ".".join(parts[: depth + 1])))
            if depth < len(parts) - 1:
                node = node[part]
        return node, parts[-1]

    def _unknown_key_message(self, key: str, missing: str) -> str:
        candidates = self.flat_keys()
        close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
        if not close:
            last = key.rsplit(".", 1)[-1]
            close = [k for k in candidates if k.rsplit(".", 1)[-1] == last][:3]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"unknown config key {key!r} ({missing!r} does not exist){hint}"

    def get_key(self, key: str) -> Any:
        node, name = self._node_of(key)
        return node[name]

    def set_key(self, key: str, value: Any) -> None:
        """Set an existing dotted key, converting ``value`` to the type of the current value."""
        node, name = self._node_of(key)
        node[name] = _coerce(key, node[name], value)

    # ------------------------------------------------------------------ overrides
    def merge_from_list(self, overrides: Sequence[str]) -> BaseConfig:
        """Apply ``["KEY", "VALUE", ...]`` pairs; values are Python literals or bare strings."""
        if len(overrides) % 2:
            raise ConfigError(
                f"config overrides come as KEY VALUE pairs; got an odd number of items: {list(overrides)}"
            )
        for key, text in zip(overrides[0::2], overrides[1::2]):
            value = _parse_override(text) if isinstance(text, str) else text
            self.set_key(key, value)
        return self

    def merge_from_dict(self, overrides: dict[str, Any]) -> BaseConfig:
        """Apply ``{"MODEL.FPN.OUT_CHANNELS": 64, ...}``: dotted existing keys, type-checked."""
        for key, value in overrides.items():
            self.set_key(key, value)
        return self

    # ------------------------------------------------------------------ text
    def dump(self) -> str:
        """Readable Python-literal text of the whole config; :meth:`load_dump` reads it back."""
        return format_literal(self.to_dict()) + "\n"

    @classmethod
    def load_dump(cls, text: str) -> BaseConfig:
        """A config of this class rebuilt from :meth:`dump` text."""
        tree = parse_literal(text)
        if not isinstance(tree, dict):
            raise ConfigError("a config dump must be a dict literal")
        cfg = cls.__new__(cls)
        ConfigDict.__init__(cfg)
        cfg._register_configuration(tree)
        return cfg

    def diff(self, other: dict) -> dict[str, tuple[Any, Any]]:
        """``{key: (other's value, this value)}`` for every dotted key whose values differ."""
        mine, theirs = flatten(self), flatten(other)
        missing = object()
        changed = {}
        for key in sorted(set(mine) | set(theirs)):
            a, b = theirs.get(key, missing), mine.get(key, missing)
            if a != b:
                changed[key] = (None if a is missing else a, None if b is missing else b)
        return changed

    def library_defaults(self) -> BaseConfig:
        """A fresh instance of the nearest library class this config derives from."""
        for klass in type(self).__mro__:
            if klass.__module__.startswith("cvpods.configs") and issubclass(klass, BaseConfig):
                return klass()
        return BaseConfig()

    def diff_from_defaults(self) -> str:
        """The changed keys against :meth:`library_defaults`, one ``KEY: default -> value`` a line."""
        rows = self.diff(self.library_defaults())
        return "\n".join(
            f"{k}: {_format_scalar(a)} -> {_format_scalar(b)}" for k, (a, b) in rows.items()
        )

    def __str__(self) -> str:
        return self.dump()
