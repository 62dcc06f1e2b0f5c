"""`xopt bench`: latency, throughput and memory of variants, measured the same way for all.

Method (one implementation, used by `xopt bench`, `xopt demo`, the LoadGen scenarios
(`xopt.loadgen`) and the bench/ pytest-benchmark suites):
- inputs are prepared (converted to the backend's form) before timing; only `run` is timed;
- the variant's load time (`load_s`: quantisation, engine deserialisation) and its first
  call (`cold_ms`: lazy compilation, allocator warm-up) are recorded apart, next to the
  manifest's build time (`build_s`);
- warm-up continues until the median of the last 5 calls is within 5% of the 5 before
  (bounded: 50 calls / 5 s), or runs a fixed number of calls (`--warmup N`); it is not part
  of the statistics;
- the timed loop runs at least `min_iters` calls *and* `min_time_s` seconds (bounded by
  `max_time_s`); CPU calls are timed with `perf_counter_ns`, GPU calls with CUDA events
  after synchronisation;
- several variants are measured in interleaved rounds (A B C A B C ...), so that drift of
  a shared machine hits all of them alike; the spread of the per-round medians is kept;
- memory: on GPU the CUDA allocator's peak after `reset_peak_memory_stats` (`peak_mem_kind`
  "cuda_allocator"; memory that ONNX Runtime / TensorRT allocate themselves is not in it,
  `cuda_used_mb` is the device-wide figure). On CPU the process's peak RSS (VmHWM, reset
  before each timed loop; `peak_mem_kind` "process_rss"). All variants of a run live in one
  process, so that peak includes every loaded variant: `mem_load_mb` (RSS growth while this
  variant loaded) and `mem_run_mb` (peak growth during its timed loops) are the per-variant
  parts;
- throughput counts real tokens, not padding: `throughput_tok_s` = non-pad tokens / s;
- shapes: fixed lengths (`seq_len`, every row full) or a real length mix (`length_dist`):
  the token counts of real sentences (demo suite, XTREME, a file), per language, so that
  the per-language cost of the same content shows up (`lang`, `mean_tokens`);
- a runner may declare `limits = {"max_batch": B, "max_seq_len": T}`, or its manifest an
  engine's optimisation profile (`<backend>: {profile: {max: [B, T]}}`, as TensorRT
  variants record it): shapes beyond them are refused before anything is measured.

Harness overhead (`harness_overhead()`, in every record): the timer adds two
`perf_counter_ns` calls to each CPU sample (measured 0.10-0.16 us on the project's 2-core
machine), the loop's bookkeeping brings it to 0.8-1.4 us per iteration. On GPU (expected,
not measured here) each iteration adds a synchronise, two event records and
`elapsed_time` (~10-20 us of host time) outside the interval the events measure; inside it
is only the launch gap between the start event and the first kernel, which is part of a
call's real cost. A CUDA-graph variant at batch 1 (~0.5-1 ms for e5-small) is therefore
not dominated by the harness.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xopt import records
from xopt.errors import XoptError

SCENARIOS = ("fixed-batch", "single-stream", "offline", "server")


@dataclass
class Shape:
    batch: int
    seq_len: int | None = None                 # fixed length (every row full)
    lengths: list[int] | None = None           # or: real token counts to sample rows from
    source: str | None = None                  # where `lengths` came from, e.g. "demo:ja"
    lang: str | None = None                    # the language of those sentences (None: a mix)
    split: str | None = None                   # which texts: "shared" (same content in every language), "test", ...

    @property
    def label(self) -> str:
        return f"b{self.batch}x{'s%d' % self.seq_len if self.seq_len else self.source}"

    @property
    def max_tokens(self) -> int:
        return self.seq_len or max(self.lengths)

    @property
    def mean_tokens(self) -> float:
        return float(self.seq_len or np.mean(self.lengths))

    def batches(self, vocab_size: int, pad_id: int, n: int = 16, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """`n` input batches; random token ids (latency does not depend on their values),
        real lengths when `lengths` is set, each batch padded to its longest row."""
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n if self.lengths else 1):
            lens = (rng.choice(self.lengths, self.batch) if self.lengths else np.full(self.batch, self.seq_len))
            out.append(make_batch(lens, vocab_size, pad_id, rng))
        return out


def make_batch(lens, vocab_size: int, pad_id: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Random ids with rows of the given real lengths, padded to the longest: (ids, mask)."""
    lens = np.asarray(lens)
    width = int(lens.max())
    ids = rng.integers(5, vocab_size, (len(lens), width), dtype=np.int64)
    mask = (np.arange(width)[None, :] < lens[:, None]).astype(np.int64)
    ids[mask == 0] = pad_id
    ids[:, 0] = 0
    ids[np.arange(len(lens)), lens - 1] = 2
    return ids, mask


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


def _loadavg() -> list[float] | None:
    """The host's 1/5/15-minute load averages: a measurement taken on a busy machine says so."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _proc_status_mb(key: str) -> float | None:
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


@dataclass
class Measurement:
    samples_ms: list[float] = field(default_factory=list)
    round_p50_ms: list[float] = field(default_factory=list)
    cold_ms: float | None = None
    warmup: int = 0
    warmup_ms: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)     # real tokens per timed call
    peak_mem_mb: float | None = None
    peak_mem_kind: str | None = None                    # "cuda_allocator" | "process_rss"
    mem_run_mb: float | None = None                     # peak growth during the timed loops
    cuda_used_mb: float | None = None

    def estimate_ms(self) -> float:
        """Typical latency of one call, from the timed samples or else the warm-up."""
        return float(np.median(self.samples_ms or self.warmup_ms[-5:] or [self.cold_ms or 1.0]))


def warm(runner, prepared: list, timer: Timer, m: Measurement, max_iters: int = 50, max_s: float = 5.0,
         fixed: int | None = None) -> None:
    """Cold call, then warm-up until the moving median is stable (bounded), or `fixed` calls."""
    m.cold_ms = timer(runner.run, prepared[0])
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
            self.rss0 = _proc_status_mb("VmRSS")
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
        peak = _proc_status_mb("VmHWM")
        if peak is not None:
            m.peak_mem_kind = "process_rss"
            m.peak_mem_mb = max(m.peak_mem_mb or 0.0, peak)
            if self.rss0 is not None:
                m.mem_run_mb = max(m.mem_run_mb or 0.0, peak - self.rss0)


def measure_interleaved(runners: dict, shape: Shape, vocab_size: int, pad_id: int, rounds: int = 3,
                        min_iters: int = 10, min_time_s: float = 0.5, max_time_s: float = 10.0,
                        progress=None, warmup: int | None = None) -> dict[str, Measurement]:
    """Measure every runner on `shape` in `rounds` interleaved rounds (a progress bar per runner)."""
    batches = shape.batches(vocab_size, pad_id)
    tokens = [int(mask.sum()) for _, mask in batches]
    ms, prepared, timers, tasks = {}, {}, {}, {}
    for name, r in runners.items():
        prepared[name] = [r.prepare(ids, mask) for ids, mask in batches]
        timers[name] = Timer(r.device)
        ms[name] = Measurement()
        if progress:
            tasks[name] = progress.add_task(f"{name} {shape.label}", total=rounds, rate="warm-up")
        warm(r, prepared[name], timers[name], ms[name], fixed=warmup)
    for _ in range(rounds):
        for name, r in runners.items():
            with MemoryProbe(r.device) as probe:
                timed_loop(r, prepared[name], tokens, timers[name], ms[name], min_iters, min_time_s, max_time_s)
            probe.update(ms[name])
            if progress:
                progress.update(tasks[name], advance=1, rate=f"p50 {ms[name].round_p50_ms[-1]:.2f} ms")
    return ms


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


def to_record(loaded, shape: Shape, m: Measurement, scenario: str = "fixed-batch", **extra) -> dict:
    """One bench record (fields: see xopt.records) of one variant on one shape."""
    stats = percentiles(m.samples_ms)
    mean_s = stats["mean_ms"] / 1e3
    tok_per_call = float(np.mean(m.tokens)) if m.tokens else shape.batch * shape.mean_tokens
    if shape.seq_len:
        dist = {"seq_len": shape.seq_len, "length_dist": None}
    else:
        dist = {"length_dist": shape.source,
                "length_stats": {"split": shape.split, "p50_tokens": float(np.median(shape.lengths)),
                                 "max_tokens": int(np.max(shape.lengths)), "n": len(shape.lengths)}}
    fields = dict(
        batch=shape.batch, **dist, lang=shape.lang, mean_tokens=round(shape.mean_tokens, 2), **stats,
        throughput_seq_s=shape.batch / mean_s, throughput_tok_s=tok_per_call / mean_s, tokens_per_call=tok_per_call,
        peak_mem_mb=m.peak_mem_mb, peak_mem_kind=m.peak_mem_kind, mem_run_mb=m.mem_run_mb,
        warmup=m.warmup, iters=len(m.samples_ms), rounds=len(m.round_p50_ms),
        round_p50_ms=[round(x, 3) for x in m.round_p50_ms], cold_ms=m.cold_ms, scenario=scenario)
    if m.cuda_used_mb is not None:
        fields["cuda_used_mb"] = m.cuda_used_mb
    fields.update(extra)
    return records.record(
        "bench", model=loaded.model_name, variant=loaded.manifest["variant"], variant_dir=str(loaded.directory),
        **loaded.model_fields, **fields, device=loaded.runner.device, artefact_mb=round(loaded.artefact_mb(), 1),
        build_s=loaded.manifest.get("build_s"), load_s=getattr(loaded, "load_s", None),
        mem_load_mb=getattr(loaded, "mem_load_mb", None), runner_info=loaded.runner.info,
        env={"gpu": gpu_env() if loaded.runner.device.startswith("cuda") else None,
             "harness_overhead_us": harness_overhead(), "loadavg": _loadavg()})


# ---------------------------------------------------------------- length distributions

@dataclass
class Lengths:
    lengths: list[int]
    source: str
    lang: str | None = None
    split: str | None = None


def _token_counts(tokenizer, texts: list[str], prefix: str, max_length: int = 512) -> list[int]:
    from xopt.evaluate import tokenize

    return [len(s) for s in tokenize(tokenizer, texts, prefix, max_length)]


def demo_lengths(tokenizer, suite: dict, lang: str | None, prefix: str) -> list[int]:
    """Token counts of the demo suite's test texts (one language, or all)."""
    langs = [lang] if lang else list(suite["test"])
    return _token_counts(tokenizer, [e["text"] for la in langs for e in suite["test"][la]], prefix)


def _demo_sources(spec: str, tokenizer, prefix: str) -> list[Lengths]:
    """`demo`: every language's test texts mixed; `demo:LANG[,LANG..]`: one length mix per
    language; `demo:each`: one per language of the suite. A language of the suite's shared
    set uses it (the same messages in every language: differences are the tokenizer's)."""
    from xopt.tasks import demo

    suite = demo.load_suite(demo.ensure_suite())
    if spec == "demo":
        return [Lengths(demo_lengths(tokenizer, suite, None, prefix), "demo")]
    arg = spec.split(":", 1)[1]
    shared = suite.get("shared") or {}
    langs = (list(shared) or list(suite["test"])) if arg == "each" else [x.strip() for x in arg.split(",") if x.strip()]
    bad = [la for la in langs if la not in suite["test"]]
    if bad or not langs:
        raise XoptError(f"--lengths {spec}: language {', '.join(bad) or '(none)'} not in the demo suite "
                        f"(have: {', '.join(suite['test'])})")
    out = []
    for la in langs:
        split = "shared" if la in shared else "test"
        texts = [e["text"] for e in (shared[la] if split == "shared" else suite["test"][la])]
        out.append(Lengths(_token_counts(tokenizer, texts, prefix), f"demo:{la}", la, split))
    return out


def xtreme_texts(examples, family: str) -> list:
    """What the model reads of each XTREME example (xopt.tasks.xtreme's internal forms): a
    text or a (text, text) pair, so that pairs are tokenised with their separators."""
    if family == "retrieval":
        return list(examples.src)
    if family == "classify":
        return [(e["text_a"], e["text_b"]) if e.get("text_b") else e["text_a"] for e in examples]
    if family == "tagging":
        return [" ".join(e["tokens"]) for e in examples]
    if family == "qa":
        return [(e["question"], e["context"]) for e in examples]
    raise XoptError(f"XTREME task family {family!r} has no text for a length mix")


def _xtreme_sources(spec: str, tokenizer, prefix: str, data_dir, max_length: int, n: int = 1000) -> list[Lengths]:
    """`xtreme:TASK:LANG[,LANG..]`: the test split of an XTREME task (xopt.tasks.xtreme.load,
    from `--data`), at most `n` examples per language, tokenised as the evaluation does."""
    check_lengths_spec(spec)
    from xopt.tasks import xtreme

    if data_dir is None:
        raise XoptError(f"--lengths {spec}: give --data, the directory of the XTREME data (see `xopt eval --help`)")
    _, task, langs = spec.split(":")
    family = xtreme.get_task(task).family
    out = []
    for la in [x.strip() for x in langs.split(",") if x.strip()]:
        texts = xtreme_texts(xtreme.load(task, la, "test", data_dir), family)[:n]
        singles = [t for t in texts if isinstance(t, str)]
        pairs = [t for t in texts if not isinstance(t, str)]
        counts = _token_counts(tokenizer, singles, prefix, max_length) if singles else []
        if pairs:
            enc = tokenizer([prefix + a for a, _ in pairs], [b for _, b in pairs], truncation="longest_first",
                            max_length=max_length)
            counts += [len(x) for x in enc["input_ids"]]
        out.append(Lengths(counts, f"xtreme:{task}:{la}", la, "test"))
    return out


def length_sources(spec: str, tokenizer, prefix: str, data_dir=None, max_length: int = 512) -> list[Lengths]:
    """The length mixes named by `--lengths`: demo, demo:LANG[,LANG..], demo:each,
    xtreme:TASK:LANG[,LANG..] (with `data_dir`), or a text file with one token count per line."""
    if spec == "demo" or spec.startswith("demo:"):
        return _demo_sources(spec, tokenizer, prefix)
    if spec.startswith("xtreme:"):
        return _xtreme_sources(spec, tokenizer, prefix, data_dir, max_length)
    path = Path(spec)
    if not path.is_file():
        raise XoptError(f"--lengths {spec}: not demo, demo:LANG, demo:each, xtreme:TASK:LANG or an existing file")
    try:
        vals = [int(x) for x in path.read_text().split()]
    except ValueError:
        raise XoptError(f"--lengths {spec}: expected one integer token count per line") from None
    if not vals or min(vals) < 1:
        raise XoptError(f"--lengths {spec}: empty or non-positive lengths")
    return [Lengths(vals, str(path))]


# ---------------------------------------------------------------- the sweep

def check_lengths_spec(spec: str) -> None:
    """Refuse a malformed --lengths before any variant is loaded."""
    if spec == "demo" or spec.startswith("demo:"):
        return
    if spec.startswith("xtreme:"):
        parts = spec.split(":")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise XoptError(f"--lengths {spec}: expected xtreme:TASK:LANG, e.g. xtreme:xnli:de")
        try:
            from xopt.tasks import xtreme
        except ImportError:
            raise XoptError(f"--lengths {spec}: this xopt has no XTREME loaders (xopt.tasks.xtreme); "
                            "use --lengths demo:LANG or a file of token counts") from None
        if not (callable(getattr(xtreme, "load", None)) and callable(getattr(xtreme, "get_task", None))):
            raise XoptError(f"--lengths {spec}: xopt.tasks.xtreme has no load()/get_task(); "
                            "use --lengths demo:LANG or a file of token counts")
        xtreme.get_task(parts[1])        # an unknown task name: its own one-line error
        return
    if not Path(spec).is_file():
        raise XoptError(f"--lengths {spec}: not demo, demo:LANG, demo:each, xtreme:TASK:LANG or an existing file")


def _load_all(variant_dirs: list) -> dict:
    from xopt.variants import load_variant

    if not variant_dirs:
        raise XoptError("no variant directory given; build one with `xopt compile`")
    loaded = {}
    for d in variant_dirs:
        rss0, t0 = _proc_status_mb("VmRSS"), time.perf_counter()
        lv = load_variant(d)
        lv.load_s = round(time.perf_counter() - t0, 3)
        rss1 = _proc_status_mb("VmRSS")
        lv.mem_load_mb = round(rss1 - rss0, 1) if rss0 is not None and rss1 is not None else None
        key = f"{lv.model_name}/{lv.manifest['variant']}"
        if key in loaded:        # two builds of one variant (e.g. other options): tell them apart
            key += f"@{Path(d).name}"
        loaded[key] = lv
    return loaded


def runner_limits(lv) -> dict:
    """{max_batch, max_seq_len} a variant accepts: the runner's `limits`, else an engine's
    optimisation profile recorded in its manifest (`<backend>.profile.max` = [batch, seq])."""
    lim = dict(getattr(lv.runner, "limits", None) or {})
    for v in lv.manifest.values():
        prof = v.get("profile") if isinstance(v, dict) else None
        hi = prof.get("max") if isinstance(prof, dict) else None
        if isinstance(hi, (list, tuple)) and len(hi) == 2:
            lim.setdefault("max_batch", int(hi[0]))
            lim.setdefault("max_seq_len", int(hi[1]))
    return lim


def make_shapes(loaded: dict, batches, seq_lens, lengths: str | None, scenario: str,
                data_dir=None) -> list[Shape]:
    """Every shape of the sweep, checked against the models' maximum length and the
    runners' declared limits before anything is measured."""
    first = next(iter(loaded.values()))
    max_len = min(lv.card.max_length for lv in loaded.values())
    if scenario == "single-stream":
        batches = [1]            # one sample per query by definition
    if any(b < 1 for b in batches) or any(s < 1 for s in seq_lens):
        raise XoptError("--batch and --seq-len take positive integers")
    sources = (length_sources(lengths, first.tokenizer(), first.card.input_prefix, data_dir, max_len)
               if lengths else [])
    shapes = []
    for b in batches:
        for s in seq_lens:
            if s > max_len:
                raise XoptError(f"--seq-len {s} exceeds the model's maximum length {max_len}; use --seq-len <= {max_len}")
            shapes.append(Shape(b, seq_len=s))
        for src in sources:      # sentences longer than the model's limit are truncated, as in eval
            shapes.append(Shape(b, lengths=[min(x, max_len) for x in src.lengths], source=src.source,
                                lang=src.lang, split=src.split))
    if not shapes:
        raise XoptError("nothing to measure: give --seq-len and/or --lengths")
    for lv in loaded.values():
        lim = runner_limits(lv)
        for shape in shapes:
            if lim.get("max_batch") and shape.batch > lim["max_batch"]:
                raise XoptError(f"{lv.directory}: batch {shape.batch} is beyond the engine's profile (max batch "
                                f"{lim['max_batch']}); lower --batch or rebuild the variant with a larger profile")
            if lim.get("max_seq_len") and shape.max_tokens > lim["max_seq_len"]:
                raise XoptError(f"{lv.directory}: {shape.max_tokens} tokens ({shape.label}) is beyond the engine's "
                                f"profile (max {lim['max_seq_len']}); lower --seq-len or rebuild with a larger profile")
    return shapes


def bench(variant_dirs: list, batches=(1, 8), seq_lens=(128,), lengths: str | None = None, rounds: int = 3,
          min_iters: int = 10, min_time_s: float = 0.5, max_time_s: float = 10.0, out: str | Path | None = None,
          progress=None, scenario: str = "fixed-batch", warmup: int | None = None, compare: str | None = None,
          latency_bound_ms: float = 100.0, server_qps: tuple[float, float] | None = None,
          server_max_runs: int = 8, loadgen_dir: str | Path | None = None, data_dir=None) -> list[dict]:
    """Measure every variant on every shape; records are appended to `out` shape by shape,
    so an interrupted sweep keeps what it measured (and the error says where it stopped).

    `fixed-batch` measures the variants in interleaved rounds; `single-stream`, `offline`
    and `server` run MLPerf LoadGen (xopt.loadgen), whose logs go to `loadgen_dir` (default:
    `<out>.loadgen/` beside the results file)."""
    if scenario not in SCENARIOS:
        raise XoptError(f"--scenario {scenario}: expected one of {', '.join(SCENARIOS)}")
    if lengths:
        check_lengths_spec(lengths)
    loaded = _load_all(variant_dirs)
    if compare and compare not in {lv.manifest["variant"] for lv in loaded.values()}:
        raise XoptError(f"--compare {compare}: not among the variants given "
                        f"({', '.join(lv.manifest['variant'] for lv in loaded.values())})")
    shapes = make_shapes(loaded, list(batches), list(seq_lens), lengths, scenario, data_dir)
    tok = next(iter(loaded.values())).tokenizer()
    if scenario != "fixed-batch":
        from xopt import loadgen

        import tempfile

        lg_root = Path(loadgen_dir) if loadgen_dir else (
            Path(out).with_suffix(".loadgen") if out else Path(tempfile.gettempdir()) / "xopt-loadgen")
        lg_root.mkdir(parents=True, exist_ok=True)      # one new directory per sweep: logs are never overwritten
        lg_run = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%dT%H%M%S-"), dir=lg_root)).resolve()
    recs = []
    for i, shape in enumerate(shapes):
        try:
            if scenario == "fixed-batch":
                ms = measure_interleaved({k: lv.runner for k, lv in loaded.items()}, shape, len(tok),
                                         tok.pad_token_id, rounds, min_iters, min_time_s, max_time_s, progress, warmup)
                shape_recs = [to_record(loaded[k], shape, m) for k, m in ms.items()]
            else:
                shape_recs = [loadgen.run_scenario(
                    lv, shape, scenario, lg_run, vocab_size=len(tok), pad_id=tok.pad_token_id,
                    min_time_s=min_time_s, min_queries=min_iters, warmup=warmup,
                    latency_bound_ms=latency_bound_ms, server_qps=server_qps, server_max_runs=server_max_runs,
                    progress=progress) for lv in loaded.values()]
        except (XoptError, RuntimeError, MemoryError, KeyboardInterrupt) as e:
            why = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e).strip().splitlines()[0][:300]
            kept = f"; {len(recs)} records of the {i} shapes before it kept" + (f" in {out}" if out else "")
            raise XoptError(f"sweep stopped at shape {i + 1}/{len(shapes)} ({shape.label}): {why}{kept}") from None
        if out:
            records.append(out, shape_recs)
        recs += shape_recs
    return recs


def ratio_table(recs: list[dict], compare: str) -> list[dict]:
    """Per record: p50 and throughput relative to `compare` on the same model, shape and scenario."""
    from xopt.report import shape_key

    ref = {(r["model"], r["batch"], shape_key(r)): r for r in recs if r["variant"] == compare}
    rows = []
    for r in recs:
        rr = ref.get((r["model"], r["batch"], shape_key(r)))
        rows.append({"model": r["model"], "variant": r["variant"], "batch": r["batch"], "shape": shape_key(r),
                     "p50_speedup": rr["p50_ms"] / r["p50_ms"] if rr and r["p50_ms"] else None,
                     "throughput_ratio": (r["throughput_seq_s"] / rr["throughput_seq_s"]
                                          if rr and rr["throughput_seq_s"] else None)})
    return rows


# ---------------------------------------------------------------- pytest-benchmark bridge and baselines

def machine_kind() -> str:
    """A name for the kind of machine, for bench/baselines/<kind>.json: the GPU's name, or
    the CPU's architecture and thread count."""
    import platform
    import re

    from xopt.host import host_info

    h = host_info()
    name = f"cuda-{h['gpu']['name']}" if h.get("gpu") else f"cpu-{platform.machine()}-{h.get('torch_threads') or h['cpu_count']}t"
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-").lower()


def to_pytest_benchmark(benchmark, m: Measurement, **extra_info) -> None:
    """Hand xopt's samples to pytest-benchmark's statistics (one sample = one timed call), so
    the suites in bench/ report what `xopt bench` measures with the same timer and loop.
    Uses the fixture's `_make_stats` (pytest-benchmark 4/5): there is no public API to feed
    externally timed samples."""
    benchmark.extra_info.update(extra_info)
    if benchmark.disabled:
        return
    benchmark._mode = "xopt.bench"
    stats = benchmark._make_stats(1)
    for s in m.samples_ms:
        stats.update(s / 1e3)


def compare_benchmark_json(baseline: dict, current: dict, threshold: float = 0.15) -> tuple[list[dict], bool]:
    """Median of each benchmark in `current` against `baseline` (pytest-benchmark JSON).
    Returns rows and whether any median regressed by more than `threshold` (0.15 = 15%)."""
    base = {b["fullname"]: b for b in baseline.get("benchmarks", [])}
    rows, failed = [], False
    for b in current.get("benchmarks", []):
        ref = base.get(b["fullname"])
        row = {"name": b["fullname"], "median_s": b["stats"]["median"],
               "baseline_median_s": ref["stats"]["median"] if ref else None}
        if ref:
            row["ratio"] = b["stats"]["median"] / ref["stats"]["median"]
            row["regressed"] = row["ratio"] > 1 + threshold
            failed |= row["regressed"]
        rows.append(row)
    return rows, failed

