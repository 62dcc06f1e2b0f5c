"""xopt bench: harness overhead, warm-up, per-language lengths, LoadGen scenarios, the server
search's bounds, the pytest-benchmark bridge, bad inputs and partial sweeps."""

import json
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import one_line_error
from xopt import records
from xopt.bench import BenchConfig, bench, ratio_table
from xopt.cli import app
from xopt.errors import XoptError
from xopt.measure import Measurement, Timer, Timing, harness_overhead, machine_kind, warm
from xopt.pick import Budget
from xopt.scenarios.loadgen import Server, SingleStream, read_detail, server_search
from xopt.scenarios.registry import scenario as scenario_config
from test_measure import FakeRunner


def _bench(dirs, out=None, *, scenario="fixed-batch", rounds=3, latency_bound_ms=100.0, server_qps=None,
           server_max_runs=8, min_iters=10, min_time_s=0.5, max_time_s=10.0, warmup=None, **config):
    """bench() with the sweep's config spelled as the CLI's options."""
    sc = scenario_config(scenario, rounds=rounds, latency_bound_ms=latency_bound_ms, qps=server_qps,
                         max_runs=server_max_runs)
    timing = Timing(min_iters=min_iters, min_time_s=min_time_s, max_time_s=max_time_s, warmup=warmup)
    return bench(dirs, BenchConfig(scenario=sc, timing=timing, **config), out=out)


def test_harness_overhead_per_iteration_is_microseconds():
    o = harness_overhead()
    print(f"harness overhead on CPU: {o}")
    # the harness's budget: < 5 us per iteration (loop_us: fastest chunk, so preemption by
    # other processes on a shared machine does not count as harness cost)
    assert 0 < o["timer_us"] < 5 and 0 < o["loop_us"] < 5


def test_warmup_fixed_count_and_bounded_auto():
    r, m = FakeRunner("x", 0.2), Measurement()
    warm(r, [None], Timer(), m, fixed=4)
    assert m.warmup == 5 and len(m.warmup_ms) == 4
    m = Measurement()
    warm(r, [None], Timer(), m, max_iters=12, max_s=5.0)
    assert 10 <= len(m.warmup_ms) <= 12 and m.cold_ms is not None


def test_server_search_stays_within_bounds_and_converges():
    capacity, calls = 123.0, []

    def probe(q):
        calls.append(q)
        return q <= capacity

    best, tried = server_search(probe, 1.0, 1000.0, max_runs=8)
    assert tried == calls and len(tried) <= 8 and all(1.0 <= q <= 1000.0 for q in tried)
    assert capacity / 1.15 <= best <= capacity
    assert server_search(lambda q: False, 2.0, 50.0)[0] is None            # even the low bound fails: 1 run
    assert server_search(lambda q: True, 2.0, 50.0) == (50.0, [2.0, 50.0])  # capacity above the high bound
    best, tried = server_search(probe, 1.0, 1000.0, max_runs=3)
    assert len(tried) == 3 and best <= capacity
    with pytest.raises(XoptError):
        server_search(probe, 10.0, 5.0)


_REPLAY_TEST = """
import os

import pytest

from xopt.measure import SAMPLE_CLOCK, Measurement, to_pytest_benchmark

SAMPLES_MS = [float(x) for x in os.environ["XOPT_SAMPLES_MS"].split(",")]


@pytest.mark.benchmark(timer=SAMPLE_CLOCK, group="replay")
def test_marked(benchmark):
    to_pytest_benchmark(benchmark, Measurement(samples_ms=SAMPLES_MS), variant="v")
    assert benchmark.group == "replay"


def test_unmarked(benchmark):
    to_pytest_benchmark(benchmark, Measurement(samples_ms=SAMPLES_MS))
"""


def _pytest_benchmark(tmp_path, test, samples_ms, *args):
    import os
    import subprocess
    import sys

    (tmp_path / "test_bridge.py").write_text(_REPLAY_TEST)
    env = {**os.environ, "XOPT_SAMPLES_MS": ",".join(map(str, samples_ms))}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"test_bridge.py::{test}",
                           *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_pytest_benchmark_keeps_xopt_samples_and_compares_against_a_baseline(tmp_path):
    """The bridge through pytest-benchmark's public API: the saved JSON holds exactly xopt's
    per-call samples, and --benchmark-compare-fail judges a run against a saved JSON."""
    samples = [1.0, 2.0, 4.0, 3.0, 2.5]
    base = tmp_path / "base.json"
    res = _pytest_benchmark(tmp_path, "test_marked", samples, f"--benchmark-json={base}")
    assert res.returncode == 0, res.stdout + res.stderr
    (bm,) = json.loads(base.read_text())["benchmarks"]
    assert bm["stats"]["data"] == [s / 1e3 for s in samples]                # our samples, bit for bit
    assert bm["stats"]["median"] == 2.5e-3 and bm["stats"]["rounds"] == 5
    assert bm["options"]["timer"] == "SAMPLE_CLOCK" and bm["extra_info"] == {"variant": "v"}
    compare = (f"--benchmark-compare={base}", "--benchmark-compare-fail=median:15%")
    res = _pytest_benchmark(tmp_path, "test_marked", [s * 1.05 for s in samples], *compare)
    assert res.returncode == 0, res.stdout + res.stderr
    res = _pytest_benchmark(tmp_path, "test_marked", [s * 1.3 for s in samples], *compare)
    assert res.returncode != 0 and "Performance has regressed" in res.stdout + res.stderr, res.stdout
    # a benchmark timed by another timer is refused, not reported with the replay's own duration
    res = _pytest_benchmark(tmp_path, "test_unmarked", samples)
    assert res.returncode == 1 and "did not time the replay with xopt.measure.SAMPLE_CLOCK" in res.stdout
    assert machine_kind().startswith(("cpu-", "cuda-"))


@pytest.fixture(scope="module")
def variants(tiny_ckpt, tmp_path_factory):
    """fp32 and int8-dynamic of the tiny model. One torch thread while these tests run: on a
    machine shared by parallel jobs, intra-op thread barriers make tiny calls 100x slower."""
    import torch

    from xopt.variants import compile_variant

    root = tmp_path_factory.mktemp("bench-variants")
    for name in ("fp32", "int8-dynamic"):
        compile_variant(tiny_ckpt, name, root / name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield root
    torch.set_num_threads(threads)


@pytest.fixture
def suite_cache(tiny_suite, monkeypatch):
    from xopt.tasks import demo

    monkeypatch.setattr(demo, "ensure_suite", lambda *a, **k: tiny_suite)
    return json.loads(tiny_suite.read_text())


def test_fixed_batch_records_per_language_and_ratio_table(variants, tmp_path, suite_cache):
    out = tmp_path / "r.jsonl"
    lang = next(la for la in ("ja", "ru") if la in suite_cache["shared"])
    recs = _bench([variants / "fp32", variants / "int8-dynamic"], batches=(2,), seq_lens=(16,),
                 lengths=f"demo:{lang}", rounds=2, min_iters=3, min_time_s=0.0, out=out, warmup=2)
    got, skipped = records.read([out], strict=True)
    assert len(got) == len(recs) == 4 and not skipped
    by = {(r["variant"], r["length_dist"]): r for r in got}
    fixed = by[("fp32", None)]
    assert fixed["seq_len"] == 16 and fixed["mean_tokens"] == 16 and fixed["throughput_tok_s"] == pytest.approx(
        fixed["throughput_seq_s"] * 16)
    r = by[("fp32", f"demo:{lang}")]
    assert r["lang"] == lang and r["length_stats"]["split"] == "shared" and r["scenario"] == "fixed-batch"
    from xopt.batching import tokenize
    from xopt.variants import load_variant

    lv = load_variant(variants / "fp32")
    texts = [e["text"] for e in suite_cache["shared"][lang]]
    assert r["mean_tokens"] == pytest.approx(np.mean([len(s) for s in tokenize(lv.tokenizer(), texts,
                                                                                lv.card.input_prefix)]), abs=0.01)
    assert r["warmup"] == 3 and r["iters"] >= 6 and r["rounds"] == 2 and r["cold_ms"] > 0
    assert r["peak_mem_kind"] == "process_rss" and r["peak_mem_mb"] > 0 and r["load_s"] >= 0
    assert r["env"]["harness_overhead_us"]["timer_us"] > 0
    ratios = ratio_table(recs, "fp32")
    assert all(x["p50_speedup"] == pytest.approx(1.0) for x, rec in zip(ratios, recs) if rec["variant"] == "fp32")
    assert all(x["p50_speedup"] > 0 for x in ratios)


def test_loadgen_scenarios_complete_on_a_tiny_model(variants, tmp_path):
    pytest.importorskip("mlperf_loadgen", reason="mlcommons-loadgen is a dependency of xopt")
    out = tmp_path / "lg.jsonl"
    kw = dict(seq_lens=(8,), min_iters=4, min_time_s=0.05, out=out, warmup=2)
    single = _bench([variants / "fp32"], batches=(4,), scenario="single-stream", **kw)[0]
    assert single["batch"] == 1 and single["scenario"] == "single-stream" and single["samples"] >= 4
    assert single["loadgen"]["result_validity"] in ("VALID", "INVALID")
    assert 0 < single["p50_ms"] <= single["p90_ms"] <= single["p99_ms"] and single["throughput_seq_s"] > 0
    assert (tmp_path / "lg.loadgen").is_dir()
    assert read_detail(single["loadgen_log_dir"])["result_query_count"] >= 4
    offline = _bench([variants / "fp32"], batches=(4,), scenario="offline", **kw)[0]
    assert offline["latency_source"] == "timer_per_batch" and offline["samples"] >= 4
    assert offline["iters"] == len(range(0, offline["samples"], 4)) and offline["throughput_seq_s"] > 0
    server = _bench([variants / "fp32"], batches=(2,), scenario="server", latency_bound_ms=1000.0,
                   server_qps=(5.0, 40.0), server_max_runs=3, **kw)[0]
    tried = [t["qps"] for t in server["server_search"]]
    assert 1 <= len(tried) <= 3 and all(5.0 <= q <= 40.0 for q in tried)
    assert server["server_max_qps"] is None or 5.0 <= server["server_max_qps"] <= 40.0
    assert all((tmp_path / t["log_dir"] / "mlperf_log_summary.txt").is_file() for t in server["server_search"])
    got, _ = records.read([out], strict=True)
    assert [r["scenario"] for r in got] == ["single-stream", "offline", "server"]


def test_bad_inputs_are_one_line_errors(variants, tmp_path, monkeypatch):
    cli = CliRunner()

    def run(*a):
        return cli.invoke(app, ["bench", *map(str, a)])

    assert "no manifest.json" in one_line_error(run(tmp_path))
    assert "no such directory" in one_line_error(run(tmp_path / "nope"))
    assert "maximum length 128" in one_line_error(run(variants / "fp32", "--seq-len", "256"))
    assert "--scenario" in one_line_error(run(variants / "fp32", "--scenario", "multistream"))
    assert "--compare onnx-fp32" in one_line_error(run(variants / "fp32", "--compare", "onnx-fp32"))
    from xopt import variants as reg

    monkeypatch.setitem(reg.REGISTRY, "fp32", replace(reg.REGISTRY["fp32"], device="cuda"))
    import torch

    if not torch.cuda.is_available():
        assert "needs an NVIDIA GPU" in one_line_error(run(variants / "fp32"))


def test_xtreme_lengths_through_the_task_loaders(variants, monkeypatch, tmp_path):
    import sys
    import types

    with pytest.raises(XoptError, match="xtreme:TASK:LANG"):
        _bench([variants / "fp32"], lengths="xtreme:xnli")
    import xopt.tasks

    fake = types.ModuleType("xopt.tasks.xtreme")        # the API bench needs of xopt.tasks.xtreme
    monkeypatch.setitem(sys.modules, "xopt.tasks.xtreme", fake)
    monkeypatch.setattr(xopt.tasks, "xtreme", fake, raising=False)
    with pytest.raises(XoptError, match="no load"):
        _bench([variants / "fp32"], lengths="xtreme:xnli:de")
    pairs = [{"id": "1", "text_a": "ein kurzer Satz", "text_b": "noch ein etwas längerer Satz hier", "label": "x"},
             {"id": "2", "text_a": "kurz", "text_b": "", "label": "x"}]
    fake.get_task = lambda name: types.SimpleNamespace(name=name, family="classify")
    fake.load = lambda task, lang, split, data_dir: pairs if (lang, split, data_dir) == ("de", "test", tmp_path) \
        else pytest.fail("wrong arguments")
    with pytest.raises(XoptError, match="give --data"):
        _bench([variants / "fp32"], lengths="xtreme:xnli:de")
    recs = _bench([variants / "fp32"], batches=(1,), seq_lens=(), lengths="xtreme:xnli:de", rounds=1, min_iters=2,
                 min_time_s=0.0, warmup=1, data_dir=tmp_path)
    from xopt.variants import load_variant

    lv = load_variant(variants / "fp32")
    tok, pre = lv.tokenizer(), lv.card.input_prefix
    want = [len(tok(pre + "ein kurzer Satz", "noch ein etwas längerer Satz hier")["input_ids"]),
            len(tok(pre + "kurz")["input_ids"])]
    assert recs[0]["length_dist"] == "xtreme:xnli:de" and recs[0]["lang"] == "de"
    assert recs[0]["mean_tokens"] == pytest.approx(np.mean(want)) and want[0] > want[1] + 8


def test_engine_profile_from_the_manifest():
    from types import SimpleNamespace

    from xopt.bench import runner_limits

    lv = SimpleNamespace(runner=SimpleNamespace(), manifest={"variant": "trt-fp16", "tensorrt": {
        "version": "10", "profile": {"min": [1, 1], "opt": [8, 128], "max": [32, 256]}}})
    assert runner_limits(lv) == {"max_batch": 32, "max_seq_len": 256}
    lv.runner.limits = {"max_batch": 4}
    assert runner_limits(lv) == {"max_batch": 4, "max_seq_len": 256}


def test_engine_profile_limits_and_partial_sweeps(variants, tmp_path, monkeypatch):
    import xopt.variants as reg

    real_load = reg.load_variant

    def limited(d):
        lv = real_load(d)
        lv.runner.limits = {"max_batch": 4, "max_seq_len": 32}
        return lv

    monkeypatch.setattr(reg, "load_variant", limited)
    with pytest.raises(XoptError, match=r"beyond the engine's profile .max batch 4.; lower --batch-size .*"
                                        r"--max-shapes input_ids:8x32,attention_mask:8x32`"):
        _bench([variants / "fp32"], batches=(8,), seq_lens=(16,))
    with pytest.raises(XoptError, match=r"48 tokens .*\(max 32\); lower --seq-len .*`xopt compile .* --variant fp32 "
                                        r".*--max-shapes input_ids:4x48,attention_mask:4x48`"):
        _bench([variants / "fp32"], batches=(1,), seq_lens=(48,))

    def failing(d):      # batch 3 fails inside the backend (e.g. out of memory)
        lv = real_load(d)
        run = lv.runner.run

        def run_or_fail(x):
            if x[0].shape[0] == 3:
                raise RuntimeError("CUDA out of memory (simulated)\nsecond line")
            return run(x)
        lv.runner.run = run_or_fail
        return lv

    monkeypatch.setattr(reg, "load_variant", failing)
    out = tmp_path / "partial.jsonl"
    with pytest.raises(XoptError, match=r"stopped at shape 2/2 \(b3xs8\): CUDA out of memory \(simulated\); "
                                        r"1 records of the 1 shapes before it kept in .*partial.jsonl") as e:
        _bench([variants / "fp32"], batches=(1, 3), seq_lens=(8,), rounds=1, min_iters=2, min_time_s=0.0,
              out=out, warmup=1)
    assert "\n" not in str(e.value)
    got, _ = records.read([out], strict=True)
    assert [r["batch"] for r in got] == [1]


def test_cli_json_with_compare(variants):
    res = CliRunner().invoke(app, ["bench", str(variants / "fp32"), str(variants / "int8-dynamic"), "--batch-size", "1",
                                   "--seq-len", "8", "--iters", "3", "--warmup", "1", "--rounds", "1", "--json",
                                   "--compare", "fp32"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert {r["variant"] for r in rows} == {"fp32", "int8-dynamic"}
    assert all(r["iters"] >= 3 and r["warmup"] == 2 and r["vs_fp32"]["p50_speedup"] > 0 for r in rows)


def test_records_are_complete_when_built(variants, tmp_path, monkeypatch):
    """Every bench record, LoadGen's included, is final when records.record validates it:
    what bench returns and appends is exactly what was validated."""
    import copy

    pytest.importorskip("mlperf_loadgen", reason="mlcommons-loadgen is a dependency of xopt")
    built, real = [], records.record

    def spy(kind, **fields):
        rec = real(kind, **fields)
        built.append(copy.deepcopy(rec))
        return rec

    monkeypatch.setattr(records, "record", spy)
    out = tmp_path / "r.jsonl"
    kw = dict(seq_lens=(8,), min_iters=3, min_time_s=0.02, out=out, warmup=1)
    recs = _bench([variants / "fp32"], batches=(2,), rounds=1, **kw)
    for scenario in ("single-stream", "offline"):
        recs += _bench([variants / "fp32"], batches=(2,), scenario=scenario, **kw)
    assert recs == built and records.read([out], strict=True)[0] == built
    single = next(r for r in built if r["scenario"] == "single-stream")
    assert single["latency_source"] == "loadgen_per_sample" and single["p50_ms"] == pytest.approx(
        single["loadgen"]["result_50.00_percentile_latency_ns"] / 1e6)


def _detail(log_dir, **results):
    """A mlperf_log_detail.txt with LoadGen's result_* lines, as LoadGen writes them."""
    log_dir.mkdir(parents=True, exist_ok=True)
    lines = [":::MLLOG " + json.dumps({"key": f"result_{k}", "value": v, "time_ms": 0.0})
             for k, v in results.items()]
    (log_dir / "mlperf_log_detail.txt").write_text("\n".join(["noise line", *lines]) + "\n")


def _fake_loaded():
    from types import SimpleNamespace

    runner = FakeRunner("fake", 0.0)
    return SimpleNamespace(runner=runner, model_name="xstilts", manifest={"variant": "fp32"}, model_fields={},
                           directory="variants/fp32", artefact_mb=lambda: 1.0)


def test_loadgen_invalid_runs_are_recorded_invalid_and_never_pass_the_server_search(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from xopt import pick
    from xopt.scenarios import loadgen
    from xopt.scenarios.fixed_batch import Shape

    def fake_run_once(runner, sample_lens, scenario, log_dir, *, target_qps=None, **kw):
        # p99 5 ms (within the 10 ms bound) up to 50 QPS; above 10 QPS LoadGen marks the run INVALID
        q = target_qps or 1.0
        valid = q <= 10.0
        _detail(log_dir, validity="VALID" if valid else "INVALID", min_duration_met=valid, min_queries_met=True,
                **({} if valid else {"invalid_reason": "Reduce target QPS to improve latency."}),
                **{"99.00_percentile_latency_ns": 5e6 if q <= 50 else 2e7, "50.00_percentile_latency_ns": 2e6,
                   "90.00_percentile_latency_ns": 4e6, "mean_latency_ns": 2.5e6, "min_latency_ns": 1e6,
                   "completed_samples_per_sec": q, "qps_with_loadgen_overhead": q})
        sut = SimpleNamespace(batch_ms=[2.0, 2.5, 3.0], batch_tokens=[8, 8, 8], samples=3)
        return read_detail(log_dir), sut

    monkeypatch.setattr(loadgen, "run_once", fake_run_once)
    kw = dict(vocab_size=100, pad_id=1, timing=Timing(min_time_s=1.0, warmup=1))
    rec = loadgen.run_scenario(Server(latency_bound_ms=10.0, qps=(1.0, 100.0), max_runs=8), _fake_loaded(),
                               Shape(2, seq_len=8), tmp_path / "lg", **kw)
    assert rec["server_max_qps"] is not None and rec["server_max_qps"] <= 10.0     # not the 50 QPS of INVALID runs
    assert rec["validity"] == "VALID" and rec["invalid_reason"] is None
    invalid = [s for s in rec["server_search"] if s["validity"] == "INVALID"]
    assert invalid and not any(s["ok"] for s in invalid)
    assert all(s["p99_ms"] <= 10.0 for s in invalid if s["qps"] <= 50)           # within the bound, still failed
    assert "minimum duration not met" in invalid[0]["invalid_reason"]
    single = loadgen.run_scenario(SingleStream(), _fake_loaded(), Shape(1, seq_len=8), tmp_path / "lg1", **kw)
    assert single["validity"] == "VALID"
    monkeypatch.setattr(loadgen, "run_once", lambda *a, **k: fake_run_once(*a, **{**k, "target_qps": 20.0}))
    single = loadgen.run_scenario(SingleStream(), _fake_loaded(), Shape(1, seq_len=8), tmp_path / "lg2", **kw)
    assert single["validity"] == "INVALID" and single["loadgen"]["result_validity"] == "INVALID"
    assert single["invalid_reason"] == "minimum duration not met; Reduce target QPS to improve latency."
    out = tmp_path / "r.jsonl"
    records.append(out, [single])
    c = pick.pick([out], Budget(seq_len=8, scenario="single-stream"))
    assert c["chosen"] is None
    assert c["closest"]["fails"][0].startswith("LoadGen run INVALID (minimum duration not met; Reduce target QPS")
    from xopt.report.terminal import bench_table

    shown = bench_table([single])
    assert shown.rows[0][3] == "single-stream/s8 INVALID" and "invalid_reason" in shown.notes[0]


def test_peak_memory_scope_and_pick_refuses_shared_process_memory(variants, tmp_path):
    from xopt import pick

    kw = dict(batches=(1,), seq_lens=(8,), rounds=1, min_iters=2, min_time_s=0.0, warmup=1)
    shared = tmp_path / "shared.jsonl"
    recs = _bench([variants / "fp32", variants / "int8-dynamic"], out=shared, **kw)
    assert {r["peak_mem_scope"] for r in recs} == {"shared process"}
    with pytest.raises(XoptError, match=r"--max-mem-mb: the peak memory of fp32, int8-dynamic was measured in one "
                                        r"process holding several variants .*bench each variant alone"):
        pick.pick([shared], Budget(seq_len=8, max_mem_mb=10_000))
    assert pick.pick([shared], Budget(seq_len=8))["chosen"] is not None       # other constraints still work
    alone = tmp_path / "alone.jsonl"
    for v in ("fp32", "int8-dynamic"):
        (rec,) = _bench([variants / v], out=alone, **kw)
        assert rec["peak_mem_scope"] == "variant process" and rec["peak_mem_mb"] > 0
    c = pick.pick([alone], Budget(seq_len=8, max_mem_mb=100_000))
    assert c["chosen"] is not None and c["chosen"]["peak_mem_mb"] > 0
    res = CliRunner().invoke(app, ["pick", str(shared), "--seq-len", "8", "--max-mem-mb", "100"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    from xopt.report.terminal import bench_table

    assert bench_table(recs).rows[0][-1].endswith(" *") and not bench_table([rec]).notes


def test_bench_runs_the_length_source_token_ids(variants, suite_cache, monkeypatch):
    import xopt.variants as reg
    from xopt.batching import tokenize

    real_load, seen = reg.load_variant, []

    def recording(d):
        lv = real_load(d)
        prep = lv.runner.prepare
        lv.runner.prepare = lambda ids, mask: (seen.append((ids.copy(), mask.copy())), prep(ids, mask))[1]
        return lv

    monkeypatch.setattr(reg, "load_variant", recording)
    lang = next(la for la in ("ja", "ru") if la in suite_cache["shared"])
    (rec,) = _bench([variants / "fp32"], batches=(2,), seq_lens=(), lengths=f"demo:{lang}", rounds=1, min_iters=2,
                   min_time_s=0.0, warmup=1)
    assert rec["input_ids"] == "text" and rec["warmup_shapes"] >= 2
    lv = real_load(variants / "fp32")
    texts = [e["text"] for e in suite_cache["shared"][lang]]
    sentences = {tuple(s) for s in tokenize(lv.tokenizer(), texts, lv.card.input_prefix)}
    assert seen and all(tuple(int(v) for v in ids[j][mask[j] == 1]) in sentences
                        for ids, mask in seen for j in range(len(ids)))


def test_length_sorted_batches_pad_less_and_keep_their_own_key():
    from xopt import records
    from xopt.scenarios.fixed_batch import Shape

    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(4, 120, 400)]
    padded, sorted_ = Shape(8, lengths=lengths, source="demo"), Shape(8, lengths=lengths, source="demo",
                                                                       sort_by_length=True)

    def pad_fraction(shape):
        masks = [m for _, m in shape.batches(1000, 1, n=32)]
        return 1 - sum(m.sum() for m in masks) / sum(m.size for m in masks)

    assert pad_fraction(sorted_) < 0.1 < pad_fraction(padded)
    ranked = sorted(lengths)
    for _, mask in sorted_.batches(1000, 1, n=8):
        got = sorted(mask.sum(1).tolist())
        assert any(ranked[i:i + 8] == got for i in range(len(ranked) - 7))   # neighbours in length order
    assert (padded.batching, sorted_.batching, Shape(1, seq_len=128).batching) == ("random", "length-sorted", None)
    assert sorted_.label == "b8xdemo+sorted"
    assert records.shape_key({"length_dist": "demo", "batching": "length-sorted"}) == "len:demo+sorted"
    assert records.shape_key({"length_dist": "demo", "batching": "random"}) == "len:demo"
