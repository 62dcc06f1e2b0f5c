"""Shared set-up of the pytest-benchmark suites: the packaged e5-small checkpoint, its CPU
variants built once per session, and `measure`, which times a runner with xopt.measure's own
warm-up, timer and loop (the code `xopt bench` runs) and hands the samples to pytest-benchmark.
Every benchmark here is marked with `timer=SAMPLE_CLOCK`, through which
`xopt.measure.to_pytest_benchmark` replays those samples into pytest-benchmark's statistics.

    python -m pytest bench/ --benchmark-json=bench-now.json
    python -m pytest bench/ --benchmark-compare=bench/baselines/<kind>.json \
        --benchmark-compare-fail=median:15%

Baselines are named by machine kind (`xopt.measure.machine_kind`: CPU model, ISA flags,
threads). The run's header names this host's kind and its baseline file; a comparison with a
baseline measured on another CPU model or ISA flag set says so in the header and the summary.
"""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from xopt.measure import SAMPLE_CLOCK, baseline_mismatch, machine_kind, to_pytest_benchmark  # noqa: E402
from xopt.scenarios.fixed_batch import Shape, measure_interleaved  # noqa: E402

# Fixed budgets so that runs are comparable with the saved baselines.
ROUNDS, MIN_ITERS, MIN_TIME_S = 3, 5, 0.5
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """pytest-benchmark reads the durations of bench/'s benchmarks from SAMPLE_CLOCK (the test's
    own benchmark marker options are kept)."""
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()) and item.path.resolve().is_relative_to(HERE):
            own = item.get_closest_marker("benchmark")
            item.add_marker(pytest.mark.benchmark(**{**(own.kwargs if own else {}), "timer": SAMPLE_CLOCK}),
                            append=False)


def _compare_notes(config) -> list[str]:
    """This host's baseline file, and whether the baseline compared against (a JSON file given to
    --benchmark-compare) was measured on this kind of CPU."""
    import json

    own = HERE / "baselines" / f"{machine_kind()}.json"
    notes = [f"xopt machine kind: {machine_kind()} (baseline {own.relative_to(HERE.parent)}: "
             f"{'saved' if own.is_file() else 'none saved for this machine'})"]
    given = config.getoption("benchmark_compare", None)
    if isinstance(given, str) and Path(given).is_file():
        why = baseline_mismatch(json.loads(Path(given).read_text()).get("machine_info") or {}, given)
        if why:
            notes.append(f"WARNING: {why}")
    return notes


def pytest_report_header(config):
    return _compare_notes(config)


def pytest_terminal_summary(terminalreporter, config):
    for line in _compare_notes(config)[1:]:
        terminalreporter.write_line(line, yellow=True)


@pytest.fixture(scope="session")
def e5_checkpoint():
    from xopt.pipeline import cached_e5

    return cached_e5()


@pytest.fixture(scope="session")
def variant_dir(e5_checkpoint, tmp_path_factory):
    """variant_dir(name) -> a directory of that variant of e5-small, built on first use."""
    from xopt.variants import REGISTRY, ExportCache, compile_variant

    root, built, exports = tmp_path_factory.mktemp("bench-variants"), {}, ExportCache()

    def get(name):
        if name not in built:
            opts = {"calib_samples": 64} if REGISTRY[name].calibrated else None
            compile_variant(e5_checkpoint, name, root / name, options=opts, exports=exports)
            built[name] = root / name
        return built[name]
    return get


@pytest.fixture
def measure(benchmark):
    """measure(runner, shape, vocab_size, pad_id, **info): xopt.scenarios.fixed_batch's measurement of one
    runner on one shape, reported through pytest-benchmark; returns the Measurement."""
    def run(runner, shape: Shape, vocab_size: int, pad_id: int, **info):
        m = measure_interleaved({runner.name: runner}, shape, vocab_size, pad_id, rounds=ROUNDS,
                                min_iters=MIN_ITERS, min_time_s=MIN_TIME_S)[runner.name]
        to_pytest_benchmark(benchmark, m, shape=shape.label, cold_ms=m.cold_ms, warmup=m.warmup,
                            round_p50_ms=m.round_p50_ms, peak_mem_mb=m.peak_mem_mb, loadavg=os.getloadavg(), **info)
        return m
    return run
