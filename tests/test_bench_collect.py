"""bench/ must import and collect on every host: an import error there is a failure, not a skip.

The GPU suites skip their cases (the `gpu` marker, with the reason) where there is no GPU; their
modules still import, so a wrong import or a missing name is caught here on the CPU.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH_FILES = sorted(p.name for p in (ROOT / "bench").glob("bench_*.py"))


def test_there_are_bench_suites():
    assert {"bench_kernels.py", "bench_gpu_kernels.py", "bench_gpu_variants.py"} <= set(BENCH_FILES)


@pytest.fixture(scope="module")
def collected() -> tuple[int, str]:
    """One `pytest --collect-only` of every suite (one interpreter start, not one per file)."""
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-rs", "-p", "no:cacheprovider",
                        *(f"bench/{n}" for n in BENCH_FILES)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    return r.returncode, r.stdout + r.stderr


def test_bench_collects_without_errors_or_skips(collected):
    rc, out = collected
    assert rc == 0, f"collecting bench/ failed (exit {rc}):\n{out[-4000:]}"
    assert "error" not in out.lower().splitlines()[-1], out[-4000:]
    assert "skipped" not in out.lower(), f"bench/ skips at collection:\n{out[-4000:]}"


@pytest.mark.parametrize("name", BENCH_FILES)
def test_bench_file_collects(name, collected):
    """Each suite collects at least one case."""
    assert f"bench/{name}::" in collected[1], f"bench/{name} collected no case:\n{collected[1][-4000:]}"
