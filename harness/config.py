"""Strict loading of YAML files into dataclasses: unknown keys, missing fields and wrong types
are errors that name the file and the key, never silent defaults."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from harness.errors import HarnessError

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping document is a HarnessError."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise HarnessError(f"{path}:{line} invalid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: expected a mapping at the top level")
    return data


def child_key(where: str, name: str) -> str:
    """The error prefix of key `name` under `where`: 'x.yaml' -> 'x.yaml: name', 'x.yaml: a' -> 'x.yaml: a.name'."""
    return f"{where}.{name}" if ": " in where else f"{where}: {name}"


def parse_dataclass(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, checking keys and types; `where` prefixes errors
    (for example 'recipes/x.yaml: attack')."""
    if not isinstance(data, dict):
        raise HarnessError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise HarnessError(f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(fields)})")
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if name in data:
            values[name] = _coerce(hints[name], data[name], child_key(where, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise HarnessError(f"{where}: missing key '{name}'")
    try:
        return cls(**values)
    except (ValueError, TypeError) as error:
        raise HarnessError(f"{where}: {error}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, where)
            except HarnessError as error:
                errors.append(str(error))
        raise HarnessError(errors[0] if len(errors) == 1 else f"{where}: value {value!r} fits none of {hint}")
    if origin is typing.Literal:
        if value not in args:
            raise HarnessError(f"{where}: unknown value {value!r} (choose from {', '.join(map(str, args))})")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise HarnessError(f"{where}: expected a list, got {type(value).__name__}")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise HarnessError(f"{where}: expected a mapping, got {type(value).__name__}")
        key_type, value_type = args or (Any, Any)
        return {_coerce(key_type, k, where): _coerce(value_type, v, child_key(where, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return parse_dataclass(hint, value, where)
    if hint is float:
        return _as_float(value, where)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise HarnessError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint in (str, bool):
        if not isinstance(value, hint):
            raise HarnessError(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    raise HarnessError(f"{where}: unsupported type {hint}")


def _as_float(value: Any, where: str) -> float:
    """A number; also a string such as '1e-3', which YAML 1.1 does not read as a float."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise HarnessError(f"{where}: expected a number, got {value!r}")
