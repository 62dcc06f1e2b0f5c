"""`xopt demo --quick` end to end: the real model, the machine's gettext catalogs, the demo's variants."""

import json

from typer.testing import CliRunner

from conftest import needs_demo
from xopt.cli import app
from xopt.pipeline import DEMO_VARIANTS
from xopt.tasks.demo import QUICK_LANGS
from xopt.variants import REGISTRY


@needs_demo
def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    evals = {(r["model"], r["variant"], r["task"], r["lang"], r.get("retrieval_layer")) for r in recs
             if r["kind"] == "eval"}
    langs = [lang for lang in QUICK_LANGS if lang != "en"]
    # every demo variant this host can run (openvino-bf16 needs AVX512_BF16 or AMX), and a line for the others
    names = [v for v in DEMO_VARIANTS if REGISTRY[v].unavailable_reason() is None]
    for v in set(DEMO_VARIANTS) - set(names):
        assert f"skipping {v}: needs a CPU with" in res.output
    # every demo variant x language x task, the retrieval task under both protocols (middle, last of 12)
    for model in ("baseline", "xstilts"):
        for v in names:
            for lang in langs + ["avg"]:
                assert (model, v, "demo-topic", lang, None) in evals
                for layer in (6, 12):
                    assert (model, v, "demo-retrieval", lang, layer) in evals
            assert (model, v, "demo-topic", "en", None) in evals
    assert {r["variant"] for r in recs} == set(names)
    retr = [r for r in recs if r["kind"] == "eval" and r["task"] == "demo-retrieval"]
    assert all(r["num_layers"] == 12 and r["pooling"] == "mean" for r in retr)
    # benchmarked: batch 1 at 128 tokens and batch 8 on the length mix, nothing else
    bench = {(r["variant"], r["batch"], r.get("seq_len") or "mix") for r in recs if r["kind"] == "bench"}
    assert bench == {(v, b, s) for v in names for b, s in ((1, 128), (8, "mix"))}
    md = (out / "report" / "report.md").read_text()
    assert "onnx-int8" in md and "retention" in md and "demo-retrieval@L6-mean" in md and "XTREME protocol" in md
    # the closing paragraph: in the report and last in the output; a pick
    assert "## In short" in md and "X-STILTs (intermediate task, then target task) changes" in md
    assert "X-STILTs gain kept by each variant" in res.output and "pick:" in res.output
    tail = res.output.strip().splitlines()[-1]
    assert tail.startswith("On fp32, X-STILTs") and "xopt recommends" in tail, tail
    assert "xopt recommends" in res.output and "timings (s): suite" in res.output
    # variant directories are complete and verifiable
    man = json.loads((out / "variants" / "xstilts" / "onnx-int8" / "manifest.json").read_text())
    assert man["calibration"]["samples"] == 64 and man["source"]["name"] == "xstilts"
    # refusing to overwrite
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert res.exit_code == 2 and "--force" in res.output
