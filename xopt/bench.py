"""`xopt bench`: latency, throughput and memory of variants, measured the same way for all.

The bench verb's orchestration: load the variants (their load time and memory apart), make
the shapes of the sweep (fixed lengths and real length mixes, checked against the models'
maximum length and the runners' limits before anything is measured), run a scenario on
every shape, and append the bench records (xopt.records) shape by shape. How a call is timed
is xopt.measure's; the scenarios are xopt.scenarios' (fixed-batch: interleaved rounds;
single-stream, offline, server: MLPerf LoadGen); length mixes come from
xopt.scenarios.lengths.

A runner may declare `limits = {"max_batch": B, "max_seq_len": T}`, or its variant family read
them from the manifest (`Variant.limits`: a TensorRT engine's optimisation profile): shapes
beyond them are refused before anything is measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from xopt import records
from xopt.errors import XoptError
from xopt.measure import Timing, proc_status_mb
from xopt.records import shape_key
from xopt.scenarios.base import ScenarioConfig, Sweep
from xopt.scenarios.fixed_batch import FixedBatch, Shape
from xopt.scenarios.lengths import check_lengths_spec, length_sources


@dataclass(frozen=True)
class BenchConfig:
    """What one sweep measures and how: the batch sizes and fixed lengths, the real length mixes
    (`lengths`, a spec of xopt.scenarios.lengths; `data_dir`: the XTREME data for `xtreme:`
    mixes; `sort_by_length`: each mix at batch > 1 also in length-sorted batches), the scenario
    (a config of xopt.scenarios.registry), the timed loop's bounds, the variant the ratio
    table compares with (`compare`, one of those measured), and where LoadGen's logs go
    (`loadgen_dir`; default `<out>.loadgen/` beside the results file)."""

    batches: tuple[int, ...] = (1, 8)
    seq_lens: tuple[int, ...] = (128,)
    lengths: str | None = None
    scenario: ScenarioConfig = FixedBatch()
    timing: Timing = Timing()
    compare: str | None = None
    data_dir: Path | None = None
    sort_by_length: bool = False
    loadgen_dir: Path | None = None


def _load_all(variant_dirs: list) -> tuple[dict, dict]:
    """{key: Loaded} of the variant directories, and {key: {load_s, mem_load_mb}}: the time
    and the RSS growth of each one's loading (quantisation, engine deserialisation)."""
    from xopt.variants import load_variant

    if not variant_dirs:
        raise XoptError("no variant directory given; build one with `xopt compile`")
    loaded, load = {}, {}
    for d in variant_dirs:
        rss0, t0 = proc_status_mb("VmRSS"), time.perf_counter()
        lv = load_variant(d)
        load_s = round(time.perf_counter() - t0, 3)
        rss1 = proc_status_mb("VmRSS")
        key = f"{lv.model_name}/{lv.manifest['variant']}"
        if key in loaded:        # two builds of one variant (e.g. other options): tell them apart
            key += f"@{Path(d).name}"
        loaded[key] = lv
        load[key] = {"load_s": load_s,
                     "mem_load_mb": round(rss1 - rss0, 1) if rss0 is not None and rss1 is not None else None}
    # peak memory (process RSS, or the CUDA allocator's peak) counts every variant this process
    # holds: it is one variant's only when the run has one variant
    scope = "variant process" if len(loaded) == 1 else "shared process"
    for v in load.values():
        v["peak_mem_scope"] = scope
    return loaded, load


def runner_limits(lv) -> dict:
    """{max_batch, max_seq_len} a variant accepts: the runner's `limits`, else what its family
    reads from the manifest (`Variant.limits`, e.g. an engine's optimisation profile)."""
    from xopt.variants import REGISTRY

    lim = dict(getattr(lv.runner, "limits", None) or {})
    variant = REGISTRY.get(lv.manifest.get("variant"))
    for key, value in (variant.limits(lv.manifest) if variant else {}).items():
        lim.setdefault(key, value)
    return lim


def make_shapes(loaded: dict, cfg: BenchConfig) -> list[Shape]:
    """Every shape of the sweep, checked against the models' maximum length and the
    runners' declared limits before anything is measured. `cfg.sort_by_length` adds, beside each
    length mix at batch > 1, the same mix in length-sorted batches."""
    first = next(iter(loaded.values()))
    max_len = min(lv.card.max_length for lv in loaded.values())
    batches, seq_lens, lengths = cfg.scenario.batches(list(cfg.batches)), list(cfg.seq_lens), cfg.lengths
    if any(b < 1 for b in batches) or any(s < 1 for s in seq_lens):
        raise XoptError("--batch-size and --seq-len take positive integers")
    sources = (length_sources(lengths, first.tokenizer(), first.card.input_prefix, cfg.data_dir, max_len)
               if lengths else [])
    shapes = []
    for b in batches:
        for s in seq_lens:
            if s > max_len:
                raise XoptError(f"--seq-len {s} exceeds the model's maximum length {max_len}; use --seq-len <= {max_len}")
            shapes.append(Shape(b, seq_len=s))
        for src in sources:      # sentences longer than the model's limit are truncated, as in eval
            for srt in (False, True) if cfg.sort_by_length and b > 1 else (False,):
                shapes.append(Shape(b, lengths=[min(x, max_len) for x in src.lengths], source=src.source,
                                    lang=src.lang, split=src.split, rows=_truncate(src.rows, max_len),
                                    sort_by_length=srt))
    if not shapes:
        raise XoptError("nothing to measure: give --seq-len and/or --lengths")
    for lv in loaded.values():
        lim = runner_limits(lv)
        for shape in shapes:
            if lim.get("max_batch") and shape.batch > lim["max_batch"]:
                raise XoptError(f"{lv.directory}: batch {shape.batch} is beyond the engine's profile (max batch "
                                f"{lim['max_batch']}); lower --batch-size or rebuild the variant with a larger "
                                f"profile: {_rebuild_larger(lv, lim, shape)}")
            if lim.get("max_seq_len") and shape.max_tokens > lim["max_seq_len"]:
                raise XoptError(f"{lv.directory}: {shape.max_tokens} tokens ({shape.label}) is beyond the engine's "
                                f"profile (max {lim['max_seq_len']}); lower --seq-len or rebuild the variant with "
                                f"a larger profile: {_rebuild_larger(lv, lim, shape)}")
    return shapes


def _truncate(rows, max_len: int):
    """Token-id rows cut to `max_len`, keeping each row's last (end-of-sequence) token, as the
    tokenizer's truncation does."""
    if rows is None:
        return None
    return [r if len(r) <= max_len else r[:max_len - 1] + r[-1:] for r in rows]


def _rebuild_larger(lv, lim: dict, shape: Shape) -> str:
    """The `xopt compile` command that rebuilds `lv` with a profile whose max covers `shape`."""
    from xopt.variants.base import max_shapes_flag

    man = lv.manifest
    src = (man.get("source") or {}).get("checkpoint") or "CHECKPOINT"
    b = max(shape.batch, lim.get("max_batch") or 0)
    t = max(shape.max_tokens, lim.get("max_seq_len") or 0)
    return (f"`xopt compile {src} --variant {man.get('variant', 'VARIANT')} --out {lv.directory} --force "
            f"{max_shapes_flag(b, t)}`")


def bench(variant_dirs: list, config: BenchConfig = BenchConfig(), out: str | Path | None = None,
          progress=None) -> list[dict]:
    """Measure every variant on every shape of `config`; records are appended to `out` shape by
    shape, so an interrupted sweep keeps what it measured (and the error says where it stopped).

    Every variant is loaded before anything is measured, so with several variants the peak
    memory is that of a process holding all of them: records say `peak_mem_scope` "shared
    process" then, "variant process" when the run has one variant (memory per variant: one
    variant per run). A fresh process per variant would cost a Python and torch start-up
    (seconds) for every variant, and would lose the interleaved rounds.

    `fixed-batch` measures the variants in interleaved rounds; `single-stream`, `offline`
    and `server` run MLPerf LoadGen (xopt.scenarios.loadgen), whose logs go to a new directory
    per sweep in `config.loadgen_dir` (default: `<out>.loadgen/` beside the results file)."""
    if config.lengths:
        check_lengths_spec(config.lengths)
    loaded, load = _load_all(variant_dirs)
    compare = config.compare
    if compare and compare not in {lv.manifest["variant"] for lv in loaded.values()}:
        raise XoptError(f"--compare {compare}: not among the variants given "
                        f"({', '.join(lv.manifest['variant'] for lv in loaded.values())})")
    shapes = make_shapes(loaded, config)
    tok = next(iter(loaded.values())).tokenizer()
    sweep = Sweep(loaded, load, len(tok), tok.pad_token_id, config.timing, progress,
                  config.scenario.prepare(config.loadgen_dir, out))
    recs = []
    for i, shape in enumerate(shapes):
        try:
            shape_recs = config.scenario.run(sweep, shape)
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
    ref = {(r["model"], r["batch"], shape_key(r)): r for r in recs if r["variant"] == compare}
    rows = []
    for r in recs:
        rr = ref.get((r["model"], r["batch"], shape_key(r)))
        rows.append({"model": r["model"], "variant": r["variant"], "batch": r["batch"], "shape": shape_key(r),
                     "p50_speedup": rr["p50_ms"] / r["p50_ms"] if rr and r["p50_ms"] else None,
                     "throughput_ratio": (r["throughput_seq_s"] / rr["throughput_seq_s"]
                                          if rr and rr["throughput_seq_s"] else None)})
    return rows
