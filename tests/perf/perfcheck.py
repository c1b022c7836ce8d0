"""Timing regressions on a shared CPU: a calibration kernel, min-of-rounds timing, and the baseline comparison.

Absolute seconds mean little on a shared, noisy machine whose speed changes with its neighbours, its clock and its
host. So every benchmark is timed together with a fixed **calibration kernel**, round by round (one calibration call
before each round of the benchmark), and what is compared is the **ratio** of the two minimums over the rounds:

    ratio = min(benchmark round) / min(calibration call)

The minimum is the statistic most robust to other processes: noise only ever adds time, so the fastest round is the
one least disturbed. Interleaving the calibration with the rounds makes both minimums sample the same conditions. A
benchmark regresses when its ratio exceeds the baseline's by more than its tolerance (``baseline.json``); a regression
must show in every one of ``MAX_ATTEMPTS`` measurements before it fails, so a burst of load cannot fail the check.

Everything here is plain Python (no pytest): ``conftest.py`` wires it to pytest-benchmark, and ``test_perfcheck.py``
tests it with a fake clock.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

REFRESH_COMMAND = "python -m pytest tests/perf --refresh-perf-baseline"
# One intra-op thread: the timings then do not depend on how many cores are free (on a 2-core CI machine another job
# takes one), and a regression in the code is not hidden or faked by a change in parallelism.
TORCH_THREADS = 1
# A ratio may grow by this share before the check fails (baseline.json's tolerance block, which a refresh keeps, can
# set it per benchmark). Measured on the 2-core CI machines, a ratio varies by up to +-15 % from one pytest process to
# the next (memory layout: the minimum over rounds cannot remove it) and rose up to +35 % over its median with both
# cores kept busy by another job; a baseline is itself one such draw. +60 % stays clear of that and still fails a
# hot path that does twice its work. See the README's "Timing regressions".
DEFAULT_TOLERANCE = 0.6
# How many times a benchmark is measured before a slowdown counts: the first measurement is pytest-benchmark's, the
# others repeat it only while the ratio stays over the tolerance. A refresh measures REFRESH_ATTEMPTS times and
# records the median ratio.
MAX_ATTEMPTS = 3
REFRESH_ATTEMPTS = 3
Timer = Callable[[], float]


# -- the calibration kernel --------------------------------------------------------------------------------------


class CalibrationKernel:
    """Fixed work that tracks the machine's current single-core speed, in three parts of similar duration
    (about 0.3 ms each, 0.9 ms in all, on one core of the 2-core AMD EPYC CI machines) that stand for the three kinds
    of work in the hot paths:

    - compute: a 256 x 256 float32 matmul (the convolutions of the models);
    - memory: elementwise adds over 1 M float32 (12 MB touched per add: the masks, bincounts and loss tensors);
    - dispatch: many tiny tensor ops, where the cost is Python and PyTorch's dispatcher (the maskers' per-tile calls).

    Inputs are allocated once and seeded, so every call does the same work.
    """

    MATMULS = 1
    ELEMENTWISE = 3
    TINY_OPS = 150

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(256, 256, generator=g)
        self.b = torch.randn(256, 256, generator=g)
        self.c = torch.empty(256, 256)
        self.x = torch.randn(1 << 20, generator=g)
        self.y = torch.randn(1 << 20, generator=g)
        self.z = torch.empty(1 << 20)
        self.tiny = torch.randn(16, generator=g)
        self.tiny_out = torch.empty(16)

    def __call__(self) -> None:
        for _ in range(self.MATMULS):
            torch.mm(self.a, self.b, out=self.c)
        for _ in range(self.ELEMENTWISE):
            torch.add(self.x, self.y, alpha=0.5, out=self.z)
        for _ in range(self.TINY_OPS):
            torch.mul(self.tiny, 1.5, out=self.tiny_out)


class InterleavedCalibration:
    """Times the calibration kernel ``repeats`` times per call and keeps every sample. Called before each round of a
    benchmark (it is the ``setup`` of pytest-benchmark's ``pedantic``), so that both are sampled under the same load.
    """

    def __init__(self, kernel: Callable[[], None], timer: Timer = time.perf_counter, repeats: int = 3):
        self.kernel = kernel
        self.timer = timer
        self.repeats = repeats
        self.samples: list[float] = []

    def __call__(self) -> None:
        for _ in range(self.repeats):
            start = self.timer()
            self.kernel()
            self.samples.append(self.timer() - start)

    @property
    def best(self) -> float:
        return min(self.samples)


@dataclass(frozen=True)
class Measurement:
    """The minimum over rounds of one call of a benchmark, and of one calibration call measured beside it."""

    seconds: float
    calibration: float
    rounds: int

    @property
    def ratio(self) -> float:
        return self.seconds / self.calibration


def measure(fn: Callable[[], object], kernel: Callable[[], None], *, rounds: int, warmup_rounds: int,
            timer: Timer = time.perf_counter) -> Measurement:
    """Time ``fn`` as pytest-benchmark's ``pedantic(fn, setup=InterleavedCalibration(...), rounds=rounds,
    warmup_rounds=warmup_rounds)`` does (one call per round, the calibration before each round, warm-up rounds not
    counted): used for the measurements after the first, since a pytest-benchmark fixture times once per test."""
    calibration = InterleavedCalibration(kernel, timer)
    times = []
    for i in range(warmup_rounds + rounds):
        calibration()
        start = timer()
        fn()
        elapsed = timer() - start
        if i >= warmup_rounds:
            times.append(elapsed)
    return Measurement(min(times), calibration.best, rounds)


# -- the comparison ----------------------------------------------------------------------------------------------

OK, REGRESSED, FASTER, NEW, RECORDED = "ok", "REGRESSED", "faster", "new", "recorded"


@dataclass(frozen=True)
class Verdict:
    """How a measured ratio compares with the baseline's. Only ``REGRESSED`` fails a test."""

    name: str
    status: str
    ratio: float
    baseline: float | None
    tolerance: float

    @property
    def change(self) -> float | None:
        """The relative change of the ratio: +0.5 is 50 % slower than the baseline."""
        return None if self.baseline is None else self.ratio / self.baseline - 1

    def message(self) -> str:
        if self.status == NEW:
            return (f"{self.name}: ratio {self.ratio:.4g}, no baseline entry (a new benchmark): "
                    f"record it with `{REFRESH_COMMAND}`")
        if self.status == RECORDED:
            return f"{self.name}: ratio {self.ratio:.4g} recorded in the baseline"
        text = (f"{self.name}: ratio {self.ratio:.4g} vs baseline {self.baseline:.4g} ({self.change:+.0%}; "
                f"tolerance +{self.tolerance:.0%})")
        if self.status == REGRESSED:
            return text + " -- slower than the baseline allows"
        if self.status == FASTER:
            return text + f" -- faster than the baseline: refresh it to keep the gain (`{REFRESH_COMMAND}`)"
        return text


def compare(name: str, ratio: float, baseline: Baseline) -> Verdict:
    """``REGRESSED`` when ``ratio > baseline * (1 + tolerance)``, ``FASTER`` when ``ratio < baseline / (1 +
    tolerance)``, ``NEW`` when the baseline has no entry for ``name``, else ``OK``."""
    tolerance = baseline.tolerance(name)
    expected = baseline.ratio(name)
    if expected is None:
        status = NEW
    elif ratio > expected * (1 + tolerance):
        status = REGRESSED
    elif ratio < expected / (1 + tolerance):
        status = FASTER
    else:
        status = OK
    return Verdict(name, status, ratio, expected, tolerance)


def check(name: str, first: Measurement, remeasure: Callable[[], Measurement], baseline: Baseline,
          max_attempts: int = MAX_ATTEMPTS) -> tuple[Verdict, list[Measurement]]:
    """Compare ``first`` with the baseline; while it regresses, measure again (up to ``max_attempts`` in all) and
    judge the best ratio: a real slowdown shows every time, a burst of load on a shared machine does not."""
    attempts = [first]
    verdict = compare(name, first.ratio, baseline)
    while verdict.status == REGRESSED and len(attempts) < max_attempts:
        attempts.append(remeasure())
        verdict = compare(name, min(m.ratio for m in attempts), baseline)
    return verdict, attempts


def median_measurement(attempts: Iterable[Measurement]) -> Measurement:
    """The measurement of median ratio (the lower middle one for an even count): what a refresh records."""
    ordered = sorted(attempts, key=lambda m: m.ratio)
    return ordered[(len(ordered) - 1) // 2]


# -- the baseline file -------------------------------------------------------------------------------------------


def machine_description() -> dict[str, object]:
    """What the ratios were measured on: they transfer between similar machines, only approximately between others."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": TORCH_THREADS,
    }


def same_machine_kind(a: dict[str, object], b: dict[str, object]) -> bool:
    keys = ("cpu", "cpu_count", "cpu_capability", "torch", "torch_threads")
    return all(a.get(key) == b.get(key) for key in keys)


@dataclass
class Baseline:
    """``baseline.json``: the machine and date of the recording, the tolerances, and one entry per benchmark
    (``ratio``, plus the seconds it stood for, for the reader). A missing file is an empty baseline."""

    machine: dict[str, object] = field(default_factory=dict)
    recorded: str | None = None
    default_tolerance: float = DEFAULT_TOLERANCE
    tolerances: dict[str, float] = field(default_factory=dict)
    calibration_seconds: float | None = None
    entries: dict[str, dict[str, float]] = field(default_factory=dict)

    def ratio(self, name: str) -> float | None:
        entry = self.entries.get(name)
        return None if entry is None else float(entry["ratio"])

    def tolerance(self, name: str) -> float:
        return float(self.tolerances.get(name, self.default_tolerance))

    @classmethod
    def load(cls, path: Path) -> Baseline:
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        tolerance = data.get("tolerance", {})
        return cls(
            machine=data.get("machine", {}),
            recorded=data.get("recorded"),
            default_tolerance=float(tolerance.get("default", DEFAULT_TOLERANCE)),
            tolerances={k: float(v) for k, v in tolerance.get("per_benchmark", {}).items()},
            calibration_seconds=data.get("calibration_seconds"),
            entries=data.get("benchmarks", {}),
        )

    def refreshed(self, measured: dict[str, Measurement], keep: Iterable[str]) -> Baseline:
        """A new baseline: the ``measured`` entries, the old entries named in ``keep`` (benchmarks collected but not
        run, e.g. deselected with ``-k``), this machine and date; the tolerances are kept as they are."""
        keep = set(keep)
        entries = {name: entry for name, entry in self.entries.items() if name in keep and name not in measured}
        for name, m in measured.items():
            entries[name] = {"ratio": round(m.ratio, 4), "seconds": float(f"{m.seconds:.4g}")}
        calibrations = [m.calibration for m in measured.values()]
        return Baseline(
            machine=machine_description(),
            recorded=datetime.date.today().isoformat(),
            default_tolerance=self.default_tolerance,
            tolerances=dict(self.tolerances),
            calibration_seconds=float(f"{min(calibrations):.4g}") if calibrations else self.calibration_seconds,
            entries=dict(sorted(entries.items())),
        )

    def save(self, path: Path) -> None:
        data = {
            "about": ("Timing-regression baseline of tests/perf (README: 'Timing regressions'). ratio = min time of "
                      "a benchmark / min time of the calibration kernel beside it; the check fails when a ratio "
                      "exceeds its entry by more than the tolerance. Rewritten by `" + REFRESH_COMMAND + "`, "
                      "which keeps the tolerance block."),
            "machine": self.machine,
            "recorded": self.recorded,
            "statistic": "min over rounds, one calibration call before each round",
            "tolerance": {"default": self.default_tolerance, "per_benchmark": dict(sorted(self.tolerances.items()))},
            "calibration_seconds": self.calibration_seconds,
            "benchmarks": self.entries,
        }
        path.write_text(json.dumps(data, indent=2) + "\n")

