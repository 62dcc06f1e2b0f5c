"""The one timing harness: timer, warm-up, timed loop, percentiles, memory, environment.

Every xopt measurement goes through it (`xopt bench`'s scenarios, `xopt demo`, the
bench/ pytest-benchmark suites), so all of them time the same way:
- inputs are prepared before timing; only the call is timed;
- a call's first run (`cold_ms`: lazy compilation, allocator warm-up) is recorded apart;
- every distinct input shape among the prepared inputs is called once before anything is
  timed (`warmup_shapes`): a variant that compiles per shape (bucketed engines,
  torch.compile) compiles them all outside the timed loop;
- warm-up continues until the median of the last 5 calls is within 5% of the 5 before
  (bounded: 50 calls / 5 s), or runs a fixed number of calls; it is not part of the
  statistics;
- the timed loop runs at least `min_iters` calls *and* `min_time_s` seconds (bounded by
  `max_time_s`); CPU calls are timed with `perf_counter_ns`, GPU calls with CUDA events
  after synchronisation;
- memory: on GPU the CUDA allocator's peak after `reset_peak_memory_stats` ("cuda_allocator";
  memory that ONNX Runtime / TensorRT allocate themselves is not in it, `cuda_used_mb` is the
  device-wide figure); on CPU the process's peak RSS (VmHWM, reset before each timed loop;
  "process_rss"), with `mem_run_mb` its growth during the timed loops.

Harness overhead: on CPU the timer adds two `perf_counter_ns` calls to each sample and the
loop's bookkeeping a little more per iteration; `harness_overhead()` times both when a bench
runs, and every bench record stores them. On GPU each iteration adds a synchronise, two event
records and `elapsed_time` on the host, outside the interval the events measure; inside it is
only the launch gap between the start event and the first kernel, which is part of a call's
real cost.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field

import numpy as np

from xopt.errors import XoptError


@dataclass(frozen=True)
class Timing:
    """The bounds of each variant's timed loop on a shape: at least `min_iters` calls *and*
    `min_time_s` seconds, at most `max_time_s`; `warmup` calls, or None for the bounded
    warm-up that runs until the moving median is stable (module doc). LoadGen scenarios read
    `min_iters` as the minimum query count and `min_time_s` as the minimum duration."""

    min_iters: int = 10
    min_time_s: float = 0.5
    max_time_s: float = 10.0
    warmup: int | None = None


def percentiles(samples_ms) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "min_ms": float(a.min()),
            "std_ms": float(a.std())}


class Timer:
    """Times one call of `fn` in ms: CUDA events on GPU, perf_counter_ns on CPU."""

    def __init__(self, device: str = "cpu"):
        self.cuda = device.startswith("cuda")
        if self.cuda:
            import torch

            self._torch = torch
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def __call__(self, fn, arg) -> float:
        if self.cuda:
            self._torch.cuda.synchronize()
            self._start.record()
            fn(arg)
            self._end.record()
            self._end.synchronize()
            return self._start.elapsed_time(self._end)
        t0 = time.perf_counter_ns()
        fn(arg)
        return (time.perf_counter_ns() - t0) / 1e6


@dataclass
class Measurement:
    samples_ms: list[float] = field(default_factory=list)
    round_p50_ms: list[float] = field(default_factory=list)
    cold_ms: float | None = None
    warmup: int = 0
    warmup_ms: list[float] = field(default_factory=list)
    warmup_shapes: int = 0                              # distinct prepared shapes, each called before timing
    tokens: list[int] = field(default_factory=list)     # real tokens per timed call
    peak_mem_mb: float | None = None
    peak_mem_kind: str | None = None                    # "cuda_allocator" | "process_rss"
    mem_run_mb: float | None = None                     # peak growth during the timed loops
    cuda_used_mb: float | None = None

    def estimate_ms(self) -> float:
        """Typical latency of one call, from the timed samples or else the warm-up."""
        return float(np.median(self.samples_ms or self.warmup_ms[-5:] or [self.cold_ms or 1.0]))


def input_shape(x):
    """The shape signature of a prepared input: array shapes, through tuples, lists and dicts."""
    if hasattr(x, "shape"):
        return tuple(int(d) for d in x.shape)
    if isinstance(x, dict):
        return tuple((k, input_shape(v)) for k, v in sorted(x.items(), key=lambda kv: str(kv[0])))
    if isinstance(x, (list, tuple)):
        return tuple(input_shape(v) for v in x)
    return type(x).__name__


def distinct_shapes(prepared: list) -> list[int]:
    """Index of the first prepared input of each distinct shape, in order."""
    seen: dict = {}
    for i, x in enumerate(prepared):
        seen.setdefault(input_shape(x), i)
    return list(seen.values())


def warm(runner, prepared: list, timer: Timer, m: Measurement, max_iters: int = 50, max_s: float = 5.0,
         fixed: int | None = None) -> None:
    """Cold call, one call on each other distinct input shape (`m.warmup_shapes` counts the
    shapes), then warm-up until the moving median is stable (bounded), or `fixed` calls.
    The shape calls come first so that per-shape compilation never lands in the timed loop
    and the stability test sees compiled calls only; `m.warmup` counts the cold call and the
    warm-up calls after the shape calls."""
    first = distinct_shapes(prepared)
    m.cold_ms = timer(runner.run, prepared[first[0]])
    for i in first[1:]:
        timer(runner.run, prepared[i])
    m.warmup_shapes = len(first)
    hist, t0 = [], time.perf_counter()
    while True:
        if fixed is not None:
            if len(hist) >= fixed:
                break
        elif len(hist) >= max_iters or time.perf_counter() - t0 >= max_s:
            break
        hist.append(timer(runner.run, prepared[len(hist) % len(prepared)]))
        if fixed is None and len(hist) >= 10:
            a, b = np.median(hist[-5:]), np.median(hist[-10:-5])
            if abs(a - b) <= 0.05 * b:
                break
    m.warmup = 1 + len(hist)
    m.warmup_ms = hist


def timed_loop(runner, prepared: list, tokens: list[int], timer: Timer, m: Measurement, min_iters: int,
               min_time_s: float, max_time_s: float) -> None:
    """One round: time `runner.run` over `prepared` (cycling) until both minimums are met,
    appending the samples and each call's real token count to `m`."""
    got, t0 = [], time.perf_counter()
    while True:
        el = time.perf_counter() - t0
        if (len(got) >= min_iters and el >= min_time_s) or (el >= max_time_s and len(got) >= 3):
            break
        i = len(m.samples_ms) + len(got)
        got.append(timer(runner.run, prepared[i % len(prepared)]))
        m.tokens.append(tokens[i % len(prepared)])
    m.samples_ms += got
    m.round_p50_ms.append(float(np.median(got)))


# ---------------------------------------------------------------- memory

def proc_status_mb(key: str) -> float | None:
    """A /proc/self/status figure (VmRSS, VmHWM, ...) in MiB; None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")   # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


class MemoryProbe:
    """Peak memory of one timed loop: CUDA allocator peak on GPU, RSS high-water mark on CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __enter__(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            _reset_peak_rss()
            self.rss0 = proc_status_mb("VmRSS")
        return self

    def __exit__(self, *exc):
        return False

    def update(self, m: Measurement) -> None:
        if self.cuda:
            import torch

            free, total = torch.cuda.mem_get_info()
            m.peak_mem_kind = "cuda_allocator"
            m.peak_mem_mb = max(m.peak_mem_mb or 0.0, torch.cuda.max_memory_allocated() / 2**20)
            m.cuda_used_mb = max(m.cuda_used_mb or 0.0, (total - free) / 2**20)
            return
        peak = proc_status_mb("VmHWM")
        if peak is not None:
            m.peak_mem_kind = "process_rss"
            m.peak_mem_mb = max(m.peak_mem_mb or 0.0, peak)
            if self.rss0 is not None:
                m.mem_run_mb = max(m.mem_run_mb or 0.0, peak - self.rss0)


# ---------------------------------------------------------------- environment

def _noop(_):
    return None


class _NoopRunner:
    run = staticmethod(_noop)


@functools.lru_cache(maxsize=1)
def harness_overhead(n: int = 2000, chunks: int = 10) -> dict:
    """What the harness itself costs on CPU, in us: `timer_us` is the median sample of an
    empty call (what the timer adds to every sample), `loop_us` the wall time per
    iteration of `timed_loop` around an empty call (timer + bookkeeping), in the fastest
    of `chunks` chunks (a slower chunk was preempted: other processes' time, not ours)."""
    m, t, per = Measurement(), Timer("cpu"), []
    for _ in range(chunks):
        k = len(m.samples_ms)
        t0 = time.perf_counter_ns()
        timed_loop(_NoopRunner, [None], [0], t, m, min_iters=n // chunks, min_time_s=0.0, max_time_s=10.0)
        per.append((time.perf_counter_ns() - t0) / 1e3 / (len(m.samples_ms) - k))
    return {"timer_us": round(float(np.median(m.samples_ms)) * 1e3, 3), "loop_us": round(min(per), 3)}


def loadavg() -> list[float] | None:
    """The host's 1/5/15-minute load averages: a measurement taken on a busy machine says so."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def gpu_env() -> dict | None:
    """Driver, clocks and power limit of GPU 0 when readable (NVML), else None."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        env = {"driver": pynvml.nvmlSystemGetDriverVersion()}
        for key, clk in (("sm_clock_mhz", pynvml.NVML_CLOCK_SM), ("mem_clock_mhz", pynvml.NVML_CLOCK_MEM)):
            env[key] = pynvml.nvmlDeviceGetClockInfo(h, clk)
            env["max_" + key] = pynvml.nvmlDeviceGetMaxClockInfo(h, clk)
        env["power_limit_w"] = pynvml.nvmlDeviceGetPowerManagementLimit(h) / 1000
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in env.items()}
    except Exception:   # NVML absent or not permitted: the record says null, not a guess
        return None


def threads_used() -> int | None:
    """The intra-op threads a CPU measurement runs with: XOPT_THREADS (ONNX Runtime sessions), else
    torch's thread count (which ONNX Runtime's and OpenVINO's defaults also follow: one per core)."""
    from xopt.host import env_threads, host_info

    return env_threads() or host_info().get("torch_threads") or os.cpu_count()


def environment(device: str) -> dict:
    """The `env` of a bench record: GPU state (on GPU), the harness's own cost, the load average
    and the threads it is compared with (a load above them means other work shared the cores)."""
    return {"gpu": gpu_env() if device.startswith("cuda") else None,
            "harness_overhead_us": harness_overhead(), "loadavg": loadavg(), "threads": threads_used()}


# ---------------------------------------------------------------- pytest-benchmark bridge and baselines

def machine_kind(cpu: str | None = None, flags=None, threads: int | None = None) -> str:
    """A name for the kind of machine, for bench/baselines/<kind>.json: the GPU's name, or the
    CPU's model, the ISA extensions its recipes depend on (xopt.host.ISA_FLAGS) and the thread
    count; by default this host's (`cpu`, `flags`, `threads` name another's)."""
    import re

    from xopt.host import ISA_FLAGS, host_info

    h = host_info()
    if cpu is None and h.get("gpu"):
        name = f"cuda-{h['gpu']['name']}"
    else:
        cpu = cpu if cpu is not None else h["cpu"]
        flags = h["cpu_flags"] if flags is None else [f for f in ISA_FLAGS if f in set(flags)]
        name = f"cpu-{cpu}-{'-'.join(flags) or 'no-isa'}-{threads or threads_used()}t"
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-").lower()


def baseline_kind(machine_info: dict) -> str:
    """machine_kind of the CPU a pytest-benchmark JSON's `machine_info` describes (its threads:
    the CPU count pytest-benchmark saw)."""
    cpu = machine_info.get("cpu") or {}
    return machine_kind(cpu.get("brand_raw") or "unknown", cpu.get("flags") or [], cpu.get("count"))


def baseline_mismatch(machine_info: dict, where: str = "the baseline") -> str | None:
    """None when a baseline comes from this host's kind of CPU (model and ISA flags), else
    one line saying that a comparison with it compares two machines."""
    from xopt.host import ISA_FLAGS, host_info

    h = host_info()
    cpu = machine_info.get("cpu") or {}
    theirs = (cpu.get("brand_raw") or "unknown", [f for f in ISA_FLAGS if f in set(cpu.get("flags") or [])])
    ours = (h["cpu"], list(h["cpu_flags"]))
    if theirs == ours:
        return None
    return (f"{where} was measured on CPU {theirs[0]!r} [{' '.join(theirs[1]) or 'no ISA flags'}], this host is "
            f"{ours[0]!r} [{' '.join(ours[1]) or 'no ISA flags'}]: a comparison says nothing about a regression; "
            f"save a baseline for this machine as bench/baselines/{machine_kind()}.json")


class SampleClock:
    """The timer the bench/ suites give pytest-benchmark (`pytest.mark.benchmark(timer=SAMPLE_CLOCK)`).

    It is not a clock of wall time: each reading returns the duration fed to it since the
    previous reading, so in `benchmark.pedantic` (timer read before and after each round's
    call) a round whose call feeds one of xopt's measured samples records exactly that
    sample. pytest-benchmark's statistics, JSON and `--benchmark-compare` then hold xopt's own
    per-call times, not a timing of the replay."""

    __name__ = "SAMPLE_CLOCK"      # how pytest-benchmark names the timer in its JSON

    def __init__(self):
        self._fed = 0.0
        self.readings = 0

    def __call__(self) -> float:
        t, self._fed = self._fed, 0.0
        self.readings += 1
        return t

    def feed(self, seconds: float) -> None:
        self._fed = seconds


SAMPLE_CLOCK = SampleClock()


def to_pytest_benchmark(benchmark, m: Measurement, **extra_info) -> None:
    """Hand xopt's samples to pytest-benchmark (one round = one timed call), so the suites in
    bench/ report what `xopt bench` measures with the same timer and loop. Public API only:
    `benchmark.pedantic` replays the samples through `SAMPLE_CLOCK`, which the test's
    `benchmark` marker must name as its timer (bench/conftest.py marks every benchmark)."""
    benchmark.extra_info.update(extra_info)
    samples = [s / 1e3 for s in m.samples_ms]
    if not samples:
        raise XoptError(f"{benchmark.name}: no timed samples to report")
    it = iter(samples)
    SAMPLE_CLOCK.feed(0.0)      # a call replayed without timing (--benchmark-disable) leaves nothing behind
    before = SAMPLE_CLOCK.readings
    # next(it, 0.0): calls beyond the rounds (--benchmark-cprofile's extra run) feed nothing
    benchmark.pedantic(lambda: SAMPLE_CLOCK.feed(next(it, 0.0)), rounds=len(samples), iterations=1,
                       warmup_rounds=0)
    if benchmark.enabled and SAMPLE_CLOCK.readings - before != 2 * len(samples):
        raise XoptError(f"{benchmark.name}: pytest-benchmark did not time the replay with xopt.measure.SAMPLE_CLOCK; "
                        "mark the test with pytest.mark.benchmark(timer=SAMPLE_CLOCK)")
