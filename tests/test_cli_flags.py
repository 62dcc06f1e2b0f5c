"""The CLI's flag vocabulary: --batch-size, --model (an input path), --device (selects),
--filter-model / --filter-device, --min/opt/max-shapes. The functions behind the commands are
replaced by recorders, so these tests check what each flag hands over, not the work itself."""

import pytest
from typer.testing import CliRunner

from conftest import one_line_error
from xopt.cli import app
from xopt.errors import XoptError

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def calls(monkeypatch):
    """Replace bench, report's load, pick and compile_variant with recorders of their arguments."""
    import xopt.bench
    import xopt.pick
    import xopt.report
    import xopt.variants

    got = {}

    def bench(dirs, config, **kw):
        got["bench"] = {"batches": list(config.batches), "seq_lens": list(config.seq_lens)}
        return []

    def load(paths, comparison, model, device):
        got["report"] = {"model": model, "device": device}
        raise XoptError("recorded")

    def pick(paths, budget, comparison, **kw):
        got["pick"] = {"batch": budget.batch, **kw}
        return {"chosen": None}

    def compile_variant(checkpoint, name, out, force=False, options=None):
        got["compile"] = options
        return {"variant": name, "build_s": 0.0}

    monkeypatch.setattr(xopt.bench, "bench", bench)
    monkeypatch.setattr(xopt.report, "load", load)
    monkeypatch.setattr(xopt.pick, "pick", pick)
    monkeypatch.setattr(xopt.variants, "compile_variant", compile_variant)
    return got


def test_help_shows_new_spellings_only():
    for cmd, shown, hidden in (("bench", ["--batch-size"], ["--batch "]),
                               ("pick", ["--batch-size", "--filter-model", "--filter-device"],
                                ["--batch ", "--model ", "--device "]),
                               ("report", ["--filter-model", "--filter-device"], ["--model ", "--device "]),
                               ("compile", ["--device", "--min-shapes", "--opt-shapes", "--max-shapes"], []),
                               ("train", ["--model"], []), ("eval", ["--batch-size"], [])):
        res = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
        assert res.exit_code == 0, res.output
        assert all(f in res.stdout for f in shown), (cmd, res.stdout)
        assert not any(f in res.stdout for f in hidden), (cmd, res.stdout)


def test_bench_batch_size(calls, tmp_path):
    res = run("bench", tmp_path, "--batch-size", "1,4", "--seq-len", "16", "--json")
    assert res.exit_code == 0 and res.stderr == "", res.output
    assert calls["bench"] == {"batches": [1, 4], "seq_lens": [16]}


def test_report_filters(calls, tmp_path):
    res = run("report", tmp_path / "r.jsonl", "--out", tmp_path / "rep", "--filter-model", "e5-small",
              "--filter-device", "cuda")
    assert "recorded" in one_line_error(res)
    assert calls["report"] == {"model": "e5-small", "device": "cuda"}


def test_pick_batch_size_and_filters(calls, tmp_path):
    res = run("pick", tmp_path / "r.jsonl", "--batch-size", "8", "--filter-model", "e5-small", "--filter-device",
              "cuda", "--json")
    assert res.exit_code == 1 and res.stderr == "", res.output     # the recorder chooses nothing
    assert (calls["pick"]["batch"], calls["pick"]["model"], calls["pick"]["device"]) == (8, "e5-small", "cuda")
    res = run("pick", tmp_path / "r.jsonl", "--json")
    assert (calls["pick"]["batch"], calls["pick"]["model"], calls["pick"]["device"]) == (1, None, None)


def test_compile_shapes_reach_the_tensorrt_profile(calls, tmp_path):
    from xopt.variants import get

    res = run("compile", tmp_path, "--variant", "trt-fp16", "--out", tmp_path / "v", "--json",
              "--min-shapes", "input_ids:1x16,attention_mask:1x16", "--opt-shapes", "input_ids:8x128",
              "--max-shapes", "'input_ids':32x512,'attention_mask':32x512")
    assert res.exit_code == 0, res.output
    assert calls["compile"] == {"min": "1x16", "opt": "8x128", "max": "32x512"}
    cfg = get("trt-fp16").configure(calls["compile"])       # what the variant's config makes of them
    assert cfg.shapes() == ((1, 16), (8, 128), (32, 512))
    res = run("compile", tmp_path, "--variant", "torch-tensorrt", "--out", tmp_path / "v", "--json",
              "--max-shapes", "input_ids:4x64")
    assert res.exit_code == 0 and calls["compile"] == {"max": "4x64"}, res.output
    msg = one_line_error(run("compile", tmp_path, "--variant", "trt-int8", "--out", tmp_path / "v",
                              "--max-shapes", "input_ids:4x64", "-o", "max=8x64"))
    assert "option max given twice (as --max-shapes and --option)" in msg


@pytest.mark.parametrize("spec, why", [
    ("", "give NAME:BATCHxSEQUENCE"),
    ("1x16", "has no input name"),
    ("input_ids:1x", "is not BATCHxSEQUENCE"),
    ("input_ids:0x16", "is not BATCHxSEQUENCE"),
    ("input_ids:1x16x3", "is not BATCHxSEQUENCE"),
    ("token_ids:1x16", "unknown input 'token_ids'"),
    ("input_ids:1x16,input_ids:1x16", "given twice"),
    ("input_ids:1x16,attention_mask:1x32", "every input shares one BATCHxSEQUENCE profile"),
])
def test_min_shapes_errors_are_one_line(calls, tmp_path, spec, why):
    msg = one_line_error(run("compile", tmp_path, "--variant", "trt-fp16", "--out", tmp_path / "v",
                              "--min-shapes", spec))
    assert msg.startswith("xopt: error: --min-shapes") and why in msg
    assert "compile" not in calls


def test_shapes_and_device_are_checked_against_the_variant(calls, tmp_path):
    from xopt.variants import get

    msg = one_line_error(run("compile", tmp_path, "--variant", "fp32", "--out", tmp_path / "v",
                              "--max-shapes", "input_ids:4x64"))
    assert "variant fp32 has none" in msg and "trt-fp16" in msg
    assert "use cpu or cuda" in one_line_error(run("compile", tmp_path, "--variant", "fp32", "--out",
                                                    tmp_path / "v", "--device", "tpu"))
    # a variant that runs on either device records the choice in its config
    res = run("compile", tmp_path, "--variant", "unpadded", "--out", tmp_path / "v", "--device", "cuda", "--json")
    assert res.exit_code == 0 and calls["compile"] == {"device": "cuda"}, res.output
    assert get("unpadded").configure(calls["compile"]).device == "cuda"
    # a variant fixed to one device takes that device and refuses the other
    res = run("compile", tmp_path, "--variant", "onnx-fp32", "--out", tmp_path / "v", "--device", "cpu", "--json")
    assert res.exit_code == 0, res.output
    if "device" in get("onnx-fp32").config.options():
        assert calls["compile"]["device"] == "cpu"
    else:
        assert "device" not in calls["compile"]
        msg = one_line_error(run("compile", tmp_path, "--variant", "onnx-fp32", "--out", tmp_path / "v",
                                  "--device", "cuda"))
        assert "runs on cpu only" in msg
