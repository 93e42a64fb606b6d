"""Typed configs from plain data: frozen dataclasses built from YAML/JSON mappings, and ``--set`` overrides.

Unknown keys and wrong types are errors that name the key's full path, the value and what is allowed, with a
did-you-mean for a misspelt key. Values of ``--set a.b=value`` are parsed as YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any

from .errors import ConfigError


def did_you_mean(key: str, known) -> str:
    names = [str(k) for k in known]
    # a prefix (``grace`` for ``grace_kimg``) or a close spelling; 0.65 keeps ``extra`` from suggesting ``train``
    close = [n for n in names if n.startswith(str(key))] or difflib.get_close_matches(str(key), names, n=1,
                                                                                      cutoff=0.65)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_known_keys(data: dict, known, where: str = "") -> None:
    """Every key must be one of ``known``: a typo is an error naming the key, a close match and the choices."""
    unknown = sorted((k for k in data if k not in known), key=str)
    if unknown:
        hints = "".join(did_you_mean(k, known) for k in unknown[:1])
        raise ConfigError(f"unknown key(s) {[f'{where}{k}' for k in unknown]}{hints}; allowed under "
                          f"{where.rstrip('.') or 'the top level'}: {sorted(known)}")


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build a (nested) frozen dataclass, rejecting unknown keys and wrong types with the key's path."""
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_known_keys(data, fields, where)
    kwargs = {name: _coerce(hints[name], value, f"{where}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where.rstrip('.') or 'config'}: {err}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}={value!r} matches none of {options}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}={value!r} must be one of {list(args)}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, f"{where}.")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r} must be a list")
        return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}={value!r} must be a mapping")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}={value!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}={value!r} must be an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads 2e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}={value!r} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}={value!r} must be a string")
        return value
    return value


def read_document(path: Path) -> dict:
    import yaml

    try:
        text = path.read_text()
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:  # where the parser stopped, and why
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"cannot read {path}: {where}{err.problem or err.context}") from None
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return doc


def apply_overrides(doc: dict, overrides: list[str]) -> dict:
    """--set a.b.c=value (YAML-parsed) into a nested dict, copying what it touches."""
    import yaml

    doc = json.loads(json.dumps(doc))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r} must look like key=value (e.g. optim.lr=2e-4)")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: cannot parse the value") from None
        node = doc
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return doc
