"""examples/partialseg-plugin-example: installed offline into a private folder, its entry points found by the harness,
its masker and architecture held to the project's contract tests, and its example grid run end to end."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "partialseg-plugin-example"


def run(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """An environment whose PYTHONPATH holds the example, installed there by pip without network or build isolation
    (the venv's setuptools builds it; no build requirement is downloaded) and without touching the venv."""
    work = tmp_path_factory.mktemp("plugin")
    source = work / "source"  # a copy, so that the build's egg-info and build/ stay out of the repository
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"}
    result = run("-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                 "--target", str(work / "site"), str(source), cwd=work, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    env["PYTHONPATH"] = str(work / "site")
    return work, env


def test_listing_shows_the_plugins_names(plugin_env):
    work, env = plugin_env
    archs = run("-m", "bench", "list", "archs", cwd=work, env=env)
    maskers = run("-m", "bench", "list", "maskers", cwd=work, env=env)
    assert archs.returncode == 0 and maskers.returncode == 0, archs.stderr + maskers.stderr
    assert "tiny_fcn" in archs.stdout and "center_points" in maskers.stdout


def test_plugins_entries_keep_the_contracts(plugin_env):
    """The project's own contract tests, which parametrize over every registered name, see the plugin's two."""
    _, env = plugin_env
    result = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "center_points or tiny_fcn",
                 "tests/test_maskers.py", "tests/test_archs.py", cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and " failed" not in result.stdout


def test_example_grid_runs_with_the_plugins_arch_and_masker(plugin_env):
    work, env = plugin_env
    out, board = work / "runs", work / "lb.md"
    result = run("-m", "bench", "run", "--grid", str(EXAMPLE / "plugin_grid.toml"), "--out", str(out),
                 "--leaderboard", str(board), cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(out / "results.sqlite") as db:
        rows = [(status, json.loads(config)) for status, config in db.execute("SELECT status, config FROM cells")]
    assert rows and {status for status, _ in rows} == {"done"}
    assert {config["arch"]["name"] for _, config in rows} == {"tiny_fcn"}
    assert "center_points" in {config["masker"]["name"] for _, config in rows}
    assert "| tiny_fcn " in board.read_text()
