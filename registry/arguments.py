"""Keyword arguments checked against a builder's type annotations, before the builder ever runs.

A grid gives builders values from TOML: a string where an integer belongs (``base_channels = "four"``) would reach
the builder, which may fail far from the grid's line, or worse, not fail (``"four" * 2`` is a string). Each value is
checked against the annotation of its parameter, and numbers are made canonical: an ``int`` given for a ``float``
parameter becomes that float, so that ``gamma = 2`` and ``gamma = 2.0`` are one cell. What annotations cannot say
(ranges: a positive width) the builders check themselves.

Understood: ``int``, ``float``, ``bool``, ``str``, ``Path``, unions (``X | None``), ``Literal[...]``, and
``list[T]``, ``tuple[T, ...]``, ``Sequence[T]`` (a TOML array). Any other annotation (a tensor, a class) is left to
the builder.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import math
import types
import typing
from pathlib import Path
from typing import Any

from registry.errors import UserError

UNCHECKED = object()  # what _check answers for an annotation it does not understand


def annotations_of(builder: Any) -> dict[str, Any]:
    """The resolved annotations of a builder's parameters (a function, a class's ``__init__``, a partial's function);
    empty when they cannot be resolved."""
    target = builder.func if isinstance(builder, functools.partial) else builder
    if inspect.isclass(target):
        target = target.__init__
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001  (a name the annotations use is not importable: nothing to check then)
        return {}


def canonical_arguments(kind: str, name: str, builder: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with each value checked against its parameter's annotation and numbers made canonical; raises
    :class:`UserError` naming the entry, the argument, what it must be and what it is."""
    hints = annotations_of(builder)
    result = {}
    for key, value in kwargs.items():
        hint = hints.get(key)
        if hint is None:
            result[key] = value
            continue
        canonical = _check(hint, value)
        if canonical is None:
            raise UserError(f"{kind} {name!r}: {key} must be {describe(hint)}, not {value!r}")
        result[key] = value if canonical is UNCHECKED else canonical[0]
    return result


def _check(hint: Any, value: Any) -> tuple[Any] | object | None:
    """``(canonical value,)`` when ``value`` fits ``hint``, None when it does not, UNCHECKED when ``hint`` is not
    understood."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return UNCHECKED
    if origin in (typing.Union, types.UnionType):
        answers = [_check(option, value) for option in arguments]
        fitting = [answer for answer in answers if isinstance(answer, tuple)]
        if fitting:
            return fitting[0]
        return UNCHECKED if any(answer is UNCHECKED for answer in answers) else None
    if origin is typing.Literal:
        return (value,) if any(value == option and type(value) is type(option) for option in arguments) else None
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return None
        item = arguments[0] if arguments else Any
        items = [_check(item, element) for element in value]
        if any(answer is None for answer in items):
            return None
        canonical = [element if answer is UNCHECKED else answer[0] for element, answer in zip(value, items)]
        return (type(value)(canonical),)
    if hint is type(None):
        return (value,) if value is None else None
    if hint is bool:
        return (value,) if isinstance(value, bool) else None
    if hint is int:
        return (value,) if isinstance(value, int) and not isinstance(value, bool) else None
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return (float(value),)
    if hint is str:
        return (value,) if isinstance(value, str) else None
    if hint is Path:
        return (value,) if isinstance(value, (str, Path)) else None
    return UNCHECKED


def describe(hint: Any) -> str:
    """What ``hint`` asks for, in words: ``an integer``, ``a list of numbers``, ``one of 'a', 'b'``."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe(option) for option in arguments if option is not type(None)))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, arguments))
    if origin in (list, tuple, collections.abc.Sequence):
        item = describe(arguments[0]) if arguments else "value"
        return f"a list of {_plural(item)}"
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", Path: "a path"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _plural(text: str) -> str:
    words = {"an integer": "integers", "a finite number": "finite numbers", "a string": "strings", "a path": "paths",
             "true or false": "true or false values"}
    return words.get(text, text)
