"""MLPerf LoadGen scenarios for `xopt bench --scenario single-stream|offline|server`.

LoadGen (the `mlcommons-loadgen` package, MLPerf Inference's own load generator) decides
when queries arrive and measures each sample's latency from issue to completion; xopt
provides the system under test (SUT) around a variant's `Runner`:

- single-stream: one sample per query, the next query after the previous completes. The
  MLPerf figure is the p90 latency; the record's percentiles are LoadGen's per-sample ones.
- offline: every sample in one query; the SUT runs them in batches of `--batch-size`, each padded
  to its longest row. The figure is samples/s (LoadGen's); the record's percentiles are those
  of the batches, timed with the same `Timer` as every other xopt measurement.
- server: Poisson arrivals at a target QPS; a worker thread runs whatever is queued, up to
  `--batch-size` samples (dynamic batching). The figure is the highest QPS whose p99 latency stays
  within `--latency-bound-ms`, found by `server_search`: at most `Server.max_runs` LoadGen
  runs between the bounds `Server.qps` (default: 1/100 to 1.5 times the samples/s of full
  batches in the warm-up).

Each scenario is one frozen config class (`SingleStream`, `Offline`, `Server`) whose methods
hold what differs: LoadGen's settings, how a shape is measured (one run, or the server
search), and which of LoadGen's figures the record takes.

Samples are the real token counts of the shape (`--lengths`) or fixed-length rows; they are
warmed up (the same bounded warm-up as `fixed-batch`) before LoadGen starts. Each LoadGen
run keeps its logs (mlperf_log_summary.txt, mlperf_log_detail.txt) in its own directory,
named in the record (`loadgen_log_dir`); the record's `loadgen` field holds LoadGen's
`result_*` values (validity, percentiles, QPS).

Validity: LoadGen marks a run INVALID when it missed its minimum duration or query count or
(server) the latency constraint. The record says so at the top level (`validity`,
`invalid_reason`: the unmet conditions and LoadGen's own advice), `xopt pick` fails such a
record, and the server search never counts an INVALID run as a passing QPS, whatever its p99.
Samples are the sentences' real token ids when the length source has texts (`Shape.rows`).
"""

from __future__ import annotations

import json
import math
import queue
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from xopt.errors import XoptError
from xopt.measure import Measurement, MemoryProbe, Timer, Timing, percentiles, warm
from xopt.scenarios.base import ScenarioConfig, Sweep
from xopt.scenarios.fixed_batch import Shape, make_batch, pad_rows, to_record

MAX_SAMPLES = 1024          # distinct samples in LoadGen's sample library


def _lg():
    try:
        import mlperf_loadgen
    except ImportError:
        raise XoptError("--scenario single-stream/offline/server needs MLPerf LoadGen: "
                        "pip install mlcommons-loadgen") from None
    return mlperf_loadgen


def read_detail(log_dir: Path) -> dict:
    """LoadGen's `result_*` values from mlperf_log_detail.txt."""
    path = Path(log_dir) / "mlperf_log_detail.txt"
    out = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(":::MLLOG"):
                try:
                    d = json.loads(line[len(":::MLLOG"):])
                except json.JSONDecodeError:
                    continue
                if str(d.get("key", "")).startswith("result_"):
                    out[d["key"]] = d["value"]
    return out


VALIDITY_CONDITIONS = (("result_min_duration_met", "minimum duration not met"),
                       ("result_min_queries_met", "minimum query count not met"),
                       ("result_perf_constraints_met", "latency constraint not met"),
                       ("result_early_stopping_met", "early-stopping condition not met"))


def validity(res: dict) -> tuple[str | None, str | None]:
    """(LoadGen's result_validity, why it is not VALID: the unmet conditions and LoadGen's
    result_invalid_reason; None when VALID). A run without a validity line counts as INVALID."""
    v = res.get("result_validity")
    if v == "VALID":
        return v, None
    why = [text for key, text in VALIDITY_CONDITIONS if res.get(key) is False]
    if str(res.get("result_invalid_reason") or "").strip():
        why.append(str(res["result_invalid_reason"]).strip())
    default = "no result_validity in LoadGen's log" if v is None else "LoadGen: INVALID"
    return v or "INVALID", "; ".join(why) or default


class SUT:
    """The system under test: runs LoadGen's samples on a runner, `batch` at a time."""

    def __init__(self, lg, runner, sample_lens: list[int], batch: int, vocab_size: int, pad_id: int,
                 server: bool = False, seed: int = 0, sample_rows: list | None = None):
        self.lg, self.runner, self.batch, self.server = lg, runner, batch, server
        self.sample_lens, self.vocab_size, self.pad_id = sample_lens, vocab_size, pad_id
        self.sample_rows = sample_rows
        self.rng = np.random.default_rng(seed)
        self.rows: dict[int, np.ndarray] = {}
        self.timer = Timer(runner.device)
        self.batch_ms: list[float] = []
        self.batch_tokens: list[int] = []
        self.samples = 0
        self.error: BaseException | None = None
        self.q: queue.Queue = queue.Queue()
        self.worker: threading.Thread | None = None

    # QSL callbacks: the sample library holds token-id rows: the sentences' own ids, or random
    # ids of the sampled lengths
    def load(self, indices):
        for i in indices:
            if self.sample_rows is not None:
                self.rows[i] = np.asarray(self.sample_rows[i], dtype=np.int64)
                continue
            ids, _ = make_batch([self.sample_lens[i]], self.vocab_size, self.pad_id, self.rng)
            self.rows[i] = ids[0]

    def unload(self, indices):
        for i in indices:
            self.rows.pop(i, None)

    def _run(self, qs) -> None:
        try:
            if self.error is None:
                rows = [self.rows[q.index] for q in qs]
                ids, mask = pad_rows(rows, self.pad_id)
                x = self.runner.prepare(ids, mask)
                self.batch_ms.append(self.timer(self.runner.run, x))
                self.batch_tokens.append(int(mask.sum()))
                self.samples += len(rows)
        except BaseException as e:     # raised again after the test: LoadGen's thread must not die
            self.error = e
        self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(q.id, 0, 0) for q in qs])

    def issue(self, qs) -> None:
        if self.server:
            for q in qs:
                self.q.put(q)
            return
        for i in range(0, len(qs), self.batch):
            self._run(qs[i:i + self.batch])

    def flush(self) -> None:
        pass

    def _work(self) -> None:
        while True:
            first = self.q.get()
            if first is None:
                return
            qs = [first]
            while len(qs) < self.batch:     # dynamic batching: whatever is already queued
                try:
                    nxt = self.q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.q.put(None)
                    break
                qs.append(nxt)
            self._run(qs)

    def __enter__(self):
        if self.server:
            self.worker = threading.Thread(target=self._work, daemon=True)
            self.worker.start()
        return self

    def __exit__(self, *exc):
        if self.worker:
            self.q.put(None)
            self.worker.join()
        return False


def run_once(runner, sample_lens: list[int], scenario: "LoadGenScenario", log_dir: Path, *, batch: int,
             vocab_size: int, pad_id: int, min_time_s: float, min_queries: int, expected_ms: float,
             target_qps: float | None = None, sample_rows: list | None = None) -> tuple[dict, SUT]:
    """One LoadGen performance run; returns LoadGen's results and the SUT (its batch timings)."""
    lg = _lg()
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    s = lg.TestSettings()
    s.scenario = getattr(lg.TestScenario, scenario.lg_name)
    s.mode = lg.TestMode.PerformanceOnly
    s.min_duration_ms = int(min_time_s * 1000)
    s.max_duration_ms = int(1000 * max(4 * min_time_s, min_time_s + 10))
    s.min_query_count = max(1, min_queries)
    s.single_stream_expected_latency_ns = max(1000, int(expected_ms * 1e6))
    s.offline_expected_qps = max(1.0, batch / max(expected_ms, 1e-3) * 1e3)
    scenario.settings(s, target_qps)
    ls = lg.LogSettings()
    ls.log_output.outdir = str(log_dir)
    ls.log_output.copy_summary_to_stdout = False
    ls.enable_trace = False
    sut_obj = SUT(lg, runner, sample_lens, batch, vocab_size, pad_id, server=scenario.dynamic_batching,
                  sample_rows=sample_rows)
    sut = lg.ConstructSUT(sut_obj.issue, sut_obj.flush)
    qsl = lg.ConstructQSL(len(sample_lens), len(sample_lens), sut_obj.load, sut_obj.unload)
    try:
        with sut_obj:
            lg.StartTestWithLogSettings(sut, qsl, s, ls)
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    if sut_obj.error is not None:
        e = sut_obj.error
        raise XoptError(f"{type(e).__name__} in the variant during LoadGen's {scenario.name} run: {e}") from e
    res = read_detail(log_dir)
    if not res:
        raise XoptError(f"LoadGen wrote no results to {log_dir} (see mlperf_log_summary.txt there)")
    return res, sut_obj


def server_search(probe: Callable[[float], bool], lo: float, hi: float, max_runs: int = 8,
                  rel_tol: float = 0.1) -> tuple[float | None, list[float]]:
    """Highest QPS in [lo, hi] for which `probe(qps)` holds (p99 within the bound), assuming
    it holds below some capacity and fails above. Probes lo, then hi, then bisects
    geometrically until hi/lo <= 1 + rel_tol; never more than `max_runs` probes and never
    outside [lo, hi]. Returns (best QPS or None when even lo fails, QPS probed in order)."""
    if not (0 < lo < hi) or max_runs < 2:
        raise XoptError(f"server search needs 0 < low < high QPS and at least 2 runs (got {lo}, {hi}, {max_runs})")
    tried = [lo]
    if not probe(lo):
        return None, tried
    tried.append(hi)
    if probe(hi):
        return hi, tried
    a, b = lo, hi
    while len(tried) < max_runs and b > a * (1 + rel_tol):
        q = math.sqrt(a * b)
        tried.append(q)
        if probe(q):
            a = q
        else:
            b = q
    return a, tried


def _ns_ms(res: dict, key: str) -> float | None:
    v = res.get(key)
    return None if v is None else v / 1e6


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


@dataclass
class _Runs:
    """What every LoadGen run of one variant on one shape shares: the runner, the log directory
    name under `log_root`, the sample library's lengths, run_once's keyword arguments, and the
    progress display with its task."""

    runner: object
    name: str
    log_root: Path
    sample_lens: list[int]
    kw: dict
    progress: object = None
    task: object = None


def _samples(shape: Shape) -> tuple[list[int], list | None]:
    """The sample library's lengths and token-id rows (None without texts): at most
    MAX_SAMPLES of the shape's lengths, drawn with a fixed seed."""
    rng = np.random.default_rng(0)
    pool = shape.lengths or [shape.seq_len] * 64
    chosen = rng.choice(len(pool), MAX_SAMPLES, replace=False) if len(pool) > MAX_SAMPLES else range(len(pool))
    return [int(pool[i]) for i in chosen], [shape.rows[i] for i in chosen] if shape.rows else None


def run_scenario(scenario: LoadGenScenario, loaded, shape: Shape, log_root: Path, *, vocab_size: int, pad_id: int,
                 timing: Timing = Timing(min_time_s=1.0), progress=None, load: dict | None = None) -> dict:
    """Warm the variant up on `shape`, run LoadGen's `scenario`, return one bench record
    (built once, complete: LoadGen's figures replace the timer's where the scenario has them).
    `load`: {load_s, mem_load_mb} of the variant's loading."""
    runner = loaded.runner
    m = Measurement()
    warm(runner, [runner.prepare(ids, mask) for ids, mask in shape.batches(vocab_size, pad_id)],
         Timer(runner.device), m, fixed=timing.warmup)
    sample_lens, sample_rows = _samples(shape)
    label = f"{loaded.manifest['variant']} {scenario.name} {shape.label}"
    runs = _Runs(runner, _safe(f"{loaded.model_name}-{loaded.manifest['variant']}-{scenario.name}-{shape.label}"),
                 Path(log_root), sample_lens,
                 dict(batch=shape.batch, vocab_size=vocab_size, pad_id=pad_id, min_time_s=timing.min_time_s,
                      min_queries=timing.min_iters, expected_ms=m.estimate_ms(), sample_rows=sample_rows),
                 progress, progress.add_task(label, total=scenario.progress_total, rate="") if progress else None)
    with MemoryProbe(runner.device) as probe:
        res, sut, log_dir, extra = scenario.measure(runs)
    m.samples_ms, m.tokens = sut.batch_ms, sut.batch_tokens
    m.round_p50_ms = [float(np.median(sut.batch_ms))] if sut.batch_ms else []
    probe.update(m)
    if not sut.batch_ms:
        raise XoptError(f"LoadGen issued no samples for {label}; see {log_dir}")
    tok_per_sample = sum(sut.batch_tokens) / max(sut.samples, 1)
    seq_s, figures = scenario.figures(res, sut, extra)
    valid, why = validity(res)
    return to_record(loaded, shape, m, scenario.name, load=load, loadgen={k: v for k, v in res.items()},
                     validity=valid, invalid_reason=why,
                     loadgen_log_dir=str(log_dir), samples=sut.samples, **extra, **figures,
                     throughput_seq_s=float(seq_s), throughput_tok_s=float(seq_s) * tok_per_sample,
                     tokens_per_sample=tok_per_sample, iters=scenario.iters(sut))


@dataclass(frozen=True)
class LoadGenScenario(ScenarioConfig):
    """A scenario LoadGen drives: each variant on its own, one LoadGen run per shape (the server
    search: several), each with its own log directory inside the sweep's (`prepare`)."""

    lg_name: ClassVar[str]                  # LoadGen's TestScenario
    throughput_key: ClassVar[str]           # LoadGen's result_* of samples/s
    dynamic_batching: ClassVar[bool] = False

    @property
    def progress_total(self) -> int:
        return 1

    def prepare(self, loadgen_dir, out) -> Path:
        """A new directory per sweep (logs are never overwritten) in `loadgen_dir`, else in
        `<out>.loadgen/` beside the results file, else in the temporary directory."""
        lg_root = Path(loadgen_dir) if loadgen_dir else (
            Path(out).with_suffix(".loadgen") if out else Path(tempfile.gettempdir()) / "xopt-loadgen")
        lg_root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%dT%H%M%S-"), dir=lg_root)).resolve()

    def run(self, sweep: Sweep, shape: Shape) -> list[dict]:
        return [run_scenario(self, lv, shape, sweep.log_dir, vocab_size=sweep.vocab_size, pad_id=sweep.pad_id,
                             timing=sweep.timing, progress=sweep.progress, load=sweep.load[k])
                for k, lv in sweep.loaded.items()]

    def settings(self, s, target_qps: float | None) -> None:
        """LoadGen test settings of this scenario beyond the common ones (run_once)."""

    def measure(self, runs: _Runs) -> tuple[dict, SUT, Path, dict]:
        """One LoadGen run: (LoadGen's results, the SUT, its log directory, the record's extra fields)."""
        log_dir = runs.log_root / runs.name
        res, sut = run_once(runs.runner, runs.sample_lens, self, log_dir, **runs.kw)
        if runs.progress:
            runs.progress.update(runs.task, advance=1, rate=f"{res.get('result_validity', '?')}")
        return res, sut, log_dir, {}

    def figures(self, res: dict, sut: SUT, extra: dict) -> tuple[float, dict]:
        """(samples/s, the record's latency figures): LoadGen's per-sample percentiles, with
        the batches' timer percentiles beside them."""
        return res.get(self.throughput_key) or 0.0, {
            "latency_source": "loadgen_per_sample",
            **{f"batch_{k}": v for k, v in percentiles(sut.batch_ms).items()},
            **{k: _ns_ms(res, f"result_{p}_percentile_latency_ns") for k, p in
               (("p50_ms", "50.00"), ("p90_ms", "90.00"), ("p99_ms", "99.00"))},
            "mean_ms": _ns_ms(res, "result_mean_latency_ns"), "min_ms": _ns_ms(res, "result_min_latency_ns")}

    def iters(self, sut: SUT) -> int:
        return sut.samples


@dataclass(frozen=True)
class SingleStream(LoadGenScenario):
    """One sample per query (batch 1 by definition), the next after the previous completes."""

    name = "single-stream"
    lg_name = "SingleStream"
    throughput_key = "result_qps_with_loadgen_overhead"

    def batches(self, batches: list[int]) -> list[int]:
        return [1]


@dataclass(frozen=True)
class Offline(LoadGenScenario):
    """Every sample in one query, run in batches; the percentiles are the batches' (timer)."""

    name = "offline"
    lg_name = "Offline"
    throughput_key = "result_samples_per_second"

    def figures(self, res: dict, sut: SUT, extra: dict) -> tuple[float, dict]:
        return res.get(self.throughput_key) or 0.0, {"latency_source": "timer_per_batch"}

    def iters(self, sut: SUT) -> int:
        return len(sut.batch_ms)


@dataclass(frozen=True)
class Server(LoadGenScenario):
    """Poisson arrivals, dynamic batching; the highest QPS whose p99 stays within
    `latency_bound_ms`, searched in at most `max_runs` runs between `qps` (LOW, HIGH; default
    from the warm-up)."""

    name = "server"
    lg_name = "Server"
    throughput_key = "result_completed_samples_per_sec"
    dynamic_batching = True
    latency_bound_ms: float = 100.0
    qps: tuple[float, float] | None = None
    max_runs: int = 8

    @property
    def progress_total(self) -> int:
        return self.max_runs

    def settings(self, s, target_qps: float | None) -> None:
        s.server_target_qps = float(target_qps)
        s.server_target_latency_ns = int(self.latency_bound_ms * 1e6)
        s.server_target_latency_percentile = 0.99

    def measure(self, runs: _Runs) -> tuple[dict, SUT, Path, dict]:
        capacity = runs.kw["batch"] / max(runs.kw["expected_ms"], 1e-3) * 1e3      # samples/s at full batches
        # the warm-up's figure leaves out queueing and the SUT's own overhead: start far below it
        lo, hi = self.qps or (max(capacity / 100, 0.5), max(capacity * 1.5, 1.0))
        tried_runs: dict[float, tuple] = {}

        def probe_qps(q: float) -> bool:
            d = runs.log_root / runs.name / f"qps{q:.2f}"
            r, s = run_once(runs.runner, runs.sample_lens, self, d, target_qps=q, **runs.kw)
            p99 = _ns_ms(r, "result_99.00_percentile_latency_ns")
            valid, _ = validity(r)
            ok = valid == "VALID" and p99 is not None and p99 <= self.latency_bound_ms   # INVALID never passes
            tried_runs[q] = (r, s, d, ok, p99)
            if runs.progress:
                state = "ok" if ok else "INVALID" if valid != "VALID" else "over"
                shown = "n/a" if p99 is None else f"{p99:.1f}"
                runs.progress.update(runs.task, advance=1, rate=f"{q:.1f} QPS p99 {shown} ms {state}")
            return ok

        best, tried = server_search(probe_qps, lo, hi, self.max_runs)
        res, sut, log_dir, _, _ = tried_runs[best if best is not None else tried[0]]
        return res, sut, log_dir, {
            "latency_bound_ms": self.latency_bound_ms, "server_max_qps": best, "server_qps_bounds": [lo, hi],
            "server_search": [{"qps": round(q, 3), "p99_ms": tried_runs[q][4], "ok": tried_runs[q][3],
                               "validity": validity(tried_runs[q][0])[0],
                               "invalid_reason": validity(tried_runs[q][0])[1],
                               "log_dir": str(tried_runs[q][2])} for q in tried]}

    def figures(self, res: dict, sut: SUT, extra: dict) -> tuple[float, dict]:
        seq_s, figures = super().figures(res, sut, extra)
        return (seq_s if extra["server_max_qps"] is not None else 0.0), figures    # no QPS meets the bound
