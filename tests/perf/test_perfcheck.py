"""The timing-regression check itself, without depending on how fast this machine is today.

The comparison and the retry are tested with synthetic numbers, the measurement with a fake clock (so "an artificially
slowed hot path fails the check" is shown deterministically), and the pytest plugin end to end in inner pytest
sessions whose baselines sit absurdly far from any real timing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from perfcheck import (
    FASTER,
    NEW,
    OK,
    REGRESSED,
    Baseline,
    Measurement,
    check,
    compare,
    measure,
    median_measurement,
)

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")


def baseline(**ratios: float) -> Baseline:
    return Baseline(default_tolerance=0.5, tolerances={"noisy": 1.0},
                    entries={name: {"ratio": ratio} for name, ratio in ratios.items()})


# -- the comparison, with synthetic numbers ----------------------------------------------------------------------


@pytest.mark.parametrize(("ratio", "status"), [
    (10.0, OK), (14.9, OK), (15.0, OK),    # up to +50 %: within the tolerance
    (15.1, REGRESSED), (40.0, REGRESSED),  # beyond it
    (7.0, OK), (6.6, FASTER),              # much faster is reported (refresh to keep it), never failed
])
def test_compare_against_tolerance(ratio, status):
    verdict = compare("hot", ratio, baseline(hot=10.0))
    assert verdict.status == status
    assert verdict.change == pytest.approx(ratio / 10.0 - 1)


def test_per_benchmark_tolerance_overrides_the_default():
    assert compare("noisy", 19.0, baseline(noisy=10.0)).status == OK  # +90 % within its +100 %
    assert compare("noisy", 21.0, baseline(noisy=10.0)).status == REGRESSED


def test_missing_entry_is_new_not_failed():
    verdict = compare("brand_new_masker", 123.0, baseline(hot=10.0))
    assert verdict.status == NEW and verdict.baseline is None
    assert "--refresh-perf-baseline" in verdict.message()


def test_a_slowdown_must_persist_over_every_attempt():
    first = Measurement(seconds=2.0, calibration=0.1, rounds=5)   # ratio 20: +100 %
    recovered = Measurement(seconds=1.1, calibration=0.1, rounds=5)  # ratio 11: a burst of load that passed
    verdict, attempts = check("hot", first, lambda: recovered, baseline(hot=10.0), max_attempts=3)
    assert verdict.status == OK and len(attempts) == 2

    verdict, attempts = check("hot", first, lambda: first, baseline(hot=10.0), max_attempts=3)
    assert verdict.status == REGRESSED and len(attempts) == 3

    def never():
        raise AssertionError("a passing first measurement is not repeated")

    verdict, attempts = check("hot", recovered, never, baseline(hot=10.0))
    assert verdict.status == OK and attempts == [recovered]


def test_refresh_records_the_median_ratio():
    attempts = [Measurement(r, 1.0, 5) for r in (3.0, 1.0, 2.0)]
    assert median_measurement(attempts).ratio == 2.0


# -- the measurement, with a fake clock --------------------------------------------------------------------------


class FakeClock:
    """A clock that advances only when the timed code says so: ``tick(seconds)``."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def test_measure_takes_minimums_and_detects_an_artificially_slowed_hot_path():
    clock = FakeClock()
    noise = iter([0.5, 0.0, 2.0, 0.0, 0.1] * 100)  # other processes only ever add time

    def kernel():
        clock.tick(0.001 * (1 + next(noise)))

    def hot_path():
        clock.tick(0.010 * (1 + next(noise)))

    def slowed():  # the hot path with a redundant second pass
        hot_path()
        clock.tick(0.010)

    normal = measure(hot_path, kernel, rounds=5, warmup_rounds=1, timer=clock)
    assert normal.seconds == pytest.approx(0.010) and normal.calibration == pytest.approx(0.001)
    assert normal.ratio == pytest.approx(10.0)
    recorded = baseline(hot_path=normal.ratio)

    again = measure(hot_path, kernel, rounds=5, warmup_rounds=1, timer=clock)
    assert compare("hot_path", again.ratio, recorded).status == OK

    def slow_measurement():
        return measure(slowed, kernel, rounds=5, warmup_rounds=1, timer=clock)

    verdict, attempts = check("hot_path", slow_measurement(), slow_measurement, recorded)
    assert verdict.status == REGRESSED and len(attempts) == 3
    assert verdict.change == pytest.approx(1.0)  # twice the work, twice the ratio


def test_a_uniformly_slower_machine_does_not_regress():
    """The ratio cancels the machine's speed: everything 3x slower (a busy or slower host) leaves it unchanged."""
    clock = FakeClock()
    for speed in (1.0, 3.0):
        def hot_path(speed=speed):
            clock.tick(0.010 * speed)

        def kernel(speed=speed):
            clock.tick(0.001 * speed)

        m = measure(hot_path, kernel, rounds=3, warmup_rounds=0, timer=clock)
        assert compare("hot_path", m.ratio, baseline(hot_path=10.0)).status == OK


# -- the baseline file -------------------------------------------------------------------------------------------


def test_refresh_keeps_tolerances_and_deselected_entries_and_drops_stale_ones(tmp_path):
    old = Baseline(default_tolerance=0.4, tolerances={"noisy": 0.8},
                   entries={"hot": {"ratio": 1.0}, "deselected": {"ratio": 2.0}, "removed_masker": {"ratio": 3.0}})
    new = old.refreshed({"hot": Measurement(0.5, 0.1, 5)}, keep={"hot", "deselected"})
    path = tmp_path / "baseline.json"
    new.save(path)
    loaded = Baseline.load(path)
    assert loaded.entries == {"deselected": {"ratio": 2.0}, "hot": {"ratio": 5.0, "seconds": 0.5}}
    assert loaded.default_tolerance == 0.4 and loaded.tolerances == {"noisy": 0.8}
    assert loaded.machine["torch"] == torch.__version__ and loaded.recorded
    assert Baseline.load(tmp_path / "missing.json").entries == {}


# -- the plugin end to end, in inner pytest sessions -------------------------------------------------------------

INNER_TEST = """
def test_hot(perf):
    perf(lambda: sum(range(2000)), rounds=3)
"""


def write_baseline(directory: Path, ratio: float | None, tolerance: float = 0.5) -> None:
    benchmarks = {"stale": {"ratio": 1.0}} if ratio is None else {"hot": {"ratio": ratio}}
    data = {"tolerance": {"default": tolerance, "per_benchmark": {"hot": tolerance}}, "benchmarks": benchmarks}
    (directory / "baseline.json").write_text(json.dumps(data))


@pytest.fixture
def inner(pytester):
    """An inner pytest session with this directory's conftest (its baseline.json is the inner directory's)."""
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_inner=INNER_TEST)
    threads = torch.get_num_threads()
    yield pytester
    assert torch.get_num_threads() == threads, "the perf fixture restores torch's thread count"


def test_plugin_fails_a_regression(inner):
    write_baseline(inner.path, ratio=1e-12)  # no real timing is within 50 % of this
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        ("*hot: ratio * vs baseline 1e-12 * slower than the baseline allows, in all 3 measurements*"
         "refresh the baseline: `python -m pytest tests/perf --refresh-perf-baseline`"),
    ])


def test_plugin_passes_within_tolerance(inner):
    write_baseline(inner.path, ratio=1.0, tolerance=1e12)  # any ratio is within
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*timing regressions*", "hot *  ok"])


def test_plugin_reports_a_new_benchmark_without_failing(inner):
    write_baseline(inner.path, ratio=None)
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "hot * new",
        "NEW (not checked, no baseline entry): hot; record with `python -m pytest tests/perf --refresh-perf-baseline`",
        "in the baseline but not collected in this run: stale",
    ])


def test_plugin_refreshes_the_baseline(inner):
    write_baseline(inner.path, ratio=None, tolerance=0.7)
    result = inner.runpytest("-p", "no:cacheprovider", "--refresh-perf-baseline")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["dropped from the baseline: stale", "baseline written: *"])
    written = json.loads((inner.path / "baseline.json").read_text())
    assert set(written["benchmarks"]) == {"hot"} and written["benchmarks"]["hot"]["ratio"] > 0
    assert written["tolerance"] == {"default": 0.7, "per_benchmark": {"hot": 0.7}}
    assert written["machine"]["torch_threads"] == 1 and written["recorded"]


def test_plugin_skips_the_check_when_benchmarks_are_disabled(inner):
    write_baseline(inner.path, ratio=1e-12)  # would fail if it were checked
    result = inner.runpytest("-p", "no:cacheprovider", "--benchmark-disable", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*benchmarks disabled: ran once as a smoke test*"])
