"""Result records: typed schemas, JSON Lines, one record per measurement, append-only.

Every command that measures something (`eval`, `bench`, `calibrate`) produces records of
these schemas; `report` and `pick` read only these. A record is built once, complete, by
`record(kind, **fields)` (or the keyword-only `eval_record` / `bench_record` /
`sensitivity_record`, whose signatures name the required fields), and validated there: a
missing field or a field of the wrong type is a one-line `XoptError` naming the field.
Nothing adds fields to a record after that.

Appends are a single `write` of whole lines on a file opened with O_APPEND, followed by
fsync, so a crash never leaves half a record and never loses the records already written.

The schemas are plain dataclasses checked by the small validator below, not pydantic:
pydantic is not a dependency of xopt, the checks needed (JSON scalars, lists, objects,
optional values) fit in forty lines, and records stay plain dicts for JSON and for the
readers. A schema lists the required fields (no default) and the known optional ones
(default None): both are type-checked when present. Fields a schema does not list are
kept as they are (a newer xopt's extra fields stay readable by an older one).
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from xopt import __version__
from xopt.errors import XoptError, disk_full, is_disk_full
from xopt.host import host_info
from xopt.manifest import now

# Version of the schemas below; every record written carries it as `schema`. Records without
# it were written before the schemas were typed and are read under the same rules.
# Schema 2: retrieval eval records carry the protocol they were measured under
# (`retrieval_layer`, `num_layers`, `pooling`); records of schema 1 or none carry no protocol
# and are read as they are, under the bare task name (`retrieval_protocol` returns None).
SCHEMA_VERSION = 2


class RecordError(XoptError, ValueError):
    """A record that does not match its schema (one line: the kind, the field, what is wrong)."""


# ---------------------------------------------------------------- schemas

@dataclass(frozen=True, kw_only=True)
class CommonFields:
    """Fields every record carries; `record()` fills in all but model and variant."""
    kind: str
    model: str
    variant: str
    host: dict
    xopt_version: str
    created: str
    schema: int | None = None
    # what the variant's manifest says about the model (Loaded.model_fields)
    base_model: str | None = None
    role: str | None = None
    params: int | None = None
    non_embedding_params: int | None = None
    variant_dir: str | None = None
    device: str | None = None


@dataclass(frozen=True, kw_only=True)
class EvalRecord(CommonFields):
    """A task score of one variant in one language (`lang` "avg": the mean over languages)."""
    suite: str
    task: str
    lang: str
    split: str
    metric: str
    value: float
    n_examples: int
    outcomes: list | None = None          # per-example outcomes (bootstrap input)
    counts: list | None = None            # or per-example [tp, fp, fn] counts, for F1-like metrics
    outcome_kind: str | None = None       # "mean" | "counts"
    example_ids: str | None = None        # digest of the example ids
    calibration: dict | None = None       # {method, langs, samples, ids_sha256, keep} of a calibrated variant
    eval_s: float | None = None
    examples_per_s: float | None = None
    sequences_run: int | None = None
    n_langs: int | None = None
    langs: list | None = None
    note: str | None = None
    distractors: bool | None = None       # BUCC: false when the source holds only the gold pairs (no distractors)
    # retrieval tasks: the embedding scored: `pooling` ("mean") over hidden state `retrieval_layer`
    # (0 = the word embeddings, `num_layers` = the last layer) of an encoder of `num_layers` layers
    retrieval_layer: int | None = None
    num_layers: int | None = None
    pooling: str | None = None
    rank: int | None = None
    world_size: int | None = None
    # the variant's outputs for a sample of the eval's texts at batch 1 vs in one batch of the eval
    # batch size (xopt.invariance): {batch, texts, max_abs_diff, argmax_agreement, min_cosine,
    # invariant, tolerance, activation_scales, outputs: {name: {...}}, seconds}; the same on every
    # record of one `xopt eval` run
    batch_invariance: dict | None = None


@dataclass(frozen=True, kw_only=True)
class BenchRecord(CommonFields):
    """Latency, throughput and memory of one variant on one shape in one scenario.

    A shape is `seq_len` (fixed length, every row full) or `length_dist`: the source of a real
    length mix ("demo", "demo:de", "xtreme:xnli:de", a file path; null for fixed lengths) with
    `length_stats` {split, p50_tokens, max_tokens, n}. `scenario`: fixed-batch (interleaved
    rounds) | single-stream | offline | server (MLPerf LoadGen)."""
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_seq_s: float
    throughput_tok_s: float
    peak_mem_mb: float | None
    warmup: int
    iters: int
    scenario: str
    seq_len: int | None = None
    length_dist: str | dict | None = None   # dict: {source, ...} in records of older xopt versions
    length_stats: dict | None = None
    lang: str | None = None                 # language of the sentences (null: fixed length or a mix)
    mean_tokens: float | None = None        # mean real tokens per sequence of the shape
    tokens_per_call: float | None = None
    tokens_per_sample: float | None = None
    min_ms: float | None = None
    std_ms: float | None = None
    round_p50_ms: list | None = None
    rounds: int | None = None
    cold_ms: float | None = None            # the first call, measured apart
    load_s: float | None = None
    build_s: float | None = None
    artefact_mb: float | None = None
    # "process_rss" (whole process: all variants of the run) | "cuda_allocator"
    peak_mem_kind: str | None = None
    mem_load_mb: float | None = None        # RSS growth while this variant loaded
    mem_run_mb: float | None = None         # RSS peak growth during its timed loops
    cuda_used_mb: float | None = None
    runner_info: dict | None = None
    env: dict | None = None                 # {gpu: driver, clocks, power limit (NVML) or null, harness_overhead_us, loadavg}
    # LoadGen scenarios: LoadGen's result_* values, its log directory, samples issued
    loadgen: dict | None = None
    loadgen_log_dir: str | None = None
    samples: int | None = None
    latency_source: str | None = None       # "loadgen_per_sample" | "timer_per_batch"
    # server: the latency bound, the highest QPS within it (null: the lowest QPS fails)
    latency_bound_ms: float | None = None
    server_max_qps: float | None = None
    server_qps_bounds: list | None = None
    server_search: list | None = None       # [{qps, p99_ms, ok, validity, log_dir}]
    validity: str | None = None             # LoadGen: "VALID" | "INVALID"
    invalid_reason: str | None = None       # LoadGen: the unmet conditions and LoadGen's advice
    peak_mem_scope: str | None = None       # "variant process" | "shared process" (several variants loaded)
    warmup_shapes: int | None = None        # distinct input shapes called once before timing
    input_ids: str | None = None            # "text" (the length source's token ids) | "random"
    batching: str | None = None             # length mixes: "random" (padded draw) | "length-sorted"
    quantized_ops: int | None = None        # ops running in low precision, counted from the artefact


@dataclass(frozen=True, kw_only=True)
class SensitivityRecord(CommonFields):
    """Per-layer quantisation sensitivity (xopt.calibration.sensitivity): `unit` (a Linear or an
    op kind), the Linears it covers, its `rank` (1 = most sensitive) and `drop` in `metric` on
    `n_examples` held-out texts; `calibration` names the calibration the ranking belongs to."""
    unit: str
    layers: list
    rank: int
    metric: str
    drop: float
    n_examples: int | None
    calibration: dict | None
    kept: bool | None = None
    unit_kind: str | None = None


SCHEMAS: dict[str, type] = {"eval": EvalRecord, "bench": BenchRecord, "sensitivity": SensitivityRecord}


def _fields(schema: type) -> tuple[dict[str, Any], tuple[str, ...]]:
    hints = typing.get_type_hints(schema)
    fs = dataclasses.fields(schema)
    required = tuple(f.name for f in fs if f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    return {f.name: hints[f.name] for f in fs}, required


_TYPES = {kind: _fields(s) for kind, s in SCHEMAS.items()}
REQUIRED = {kind: req for kind, (_, req) in _TYPES.items()}


def _is(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is Any:
        return True
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, origin or tp)


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def validate(rec: dict) -> None:
    """Raise a one-line RecordError (an XoptError and a ValueError) when `rec` does not match
    the schema of its kind: unknown kind, a required field missing, a field of the wrong type."""
    kind = rec.get("kind")
    if not isinstance(kind, str) or kind not in SCHEMAS:
        raise RecordError(f"record kind {kind!r} is not one of {sorted(SCHEMAS)}")
    types_, required = _TYPES[kind]
    missing = [k for k in required if k not in rec]
    if kind == "bench" and "seq_len" not in rec and "length_dist" not in rec:
        missing.append("seq_len|length_dist")
    if missing:
        raise RecordError(f"{kind} record lacks {', '.join(missing)}")
    for name, tp in types_.items():
        if name in rec and not _is(rec[name], tp):
            shown = repr(rec[name])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise RecordError(f"{kind} record: field {name!r} is {type(rec[name]).__name__} ({shown}), "
                              f"expected {_type_name(tp)}")
    schema = rec.get("schema")
    if schema is not None and schema > SCHEMA_VERSION:
        raise RecordError(f"{kind} record has schema {schema}, written by a newer xopt "
                          f"(this one reads up to schema {SCHEMA_VERSION}); upgrade xopt")


# ---------------------------------------------------------------- construction

def record(kind: str, **fields) -> dict:
    """A complete record from all its fields at once: common fields filled in, then validated.
    The record is final: measure and score everything before building it."""
    rec = {"kind": kind, "schema": SCHEMA_VERSION, "xopt_version": __version__, "created": now(),
           "host": host_info(), **fields}
    validate(rec)
    return rec


def eval_record(*, model: str, variant: str, suite: str, task: str, lang: str, split: str, metric: str,
                value: float, n_examples: int, **optional) -> dict:
    """An eval record (EvalRecord) from every field at once."""
    return record("eval", model=model, variant=variant, suite=suite, task=task, lang=lang, split=split,
                  metric=metric, value=value, n_examples=n_examples, **optional)


def bench_record(*, model: str, variant: str, batch: int, p50_ms: float, p90_ms: float, p99_ms: float,
                 mean_ms: float, throughput_seq_s: float, throughput_tok_s: float, peak_mem_mb: float | None,
                 warmup: int, iters: int, scenario: str, **optional) -> dict:
    """A bench record (BenchRecord) from every field at once; `optional` must hold seq_len or length_dist."""
    return record("bench", model=model, variant=variant, batch=batch, p50_ms=p50_ms, p90_ms=p90_ms,
                  p99_ms=p99_ms, mean_ms=mean_ms, throughput_seq_s=throughput_seq_s,
                  throughput_tok_s=throughput_tok_s, peak_mem_mb=peak_mem_mb, warmup=warmup, iters=iters,
                  scenario=scenario, **optional)


def sensitivity_record(*, model: str, variant: str, unit: str, layers: list, rank: int, metric: str, drop: float,
                       n_examples: int | None, calibration: dict | None, **optional) -> dict:
    """A sensitivity record (SensitivityRecord) from every field at once."""
    return record("sensitivity", model=model, variant=variant, unit=unit, layers=layers, rank=rank, metric=metric,
                  drop=drop, n_examples=n_examples, calibration=calibration, **optional)


# ---------------------------------------------------------------- join keys

def shape_key(rec: dict) -> str:
    """s128, len:demo:de, ...; prefixed by the scenario when it is a LoadGen one (offline/s128)."""
    ld = rec.get("length_dist")
    key = f"s{rec['seq_len']}" if rec.get("seq_len") else f"len:{ld['source'] if isinstance(ld, dict) else ld}"
    if rec.get("batching") == "length-sorted":
        key += "+sorted"
    scenario = rec.get("scenario")
    return key if scenario in (None, "fixed-batch") else f"{scenario}/{key}"


def retrieval_protocol(rec: dict) -> str | None:
    """The retrieval protocol of an eval record as a join key and label, e.g. "L6-mean" (mean
    over the hidden states of layer 6); None for a record that carries none (not a retrieval
    task, or written before schema 2)."""
    layer = rec.get("retrieval_layer")
    if layer is None:
        return None
    return f"L{layer}-{rec.get('pooling') or 'mean'}"


def is_xtreme_protocol(rec: dict) -> bool:
    """Whether a retrieval record was measured as XTREME measures BUCC and Tatoeba: mean-pooled
    hidden states of the encoder's middle layer (num_layers // 2)."""
    n = rec.get("num_layers")
    return (rec.get("retrieval_layer") is not None and n is not None and rec["retrieval_layer"] == n // 2
            and (rec.get("pooling") or "mean") == "mean")


# ---------------------------------------------------------------- files

def append(path: str | Path, records: Iterable[dict]) -> int:
    """Append records to a JSONL file in one write; returns how many. A file whose last line was
    cut off (a crash or a full disk mid-write) gets its new records on a fresh line: the cut line
    stays unreadable (readers skip it, and a warning says so) and is never extended into a
    record. A failed write (a full disk) is one XoptError; what it left is such a cut line."""
    lines = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
    if not lines:
        return 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = lines.encode()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            if _cut_tail(fd):
                print(f"warning: {path}: its last line is cut off (no newline: a crash or a full disk while "
                      "writing); it is skipped when read, and new records start on the next line", file=sys.stderr)
                data = b"\n" + data
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        what = disk_full(path) if is_disk_full(e) else f"{path}: {e.strerror or e}"
        raise XoptError(f"{what}; {lines.count(chr(10))} records not appended, the records before them are kept (a "
                        "partial last line is skipped when read)") from None
    return lines.count("\n")


def _cut_tail(fd: int) -> bool:
    """Whether the open file is non-empty and does not end with a newline."""
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


@dataclass
class Skipped:
    where: str   # file:line
    why: str


def read(paths: Iterable[str | Path], strict: bool = False) -> tuple[list[dict], list[Skipped]]:
    """All valid records of the files; invalid lines are returned as `Skipped` (file:line, why),
    or raised as one XoptError when `strict`."""
    recs, skipped = [], []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise XoptError(f"{path}: results file not found")
        with open(path, "rb") as f:
            for i, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw.decode("utf-8"))
                    if not isinstance(rec, dict):
                        raise ValueError("not a JSON object")
                    validate(rec)
                # JSONDecodeError, UnicodeDecodeError and RecordError are ValueErrors; RecursionError
                # is JSON nested deeper than the parser's stack
                except (ValueError, RecursionError) as e:
                    if strict:
                        raise XoptError(f"{path}:{i}: invalid record ({e})") from None
                    skipped.append(Skipped(f"{path}:{i}", str(e)))
                    continue
                recs.append(rec)
    return recs, skipped
