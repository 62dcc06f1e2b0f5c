"""report and pick on result files with known numbers (no model needed)."""

import base64
import io
import json
import math
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from typer.testing import CliRunner

from xopt import analysis, pick, report, records
from xopt.cli import app
from xopt.errors import XoptError
from xopt.pick import Budget

OUT = {  # (model, variant, lang) -> per-example outcomes
    ("baseline", "fp32", "de"): [1, 0, 0, 0], ("xstilts", "fp32", "de"): [1, 1, 1, 0],
    ("baseline", "int8", "de"): [1, 0, 0, 0], ("xstilts", "int8", "de"): [1, 1, 0, 0],
    ("baseline", "fp32", "ja"): [1, 1, 0, 0], ("xstilts", "fp32", "ja"): [1, 1, 1, 1],
    ("baseline", "int8", "ja"): [1, 1, 0, 0], ("xstilts", "int8", "ja"): [1, 1, 1, 0],
    ("baseline", "fp32", "en"): [1, 1, 1, 1], ("xstilts", "fp32", "en"): [1, 1, 1, 1],
}


def ev(model, variant, lang, outcomes=None, task="t", counts=None, value=None, **kw):
    extra = {"outcomes": outcomes} if outcomes is not None else {"counts": counts} if counts else {}
    n = len(outcomes if outcomes is not None else counts or [0])
    if value is None:
        value = 100 * float(np.mean(outcomes)) if outcomes is not None else analysis.Outcomes(extra).score()
    kw.setdefault("role", model)
    return records.record("eval", model=model, variant=variant, suite="demo", task=task, lang=lang, split="test",
                          metric="accuracy", value=float(value), n_examples=n, **extra, **kw)


def bn(variant, p50, batch=1, model="xstilts", peak=100.0, **kw):
    shape = kw.pop("shape", {"seq_len": 128})
    return records.record("bench", model=model, variant=variant, batch=batch, **shape, p50_ms=p50, p90_ms=p50,
                          p99_ms=kw.pop("p99", p50 * 1.5), mean_ms=p50, throughput_seq_s=1000 * batch / p50,
                          throughput_tok_s=128000 * batch / p50, peak_mem_mb=peak, warmup=3, iters=10,
                          scenario="fixed-batch", **{"device": "cpu", **kw})


def _write(tmp_path, recs=None, bench=True, name="r.jsonl"):
    recs = recs if recs is not None else [ev(m, v, lang, o) for (m, v, lang), o in OUT.items()]
    if bench:
        recs += [bn("fp32", 10.0), bn("int8", 4.0)]
    p = tmp_path / name
    records.append(p, recs)
    return p


class _Html(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.imgs, self.worst, self.scripts = 0, [], 0, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tables += tag == "table"
        self.scripts += tag == "script"
        self.worst += tag == "td" and a.get("class") == "worst"
        if tag == "img":
            self.imgs.append(a["src"])


def test_report_files_html_and_bad_input(tmp_path):
    recs = [ev(m, v, lang, o) for (m, v, lang), o in OUT.items()]
    recs += [ev("xstilts", "onnx-fp32", "de", [1, 1, 1, 0]), ev("baseline", "onnx-fp32", "de", [1, 0, 0, 0])]
    recs += [ev("other", "fp32", "de", [1, 0, 0, 0], role=None)]
    p = _write(tmp_path, recs)
    with open(p, "a") as f:
        f.write("not json\n")
        f.write(json.dumps({"kind": "eval", "model": "x"}) + "\n")
    md = report.write_report([p], tmp_path / "rep")
    text = md.read_text()
    n = len(recs)       # _write appended the two bench records to `recs`
    assert f"r.jsonl:{n + 1}" in text and f"r.jsonl:{n + 2}: eval record lacks" in text
    assert "model 'other' is neither" in text
    assert "| onnx-fp32 | not measured |" in text                       # eval but no bench: never zero
    assert "**+25.0 [" in text or "**25.0 [" in text                    # worst language highlighted
    assert "high resource (Joshi class 4-5)" in text and "script Jpan" in text
    html_text = (tmp_path / "rep" / "report.html").read_text()
    h = _Html()
    h.feed(html_text)
    assert h.tables >= 4 and h.worst >= 1 and h.scripts == 0
    assert not re.search(r'(src|href)="(?!data:image/png;base64,)', html_text)      # nothing fetched from elsewhere
    assert len(h.imgs) >= 2 and all(s.startswith("data:image/png;base64,") for s in h.imgs)
    import matplotlib.image as mpimg

    for src in h.imgs:
        img = mpimg.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert img.shape[0] > 100 and img.std() > 0.01
    assert (tmp_path / "rep" / "pareto_b1.png").stat().st_size > 1000
    with pytest.raises(XoptError, match="already exists"):
        report.write_report([p], tmp_path / "rep")


def test_models_of_several_sizes_and_references(tmp_path):
    recs = []
    for fam, params, keep in (("xlm-roberta-large", 560_000_000, 0.8), ("e5-small", 118_000_000, 0.6)):
        for lang in ("de", "ja", "sw"):
            for v in ("fp32", "int8"):
                recs.append(ev("baseline", v, lang, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0], task="xnli", base_model=fam,
                               params=params, non_embedding_params=params // 3))
                good = 6 if v == "fp32" else 1 + round(5 * keep)
                recs.append(ev("xstilts", v, lang, [1] * good + [0] * (10 - good), task="xnli", base_model=fam,
                               params=params, non_embedding_params=params // 3))
        recs += [bn("fp32", 10.0 * params / 1e8, base_model=fam), bn("int8", 4.0 * params / 1e8, base_model=fam)]
    recs.append(bn("fp16", 3.0))     # no base_model, model 'xstilts' is in two families: ambiguous
    p = _write(tmp_path, recs, bench=False)
    t = report.load([p])
    assert t.families == ["xlm-roberta-large", "e5-small"] and "2 models" in t.notes[0]
    assert "several (e5-small, xlm-roberta-large)" in t.skipped[0].why
    assert report.gain_stats(t, "xnli", "int8", family="xlm-roberta-large")["retention"] == pytest.approx(0.8)
    assert report.gain_stats(t, "xnli", "int8", family="e5-small")["retention"] == pytest.approx(0.6)
    text = report.write_report([p], tmp_path / "rep").read_text()
    assert "Models of different sizes" in text and "560.0M" in text and "186.7M" in text
    assert "| xnli | accuracy | 79.2 | 80.4 | +1.2 |" in text     # paper numbers beside ours for XLM-R large
    assert text.count("X-STILTs paper reference") == 1
    assert (tmp_path / "rep" / "retention_vs_size.png").is_file()
    # pick across model x variant pairs: e5-small int8 is fastest; a retention floor moves it to xlm-r int8
    c = pick.pick([p])
    assert c["chosen"]["name"] == "e5-small/int8"
    c = pick.pick([p], Budget(min_retention=0.7))
    assert c["chosen"]["name"] == "e5-small/fp32" and c["runner_up"]["name"] == "xlm-roberta-large/int8"
    assert c["why_runner_up_lost"] == "slower p50: 22.40 ms vs 11.80 ms"      # the smaller model wins on both
    assert pick.pick([p], Budget(min_retention=0.7), model="e5-small")["chosen"]["name"] == "fp32"
    with pytest.raises(XoptError, match="--filter-model bert: no records of that model; models in the records: "):
        report.load([p], model="bert")


def test_tokens_per_language_section(tmp_path):
    recs = [bn("fp32", 2.0, shape={"seq_len": 16}), bn("fp32", 10.0, shape={"seq_len": 128})]
    for lang, toks, p50 in (("de", 20.0, 3.0), ("ja", 40.0, 4.5)):
        recs.append(bn("fp32", p50, lang=lang, shape={"length_dist": {"source": f"demo:{lang}", "mean_tokens": toks}}))
    t = report.load([_write(tmp_path, recs, bench=False)])
    rows = analysis.per_language_cost(t)
    ja = next(r for r in rows if r["lang"] == "ja")
    assert ja["mean_tokens"] == 40 and ja["measured_ms"] == 4.5
    assert ja["implied_ms"] == pytest.approx(2.0 + (40 - 16) / (128 - 16) * 8.0)
    text = report.write(t, tmp_path / "rep").read_text()
    assert "Cost per language" in text and (tmp_path / "rep" / "tokens_per_language.png").is_file()


def test_pick_cases(tmp_path):
    p = _write(tmp_path)
    c = pick.pick([p], Budget(max_drop=30))
    assert c["chosen"]["variant"] == "int8" and c["runner_up"]["variant"] == "fp32"
    assert "slower p50: 10.00 ms vs 4.00 ms" in pick.render(c)
    c = pick.pick([p], Budget(min_retention=0.8))
    assert c["chosen"]["variant"] == "fp32"
    assert "retention 0.50 < 0.8" in "; ".join(c["runner_up"]["fails"])
    c = pick.pick([p], Budget(max_p50_ms=3))
    assert c["chosen"] is None and c["closest"]["variant"] == "int8"
    assert "no variant meets" in pick.render(c) and "p50 4.00 ms > 3" in pick.render(c)
    c = pick.pick([p], Budget(batch=8))
    assert c["chosen"] is None and "p50 not measured (no bench record at batch 8, seq 128)" in pick.render(c)
    assert math.isclose(pick.pick([p])["chosen"]["p50_ms"], 4.0)
    c = pick.pick([p], Budget(min_throughput=300))
    assert c["chosen"] is None and "closest: int8, which misses: throughput 250.00 sequences/s < 300" in pick.render(c)
    c = pick.pick([p], Budget(min_lang_retention=0.6))      # 4 examples: no language's fp32 gain is clear
    assert c["chosen"] is None and "no language has a clear fp32 gain" in pick.render(c)
    p10 = _write(tmp_path, [ev(m, v, lang, o * 10) for (m, v, lang), o in OUT.items()], name="r10.jsonl")
    c = pick.pick([p10], Budget(min_lang_retention=0.6))    # 40 examples: de and ja keep 0.5 of their gains on int8
    assert c["chosen"]["variant"] == "fp32" and "t/de: retention 0.50 < 0.6" in c["why_runner_up_lost"]
    assert c["chosen"]["tasks"]["t"]["langs_checked"] == 2
    with pytest.raises(XoptError, match="either --seq-len or --lengths"):
        pick.pick([p], Budget(seq_len=128, lengths="demo"))


def test_pick_ties_and_missing_measurements(tmp_path):
    recs = [ev(m, v, lang, o) for (m, v, lang), o in OUT.items()]
    for v, o in (("bf16", OUT[("xstilts", "fp32", "de")]), ("fp16", OUT[("xstilts", "fp32", "de")])):
        recs += [ev("xstilts", v, "de", o), ev("baseline", v, "de", OUT[("baseline", "fp32", "de")])]
        recs += [ev("xstilts", v, "ja", OUT[("xstilts", "fp32", "ja")]),
                 ev("baseline", v, "ja", OUT[("baseline", "fp32", "ja")])]
    recs += [bn("fp16", 4.0, peak=None), bn("bf16", 4.0, peak=None)]
    p = _write(tmp_path, recs)          # + fp32 10 ms, int8 4 ms
    c = pick.pick([p])                  # int8, bf16, fp16 tie on p50; int8 keeps less of the gain
    assert c["chosen"]["variant"] == "bf16" and c["runner_up"]["variant"] == "fp16"
    assert "tied on every measure" in c["why_runner_up_lost"]       # bf16 < fp16 by name: deterministic
    assert [x["variant"] for x in sorted(c["candidates"], key=pick._rank)][:3] == ["bf16", "fp16", "int8"]
    c = pick.pick([p], Budget(max_mem_mb=500))  # bf16/fp16 have no memory figure: not measured, not skipped
    assert c["chosen"]["variant"] == "int8"
    fp16 = next(x for x in c["candidates"] if x["variant"] == "fp16")
    assert fp16["fails"] == ["peak memory not measured (the bench record has no peak_mem_mb)"]
    c = pick.pick([p], Budget(max_mem_mb=50))
    assert c["chosen"] is None and "peak memory 100.00 MB > 50" in pick.render(c)
    c = pick.pick([p], device="cuda")
    assert c["chosen"] is None and "device cuda" in pick.render(c)
    gpu = bn("fp16", 1.0, device="cuda:0")
    gpu["host"] = {**gpu["host"], "gpu": {"name": "NVIDIA H100 80GB HBM3"}}
    records.append(p, [gpu])      # later records win: fp16's latest record is the GPU's
    c = pick.pick([p], device="h100")
    assert c["chosen"]["variant"] == "fp16" and c["chosen"]["p50_ms"] == 1.0
    assert pick.pick([p], device="cpu")["chosen"]["variant"] == "bf16"


def test_cli_report_and_pick(tmp_path):
    p = _write(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(p), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rep" / "report.html").is_file()
    res = runner.invoke(app, ["pick", str(p), "--min-retention", "0.8", "--json"])
    assert res.exit_code == 0, res.output

    def strict(name):
        raise ValueError(f"not JSON: {name}")
    got = json.loads(res.stdout, parse_constant=strict)
    assert got["chosen"]["variant"] == "fp32" and got["runner_up"]["fails"] == ["t: retention 0.50 < 0.8"]
    res = runner.invoke(app, ["pick", str(p), "--batch-size", "4", "--json"])     # inf / NaN inside: still strict JSON
    assert res.exit_code == 1 and json.loads(res.stdout, parse_constant=strict)["chosen"] is None
    res = runner.invoke(app, ["pick", str(p), "--max-p99-ms", "1"])
    assert res.exit_code == 1 and "closest: int8, which misses: p99 6.00 ms > 1.0 ms" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    res = runner.invoke(app, ["report", str(bad), "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "no usable records" in res.output and "bad.jsonl:1: Expecting" in res.output
    res = runner.invoke(app, ["report", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "results file not found" in res.output and not (tmp_path / "r2").exists()


def test_sizes_come_from_the_checkpoint(tmp_path, tiny_ckpt):
    """params/non_embedding_params: counted once at compile time, carried by every eval/bench record."""
    from safetensors.numpy import load_file

    from xopt.hf import param_counts
    from xopt.variants import compile_variant, load_variant

    w = {**load_file(str(tiny_ckpt / "model.safetensors")), **load_file(str(tiny_ckpt / "head.safetensors"))}
    total = sum(a.size for a in w.values())
    emb = sum(a.size for k, a in w.items() if k.endswith(("word_embeddings.weight", "position_embeddings.weight",
                                                          "token_type_embeddings.weight")))
    assert emb == (250037 + 128 + 2) * 64
    assert param_counts(tiny_ckpt) == {"params": total, "non_embedding_params": total - emb}
    man = compile_variant(tiny_ckpt, "fp32", tmp_path / "v")
    assert man["model"]["params"] == total
    assert load_variant(tmp_path / "v").model_fields == {"base_model": "tiny", "params": total,
                                                         "non_embedding_params": total - emb}


def test_cli_refuses_mixed_splits_and_hosts_in_one_line(tmp_path):
    recs = [ev(m, v, lang, o) for (m, v, lang), o in OUT.items()]
    recs += [{**ev(m, v, lang, o), "split": "validation"} for (m, v, lang), o in OUT.items()]
    p = _write(tmp_path, recs)
    runner = CliRunner()
    for cmd in (["pick", str(p)], ["report", str(p), "--out", str(tmp_path / "rep")]):
        res = runner.invoke(app, cmd)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1, res.output
        assert "split test and split validation" in lines[0] and "--split test or --split validation" in lines[0]
    assert not (tmp_path / "rep").exists()
    res = runner.invoke(app, ["pick", str(p), "--split", "test", "--min-retention", "0.8"])
    assert res.exit_code == 0 and "pick: fp32" in res.output and "split=test" in res.output, res.output
    assert "records of split test only; left out: validation" in res.output
    res = runner.invoke(app, ["report", str(p), "--split", "validation", "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert "--split validation: records of split validation only" in (tmp_path / "rep" / "report.md").read_text()
    gpu = bn("int8", 1.0)
    gpu["host"] = {**gpu["host"], "gpu": {"name": "NVIDIA L4", "count": 1}}
    records.append(p, [gpu])
    res = runner.invoke(app, ["pick", str(p), "--split", "test"])
    assert res.exit_code == 2 and "--filter-host" in res.output and "1x NVIDIA L4" in res.output, res.output
    res = runner.invoke(app, ["pick", str(p), "--split", "test", "--filter-host", "l4", "--json"])
    got = json.loads(res.stdout)
    assert got["chosen"]["variant"] == "int8" and got["chosen"]["p50_ms"] == 1.0
    assert got["constraints"]["host"] == "l4" and "NVIDIA L4" in got["hosts"][0]
    c = pick.pick([p], split="test", host=analysis.host_id(bn("fp32", 1.0)))      # this machine's records
    assert c["chosen"]["p50_ms"] == 4.0


def test_report_force_replaces_a_report_and_nothing_else(tmp_path):
    from xopt import manifest as mf

    t = report.load([_write(tmp_path, [bn("fp32", 2.0, shape={"seq_len": 16})], bench=False)])
    report.write(t, tmp_path / "rep")
    assert mf.read(tmp_path / "rep", kind="report")["files"]["report.md"]
    report.write(t, tmp_path / "rep", force=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "draft.md").write_text("mine")
    with pytest.raises(XoptError, match="mine holds 1 entry not written by xopt \\(draft.md\\); --force replaces "
                                        "only a report directory"):
        report.write(t, mine, force=True)
    assert [p.name for p in mine.iterdir()] == ["draft.md"]


def _tiny_gain_records():
    """fp32's gain is 1 example of 40 (+2.5 points, not significant); int8 gains 4 (retention 4.0
    with an interval that spans orders of magnitude)."""
    base, x32, x8 = ([1] * k + [0] * (40 - k) for k in (20, 21, 24))
    return [ev(m, v, lang, o) for lang in ("de", "ja") for m, v, o in
            (("baseline", "fp32", base), ("xstilts", "fp32", x32), ("baseline", "int8", base), ("xstilts", "int8", x8))]


@pytest.mark.parametrize("case", ["significant", "not significant", "interval too wide"])
def test_pick_json_says_what_the_tables_say(tmp_path, case):
    """`xopt pick --json`: a drop is a positive number of points lost (reference minus score), and
    a retention the summary table shows as n/a is null with the reason, never 4.0 +- 1e14."""
    recs = {"significant": lambda: [ev(m, v, lang, o * 10) for (m, v, lang), o in OUT.items()],
            "not significant": _tiny_gain_records,
            "interval too wide": lambda: None}[case]()
    p = _write(tmp_path, recs)
    res = CliRunner().invoke(app, ["pick", str(p), "--json"])
    assert res.exit_code == 0, res.output
    got = {c["variant"]: c for c in json.loads(res.stdout)["candidates"]}
    rows = {r["variant"]: r for r in analysis.summary_rows(analysis.load([p]))}
    for v, c in got.items():
        st, table = c["tasks"]["t"], rows[v]["tasks"]["t"]
        assert "score_drop" not in st
        assert st["drop_points"] == pytest.approx(st["ref_score"] - st["score"])
        table_na = table["retention_uncertain"] or not math.isfinite(table["retention"])   # terminal.summary_model
        assert (st["retention"] is None) == table_na == bool(st["retention_na"]), (v, st)
        assert (c["avg_retention"] is None) == bool(c["avg_retention_na"])
    int8 = got["int8"]["tasks"]["t"]
    if case == "not significant":
        assert int8["drop_points"] == pytest.approx(-7.5)           # int8 scores higher: a negative drop
        assert int8["retention"] is None and int8["retention_ci"] is None
        assert "fp32 gain +2.5 is not significant" in int8["retention_na"]
        assert got["int8"]["avg_retention"] is None and "not significant" in got["int8"]["avg_retention_na"]
        text = CliRunner().invoke(app, ["pick", str(p)]).output
        assert "drop -7.5 points), retention n/a: fp32 gain +2.5 is not significant" in text
    else:
        assert int8["drop_points"] == pytest.approx(25.0)            # 87.5 on fp32, 62.5 on int8: 25 points lost
    if case == "significant":
        assert int8["retention"] == pytest.approx(0.5) and int8["retention_na"] is None
        assert got["int8"]["avg_retention"] == pytest.approx(0.5)
    if case == "interval too wide":
        assert int8["retention"] is None and "wider than 1" in int8["retention_na"]
