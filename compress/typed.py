"""JSON (or any plain data) as frozen dataclasses, by their annotations, and back; field-by-field differences.

``load(Cls, value)`` builds ``Cls`` from parsed JSON: dataclasses field by field (a missing field takes its default,
or is an error; an unknown one is an error), containers element by element, JSON's lists as tuples where a tuple
is declared; ints count as floats, bools as nothing else. A value that does not fit raises TypeError naming its
path (``metrics.onnx is 'x', not dict[str, float]``); a config's own checks raise theirs (compress.errors.ConfigError).
``dataclasses.asdict`` is the other direction. Used for manifests (compress.manifest) and checkpoint settings.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any


def load(cls: type, value, where: str = ""):
    """`value` as an instance of the dataclass `cls` (TypeError or ValueError naming the first field that does not fit)."""
    return _load_dataclass(cls, value, where)


def differences(have, want, where: str = "") -> list[tuple[str, Any, Any]]:
    """(path, have's value, want's value) for every (nested) field in which two instances of one dataclass differ, in field
    order: ``train.mask_lr``."""
    out = []
    for f in dataclasses.fields(want):
        a, b, at = getattr(have, f.name), getattr(want, f.name), f"{where}{f.name}"
        if dataclasses.is_dataclass(b) and type(a) is type(b):
            out += differences(a, b, f"{at}.")
        elif a != b:
            out.append((at, a, b))
    return out


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fail(where: str, value, hint) -> TypeError:
    return TypeError(
        f"{where or 'the value'} is {str(value)[:60]!r}, not {getattr(hint, '__name__', hint) if isinstance(hint, type) else hint}"
    )


def _load(hint, value, where: str):
    """`value` (parsed JSON) as the annotated type `hint`: dataclasses field by field, containers element by element; JSON's lists
    become tuples where a tuple is declared, ints count as floats, bools as nothing else. TypeError names the first misfit."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in (a for a in args if a is not type(None)):
            try:
                return _load(a, value, where)
            except (TypeError, ValueError):
                pass
        raise _fail(where, value, hint)
    if dataclasses.is_dataclass(hint):
        return _load_dataclass(hint, value, where)
    if origin is dict and isinstance(value, dict):
        return {_load(args[0], k, f"{where} key"): _load(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin is list and isinstance(value, list):
        return [_load(args[0], x, f"{where}[{i}]") for i, x in enumerate(value)]
    if origin is tuple and isinstance(value, (list, tuple)):
        kinds = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(kinds) == len(value):
            return tuple(_load(k, x, f"{where}[{i}]") for i, (k, x) in enumerate(zip(kinds, value)))
    ok = {float: (int, float), int: (int,), str: (str,), bool: (bool,)}.get(hint)
    if ok is not None and isinstance(value, ok) and (hint is bool or not isinstance(value, bool)):
        return value
    raise _fail(where, value, hint)


def _load_dataclass(cls: type, value, where: str):
    if not isinstance(value, dict):
        raise _fail(where, value, cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    if unknown := sorted(set(value) - set(fields)):
        raise TypeError(f"{where or 'the value'} has unknown fields {unknown[:3]}")
    kw = {}
    for name, f in fields.items():
        at = f"{where}.{name}" if where else name
        if name in value:
            kw[name] = _load(_hints(cls)[name], value[name], at)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypeError(f"{at} is missing")
    return cls(**kw)
