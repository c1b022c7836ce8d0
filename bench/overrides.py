"""Values from the command line, and where each value of a grid comes from.

Overrides (``--set recipe.lr=1e-4``, ``--epochs``, ``--data-root``) are applied to the parsed grid file before it is
checked. The :class:`Locator` remembers which keys they set and finds the line of any other key in the file's text, so
that every mistake is reported with the file and line where it stands, or the ``--set`` it came from.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Any

from registry.errors import UserError

_OVERRIDE_KEY = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_BARE_WORD = re.compile(r"^[^\s\[\]{}\"'=#,]+$")  # taken as a string when it is not a TOML value: adamw, /data/x


def command_line_value(text: str) -> Any:
    """A value typed on the command line (``--set``, ``--arch``), read as TOML (``1e-4``, ``[0, 1]``, ``"adamw"``,
    ``{name = "unet", base_channels = 8}``); a bare word that is not TOML (``adamw``, ``/data/x``) is a string.
    Anything else raises ValueError."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        if _BARE_WORD.match(text):
            return text
        raise ValueError(f"{text!r} is not a TOML value (quote strings that hold spaces or punctuation: "
                         "'KEY=\"a b\"')") from None


def parse_override(argument: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (dotted key, value), the value read by :func:`command_line_value`."""
    key, equals, text = argument.partition("=")
    key, text = key.strip(), text.strip()
    if not equals or not _OVERRIDE_KEY.match(key):
        raise UserError(f"--set {argument}: expected KEY=VALUE with a dotted KEY, such as recipe.lr=1e-4")
    try:
        return key, command_line_value(text)
    except ValueError as err:
        raise UserError(f"--set {argument}: {err}") from None


def apply_override(data: dict, key: str, value: Any, origin: str, locator: Locator) -> None:
    """Set ``data[a][b]...[z] = value`` for ``key`` ``a.b....z``, creating missing tables; ``locator`` remembers that
    the key comes from ``origin``, so that a mistake in it is reported as the override's, not as the file's."""
    node = data
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"{origin}: {'.'.join(parts[:depth + 1])} is not a table")
    node[parts[-1]] = value
    locator.overridden[key] = origin


class Locator:
    """Finds the line of a key or value in the grid's text, so that messages can point at it (tomllib gives the parsed
    data without positions), or the override that set it.

    A value is found by its ``anchor``: the text that stands on its line, a key (``lr`` in ``lr = 1e-3``) or a quoted
    string (``"unet"``), looked for from the header of ``table`` on."""

    def __init__(self, text: str, path: Path):
        self.lines = text.splitlines()
        self.path = path
        self.overridden: dict[str, str] = {}  # dotted key -> the command-line argument that set it

    def origin(self, key: str) -> str | None:
        """The override that set ``key``, a table above it, or a key below it (the latest wins); None if the file."""
        found = None
        for set_key, argument in self.overridden.items():
            if any(a == b or a.startswith(b + ".") for a, b in ((key, set_key), (set_key, key))):
                found = argument
        return found

    def line_of(self, anchor: str, table: str = "") -> int | None:
        """The number of the first line from ``table``'s header on where ``anchor`` stands as a key or a quoted
        string (comments aside); None if none."""
        start = 0
        if table:
            header = re.compile(r"^\s*\[\s*" + re.escape(table) + r"\s*\]")
            start = next((i for i, line in enumerate(self.lines) if header.match(line)), 0)
        pattern = re.compile(r"(^|[\s{,\[])" + re.escape(anchor) + r"\s*=|[\"']" + re.escape(anchor) + r"[\"']")
        for i in range(start, len(self.lines)):
            if pattern.search(self.lines[i].split("#", 1)[0]):
                return i + 1
        return None

    def prefix(self, anchor: str, table: str = "", key: str | None = None) -> str:
        """Where the value at dotted ``key`` (default: ``table.anchor``) comes from: the override that set it, or
        the file and the line where ``anchor`` stands."""
        origin = self.origin(key or ".".join(filter(None, (table, anchor))))
        if origin is not None:
            return origin
        line = self.line_of(anchor, table)
        return f"{self.path}{f' line {line}' if line else ''}"

    def error(self, message: str, anchor: str, table: str = "", key: str | None = None) -> UserError:
        """A mistake about the value at ``key``, named by :meth:`prefix`."""
        return UserError(f"{self.prefix(anchor, table, key)}: {message}")

    def check_keys(self, data: dict, allowed: set[str], table: str, key: str | None = None) -> None:
        """Refuse a key of ``data`` (the table ``table``, at dotted ``key`` when that differs) not in ``allowed``,
        with the closest allowed one as a hint."""
        for name in data:
            if name not in allowed:
                close = difflib.get_close_matches(name, sorted(allowed), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(sorted(allowed))}"
                scope = f"[{table}]" if table else "the top level"
                raise self.error(f"unknown key {name!r} in {scope}{hint}", name, table,
                                 key=".".join(filter(None, (key or table, name))))
