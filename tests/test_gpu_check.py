"""bench/gpu_check.py's dry run passes on a CPU host: every step's code imports, the GPU tests and
bench cases collect without errors or collection-time skips, the time boxes fit the budget."""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402


def test_dry_run(tmp_path):
    r = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--scratch", str(tmp_path),
                        "--wheels", str(tmp_path / "no-wheels")], cwd=ROOT, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "dry run: ok" in r.stdout
    for step in gpu_check.STEPS:
        assert step.name in r.stdout


def test_a_step_that_overruns_its_box_is_cut(tmp_path):
    """The time box is what keeps the whole check inside its budget: a command that overruns it is
    killed with its whole process group, what it wrote so far stays in its log, and the caller
    gets -9 at once."""
    log_path = tmp_path / "step.log"
    child = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; "
            f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(child)!r}, 'w').write(str(c.pid)); print('started', flush=True); time.sleep(60)")
    t = time.monotonic()
    with open(log_path, "w") as log:
        rc = gpu_check._run([sys.executable, "-c", code], dict(os.environ), 3, log)
    took = time.monotonic() - t
    assert rc == -9 and took < 30, (rc, took)
    text = log_path.read_text()
    assert "started" in text and "[cut after 3 s]" in text
    pid = int(child.read_text())
    for _ in range(50):                   # the grandchild went with its group
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the step's child {pid} outlived the cut")


def test_a_command_inside_its_box_keeps_its_exit_status(tmp_path):
    with open(tmp_path / "step.log", "w") as log:
        assert gpu_check._run([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), 30, log) == 3


def test_wheel_check_names_what_is_missing(tmp_path):
    specs = gpu_check._wheel_specs()
    assert ("torchao", "0.17.0") in specs and ("bitsandbytes", "0.50.2") in specs
    name, version = specs[0]
    (tmp_path / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"")
    problems = gpu_check.check_wheels(tmp_path)
    assert len(problems) == len(specs) - 1 and all("missing" in p for p in problems)


def test_shim_maps_kernels_and_calibration(tmp_path):
    shim = gpu_check.make_shim(tmp_path / "shim")
    code = ("import sys, xopt, xopt.kernels, xopt.calibration; "
            "assert xopt.__file__.startswith(sys.argv[1]), xopt.__file__; "
            "assert xopt.kernels.__file__.startswith(sys.argv[1] + '/xopt/kernels'), xopt.kernels.__file__")
    env = gpu_check.child_env(shim, None, None)
    r = subprocess.run([sys.executable, "-c", code, str(shim)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_accuracy_rows_drop_and_worst_language():
    def rec(variant, task, lang, value):
        return {"kind": "eval", "variant": variant, "task": task, "lang": lang, "metric": "accuracy", "value": value}
    recs = [rec("fp32", "demo-topic", "de", 80.0), rec("fp32", "demo-topic", "ja", 70.0),
            rec("fp32", "demo-topic", "avg", 75.0), rec("int8", "demo-topic", "de", 79.0),
            rec("int8", "demo-topic", "ja", 66.0), rec("int8", "demo-topic", "avg", 72.5)]
    rows = {r["variant"]: r for r in gpu_check.accuracy_rows(recs)}
    assert rows["int8"]["langs"] == 2 and rows["int8"]["mean"] == 72.5
    assert rows["int8"]["mean_drop"] == 2.5 and (rows["int8"]["worst_lang"], rows["int8"]["worst_drop"]) == ("ja", 4.0)
    assert rows["fp32"]["mean_drop"] == 0.0


def test_compiled_variants_come_after_the_eager_ones():
    r = subprocess.run([sys.executable, "-m", "xopt.cli", "variants", "--json"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    import json

    vs = [v for v in json.loads(r.stdout) if v["device"] in ("cuda", "auto")]
    names = [v["name"] for v in gpu_check.order_variants(vs)]
    assert names[0] == "fp16"
    first_compiled = min(names.index(n) for n in ("compile-cuda", "int8", "int8-smooth", "fp8"))
    assert all(names.index(n) < first_compiled for n in ("bf16", "bnb-int8", "unpadded", "unpadded-int8"))
    assert names.index("int8-smooth") > names.index("int8")


def test_verbose_rows_when_pytest_was_cut():
    log = ("tests/test_kernels.py::test_kernels_on_gpu[1] PASSED [ 10%]\n"
           "tests/test_gpu_variants.py::test_gpu_variant_matches_fp32[int8] FAILED   [ 20%]\n"
           "tests/test_gpu_variants.py::test_gpu_variant_matches_fp32[fp8] ")
    rows = gpu_check._verbose_rows(log)
    assert [(r["test"].split("::")[1], r["outcome"]) for r in rows] == [
        ("test_kernels_on_gpu[1]", "passed"), ("test_gpu_variant_matches_fp32[int8]", "failed")]
