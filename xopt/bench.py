"""`xopt bench`: latency, throughput and memory of variants, measured the same way for all.

Method (one implementation, used by `xopt bench`, `xopt demo` and the bench/ suites):
- inputs are prepared (converted to the backend's form) before timing; only `run` is timed;
- the first call is timed apart (`cold_ms`: lazy compilation, allocator warm-up);
- warm-up continues until the median of the last 5 calls is within 5% of the 5 before
  (bounded), and is not part of the statistics;
- the timed loop runs at least `min_iters` calls *and* `min_time_s` seconds (bounded by
  `max_time_s`); CPU calls are timed with `perf_counter_ns`, GPU calls with CUDA events
  after synchronisation;
- several variants are measured in interleaved rounds (A B C A B C ...), so that drift of
  a shared machine hits all of them alike; the spread of the per-round medians is kept;
- peak memory: the CUDA allocator's peak on GPU, the process's peak RSS (VmHWM, reset
  before the shape) on CPU;
- throughput counts real tokens, not padding: `throughput_tok_s` = non-pad tokens / s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xopt import results
from xopt.errors import XoptError


@dataclass
class Shape:
    batch: int
    seq_len: int | None = None                 # fixed length (every row full)
    lengths: list[int] | None = None           # or: real token counts to sample rows from
    source: str | None = None                  # where `lengths` came from, e.g. "demo:ja"

    @property
    def label(self) -> str:
        return f"b{self.batch}x{'s%d' % self.seq_len if self.seq_len else self.source}"

    def batches(self, vocab_size: int, pad_id: int, n: int = 16, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """`n` input batches; random token ids (latency does not depend on their values),
        real lengths when `lengths` is set, each batch padded to its longest row."""
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n if self.lengths else 1):
            lens = (rng.choice(self.lengths, self.batch) if self.lengths else np.full(self.batch, self.seq_len))
            width = int(lens.max())
            ids = rng.integers(5, vocab_size, (self.batch, width), dtype=np.int64)
            mask = (np.arange(width)[None, :] < lens[:, None]).astype(np.int64)
            ids[mask == 0] = pad_id
            ids[:, 0] = 0
            ids[np.arange(self.batch), lens - 1] = 2
            out.append((ids, mask))
        return out


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


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")   # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def _peak_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@dataclass
class Measurement:
    samples_ms: list[float] = field(default_factory=list)
    round_p50_ms: list[float] = field(default_factory=list)
    cold_ms: float | None = None
    warmup: int = 0
    tokens: list[int] = field(default_factory=list)     # real tokens per timed call
    peak_mem_mb: float | None = None


def warm(runner, prepared: list, timer: Timer, m: Measurement, max_iters: int = 50, max_s: float = 5.0) -> None:
    """Cold call, then warm-up until the moving median is stable (bounded)."""
    m.cold_ms = timer(runner.run, prepared[0])
    hist, t0 = [], time.perf_counter()
    while len(hist) < max_iters and time.perf_counter() - t0 < max_s:
        hist.append(timer(runner.run, prepared[len(hist) % len(prepared)]))
        if len(hist) >= 10:
            a, b = np.median(hist[-5:]), np.median(hist[-10:-5])
            if abs(a - b) <= 0.05 * b:
                break
    m.warmup = 1 + len(hist)


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


def measure_interleaved(runners: dict, shape: Shape, vocab_size: int, pad_id: int, rounds: int = 3,
                        min_iters: int = 10, min_time_s: float = 0.5, max_time_s: float = 10.0,
                        progress=None) -> dict[str, Measurement]:
    """Measure every runner on `shape` in `rounds` interleaved rounds."""
    batches = shape.batches(vocab_size, pad_id)
    tokens = [int(mask.sum()) for _, mask in batches]
    ms, prepared, timers = {}, {}, {}
    for name, r in runners.items():
        prepared[name] = [r.prepare(ids, mask) for ids, mask in batches]
        timers[name] = Timer(r.device)
        ms[name] = Measurement()
        warm(r, prepared[name], timers[name], ms[name])
    task = progress.add_task(f"bench {shape.label}", total=rounds * len(runners), rate="") if progress else None
    for _ in range(rounds):
        for name, r in runners.items():
            _reset_peak_rss()
            timed_loop(r, prepared[name], tokens, timers[name], ms[name], min_iters, min_time_s, max_time_s)
            if r.device.startswith("cuda"):
                import torch

                ms[name].peak_mem_mb = torch.cuda.max_memory_allocated() / 2**20
            else:
                peak = _peak_rss_mb()
                ms[name].peak_mem_mb = max(ms[name].peak_mem_mb or 0, peak or 0) or None
            if progress:
                progress.update(task, advance=1, rate=f"{name} p50 {ms[name].round_p50_ms[-1]:.1f} ms")
    return ms


def to_record(loaded, shape: Shape, m: Measurement, scenario: str = "fixed-batch") -> dict:
    stats = percentiles(m.samples_ms)
    mean_s = stats["mean_ms"] / 1e3
    tok_per_call = float(np.mean(m.tokens))
    extra = ({"seq_len": shape.seq_len} if shape.seq_len else
             {"length_dist": {"source": shape.source, "mean_tokens": float(np.mean(shape.lengths)),
                              "p50_tokens": float(np.median(shape.lengths)), "max_tokens": int(np.max(shape.lengths)),
                              "n": len(shape.lengths)}})
    return results.record(
        "bench", model=loaded.model_name, variant=loaded.manifest["variant"], variant_dir=str(loaded.directory),
        **loaded.model_fields,
        batch=shape.batch, **extra, **stats, throughput_seq_s=shape.batch / mean_s,
        throughput_tok_s=tok_per_call / mean_s, tokens_per_call=tok_per_call, peak_mem_mb=m.peak_mem_mb,
        warmup=m.warmup, iters=len(m.samples_ms), rounds=len(m.round_p50_ms),
        round_p50_ms=[round(x, 3) for x in m.round_p50_ms], cold_ms=m.cold_ms, scenario=scenario,
        device=loaded.runner.device, artefact_mb=round(loaded.artefact_mb(), 1), runner_info=loaded.runner.info)


def demo_lengths(tokenizer, suite: dict, lang: str | None, prefix: str) -> list[int]:
    """Token counts of the demo suite's test texts (one language, or all)."""
    from xopt.evaluate import tokenize

    langs = [lang] if lang else list(suite["test"])
    texts = [e["text"] for la in langs for e in suite["test"][la]]
    return [len(s) for s in tokenize(tokenizer, texts, prefix)]


def parse_lengths(spec: str, tokenizer, prefix: str) -> tuple[list[int], str]:
    """`demo`, `demo:LANG`, or a text file with one integer token count per line."""
    from xopt.tasks import demo

    if spec == "demo" or spec.startswith("demo:"):
        lang = spec.split(":", 1)[1] if ":" in spec else None
        suite = demo.load_suite(demo.ensure_suite())
        if lang and lang not in suite["test"]:
            raise XoptError(f"--lengths {spec}: language {lang!r} not in the demo suite ({', '.join(suite['test'])})")
        return demo_lengths(tokenizer, suite, lang, prefix), spec
    path = Path(spec)
    if not path.is_file():
        raise XoptError(f"--lengths {spec}: not 'demo', 'demo:LANG' or an existing file")
    try:
        vals = [int(x) for x in path.read_text().split()]
    except ValueError:
        raise XoptError(f"--lengths {spec}: expected one integer token count per line") from None
    if not vals or min(vals) < 1:
        raise XoptError(f"--lengths {spec}: empty or non-positive lengths")
    return vals, str(path)


def bench(variant_dirs: list, batches=(1, 8), seq_lens=(128,), lengths: str | None = None, rounds: int = 3,
          min_iters: int = 10, min_time_s: float = 0.5, max_time_s: float = 10.0, out: str | Path | None = None,
          progress=None) -> list[dict]:
    """Measure every variant on every shape; records are appended to `out` shape by shape,
    so an interrupted sweep keeps what it measured."""
    from xopt.variants import load_variant

    loaded = {}
    for d in variant_dirs:
        lv = load_variant(d)
        key = f"{lv.model_name}/{lv.manifest['variant']}"
        if key in loaded:        # two builds of one variant (e.g. other options): tell them apart
            key += f"@{Path(d).name}"
        loaded[key] = lv
    first = next(iter(loaded.values()))
    tok = first.tokenizer()
    max_len = min(lv.card.max_length for lv in loaded.values())
    shapes = []
    for b in batches:
        for s in seq_lens:
            if s > max_len:
                raise XoptError(f"--seq-len {s} exceeds the model's maximum length {max_len}")
            shapes.append(Shape(b, seq_len=s))
        if lengths:
            lens, src = parse_lengths(lengths, tok, first.card.input_prefix)
            shapes.append(Shape(b, lengths=[min(x, max_len) for x in lens], source=src))
    recs = []
    for shape in shapes:
        ms = measure_interleaved({k: lv.runner for k, lv in loaded.items()}, shape, len(tok), tok.pad_token_id,
                                 rounds, min_iters, min_time_s, max_time_s, progress)
        shape_recs = [to_record(loaded[k], shape, m) for k, m in ms.items()]
        if out:
            results.append(out, shape_recs)
        recs += shape_recs
    return recs
