"""Strict loading of YAML files into dataclasses, and command-line flags made from the same fields.

Unknown keys, missing fields, wrong types and non-finite numbers are errors that name the file
and the key, never silent defaults. `settings_arguments` turns a settings dataclass into
argparse options (help text from the fields' docstrings), and `settings_from_arguments` applies
the given ones with the same checks, so every stage's flags have one style and one set of
defaults: the dataclass's.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import math
import re
import textwrap
import types
import typing
from dataclasses import dataclass
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
    except (OSError, UnicodeDecodeError) as error:
        raise HarnessError(f"{path}: cannot read ({error})") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: expected a mapping at the top level")
    return data


def child_key(where: str, name: str) -> str:
    """The error prefix of key `name` under `where`: 'x.yaml' -> 'x.yaml: name', 'x.yaml: a' -> 'x.yaml: a.name'."""
    return f"{where}.{name}" if ": " in where else f"{where}: {name}"


_RELATIVE = "\x1f"


def parse_dataclass(cls: type[T], data: Any, where: str | None = None) -> T:
    """Build dataclass `cls` from a mapping, checking keys and types; `where` prefixes errors
    (for example 'recipes/x.yaml: attack'); without it an error is keyed relative to `data`."""
    if where is None:
        try:
            return parse_dataclass(cls, data, _RELATIVE)
        except HarnessError as error:
            text = str(error).removeprefix(_RELATIVE).removeprefix(": ")
            key, sep, message = text.partition(": ")
            if sep and re.fullmatch(r"[\w.\[\]-]+", key):
                raise HarnessError(message, key=key) from None
            raise HarnessError(text, key="") from None
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
        if dataclasses.is_dataclass(value) and isinstance(value, hint):
            return value
        return parse_dataclass(hint, value, where)
    if hint is float:
        return as_float(value, where)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise HarnessError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint in (str, bool):
        if not isinstance(value, hint):
            raise HarnessError(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    raise HarnessError(f"{where}: unsupported type {hint}")


def as_float(value: Any, where: str) -> float:
    """A finite number; also a string such as '1e-3', which YAML 1.1 does not read as a float."""
    number: float | None = None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    if number is None:
        raise HarnessError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(number):
        raise HarnessError(f"{where}: expected a finite number, got {value!r}")
    return number


# ---------------------------------------------------------------- field docs and command-line flags

@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (and of its dataclass bases)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, following in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


@dataclass(frozen=True)
class Flag:
    """One command-line option for one field of a settings dataclass (a path into nested ones)."""

    path: tuple[str, ...]
    option: str
    hint: Any
    help: str
    default: Any

    @property
    def dest(self) -> str:
        return "settings__" + "__".join(self.path)


def settings_flags(cls: type, skip: tuple[str, ...] = (), path: tuple[str, ...] = ()) -> list[Flag]:
    """Flags for every field of `cls`; nested dataclass fields are flattened (a field's own name
    is its option unless its metadata says `flag`); `skip` lists dotted paths to leave out."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    flags: list[Flag] = []
    for field in dataclasses.fields(cls):
        here = (*path, field.name)
        if not field.init or ".".join(here) in skip or field.metadata.get("flag") is False:
            continue
        hint = hints[field.name]
        nested = _dataclass_in(hint)
        if nested is not None:
            flags += settings_flags(nested, skip, here)
            continue
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        option = field.metadata.get("flag") or f"--{field.name.replace('_', '-')}"
        flags.append(Flag(here, option, hint, docs.get(field.name, ""), default))
    options = [f.option for f in flags]
    duplicated = sorted({o for o in options if options.count(o) > 1})
    if duplicated:
        raise ValueError(f"{cls.__name__}: option {duplicated[0]} stands for two fields")
    return flags


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass of a field typed `D` or `D | None`, else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def _base(hint: Any) -> Any:
    """`X` for `X | None`."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def settings_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                       defaults: Any = None) -> list[Flag]:
    """Add an option per field of `cls` to `parser`; absent options leave the settings as they are.

    `defaults` (an instance of `cls`) supplies the defaults shown in the help (else the class's)."""
    flags = settings_flags(cls, skip)
    for flag in flags:
        hint = _base(flag.hint)
        shown = _value_at(defaults, flag.path) if defaults is not None else flag.default
        text = flag.help + (f" (default: {_show(shown)})" if shown not in (None, [], "") else "")
        kwargs: dict[str, Any] = {"dest": flag.dest, "default": argparse.SUPPRESS, "help": text}
        origin = typing.get_origin(hint)
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin in (list, tuple):
            kwargs.update(action="append", metavar=_metavar(typing.get_args(hint)[0] if typing.get_args(hint) else str))
        elif origin is typing.Literal:
            kwargs["choices"] = [str(a) for a in typing.get_args(hint)]
        elif origin is dict:
            kwargs["metavar"] = "JSON"
        else:
            kwargs["metavar"] = _metavar(hint)
        parser.add_argument(flag.option, **kwargs)
    return flags


def _metavar(hint: Any) -> str:
    return {int: "N", float: "X"}.get(hint, "TEXT")


def _show(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _value_at(settings: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        settings = getattr(settings, name, None)
    return settings


def given_flags(args: argparse.Namespace, flags: list[Flag]) -> list[Flag]:
    """The flags the command line set."""
    return [flag for flag in flags if hasattr(args, flag.dest)]


def settings_from_arguments(cls: type[T], args: argparse.Namespace, flags: list[Flag], base: T | None = None) -> T:
    """`base` (else the defaults of `cls`) with the given options applied and every value checked;
    an error names the option."""
    data = dataclasses.asdict(base) if base is not None else {}
    for flag in given_flags(args, flags):
        value = getattr(args, flag.dest)
        parsed = _from_text(flag.hint, value, flag.option)
        target = data
        for name in flag.path[:-1]:
            if not isinstance(target.get(name), dict):
                target[name] = {}
            target = target[name]
        target[flag.path[-1]] = parsed
    return parse_dataclass(cls, data, "options")


def _from_text(hint: Any, value: Any, option: str) -> Any:
    """A command-line string (or list of strings, for repeatable options) as a value of `hint`."""
    hint_base = _base(hint)
    origin = typing.get_origin(hint_base)
    if isinstance(value, bool):
        return value
    if origin in (list, tuple):
        item = typing.get_args(hint_base)[0] if typing.get_args(hint_base) else str
        return [_from_text(item, v, option) for v in value]
    if isinstance(value, str) and value.lower() in ("none", "null") and hint is not hint_base:
        return None
    if origin is dict:
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise HarnessError(f"{option}: expected a JSON object ({error.msg})") from None
    if origin is typing.Literal:
        for choice in typing.get_args(hint_base):
            if str(choice) == value:
                return choice
        raise HarnessError(f"{option}: unknown value {value!r}")
    if hint_base is int:
        try:
            return int(value)
        except ValueError:
            raise HarnessError(f"{option}: expected an integer, got {value!r}") from None
    if hint_base is float:
        return as_float(value, option)
    return value
