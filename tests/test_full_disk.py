"""A full disk, on a real 20 MB tmpfs: compile (fp32, ONNX), eval, report and train end in one line
naming the file system and the file, and leave nothing a later command accepts, no temp files."""

import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from conftest import one_line_error
from xopt import records
from xopt.cli import app


@pytest.fixture
def fs(tmp_path):
    """A 20 MB tmpfs (root only; skipped where it cannot be mounted)."""
    d = tmp_path / "fs"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip() or r.returncode}")
    yield d
    subprocess.run(["umount", str(d)], check=True)


def _fill(fs, keep_bytes: int) -> None:
    """Leave about `keep_bytes` free on `fs`."""
    with open(fs / "filler", "wb") as f:
        f.write(b"\0" * (shutil.disk_usage(fs).free - keep_bytes))


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _left(fs):
    return sorted(p.name for p in fs.iterdir() if p.name != "filler")


@pytest.mark.parametrize("variant", ["fp32", "onnx-fp32"])
def test_compile_on_a_full_disk(fs, tiny_ckpt, variant):
    line = one_line_error(_run("compile", tiny_ckpt, "--variant", variant, "--out", fs / variant))
    weights_mb = (tiny_ckpt / "model.safetensors").stat().st_size / 1e6
    assert line.startswith(f"xopt: error: no space left on {fs} writing {fs / variant}"), line
    assert f"at least {weights_mb:.0f} MB needed" in line and "nothing half-written is kept" in line, line
    assert _left(fs) == []                 # no half-built variant, no work dir, no temp export, no lock


def test_eval_on_a_full_disk_keeps_the_records_before(fs, tiny_ckpt, tiny_suite, tmp_path):
    v = tmp_path / "fp32"
    assert _run("compile", tiny_ckpt, "--variant", "fp32", "--out", v).exit_code == 0
    out = fs / "r.jsonl"
    _fill(fs, 1500)           # room for a few records
    line = one_line_error(_run("eval", v, "--suite", "demo", "--data", tiny_suite, "--langs", "de,ja", "--out", out))
    assert line.startswith(f"xopt: error: no space left on {fs} writing {out}; ") and "records not appended" in line
    (fs / "filler").unlink()
    kept, _ = records.read([out])
    assert all(r["kind"] == "eval" and r["variant"] == "fp32" for r in kept)
    res = _run("eval", v, "--suite", "demo", "--data", tiny_suite, "--langs", "de,ja", "--out", out, "--resume")
    assert res.exit_code == 0, res.output
    full, skipped = records.read([out])
    assert len(full) > len(kept) and len({(r["task"], r["lang"]) for r in full}) == len(full)


def test_report_on_a_full_disk(fs, tmp_path):
    recs = [records.record("eval", model=role, role=role, base_model="enc", variant=v, suite="demo", task="topic",
                           lang=lang, split="test", metric="accuracy", value=50.0 + 10 * (role == "xstilts"),
                           n_examples=6) for role in ("baseline", "xstilts") for v in ("fp32", "int8")
            for lang in ("de", "ja")]
    res = tmp_path / "r.jsonl"
    records.append(res, recs)
    _fill(fs, 20_000)
    line = one_line_error(_run("report", res, "--out", fs / "rep"))
    assert line.startswith(f"xopt: error: no space left on {fs} writing {fs / 'rep'}"), line
    assert _left(fs) == []


def test_train_on_a_full_disk(fs, tiny_ckpt, tiny_suite, tmp_path):
    plan, run = tmp_path / "plan.toml", fs / "run"
    plan.write_text(f'model = "{tiny_ckpt}"\nout = "{run}"\ndata = "{tiny_suite}"\n'
                    '[target]\ntask = "demo-topic"\nsteps = 2\nbatch_size = 4\n')
    line = one_line_error(_run("train", plan))
    assert line.startswith(f"xopt: error: no space left on {fs} writing {run / 'baseline'}"), line
    assert "MB needed" in line
    # the run's plan, its resolved.json and the finished stage stay for --resume; no checkpoint, no temp file
    assert not (run / "baseline").exists()
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name or p.name.endswith(".lock")]
