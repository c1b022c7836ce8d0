"""Where grid files are found: a path, or a name looked up in the user's ``./tasks``, then among the project's own
grids (in a checkout or an editable install beside the package, in a wheel's install under its data prefix)."""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path

from registry.errors import UserError

GRID_DIR = Path(__file__).resolve().parent.parent / "tasks"  # a checkout (or an editable install) of the project
DISTRIBUTION = "partialseg-bench"


def resolve_grid_path(name_or_path: str) -> Path:
    """A path to a TOML file, or the name of a grid in ``./tasks`` or among the project's own grids."""
    candidates = [Path(name_or_path)]
    if not name_or_path.endswith(".toml"):
        candidates += [folder / f"{name_or_path}.toml" for folder in grid_dirs()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = ", ".join(list_grids()) or "none"
    raise UserError(f"grid not found: {name_or_path} (known grids: {known})")


def grid_dirs() -> list[Path]:
    """Where grids are looked up by name, first match wins: the user's ``./tasks``, then the project's own grids."""
    folders = (Path("tasks"), GRID_DIR, installed_grid_dir())
    return [folder for folder in folders if folder is not None and folder.is_dir()]


@functools.cache
def installed_grid_dir() -> Path | None:
    """The project's grids as a wheel installs them (``<prefix>/share/partialseg-bench/tasks``, see pyproject.toml's
    data-files): a non-editable install has no ``tasks/`` beside the package. The distribution's file list says
    where the prefix is, whatever the install scheme (venv, ``--user``, ``--prefix``)."""
    try:
        files = importlib.metadata.distribution(DISTRIBUTION).files or ()
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.suffix == ".toml" and file.parent.name == "tasks":
            return Path(file.locate()).resolve().parent
    return None


def list_grids() -> list[str]:
    """The names of the grids that :func:`resolve_grid_path` finds by name."""
    return sorted({p.stem for folder in grid_dirs() for p in folder.glob("*.toml")})
