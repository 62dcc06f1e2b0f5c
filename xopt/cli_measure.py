"""`xopt eval` and `xopt bench`: the scores and the costs of variants, as result records."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from xopt.cli_options import (BatchSize, BatchSizes, Json, OutResults, check_bounded, check_positive, csv_list,
                              print_json)
from xopt.errors import XoptError


def eval_cmd(variant_dir: Annotated[Path, typer.Argument(help="Variant directory.")],
             suite: Annotated[str, typer.Option("--suite", help="demo or xtreme.")] = "demo",
             data: Annotated[Optional[Path], typer.Option(
                 "--data", help="demo: suite JSON (default: built from the gettext catalogs). xtreme: a directory "
                                "in XTREME's download layout and/or with google/xtreme HF dataset dirs.")] = None,
             tasks: Annotated[Optional[str], typer.Option("--tasks", help="Comma-separated task names.")] = None,
             langs: Annotated[Optional[str], typer.Option("--langs", help="Comma-separated language codes.")] = None,
             split: Annotated[str, typer.Option("--split", help="test, or shared (same messages in every "
                                                                "language of the shared group).")] = "test",
             max_examples: Annotated[Optional[int], typer.Option("--max-examples")] = None,
             batch_size: BatchSize = 64,
             bucc_threshold_from: Annotated[Optional[list[Path]], typer.Option(
                 "--bucc-threshold-from", help="xtreme: results of the fp32 variant of the same model, whose "
                                               "bucc2018 records hold the dev-chosen thresholds.")] = None,
             out: OutResults = None,
             resume: Annotated[bool, typer.Option(
                 "--resume", help="Finish an interrupted run: skip the task x language units --out already "
                                  "holds for this variant and model.")] = False,
             retrieval_layer: Annotated[str, typer.Option(
                 "--retrieval-layer", help="Retrieval tasks (bucc2018, tatoeba, demo-retrieval): the mean-pooled "
                                           "hidden states they score: middle (XTREME's protocol), last (the model's "
                                           "own pooling, e.g. e5's) or a layer number N (0 = word embeddings). "
                                           "Records carry the layer and pooling.")] = "middle",
             json_out: Json = False):
    """Score a variant on a suite, per task and language (records to --out, appended as each task x
    language finishes; under torchrun each process writes OUT's stem + .rankR-of-W)."""
    check_positive(batch_size, "--batch-size", "64")
    check_positive(max_examples, "--max-examples", "200")
    from xopt.evaluate import evaluate, parse_retrieval_layer

    layer = parse_retrieval_layer(retrieval_layer)

    recs = evaluate(variant_dir, suite, data, csv_list(tasks), csv_list(langs), split, batch_size, max_examples,
                    threshold_from=bucc_threshold_from,
                    out=out, resume=resume, retrieval_layer=layer)
    if json_out:
        return print_json([{k: v for k, v in r.items() if k not in ("outcomes", "em_outcomes", "counts",
                                                                  "count_units", "host")} for r in recs])
    from xopt.report import print_eval

    print_eval(recs)


def bench_cmd(variant_dirs: Annotated[list[Path], typer.Argument(help="Variant directories.")],
              batch_size: BatchSizes = "1,8",
              seq_len: Annotated[str, typer.Option("--seq-len", help="Comma-separated fixed lengths ('' for "
                                                                     "none).")] = "128",
              lengths: Annotated[Optional[str], typer.Option(
                  "--lengths", help="Real length mixes: demo, demo:LANG[,LANG..], demo:each, "
                                    "xtreme:TASK:LANG, or a file of token counts.")] = None,
              scenario: Annotated[str, typer.Option(
                  "--scenario", help="fixed-batch (interleaved rounds), or an MLPerf LoadGen scenario: "
                                     "single-stream, offline, server.")] = "fixed-batch",
              duration: Annotated[Optional[float], typer.Option(
                  "--duration", help="Seconds per variant and shape (fixed-batch: split over the rounds; "
                                     "LoadGen: min duration of each run).")] = None,
              iters: Annotated[Optional[int], typer.Option(
                  "--iters", help="Timed calls per variant and shape (fixed-batch: split over the rounds; "
                                  "LoadGen: min query count).")] = None,
              warmup: Annotated[str, typer.Option(
                  "--warmup", help="auto (until the moving median is stable, bounded) or a number of calls.")] = "auto",
              rounds: Annotated[int, typer.Option("--rounds", help="Interleaved rounds per shape (fixed-batch).")] = 3,
              latency_bound_ms: Annotated[float, typer.Option(
                  "--latency-bound-ms", help="Server: p99 latency bound of the max-QPS search.")] = 100.0,
              server_qps: Annotated[Optional[str], typer.Option(
                  "--server-qps", help="Server: LOW:HIGH bounds of the QPS search (default: from the warm-up).")] = None,
              server_runs: Annotated[int, typer.Option("--server-runs", help="Server: most LoadGen runs per "
                                                                             "search.")] = 8,
              compare: Annotated[Optional[str], typer.Option(
                  "--compare", help="Reference variant (measured in the same run) for a table of ratios.")] = None,
              data: Annotated[Optional[Path], typer.Option(
                  "--data", help="--lengths xtreme:..: the XTREME data directory (as for `xopt eval`).")] = None,
              sort_by_length: Annotated[bool, typer.Option(
                  "--sort-by-length", help="Also measure each --lengths mix at batch > 1 in length-sorted batches "
                                           "(neighbours in length), beside the random padded draw.")] = False,
              out: OutResults = None, json_out: Json = False):
    """Latency / throughput / memory of variants, interleaved in the same run or under MLPerf LoadGen."""
    from xopt.bench import bench, ratio_table
    from xopt.progress import bar
    from xopt.report import print_bench

    config = _bench_config(batch_size=batch_size, seq_len=seq_len, lengths=lengths, scenario=scenario,
                           duration=duration, iters=iters, warmup=warmup, rounds=rounds,
                           latency_bound_ms=latency_bound_ms, server_qps=server_qps, server_runs=server_runs,
                           compare=compare, data=data, sort_by_length=sort_by_length)
    with bar() as progress:
        recs = bench(variant_dirs, config, out=out, progress=progress)
    if json_out:
        rows = [{k: v for k, v in r.items() if k != "host"} for r in recs]
        if compare:
            for row, ratio in zip(rows, ratio_table(recs, compare)):
                row["vs_" + compare] = {"p50_speedup": ratio["p50_speedup"],
                                        "throughput_ratio": ratio["throughput_ratio"]}
        return print_json(rows)
    print_bench(recs, compare)
    if out and recs and recs[0].get("loadgen_log_dir"):     # a LoadGen scenario's sweep
        typer.echo(f"LoadGen logs: {Path(recs[0]['loadgen_log_dir']).parent}")


def _bench_config(*, batch_size: str, seq_len: str, lengths: str | None, scenario: str, duration: float | None,
                  iters: int | None, warmup: str, rounds: int, latency_bound_ms: float, server_qps: str | None,
                  server_runs: int, compare: str | None, data: Path | None, sort_by_length: bool):
    """`xopt bench`'s options as a BenchConfig, each checked before any variant is loaded."""
    from xopt.bench import BenchConfig
    from xopt.measure import Timing
    from xopt.scenarios.registry import scenario as scenario_config

    check_positive(rounds, "--rounds", "3")
    check_positive(server_runs, "--server-runs", "8")
    if warmup != "auto" and not warmup.isdigit():
        raise XoptError(f"--warmup {warmup}: expected auto or a number of calls")
    qps = csv_list(server_qps.replace(":", ","), float) if server_qps else None
    if qps is not None and len(qps) != 2:
        raise XoptError(f"--server-qps {server_qps}: expected LOW:HIGH, e.g. 5:200")
    check_bounded(latency_bound_ms, "--latency-bound-ms", 0.0, 3.6e6, "100")      # up to an hour per query
    if qps is not None:
        for q in qps:
            check_bounded(q, "--server-qps", 0.0, 1e5, "5:200")
        if qps[0] >= qps[1]:
            raise XoptError(f"--server-qps {server_qps}: LOW must be below HIGH, e.g. 5:200")
    sc = scenario_config(scenario, rounds=rounds, latency_bound_ms=latency_bound_ms,
                         qps=tuple(qps) if qps else None, max_runs=server_runs)
    per = sc.splits         # fixed-batch splits --duration and --iters over its rounds
    min_time = (duration / per) if duration is not None else (0.0 if iters is not None else 1.0)
    min_iters = max(1, -(-iters // per)) if iters is not None else (3 if duration is not None else 10)
    return BenchConfig(batches=tuple(csv_list(batch_size, int) or [1]), seq_lens=tuple(csv_list(seq_len, int) or []),
                       lengths=lengths, scenario=sc, compare=compare, data_dir=data, sort_by_length=sort_by_length,
                       timing=Timing(min_iters=min_iters, min_time_s=min_time, max_time_s=max(10.0, 4 * min_time),
                                     warmup=None if warmup == "auto" else int(warmup)))
