"""Where a result came from: code revision, library versions, device, date. Stored with every cell."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("torch", "numpy", "albumentations", "partialseg-bench")


CODE_PATHS = ("bench", "registry", "tasks", "pyproject.toml")  # what decides a result; leaderboard.md does not


def code_revision() -> str:
    """The git commit of the harness, with ``+dirty`` when its code has uncommitted changes; ``unknown`` outside
    git."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()

        revision = git("rev-parse", "--short=12", "HEAD")
        return revision + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS) else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_name()} ({torch.get_num_threads()} threads)"


def provenance(device: torch.device) -> dict[str, object]:
    versions = {}
    for library in LIBRARIES:
        try:
            versions[library] = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            versions[library] = "not installed"
    return {
        "code_revision": code_revision(),
        "python": platform.python_version(),
        "libraries": versions,
        "device": device_name(device),
        "device_type": device.type,
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
