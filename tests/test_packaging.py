"""The project as a wheel installs it, without the checkout beside it: the shipped grids must still be found."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from bench.grid_files import GRID_DIR

PROJECT = GRID_DIR.parent
SHIPPED = {"pyproject.toml", "README.md", "bench", "registry", "tasks"}


def test_a_wheel_install_finds_the_shipped_grids(tmp_path):
    source, wheels, prefix, elsewhere = (tmp_path / name for name in ("source", "wheels", "prefix", "elsewhere"))
    elsewhere.mkdir()
    # A copy of what the wheel is built from: a build writes its build/ and egg-info beside the sources.
    shutil.copytree(PROJECT, source, ignore=lambda folder, names: [n for n in names if n not in SHIPPED]
                    if Path(folder) == PROJECT else ["__pycache__"])
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # No build isolation and no dependencies: nothing is downloaded, the test venv's setuptools builds the wheel.
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
                   check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("*.whl")
    # --ignore-installed: the install beside this test's own, which pip would otherwise uninstall first.
    subprocess.run(pip + ["install", "--no-deps", "--ignore-installed", "--prefix", str(prefix), str(wheel)],
                   check=True, cwd=tmp_path)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))
    # The wheel's packages come first on the path, so neither the checkout nor its editable install is seen.
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = ("import bench.grid_files as g; print(g.__file__); print(g.resolve_grid_path('default')); "
             "print(' '.join(g.list_grids()))")
    lines = subprocess.run([sys.executable, "-c", probe], check=True, cwd=elsewhere, env=env,
                           capture_output=True, text=True).stdout.splitlines()
    module, default, grids = Path(lines[0]), Path(lines[1]), set(lines[2].split())
    assert module.is_relative_to(site)
    assert default.is_relative_to(prefix) and default.read_bytes() == (GRID_DIR / "default.toml").read_bytes()
    assert grids == {p.stem for p in GRID_DIR.glob("*.toml")}
