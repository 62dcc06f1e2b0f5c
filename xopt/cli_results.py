"""`xopt report` and `xopt pick`: what the result records say, as a report and as one choice."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from xopt.cli_options import (BatchSize, Baseline, FilterDevice, FilterHost, FilterModel, Force, Json, Reference,
                              Split, Suite, XStilts, print_json)
from xopt.comparison import DEFAULT, Comparison


def report_cmd(results_files: Annotated[list[Path], typer.Argument(help="Result JSONL files.")],
               out: Annotated[Path, typer.Option("--out", help="Report directory.")],
               reference: Reference = DEFAULT.reference,
               baseline: Baseline = DEFAULT.baseline,
               xstilts: XStilts = DEFAULT.xstilts,
               filter_model: FilterModel = None,
               filter_device: FilterDevice = None,
               split: Split = None,
               suite: Suite = None,
               filter_host: FilterHost = None,
               force: Force = False):
    """Gain-retention tables and plots: report.md, a single-file report.html, the PNGs and summary.csv
    (one row per variant x task x language and per variant x bench shape)."""
    from xopt.report import load, write

    comparison = Comparison(reference, baseline, xstilts)
    t = load(results_files, comparison, filter_model, filter_device,
             **{k: v for k, v in dict(split=split, suite=suite, host=filter_host).items() if v is not None})
    path = write(t, out, comparison, force=force)
    for note in t.notes:
        typer.echo(f"note: {note}", err=True)
    if t.skipped:
        typer.echo(f"skipped {len(t.skipped)} record(s), listed in the report; first: {t.skipped[0].where}: "
                   f"{t.skipped[0].why}", err=True)
    typer.echo(f"wrote {path}, {path.with_suffix('.html')} and {path.parent / 'summary.csv'}")


def pick_cmd(results_files: Annotated[list[Path], typer.Argument(help="Result JSONL files.")],
             max_p50_ms: Annotated[Optional[float], typer.Option("--max-p50-ms")] = None,
             max_p99_ms: Annotated[Optional[float], typer.Option("--max-p99-ms")] = None,
             batch_size: BatchSize = 1,
             seq_len: Annotated[Optional[int], typer.Option("--seq-len", help="Fixed length (default 128).")] = None,
             lengths: Annotated[Optional[str], typer.Option(
                 "--lengths", help="Length mix the bench used instead (e.g. demo, demo:ja).")] = None,
             min_throughput: Annotated[Optional[float], typer.Option(
                 "--min-throughput", help="Sequences/s at --batch-size.")] = None,
             min_retention: Annotated[Optional[float], typer.Option(
                 "--min-retention", help="Per task, average over zero-shot languages.")] = None,
             min_lang_retention: Annotated[Optional[float], typer.Option(
                 "--min-lang-retention", help="Per task and language with a clear fp32 gain.")] = None,
             scenario: Annotated[Optional[str], typer.Option(
                 "--scenario", help="Bench scenario of the records to use (default fixed-batch).")] = None,
             max_mem_mb: Annotated[Optional[float], typer.Option(
                 "--max-mem-mb", help="Peak memory of the variant (records of one variant per bench run).")] = None,
             max_drop: Annotated[Optional[float], typer.Option(
                 "--max-drop", help="Largest X-STILTs score drop vs the reference, points.")] = None,
             filter_device: FilterDevice = None,
             filter_model: FilterModel = None,
             split: Split = None,
             suite: Suite = None,
             filter_host: FilterHost = None,
             reference: Reference = DEFAULT.reference,
             baseline: Baseline = DEFAULT.baseline,
             xstilts: XStilts = DEFAULT.xstilts,
             json_out: Json = False):
    """Choose the fastest variant that meets the constraints, and say why (exit 1 when none does)."""
    from xopt.pick import Budget, json_safe, pick, render

    budget = Budget(max_p50_ms=max_p50_ms, max_p99_ms=max_p99_ms, min_throughput=min_throughput,
                    min_retention=min_retention, min_lang_retention=min_lang_retention, max_mem_mb=max_mem_mb,
                    max_drop=max_drop, batch=batch_size, seq_len=seq_len, lengths=lengths, scenario=scenario)
    choice = pick(results_files, budget, Comparison(reference, baseline, xstilts), device=filter_device,
                  model=filter_model, split=split, suite=suite, host=filter_host)
    if json_out:
        print_json(json_safe(choice))
    else:
        typer.echo(render(choice))
    if not choice["chosen"]:
        raise typer.Exit(1)
