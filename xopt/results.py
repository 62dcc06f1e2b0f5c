"""Result records: JSON Lines, one record per measurement, append-only.

Every command that measures something (`eval`, `bench`) produces records of this one
format; `report` and `pick` read only these. Appends are a single `write` of whole lines on
a file opened with O_APPEND, followed by fsync, so a crash never leaves half a record and
never loses the records already written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from xopt import __version__
from xopt.errors import XoptError
from xopt.host import host_info
from xopt.manifest import now

# Bench records carry, beside the required fields (xopt.bench writes them):
#   seq_len (fixed length, every row full) or length_dist: the source of a real length mix
#     ("demo", "demo:de", "xtreme:xnli:de", a file path; null for fixed lengths), with
#     length_stats {split, p50_tokens, max_tokens, n};
#   lang: language of the sentences (null: fixed length or a mix of languages);
#   mean_tokens: mean real tokens per sequence of the shape; tokens_per_call / tokens_per_sample;
#   scenario: fixed-batch (interleaved rounds) | single-stream | offline | server (MLPerf LoadGen);
#   min_ms, std_ms, round_p50_ms, rounds, cold_ms (first call, apart), load_s, build_s;
#   peak_mem_kind: "process_rss" (whole process: all variants of the run) | "cuda_allocator";
#     mem_load_mb / mem_run_mb: RSS growth while this variant loaded / during its timed loops;
#   env: {gpu: driver, clocks, power limit (NVML) or null, harness_overhead_us};
#   LoadGen scenarios: loadgen (LoadGen's result_* values), loadgen_log_dir, samples,
#     latency_source ("loadgen_per_sample" | "timer_per_batch"), batch_p50_ms...;
#     server: latency_bound_ms, server_max_qps (null: the bound fails at the lowest QPS),
#     server_qps_bounds, server_search [{qps, p99_ms, ok, validity, log_dir}].
COMMON = ("kind", "model", "variant", "host", "xopt_version", "created")
REQUIRED = {
    "eval": COMMON + ("suite", "task", "lang", "split", "metric", "value", "n_examples"),
    "bench": COMMON + ("batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_seq_s",
                       "throughput_tok_s", "peak_mem_mb", "warmup", "iters", "scenario"),
    # per-layer quantisation sensitivity (xopt.calibration.sensitivity): `unit` (a Linear or an
    # op kind), the Linears it covers, its `rank` (1 = most sensitive) and `drop` in `metric`
    # on `n_examples` held-out texts; `calibration` says which calibration it was measured with
    "sensitivity": COMMON + ("unit", "layers", "rank", "metric", "drop", "n_examples", "calibration"),
}


def record(kind: str, **fields) -> dict:
    """A complete record: common fields filled in, required fields checked."""
    rec = {"kind": kind, "xopt_version": __version__, "created": now(), "host": host_info(), **fields}
    validate(rec)
    return rec


def validate(rec: dict) -> None:
    kind = rec.get("kind")
    if kind not in REQUIRED:
        raise ValueError(f"record kind {kind!r} is not one of {sorted(REQUIRED)}")
    missing = [k for k in REQUIRED[kind] if k not in rec]
    if kind == "bench" and "seq_len" not in rec and "length_dist" not in rec:
        missing.append("seq_len|length_dist")
    if missing:
        raise ValueError(f"{kind} record lacks {', '.join(missing)}")


def append(path: str | Path, records: Iterable[dict]) -> int:
    """Append records to a JSONL file in one write; returns how many."""
    lines = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
    if not lines:
        return 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, lines.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return lines.count("\n")


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
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise ValueError("not a JSON object")
                    validate(rec)
                except (json.JSONDecodeError, ValueError) as e:
                    if strict:
                        raise XoptError(f"{path}:{i}: invalid record ({e})") from None
                    skipped.append(Skipped(f"{path}:{i}", str(e)))
                    continue
                recs.append(rec)
    return recs, skipped
