"""How a config table is read: each setting declared once, as a dataclass
field with its default, type and rules (:func:`setting`), and read from TOML
by :class:`Table`. :mod:`archiverd.config` declares the settings."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, field, fields, is_dataclass
from typing import Any, TypeVar, get_type_hints

#: A repo name or allow-list pattern: path segments, no blanks or backslashes.
REPO_PATTERN = (r"[^/\\\s]+(/[^/\\\s]+)*\Z", "bad repo pattern")

_RULES = set("low high choices expected each refuse required_for only_for".split())
_RULES |= {"check", "read"}


class ConfigError(Exception):
    """A configuration problem; the message names the key."""


def setting(default: Any = MISSING, *, factory: Any = None, **rules: Any) -> Any:
    """A config field: its default (or ``factory``) and the rules for its key.

    On the file's value: ``low``/``high``, ``choices`` (``expected`` rewords the
    refusal), ``each=(regex, why)``, ``refuse=(predicate, why)``. Then, on the
    file's value or the default: ``required_for=(key, value)``, ``only_for=(key,
    value[, why])``, ``check(dotted key, value, values)`` (returns the value kept;
    not run on None). ``read(table, default)`` reads a whole table."""
    if not rules.keys() <= _RULES:
        raise TypeError(f"unknown rules {sorted(rules.keys() - _RULES)}")
    if factory is not None:
        return field(default_factory=factory, metadata=rules)
    return field(default=default, metadata=rules)


#: For each field type: the TOML type it is read from, and how it is kept.
_KINDS: dict[Any, tuple[type | tuple[type, ...], Callable[[Any], Any]]] = {
    str: (str, str),
    str | None: (str, str),
    bool: (bool, bool),
    int: (int, int),
    float: ((int, float), float),
    tuple[str, ...]: (list, tuple),
    Mapping[str, str]: (dict, dict),
    tuple[Mapping[str, Any], ...]: (list, tuple),
}
_T = TypeVar("_T")


class Table:
    """One TOML table being read into a config dataclass, by its fields' rules."""

    def __init__(self, raw: Any, path: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{path or 'config'}: expected a table")
        self.raw = dict(raw)
        self.given = frozenset(raw)
        self.path = path

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def take(self, key: str, kind: type | tuple[type, ...]) -> Any:
        value = self.raw.pop(key)
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise ConfigError(f"{self.name(key)}: expected a number, got {value!r}")
        if not isinstance(value, kind):
            want = kind.__name__ if isinstance(kind, type) else "a number"
            raise ConfigError(f"{self.name(key)}: expected {want}, got {value!r}")
        return value

    def table(self, key: str) -> Table:
        return Table(self.raw.pop(key, {}), self.name(key))

    def read(self, cls: type[_T], **fixed: Any) -> _T:
        """``cls`` from each field's own rules, then those about other keys."""
        specs = fields(cls)  # type: ignore[arg-type]
        # The annotations are strings (postponed evaluation) until resolved.
        kinds = get_type_hints(cls)
        values = dict(fixed)
        for spec in specs:
            if spec.name not in values:
                values[spec.name] = self.value(spec, kinds[spec.name])
        for spec in specs:
            values[spec.name] = self.check(spec, values)
        for key in self.raw:
            raise ConfigError(f"{self.name(key)}: unknown key")
        return cls(**values)

    def value(self, spec: Field[Any], kind: Any) -> Any:
        """One field's value: the file's, by its type and own rules, or the default."""
        factory, rules = spec.default_factory, spec.metadata
        default = spec.default if factory is MISSING else factory()
        if "read" in rules:
            return rules["read"](self.table(spec.name), default)
        if is_dataclass(kind):
            return self.table(spec.name).read(kind)  # type: ignore[arg-type]
        toml_type, keep = _KINDS[kind]
        if spec.name not in self.raw:
            return default
        name, value = self.name(spec.name), self.take(spec.name, toml_type)
        low, high = rules.get("low"), rules.get("high")
        if low is not None and not low <= value <= high:
            raise ConfigError(f"{name}: must be between {low} and {high}")
        if rules.get("choices") and value not in rules["choices"]:
            expected = rules.get("expected") or " or ".join(map(repr, rules["choices"]))
            raise ConfigError(f"{name}: expected {expected}")
        pattern, why = rules.get("each", ("", ""))
        for item in value if pattern else ():
            if not isinstance(item, str) or not re.match(pattern, item):
                raise ConfigError(f"{name}: {why} {item!r}")
        refused, why = rules.get("refuse", (None, ""))
        if refused and refused(value):
            raise ConfigError(f"{name}: {why}")
        return keep(value)

    def check(self, spec: Field[Any], values: dict[str, Any]) -> Any:
        """One field's value, by the rules that look at the table's other values."""
        name, value, rules = self.name(spec.name), values[spec.name], spec.metadata
        other, wanted = rules.get("required_for", ("", None))
        if other and values[other] == wanted and spec.name not in self.given:
            raise ConfigError(f"{name}: required for {other} {wanted!r}")
        other, wanted, *why = rules.get("only_for", ("", None))
        if other and value and values[other] != wanted:
            reason = "".join(f" ({w})" for w in why)
            raise ConfigError(f"{name}: only for {other} {wanted!r}{reason}")
        check = rules.get("check")
        return check(name, value, values) if check and value is not None else value
