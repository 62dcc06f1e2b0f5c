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


@pytest.mark.parametrize("name", BENCH_FILES)
def test_bench_file_collects(name):
    """Each suite collects at least one case, with no errors and no module-level skip."""
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-rs", "-p", "no:cacheprovider",
                        f"bench/{name}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"collecting bench/{name} failed (exit {r.returncode}):\n{out[-4000:]}"
    assert "error" not in out.lower().splitlines()[-1], out[-4000:]
    assert "skipped" not in out.lower(), f"bench/{name} skips at collection:\n{out[-4000:]}"
    assert f"bench/{name}::" in out, f"bench/{name} collected no case:\n{out[-4000:]}"
