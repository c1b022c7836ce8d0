"""A small name -> builder registry, shared by architectures, losses, maskers and datasets.

Built-in entries register themselves with a decorator when :mod:`registry` is imported. Third-party entries are
announced through an entry-point group (``partialseg.archs`` ...): their names are listed without importing them, and
an entry is imported only when it is first asked for; a plugin that fails to import becomes a warning, never a crash.
A name can be registered once: in a benchmark a silent overwrite would put one model's numbers under another's name.

A **name family** is every name that starts with a prefix, built by one builder: ``@ARCHS.register_prefix("tu-",
known=timm_names, listed=[...])`` on ``def builder(rest, num_classes, ...)`` makes ``"tu-resnet34"`` the entry
``functools.partial(builder, "resnet34")``, so its signature (what ``create`` and the grid check keyword arguments
against) is the builder's without its first argument, and its ``prepare`` attribute (a dataset's one-time
preparation) is bound the same way. ``known()`` lists the accepted rests: any other is an unknown name, answered with
the close matches among them. ``list()`` shows only the family's ``listed`` names (a few
representatives, which the contract tests then cover); ``entry``, ``create`` and ``in`` take any accepted name. A
prefix owns its names: a fixed name, a plugin or another prefix that would overlap it is refused.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.errors import ContractError, UserError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class UnknownNameError(UserError, KeyError):
    """A name that no registered entry has."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class DuplicateNameError(UserError):
    """A second registration under a name that is taken."""


@dataclass(frozen=True)
class Entry:
    """One registered builder. ``test_kwargs`` make a tiny instance for the contract tests."""

    name: str
    builder: Callable[..., Any]
    source: str = "built-in"
    test_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """Every name ``prefix + rest`` for which ``known()`` lists ``rest`` (any rest when ``known`` is None), built by
    ``builder(rest, ...)``; ``listed`` are the full names that ``Registry.list`` shows; ``what`` says in messages
    what a rest is ("a timm model name")."""

    prefix: str
    builder: Callable[..., Any]
    known: Callable[[], Iterable[str]] | None = None
    listed: tuple[str, ...] = ()
    what: str = ""
    source: str = "built-in"
    test_kwargs: dict[str, Any] = field(default_factory=dict)


def natural_key(name: str) -> list:
    """Sort key that puts ``resnet18`` before ``resnet101``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def filter_names(names: Iterable[str], include: str | Iterable[str] = "*",
                 exclude: str | Iterable[str] = ()) -> list[str]:
    """The names matching any shell-style pattern in ``include`` and none in ``exclude``, in natural order."""
    include = [include] if isinstance(include, str) else list(include)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    return sorted(
        (name for name in names
         if any(fnmatch.fnmatchcase(name, pat) for pat in include)
         and not any(fnmatch.fnmatchcase(name, pat) for pat in exclude)),
        key=natural_key,
    )


class Registry:
    """Maps names to builders of one kind; see the module docstring.

    ``kind`` names an entry in messages ("architecture"); ``group`` is the entry-point group searched for plugins;
    ``contract`` is the text every entry must honour (it becomes this registry's docstring); ``check`` is called on
    every built object and raises ``TypeError`` when the object breaks the contract.
    """

    def __init__(self, kind: str, group: str, contract: str, check: Callable[[str, Any], None] | None = None):
        self.kind = kind
        self.group = group
        self.__doc__ = contract
        self._check = check
        self._entries: dict[str, Entry] = {}
        self._families: dict[str, Family] = {}  # by prefix
        self._family_entries: dict[str, Entry] = {}  # names of families already resolved
        self._plugins: dict[str, importlib.metadata.EntryPoint] | None = None  # found, not yet imported

    # -- registration -------------------------------------------------------------------------------------------

    def register(self, name: str | None = None, *, test_kwargs: dict[str, Any] | None = None,
                 source: str | None = None):
        """Decorator: ``@REG.register("name", test_kwargs={...})``; the name defaults to the function's, the source
        (named in messages) to "built-in" or the builder's module."""

        def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
            entry_name = name or builder.__name__
            entry_source = source or _source_of(builder)
            if not _NAME.match(entry_name):
                raise UserError(f"invalid {self.kind} name {entry_name!r}: use letters, digits and _ . + -")
            if entry_name in self._entries:
                taken = self._entries[entry_name]
                raise DuplicateNameError(
                    f"{self.kind} {entry_name!r} is already registered (by {taken.source}); choose another name"
                )
            family = self._family_of(entry_name)
            if family is not None:
                raise DuplicateNameError(f"{self.kind} names starting with {family.prefix!r} belong to a name family "
                                         f"(by {family.source}); choose another name")
            self._entries[entry_name] = Entry(entry_name, builder, entry_source, dict(test_kwargs or {}))
            return builder

        return decorate

    def register_prefix(self, prefix: str, *, known: Callable[[], Iterable[str]] | None = None,
                        listed: Iterable[str] = (), what: str = "", test_kwargs: dict[str, Any] | None = None,
                        source: str | None = None):
        """Decorator: ``@REG.register_prefix("tu-", known=..., listed=["tu-resnet18"])`` on ``builder(rest, ...)``
        registers the name family ``prefix + rest`` (see the module docstring). ``test_kwargs`` apply to every name
        of the family; ``source`` is as for :meth:`register`. The prefix must not overlap a registered name or
        another prefix."""

        def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
            if not _NAME.match(prefix):
                raise UserError(f"invalid {self.kind} prefix {prefix!r}: use letters, digits and _ . + -")
            for other in self._families.values():
                if prefix.startswith(other.prefix) or other.prefix.startswith(prefix):
                    raise DuplicateNameError(f"{self.kind} prefix {prefix!r} overlaps {other.prefix!r} "
                                             f"(by {other.source}); choose another prefix")
            taken = [name for name in self._entries if name.startswith(prefix)]
            if taken:
                raise DuplicateNameError(f"{self.kind} prefix {prefix!r} would take the registered name "
                                         f"{taken[0]!r}; choose another prefix")
            names = tuple(listed)
            strays = [name for name in names if not name.startswith(prefix)]
            if strays:
                raise UserError(f"listed {self.kind} {strays[0]!r} does not start with {prefix!r}")
            self._families[prefix] = Family(prefix, builder, known, names, what, source or _source_of(builder),
                                            dict(test_kwargs or {}))
            return builder

        return decorate

    # -- lookup -------------------------------------------------------------------------------------------------

    def entry(self, name: str) -> Entry:
        """The entry called ``name``, importing its plugin if needed; unknown names get the close matches."""
        family = self._family_of(name)
        if family is not None:
            return self._family_entry(family, name)
        if name not in self._entries and name in self._discover():
            self._load_plugin(name)
        if name in self._entries:
            return self._entries[name]
        names = self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(map(repr, close))}?" if close else f"known: {', '.join(names) or 'none'}"
        raise UnknownNameError(f"unknown {self.kind} {name!r}; {hint}")

    def create(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Build entry ``name``. ``None`` keyword arguments are dropped so that one caller can pass the same keys to
        every entry and let each fall back to its own default."""
        entry = self.entry(name)
        builder = entry.builder
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        try:
            inspect.signature(builder).bind(*args, **kwargs)
        except TypeError as err:
            raise UserError(f"{self.kind} {name!r}: {err}") from None
        except ValueError:  # builders without an inspectable signature (some C extensions)
            pass
        built = builder(*args, **kwargs)
        if self._check is not None:
            try:
                self._check(name, built)
            except ContractError as err:
                contract = f"help(registry.{self.group.rsplit('.', 1)[-1].upper()})"
                raise ContractError(f"{err} (registered by {entry.source}; the contract: {contract})") from None
        return built

    def names(self) -> list[str]:
        """The registered names, the plugins' and the families' listed names (not every name of a family)."""
        listed = {name for family in self._families.values() for name in family.listed}
        return sorted(set(self._entries) | set(self._discover()) | listed, key=natural_key)

    def list(self, include: str | Iterable[str] = "*", exclude: str | Iterable[str] = ()) -> list[str]:
        """Names matching any shell-style pattern in ``include`` and none in ``exclude``, in natural order."""
        return filter_names(self.names(), include, exclude)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        family = self._family_of(name)
        if family is None:
            return name in self._entries or name in self._discover()
        try:
            self._family_entry(family, name)
        except UnknownNameError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        families = [f"{prefix}*" for prefix in self._families]
        return f"Registry({self.kind}: {', '.join(self.names() + families)})"

    # -- name families ------------------------------------------------------------------------------------------

    def _family_of(self, name: str) -> Family | None:
        return next((family for prefix, family in self._families.items() if name.startswith(prefix)), None)

    def _family_entry(self, family: Family, name: str) -> Entry:
        """The entry of ``name`` in ``family``, made on first use; a rest that ``known()`` lacks is an unknown name."""
        if name in self._family_entries:
            return self._family_entries[name]
        rest = name[len(family.prefix):]
        if family.known is not None:
            known = list(family.known())
            if rest not in set(known):
                close = difflib.get_close_matches(rest, known, n=3, cutoff=0.5)
                what = f"{family.prefix!r} takes {family.what}" if family.what else ""
                hint = (f"did you mean {', '.join(repr(family.prefix + c) for c in close)}?" if close
                        else what or f"no {family.prefix}* name is close")
                if close and what:
                    hint += f" ({what})"
                raise UnknownNameError(f"unknown {self.kind} {name!r}; {hint}")
        builder = functools.partial(family.builder, rest)
        prepare = getattr(family.builder, "prepare", None)
        if prepare is not None:  # a dataset family's one-time preparation (`bench prepare`), bound to the name too
            builder.prepare = functools.partial(prepare, rest)
        entry = Entry(name, builder, family.source, dict(family.test_kwargs))
        self._family_entries[name] = entry
        return entry

    # -- plugins ------------------------------------------------------------------------------------------------

    def _discover(self) -> dict[str, importlib.metadata.EntryPoint]:
        """The plugins announced in installed distributions' metadata; read once, imports nothing."""
        if self._plugins is None:
            self._plugins = {}
            for point in importlib.metadata.entry_points(group=self.group):
                if point.name in self._entries or point.name in self._plugins or self._family_of(point.name):
                    warnings.warn(
                        f"{self.group} plugin {point.name!r} ({point.value}) ignored: that name is taken",
                        stacklevel=2,
                    )
                    continue
                self._plugins[point.name] = point
        return self._plugins

    def _load_plugin(self, name: str) -> None:
        point = self._discover().pop(name)
        try:
            loaded = point.load()
        except Exception as err:  # noqa: BLE001  (a broken plugin must not take the harness down with it)
            warnings.warn(f"{self.group} plugin {name!r} ({point.value}) failed to load: {err}", stacklevel=3)
            return
        if name in self._entries:  # the plugin's module registered itself with the decorator on import
            return
        if not callable(loaded):
            warnings.warn(f"{self.group} plugin {name!r} ({point.value}) is not callable; ignored", stacklevel=3)
            return
        dist = point.dist.name if point.dist is not None else point.value
        self.register(name, source=f"plugin {dist}")(loaded)


def _source_of(builder: Callable[..., Any]) -> str:
    module = getattr(builder, "__module__", None) or "an unknown module"
    return "built-in" if module.split(".")[0] == "registry" else f"module {module}"


def import_plugin_module(spec: str) -> None:
    """Import a user's module so that its ``@register_*`` decorators run: a dotted name importable from the current
    folder or ``sys.path``, or the path of a ``.py`` file."""
    path = Path(spec)
    try:
        if spec.endswith(".py"):
            if not path.is_file():
                raise UserError(f"plugin file not found: {spec}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[path.stem] = module
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            importlib.import_module(spec)
    except UserError:
        raise
    except (Exception, SystemExit) as err:  # noqa: BLE001  (whatever the module raises, sys.exit() included)
        raise UserError(f"cannot import plugin {spec!r}: {type(err).__name__}: {err}") from None
