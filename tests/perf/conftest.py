"""The timing-regression plugin: the ``perf`` fixture, ``--refresh-perf-baseline``, and the summary of ratios.

A test asks for ``perf`` and calls ``perf(fn, rounds=N)`` once: ``fn`` is timed by pytest-benchmark with the
calibration kernel interleaved (see perfcheck.py), its ratio is compared with ``baseline.json`` beside this file, and
the test fails when the ratio has grown past the tolerance in every measurement. ``test_hot_paths.py`` says how to
add a benchmark. The baseline is rewritten, not checked, with::

    python -m pytest tests/perf --refresh-perf-baseline

(the option is known when ``tests/perf`` or a file in it is on the command line). With pytest-benchmark's
``--benchmark-disable`` each benchmark runs once, as a smoke test, and is skipped without a check; with
``--benchmark-skip`` it is skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from perfcheck import (
    MAX_ATTEMPTS,
    NEW,
    RECORDED,
    REFRESH_ATTEMPTS,
    REFRESH_COMMAND,
    REGRESSED,
    TORCH_THREADS,
    Baseline,
    CalibrationKernel,
    InterleavedCalibration,
    Measurement,
    Verdict,
    check,
    machine_description,
    measure,
    median_measurement,
    same_machine_kind,
)

BASELINE_FILE = Path(__file__).with_name("baseline.json")
GROUP = "perf-regression"  # pytest-benchmark's table shows these benchmarks apart from the others


@dataclass
class Result:
    measurement: Measurement  # the one judged (the best ratio) or recorded (the median ratio)
    verdict: Verdict
    attempts: list[Measurement]


@dataclass
class PerfState:
    baseline: Baseline
    refresh: bool
    kernel: CalibrationKernel | None = None
    collected: set[str] = field(default_factory=set)  # benchmarks collected, run or deselected
    results: dict[str, Result] = field(default_factory=dict)
    disabled: int = 0  # benchmarks that ran once without timing (--benchmark-disable)
    written: Path | None = None


STATE = pytest.StashKey[PerfState]()


def benchmark_name(node: pytest.Item) -> str:
    """The baseline key of a benchmark: its test's name without ``test_``, parameters included."""
    return node.name.removeprefix("test_")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--refresh-perf-baseline", action="store_true", default=False,
                     help=(f"rewrite {BASELINE_FILE.name} of tests/perf from this run's timings "
                           "instead of checking them"))


def pytest_configure(config: pytest.Config) -> None:
    config.stash[STATE] = PerfState(Baseline.load(BASELINE_FILE), bool(config.getoption("--refresh-perf-baseline")))


def pytest_itemcollected(item: pytest.Item) -> None:
    if "perf" in getattr(item, "fixturenames", ()):
        item.config.stash[STATE].collected.add(benchmark_name(item))


@pytest.fixture
def perf(request: pytest.FixtureRequest, benchmark):
    """``perf(fn, rounds=N, warmup_rounds=2)``: time ``fn`` (no arguments; build its inputs before) and check it.

    Choose ``rounds`` so that they take about half a second in all; each round is one call of ``fn``, so ``fn``
    should do at least a few hundred microseconds of work (a batch, not one item) and the same work in every round
    (reseed generators inside it). Torch runs on ``TORCH_THREADS`` threads meanwhile.
    """
    state = request.config.stash[STATE]
    name = benchmark_name(request.node)
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    if state.kernel is None:
        state.kernel = CalibrationKernel()
        for _ in range(3):  # first-call costs: allocator, thread pool, code paths
            state.kernel()
    benchmark.group = GROUP
    timer = getattr(benchmark, "_timer", time.perf_counter)  # pytest-benchmark's clock (--benchmark-timer)

    def run(fn, *, rounds: int, warmup_rounds: int = 2) -> None:
        calibration = InterleavedCalibration(state.kernel, timer)
        benchmark.pedantic(fn, setup=calibration, rounds=rounds, warmup_rounds=warmup_rounds)
        if benchmark.disabled:
            state.disabled += 1
            pytest.skip("benchmarks disabled: ran once as a smoke test; the timing check needs timings")
        first = Measurement(benchmark.stats.stats.min, calibration.best, rounds)

        def remeasure() -> Measurement:
            return measure(fn, state.kernel, rounds=rounds, warmup_rounds=1, timer=timer)

        if state.refresh:
            attempts = [first] + [remeasure() for _ in range(REFRESH_ATTEMPTS - 1)]
            chosen = median_measurement(attempts)
            verdict = Verdict(name, RECORDED, chosen.ratio, state.baseline.ratio(name), state.baseline.tolerance(name))
        else:
            verdict, attempts = check(name, first, remeasure, state.baseline, MAX_ATTEMPTS)
            chosen = min(attempts, key=lambda m: m.ratio)
        state.results[name] = Result(chosen, verdict, attempts)
        benchmark.extra_info.update(ratio=chosen.ratio, calibration_seconds=chosen.calibration,
                                    baseline_ratio=verdict.baseline, perf_status=verdict.status)
        if verdict.status == REGRESSED:
            ratios = ", ".join(f"{m.ratio:.4g}" for m in attempts)
            pytest.fail(f"{verdict.message()}, in all {len(attempts)} measurements (ratios {ratios}; seconds "
                        f"{chosen.seconds:.4g}, calibration {chosen.calibration:.4g}). If the slowdown is "
                        f"intended, refresh the baseline: `{REFRESH_COMMAND}`", pytrace=False)

    yield run
    torch.set_num_threads(threads)


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(STATE, None)
    if state is None or not state.refresh or not state.results:
        return
    measured = {name: result.measurement for name, result in state.results.items()}
    state.baseline.refreshed(measured, keep=state.collected).save(BASELINE_FILE)
    state.written = BASELINE_FILE


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is None or not (state.results or state.disabled):
        return
    write = terminalreporter.write_line
    terminalreporter.section("timing regressions: ratio = min time / min calibration time")
    if state.results:
        rows = [("benchmark", "seconds", "ratio", "baseline", "change", "tolerance", "status")]
        for name, result in sorted(state.results.items()):
            v, m = result.verdict, result.measurement
            rows.append((name, f"{m.seconds:.4g}", f"{v.ratio:.4g}", "-" if v.baseline is None else f"{v.baseline:.4g}",
                         "-" if v.change is None else f"{v.change:+.0%}", f"+{v.tolerance:.0%}", v.status))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            write("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
        calibration = min(r.measurement.calibration for r in state.results.values())
        write(f"calibration kernel {calibration * 1e3:.3g} ms (min); torch threads {TORCH_THREADS}; "
              f"statistic: min over rounds; a regression must show in {MAX_ATTEMPTS} measurements to fail")
    base = state.baseline
    if base.machine and not same_machine_kind(base.machine, machine_description()):
        write(f"note: the baseline was recorded on another kind of machine ({base.machine.get('cpu')}, "
              f"{base.machine.get('cpu_count')} cores, {base.machine.get('cpu_capability')}, torch "
              f"{base.machine.get('torch')}): ratios transfer only approximately; consider a refresh on this one")
    new = sorted(name for name, r in state.results.items() if r.verdict.status == NEW)
    if new and not state.refresh:
        write(f"NEW (not checked, no baseline entry): {', '.join(new)}; record with `{REFRESH_COMMAND}`")
    stale = sorted(set(base.entries) - state.collected)
    if stale:
        verb = "dropped from the baseline" if state.written else "in the baseline but not collected in this run"
        write(f"{verb}: {', '.join(stale)}")
    if state.refresh:
        if state.written:
            write(f"baseline written: {state.written} ({len(state.results)} measured; median of "
                  f"{REFRESH_ATTEMPTS} measurements each). Check it with a normal run before committing it.")
        else:
            write("nothing was measured: the baseline is unchanged")
    if state.disabled:
        write(f"{state.disabled} benchmark(s) ran once without timing (benchmarks disabled): no regression check")
