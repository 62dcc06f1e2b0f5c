"""Every input a user can get wrong ends in one line (`xopt: error: ...`) naming the thing and the
fix, exit code 2, and nothing written: one row per bad input, run through the CLI in-process.

Each row builds its inputs under the test's tmp_path and returns the command line, the
environment, and the words the one line must contain (what is wrong, and the way out). The
directory tree under tmp_path is compared before and after: a failed command adds nothing.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xopt.cli import app


@dataclass
class Ctx:
    tmp: Path
    request: pytest.FixtureRequest
    monkeypatch: pytest.MonkeyPatch

    def ckpt(self, manifest: bool = True) -> Path:
        """A copy of the tiny checkpoint under tmp (rows may damage it)."""
        dst = self.tmp / "ckpt"
        shutil.copytree(self.request.getfixturevalue("tiny_ckpt"), dst)
        if not manifest:
            (dst / "manifest.json").unlink()
        return dst

    def suite(self) -> Path:
        return self.request.getfixturevalue("tiny_suite")


def _plan(tmp: Path, target_extra: str = "", run: str = "") -> Path:
    p = tmp / "plan.toml"
    p.write_text(f'model = "ckpt"\nout = "run"\n[target]\ntask = "demo-topic"\n{target_extra}\n{run}\n')
    return p


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def _eval_record(**override) -> dict:
    rec = {"kind": "eval", "schema": 1, "model": "xstilts", "variant": "fp32", "host": {}, "xopt_version": "0",
           "created": "2026-01-01T00:00:00Z", "suite": "demo", "task": "demo-topic", "lang": "de", "split": "test",
           "metric": "accuracy", "value": 71.0, "n_examples": 40}
    return {**rec, **override}


def _results_wrong_types(tmp: Path) -> Path:
    p = tmp / "results.jsonl"
    p.write_text(json.dumps(_eval_record(value="high", n_examples="forty")) + "\n")
    return p


def _profile(tmp: Path, amax: float) -> Path:
    from xopt.calibration.profile import FORMAT

    name = "encoder.layer.0.attention.self.query"
    prof = {"format": FORMAT, "method": "minmax", "params": {}, "model": {}, "calibration": {},
            "activations": {name: {"amax": amax, "rmin": -1.0, "rmax": 1.0, "scale": amax / 127, "zero_point": 0}},
            "weights": {name: {"axis": 0, "amax": [1.0] * 4}}}
    p = tmp / "profile.json"
    p.write_text(json.dumps(prof))    # NaN is written as the bare token NaN, as json.dump does
    return p


def _truncate(f: Path) -> None:
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def _nan_fidelity(c: Ctx) -> None:
    from xopt.calibration import profile, sensitivity

    # both names: sensitivity binds profile's function when first imported, and a first import
    # under this patch would otherwise keep the NaN stand-in for the rest of the session
    for mod in (profile, sensitivity):
        c.monkeypatch.setattr(mod, "output_fidelity", lambda ref, got: math.nan)


# id -> builder(ctx) -> (args, env, words the line must contain)
ROWS = {
    "eval --batch-size 0": lambda c: (
        ["eval", str(c.tmp / "v"), "--suite", "demo", "--batch-size", "0", "--out", str(c.tmp / "r.jsonl")],
        {}, ["--batch-size 0", "positive"]),
    "eval --batch-size negative": lambda c: (
        ["eval", str(c.tmp / "v"), "--batch-size", "-8", "--out", str(c.tmp / "r.jsonl")],
        {}, ["--batch-size -8", "positive"]),
    "eval --max-examples negative": lambda c: (
        ["eval", str(c.tmp / "v"), "--max-examples", "-1", "--out", str(c.tmp / "r.jsonl")],
        {}, ["--max-examples -1", "positive"]),
    "bench --rounds 0": lambda c: (
        ["bench", str(c.tmp / "v"), "--rounds", "0", "--out", str(c.tmp / "r.jsonl")],
        {}, ["--rounds 0", "positive"]),
    "plan batch_size = 0": lambda c: (
        ["train", str(_plan(c.tmp, "batch_size = 0"))], {}, ["[target]", "batch_size = 0", "at least 1"]),
    "plan grad_accum = 0": lambda c: (
        ["train", str(_plan(c.tmp, "grad_accum = 0"))], {}, ["[target]", "grad_accum = 0", "at least 1"]),
    "plan epochs absurd": lambda c: (
        ["train", str(_plan(c.tmp, "epochs = 1000000000"))], {}, ["[target]", "epochs = 1000000000", "at most 10000"]),
    "plan lr absurd": lambda c: (
        ["train", str(_plan(c.tmp, "lr = 1e9"))], {}, ["[target]", "lr = 1000000000.0", "at most 10"]),
    "plan dropout above 1": lambda c: (
        ["train", str(_plan(c.tmp, "dropout = 1.5"))], {}, ["dropout = 1.5", "at most 0.99", "probability"]),
    "plan max_length absurd": lambda c: (
        ["train", str(_plan(c.tmp, "max_length = 100000000"))], {}, ["max_length = 100000000", "at most 65536"]),
    "plan average absurd": lambda c: (
        ["train", str(_plan(c.tmp, "average = 100000"))], {}, ["average = 100000", "at most 100"]),
    "plan seed beyond 32 bits": lambda c: (
        ["train", str(_write(c.tmp / "plan.toml", 'model = "ckpt"\nout = "run"\nseed = 99999999999\n'
                                                  '[target]\ntask = "demo-topic"\n'))], {},
        ["seed = 99999999999", "at most 4294967295"]),
    "plan [run] bench.batch absurd": lambda c: (
        ["run", str(_plan(c.tmp, run="[run.bench]\nbatch = [100000000]"))], {},
        ["bench.batch = 100000000", "at most 4096"]),
    "plan [run] max_examples absurd": lambda c: (
        ["run", str(_plan(c.tmp, run="[run]\nmax_examples = 100000000000"))], {},
        ["max_examples = 100000000000", "at most 1000000000"]),
    "plan [run] bench = true": lambda c: (
        ["run", str(_plan(c.tmp, run="[run]\nbench = true"))], {}, ["[run]", "bench = true", "or false"]),
    "compile --keep bad regex": lambda c: (
        ["compile", str(c.tmp / "ckpt"), "--variant", "onnx-int8", "--out", str(c.tmp / "v"), "--keep", "(dense"],
        {}, ["--keep '(dense'", "not a regular expression", "e.g. --keep"]),
    "compile --keep-fp32 bad regex": lambda c: (
        ["compile", str(c.tmp / "ckpt"), "--variant", "onnx-int8", "--out", str(c.tmp / "v"), "--keep-fp32",
         "layer.[0-"], {}, ["--keep-fp32 'layer.[0-'", "not a regular expression"]),
    "XOPT_THREADS not an integer": lambda c: (
        ["eval", str(c.tmp / "v"), "--out", str(c.tmp / "r.jsonl")], {"XOPT_THREADS": "four"},
        ["XOPT_THREADS='four'", "e.g. XOPT_THREADS=4"]),
    "XOPT_THREADS zero": lambda c: (
        ["bench", str(c.tmp / "v"), "--out", str(c.tmp / "r.jsonl")], {"XOPT_THREADS": "0"},
        ["XOPT_THREADS='0'", "positive"]),
    "report: record of wrong types": lambda c: (
        ["report", str(_results_wrong_types(c.tmp)), "--out", str(c.tmp / "report")], {},
        ["results.jsonl:1", "'value'", "expected float"]),
    "pick: record of wrong types": lambda c: (
        ["pick", str(_results_wrong_types(c.tmp))], {}, ["results.jsonl:1", "'value'", "expected float"]),
    "truncated safetensors, no manifest": lambda c: (
        _truncate(c.ckpt(manifest=False) / "model.safetensors"),
        ["compile", str(c.tmp / "ckpt"), "--variant", "fp32", "--out", str(c.tmp / "v")], {},
        ["model.safetensors", "truncated", "re-save"])[1:],
    "onnx-int8 profile with NaN amax": lambda c: (
        c.ckpt(),
        ["compile", str(c.tmp / "ckpt"), "--variant", "onnx-int8", "--out", str(c.tmp / "v"),
         "--option", f"calib_profile={_profile(c.tmp, math.nan)}"], {},
        ["profile.json", "amax", "nan", "recalibrate"])[1:],
    "unpadded-int8-static profile with zero amax": lambda c: (
        c.ckpt(),
        ["compile", str(c.tmp / "ckpt"), "--variant", "unpadded-int8-static", "--out", str(c.tmp / "v"),
         "--calib-profile", str(_profile(c.tmp, 0.0))], {},
        ["profile.json", "amax", "0.0", "recalibrate"])[1:],
    "SmoothQuant: every trial NaN": lambda c: (
        c.ckpt(), _nan_fidelity(c),
        ["calibrate", str(c.tmp / "ckpt"), "--out", str(c.tmp / "prof.json"), "--calib-data", str(c.suite()),
         "--calib-samples", "16", "--calib-method", "minmax+smoothquant"], {},
        ["SmoothQuant", "NaN", "smoothquant_alpha="])[2:],
}


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_is_one_line(row, tmp_path, request, monkeypatch):
    monkeypatch.delenv("XOPT_THREADS", raising=False)
    monkeypatch.chdir(tmp_path)
    args, env, words = ROWS[row](Ctx(tmp_path, request, monkeypatch))
    before = _tree(tmp_path)
    result = CliRunner().invoke(app, args, env=env)
    lines = result.output.splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("xopt: error: "), result.output
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert _tree(tmp_path) == before, "a failed command wrote files"


# ---------------------------------------------------------------- no library noise

def _xopt(*args: str) -> "subprocess.CompletedProcess":
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("XOPT_VERBOSE", "XOPT_THREADS")}
    return subprocess.run([sys.executable, "-m", "xopt.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_variants_prints_nothing_on_stderr():
    r = _xopt("variants")
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_failing_command_that_loads_the_model_is_one_line(tiny_ckpt, tmp_path):
    """The model load imports transformers' model classes, and with them torchao: its import-time
    log lines stay off stderr, and the user's error is the only line."""
    prof = _profile(tmp_path, 1.0)      # a well-formed profile of another model
    r = _xopt("compile", str(tiny_ckpt), "--variant", "onnx-int8", "--out", str(tmp_path / "v"),
              "--calib-profile", str(prof))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("xopt: error: "), r.stderr
    assert "profile" in r.stderr and not (tmp_path / "v").exists()


def test_missing_variant_dir_is_one_line():
    r = _xopt("eval", "/nonexistent", "--suite", "demo")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("xopt: error: "), r.stderr


def test_a_nan_smoothquant_trial_is_never_the_best():
    from xopt.calibration.run import best_trial

    trials = [(0.3, math.nan, "a"), (0.5, 2.0, "b"), (0.8, 1.5, "c"), (0.9, math.nan, "d")]
    assert best_trial(trials)[0] == 0.8
    assert best_trial([(0.5, math.nan, "given")])[0] == 0.5      # one given alpha: not measured, taken
    from xopt.errors import XoptError

    with pytest.raises(XoptError, match="every trial alpha"):
        best_trial([(0.3, math.nan, "a"), (0.8, math.nan, "b")])


def test_a_full_disk_is_one_line_leaves_nothing_and_xopt_debug_keeps_the_traceback(tiny_ckpt, tmp_path, monkeypatch):
    """ENOSPC from deep inside a build reaches the CLI as one line naming the file; the atomic
    output directory leaves nothing behind; XOPT_DEBUG=1 shows the traceback instead."""
    import errno

    from conftest import one_line_error
    from xopt.variants import eager

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(eager, "link_or_copy", full)
    out = tmp_path / "v"
    res = CliRunner().invoke(app, ["compile", str(tiny_ckpt), "--variant", "fp32", "--out", str(out)])
    msg = one_line_error(res)
    assert f"writing {tmp_path / 'v' / 'model.safetensors'}; at least " in msg and "MB needed" in msg, msg
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".v")]
    monkeypatch.setenv("XOPT_DEBUG", "1")
    res = CliRunner().invoke(app, ["compile", str(tiny_ckpt), "--variant", "fp32", "--out", str(out)])
    assert isinstance(res.exception, OSError) and res.exception.errno == errno.ENOSPC


@pytest.mark.parametrize("opts, flag", [
    (["--latency-bound-ms", "-5"], "--latency-bound-ms"),
    (["--latency-bound-ms", "nan"], "--latency-bound-ms"),
    (["--latency-bound-ms", "0"], "--latency-bound-ms"),
    (["--server-qps", "1:1e12"], "--server-qps"),
    (["--server-qps", "50:5"], "LOW must be below HIGH"),
])
def test_absurd_server_options_are_refused_before_any_work(opts, flag, tmp_path):
    from conftest import one_line_error

    res = CliRunner().invoke(app, ["bench", str(tmp_path / "not-loaded"), "--scenario", "server", *opts])
    assert flag in one_line_error(res)
