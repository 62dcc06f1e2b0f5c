"""Fixed-batch scenario: shapes, input batches, interleaved rounds, and the bench record.

Several variants are measured in interleaved rounds (A B C A B C ...), so that drift of a
shared machine hits all of them alike; the spread of the per-round medians is kept.
Throughput counts real tokens, not padding: `throughput_tok_s` = non-pad tokens / s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xopt import records
from xopt.measure import Measurement, MemoryProbe, Timer, environment, percentiles, timed_loop, warm
from xopt.scenarios.base import ScenarioConfig, Sweep


@dataclass
class Shape:
    batch: int
    seq_len: int | None = None                 # fixed length (every row full)
    lengths: list[int] | None = None           # or: real token counts to sample rows from
    source: str | None = None                  # where `lengths` came from, e.g. "demo:ja"
    lang: str | None = None                    # the language of those sentences (None: a mix)
    split: str | None = None                   # which texts: "shared" (same content in every language), "test", ...
    rows: list[list[int]] | None = None        # the sentences' token ids, aligned with `lengths` (None: random ids)
    sort_by_length: bool = False               # batches of sentences of neighbouring lengths (a length-sorting server)

    @property
    def label(self) -> str:
        return f"b{self.batch}x{'s%d' % self.seq_len if self.seq_len else self.source}" + \
            ("+sorted" if self.sort_by_length else "")

    @property
    def max_tokens(self) -> int:
        return self.seq_len or max(self.lengths)

    @property
    def mean_tokens(self) -> float:
        return float(self.seq_len or np.mean(self.lengths))

    @property
    def batching(self) -> str | None:
        """How a length mix's rows are grouped: "random" (padded to the longest of a random draw)
        or "length-sorted" (neighbours in length order: what a server that sorts or buckets its
        queue by length runs); None for fixed-length shapes."""
        return None if self.seq_len else "length-sorted" if self.sort_by_length else "random"

    @property
    def input_ids(self) -> str:
        """What the batches hold: "text" (the sentences' own token ids) or "random" ids."""
        return "text" if self.rows else "random"

    def batches(self, vocab_size: int, pad_id: int, n: int = 16, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """`n` input batches, each padded to its longest row: sentences drawn from `rows` (their
        real ids) when the length source has texts, else random ids of the real lengths
        (`lengths`) or of `seq_len`. Real ids matter where the cost depends on values
        (int8 matmuls with outlier handling). With `sort_by_length`, a batch is `batch` sentences
        that are neighbours in length order, starting at a random place."""
        rng = np.random.default_rng(seed)
        out = []
        order = np.argsort(self.lengths, kind="stable") if self.sort_by_length and self.lengths else None
        for _ in range(n if self.lengths else 1):
            if order is not None:
                start = int(rng.integers(0, max(len(order) - self.batch, 0) + 1))
                drawn = order[start:start + self.batch]
                drawn = np.resize(drawn, self.batch)        # fewer sentences than the batch: repeat them
                if self.rows:
                    out.append(pad_rows([self.rows[i] for i in drawn], pad_id))
                else:
                    out.append(make_batch(np.asarray(self.lengths)[drawn], vocab_size, pad_id, rng))
                continue
            if self.rows:
                drawn = rng.choice(len(self.rows), self.batch)
                out.append(pad_rows([self.rows[i] for i in drawn], pad_id))
                continue
            lens = (rng.choice(self.lengths, self.batch) if self.lengths else np.full(self.batch, self.seq_len))
            out.append(make_batch(lens, vocab_size, pad_id, rng))
        return out


def pad_rows(rows, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token-id rows padded to the longest: (ids, mask)."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, r in enumerate(rows):
        ids[j, :len(r)], mask[j, :len(r)] = r, 1
    return ids, mask


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


@dataclass(frozen=True)
class FixedBatch(ScenarioConfig):
    """Every variant on each shape in `rounds` interleaved rounds; the timed budget is split
    over the rounds."""

    name = "fixed-batch"
    rounds: int = 3

    @property
    def splits(self) -> int:
        return max(self.rounds, 1)

    def run(self, sweep: Sweep, shape: Shape) -> list[dict]:
        tm = sweep.timing
        ms = measure_interleaved({k: lv.runner for k, lv in sweep.loaded.items()}, shape, sweep.vocab_size,
                                 sweep.pad_id, self.rounds, tm.min_iters, tm.min_time_s, tm.max_time_s,
                                 sweep.progress, tm.warmup)
        return [to_record(sweep.loaded[k], shape, m, load=sweep.load[k]) for k, m in ms.items()]


def to_record(loaded, shape: Shape, m: Measurement, scenario: str = "fixed-batch", load: dict | None = None,
              **fields) -> dict:
    """The bench record (xopt.records.BenchRecord) of one variant on one shape, built once:
    the statistics of `m`, then `fields` (a scenario's own figures, which take precedence),
    then validated. `load`: {load_s, mem_load_mb, peak_mem_scope} of the variant's loading, from the
    caller (peak_mem_scope: "variant process" | "shared process", see xopt.bench)."""
    stats = percentiles(m.samples_ms)
    mean_s = stats["mean_ms"] / 1e3
    tok_per_call = float(np.mean(m.tokens)) if m.tokens else shape.batch * shape.mean_tokens
    if shape.seq_len:
        dist = {"seq_len": shape.seq_len, "length_dist": None}
    else:
        dist = {"length_dist": shape.source, "batching": shape.batching,
                "length_stats": {"split": shape.split, "p50_tokens": float(np.median(shape.lengths)),
                                 "max_tokens": int(np.max(shape.lengths)), "n": len(shape.lengths)}}
    rec = dict(
        batch=shape.batch, **dist, lang=shape.lang, mean_tokens=round(shape.mean_tokens, 2), **stats,
        throughput_seq_s=shape.batch / mean_s, throughput_tok_s=tok_per_call / mean_s, tokens_per_call=tok_per_call,
        peak_mem_mb=m.peak_mem_mb, peak_mem_kind=m.peak_mem_kind, mem_run_mb=m.mem_run_mb,
        warmup=m.warmup, warmup_shapes=m.warmup_shapes, input_ids=shape.input_ids, iters=len(m.samples_ms),
        rounds=len(m.round_p50_ms),
        round_p50_ms=[round(x, 3) for x in m.round_p50_ms], cold_ms=m.cold_ms, scenario=scenario)
    if m.cuda_used_mb is not None:
        rec["cuda_used_mb"] = m.cuda_used_mb
    rec.update(fields)
    load = load or {}
    return records.record(
        "bench", model=loaded.model_name, variant=loaded.manifest["variant"], variant_dir=str(loaded.directory),
        **loaded.model_fields, **rec, device=loaded.runner.device, artefact_mb=round(loaded.artefact_mb(), 1),
        build_s=loaded.manifest.get("build_s"), load_s=load.get("load_s"), mem_load_mb=load.get("mem_load_mb"),
        peak_mem_scope=load.get("peak_mem_scope"), quantized_ops=quantized_op_count(loaded),
        runner_info=loaded.runner.info, env=environment(loaded.runner.device))


def quantized_op_count(loaded) -> int | None:
    """Ops of the variant that really run in low precision: counted from the built artefact at
    build (manifest) or from the converted module at load (runner info); None for float variants."""
    ops = loaded.manifest.get("quantized_ops") or loaded.runner.info.get("quantized_ops")
    return ops.get("count") if isinstance(ops, dict) else None
