"""The CLI through typer's CliRunner: exit codes, one-line errors, JSON output."""

import json
import subprocess
import sys
import time

from typer.testing import CliRunner

from conftest import one_line_error
from xopt.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_is_instant_and_lists_every_command():
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "xopt.cli", "--help"], capture_output=True, text=True, check=True)
    assert time.perf_counter() - t0 < 5
    for cmd in ("demo", "import", "train", "compile", "eval", "bench", "report", "pick", "variants"):
        assert cmd in out.stdout


def test_variants_json():
    res = run("variants", "--json")
    assert res.exit_code == 0
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["fp32"]["available"] and rows["onnx-int8"]["precision"] == "int8"


def test_errors_are_one_line(tmp_path, tiny_ckpt, tiny_suite):
    assert "unknown variant 'nope'" in one_line_error(run("compile", tiny_ckpt, "--variant", "nope", "--out",
                                                           tmp_path / "v"))
    assert "not a directory" in one_line_error(run("compile", tmp_path / "missing", "--variant", "fp32", "--out",
                                                    tmp_path / "v"))
    assert "no manifest.json" in one_line_error(run("eval", tmp_path, "--suite", "demo", "--data", tiny_suite))
    assert "suite not found" in one_line_error(run("eval", tmp_path, "--data", tmp_path / "x.json"))
    assert "unknown model" in one_line_error(run("import", "bert-huge", "--out", tmp_path / "m"))
    assert not (tmp_path / "v").exists() and not (tmp_path / "m").exists()


def test_compile_eval_bench_report_pick_on_a_tiny_model(tmp_path, tiny_ckpt, tiny_suite):
    v = tmp_path / "fp32"
    res = run("compile", tiny_ckpt, "--variant", "fp32", "--out", v, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["variant"] == "fp32"
    assert "already exists" in one_line_error(run("compile", tiny_ckpt, "--variant", "fp32", "--out", v))
    out = tmp_path / "r.jsonl"
    res = run("eval", v, "--suite", "demo", "--data", tiny_suite, "--langs", "de,ja", "--out", out, "--json")
    assert res.exit_code == 0, res.output
    recs = json.loads(res.stdout)
    assert {(r["task"], r["lang"]) for r in recs} >= {("demo-topic", "de"), ("demo-retrieval", "ja"),
                                                       ("demo-topic", "avg")}
    assert "not in the demo suite" in one_line_error(run("eval", v, "--data", tiny_suite, "--langs", "xx"))
    assert "unknown demo task" in one_line_error(run("eval", v, "--data", tiny_suite, "--tasks", "xnli2"))
    res = run("bench", v, "--batch-size", "1,2", "--seq-len", "16", "--rounds", "2", "--duration", "0.1",
              "--iters", "6", "--out", out, "--compare", "fp32")
    assert res.exit_code == 0, res.output
    assert "exceeds the model's maximum length" in one_line_error(run("bench", v, "--seq-len", "4096"))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sum(r["kind"] == "bench" for r in lines) == 2
    res = run("report", out, "--out", tmp_path / "rep")
    assert res.exit_code == 0 and (tmp_path / "rep" / "report.md").is_file()
    res = run("pick", out, "--max-p50-ms", "0.000001")
    assert res.exit_code == 1 and "no variant meets" in res.output


def test_train_refuses_unknown_task_before_training(tmp_path, tiny_ckpt, tiny_suite):
    msg = one_line_error(run("train", "--model", tiny_ckpt, "--target", "demo-topic", "--intermediate", "nosuchtask",
                              "--data", tiny_suite, "--out", tmp_path / "t"))
    assert "unknown task 'nosuchtask'" in msg and not (tmp_path / "t").exists()


def _compile_proc(tmp_path, ckpt, out, variant="onnx-fp32"):
    """`xopt compile` in its own process, temp files under tmp_path/tmp."""
    import os

    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    return subprocess.Popen([sys.executable, "-m", "xopt.cli", "compile", str(ckpt), "--variant", variant,
                             "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for_export(proc, out):
    """Wait until the compile into `out` exports ONNX (inside its output's work dir)."""
    deadline = time.monotonic() + 120
    while not list(out.parent.glob(f".{out.name}.tmp-*/scratch/.xopt-onnx-*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
        time.sleep(0.01)


def test_sigterm_mid_build_leaves_no_partial_variant(tmp_path, tiny_ckpt):
    """A killed `xopt compile` (CI timeout, scheduler) unwinds: exit 143, no half-built dir, no temp export."""
    import signal

    out = tmp_path / "v" / "onnx-fp32"
    proc = _compile_proc(tmp_path, tiny_ckpt, out)
    _wait_for_export(proc, out)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not out.exists() and not list((tmp_path / "v").iterdir())
    assert not list((tmp_path / "tmp").iterdir())


def test_sigkilled_compile_leaves_its_temp_files_to_the_next_run(tmp_path, tiny_ckpt):
    """SIGKILL runs no cleanup: its work dir (with the ONNX export inside) stays beside the output,
    nothing in $TMPDIR; the next compile into the same output removes it."""
    import signal

    from xopt.variants import compile_variant

    out = tmp_path / "v" / "onnx-fp32"
    proc = _compile_proc(tmp_path, tiny_ckpt, out)
    _wait_for_export(proc, out)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert [p.name for p in out.parent.glob(".onnx-fp32.tmp-*")] and not list((tmp_path / "tmp").iterdir())
    compile_variant(tiny_ckpt, "fp32", out)     # any variant: the next write of the output cleans
    assert sorted(p.name for p in out.parent.iterdir()) == ["onnx-fp32"]


def test_second_writer_of_one_output_is_refused_naming_the_holder(tmp_path, tiny_ckpt):
    """While a process writes an output (holds its lock), `xopt compile` into it refuses in one line."""
    import os

    from xopt import manifest as mf

    out = tmp_path / "v"
    with mf.atomic_dir(out, kind="variant") as tmp:
        (tmp / "mine.txt").write_text("first writer")
        proc = _compile_proc(tmp_path, tiny_ckpt, out, variant="fp32")
        assert proc.wait(timeout=120) == 2
        lines = proc.stdout.read().decode().strip().splitlines()
        assert lines == [f"xopt: error: {out} is being written by another xopt process (pid {os.getpid()}); "
                         "wait for it to finish, or choose another output"]
    assert (out / "mine.txt").read_text() == "first writer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp", "v"]      # lock file and work dir removed


def test_sigterm_exits_143_even_when_a_library_turns_the_exit_into_another_error():
    """SIGTERM during a C extension's import surfaces as that import's ImportError, not as the
    handler's SystemExit; the exit status still says the process was terminated."""
    code = ("import os, signal, time\n"
            "from xopt import cli\n"
            "def app():\n"
            "    try:\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        time.sleep(30)\n"
            "    except SystemExit:\n"
            "        raise ImportError('initialization failed') from None\n"
            "cli.app = app\n"
            "cli.main()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 143, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_demo_eval_appends_per_unit_and_resume_finishes_a_killed_run(tmp_path, tiny_ckpt, tiny_suite, monkeypatch):
    from xopt import evaluate as E
    from xopt import records

    v = tmp_path / "fp32"
    assert run("compile", tiny_ckpt, "--variant", "fp32", "--out", v).exit_code == 0
    args = ("eval", v, "--suite", "demo", "--data", tiny_suite, "--langs", "de,ja")
    full = tmp_path / "full.jsonl"
    assert run(*args, "--out", full).exit_code == 0
    real_add = E._Sink.add

    def killed_after_one_unit(self, rec):
        if self.recs:
            raise RuntimeError("killed")
        real_add(self, rec)

    out = tmp_path / "r.jsonl"
    monkeypatch.setattr(E._Sink, "add", killed_after_one_unit)
    assert isinstance(run(*args, "--out", out).exception, RuntimeError)
    assert len(records.read([out], strict=True)[0]) == 1
    monkeypatch.setattr(E._Sink, "add", real_add)
    res = run(*args, "--out", out, "--resume")
    assert res.exit_code == 0, res.output
    assert "already holds 1 of" in res.output

    def units(path):
        return sorted((r["task"], r["lang"], r["split"], r["suite"], round(r["value"], 6))
                      for r in records.read([path], strict=True)[0])

    assert units(out) == units(full)


def test_force_refuses_directories_xopt_did_not_write(tmp_path, tiny_ckpt):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for args in (("demo", "--out", mine, "--force"),
                 ("compile", tiny_ckpt, "--variant", "fp32", "--out", mine, "--force")):
        line = one_line_error(run(*args))
        assert f"{mine} holds 1 entry not written by xopt (notes.txt); --force replaces only" in line
    msg = one_line_error(run("compile", tiny_ckpt, "--variant", "fp32", "--out", tiny_ckpt, "--force"))
    assert "holds an xopt checkpoint directory; --force replaces only a variant directory" in msg
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]       # no temp dir left behind
