"""`xopt demo --quick` end to end: the real model, the machine's gettext catalogs, every CPU variant."""

import json

from typer.testing import CliRunner

from conftest import needs_demo
from xopt.cli import app
from xopt.variants import REGISTRY


@needs_demo
def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    cpu = {v.name for v in REGISTRY.values() if v.device == "cpu"}
    evals = {(r["model"], r["variant"], r["task"]) for r in recs if r["kind"] == "eval"}
    for model in ("baseline", "xstilts"):
        for v in cpu:
            for task in ("demo-topic", "demo-retrieval"):
                assert (model, v, task) in evals
    bench = {(r["variant"], r.get("seq_len") or "mix") for r in recs if r["kind"] == "bench"}
    assert {(v, 128) for v in cpu} <= bench and {(v, "mix") for v in cpu} <= bench
    langs = {r["lang"] for r in recs if r["kind"] == "eval"}
    assert {"ar", "hi", "ja", "avg"} <= langs
    md = (out / "report" / "report.md").read_text()
    assert "onnx-int8" in md and "retention" in md
    assert "X-STILTs gain kept by each variant" in res.output and "pick:" in res.output
    # variant directories are complete and verifiable
    man = json.loads((out / "variants" / "xstilts" / "onnx-int8" / "manifest.json").read_text())
    assert man["calibration"]["samples"] == 64 and man["source"]["name"] == "xstilts"
    # refusing to overwrite
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert res.exit_code == 2 and "--force" in res.output
