"""`xopt` command line (typer). Thin: every command parses, calls one function, prints.

Heavy libraries are imported inside the commands so that `xopt --help` is instant. Errors a
user can cause (`XoptError`) end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from xopt.errors import XoptError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Does the cross-lingual gain of intermediate-task training survive compilation? "
                       "train -> compile -> eval -> bench -> report / pick.")

# Options shared by several commands.
Force = Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
OutResults = Annotated[Optional[Path], typer.Option("--out", help="Append records to this JSONL file.")]
Data = Annotated[Optional[Path], typer.Option("--data", help="Demo suite JSON (default: built from the "
                                                               "machine's gettext catalogs and cached).")]


def _csv(value: str | None, cast=str) -> list | None:
    if value is None or value == "":
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise XoptError(f"cannot parse {value!r} as a comma-separated list of {cast.__name__}") from None


def command(*args, **kwargs):
    """app.command() whose XoptError becomes one line on stderr and exit code 2."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            try:
                return fn(*a, **kw)
            except XoptError as e:
                typer.echo(f"xopt: error: {e}", err=True)
                raise typer.Exit(2) from None
        return app.command(*args, **kwargs)(wrapper)
    return deco


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


@command("variants")
def variants_cmd(json_out: Json = False):
    """List every variant with whether this host can build and run it (and why not)."""
    from rich.markup import escape
    from rich.table import Table

    from xopt.progress import out_console
    from xopt.variants import REGISTRY

    rows = [{"name": v.name, "backend": v.backend, "precision": v.precision, "device": v.device,
             "available": v.unavailable_reason() is None, "reason": v.unavailable_reason(),
             "description": v.description} for v in REGISTRY.values()]
    if json_out:
        return _print_json(rows)
    t = Table("variant", "backend", "precision", "device", "available", "description")
    for r in rows:
        t.add_row(r["name"], r["backend"], r["precision"], r["device"],   # escape: "[gpu]" is not rich markup
                  "yes" if r["available"] else escape(f"no: {r['reason']}"), r["description"])
    out_console().print(t)


@command("import")
def import_cmd(name: Annotated[str, typer.Argument(help="Packaged model to import: e5-small.")],
               out: Annotated[Path, typer.Option("--out", help="Checkpoint directory to write.")],
               force: Force = False):
    """Turn a packaged model into a standard Hugging Face checkpoint directory."""
    from xopt.models import import_model

    import_model(name, out, force=force)
    typer.echo(f"wrote {out}")


@command("train")
def train_cmd(model: Annotated[Path, typer.Option("--model", help="Checkpoint directory to start from.")],
              out: Annotated[Path, typer.Option("--out", help="Checkpoint directory to write.")],
              target: Annotated[str, typer.Option("--target", help="English target task.")] = "demo-topic",
              intermediate: Annotated[Optional[str], typer.Option(
                  "--intermediate", help="English intermediate task (X-STILTs); omit for the baseline.")] = None,
              data: Data = None,
              seed: Annotated[int, typer.Option("--seed")] = 0,
              force: Force = False):
    """Train a baseline (target task only) or X-STILTs (intermediate, then target) checkpoint."""
    from xopt.tasks.demo import ensure_suite
    from xopt.train import train

    path = train(model, target, data or ensure_suite(), out, intermediate=intermediate, seed=seed, force=force)
    typer.echo(f"wrote {path}")


@command("compile")
def compile_cmd(checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
                variant: Annotated[str, typer.Option("--variant", help="Variant name (see `xopt variants`).")],
                out: Annotated[Path, typer.Option("--out", help="Variant directory to write.")],
                force: Force = False,
                calib_data: Annotated[Optional[Path], typer.Option(
                    "--calib-data", help="Calibration texts: demo suite JSON or a text file, one text per line.")] = None,
                calib_langs: Annotated[Optional[str], typer.Option(
                    "--calib-langs", help="all, en, or a comma-separated list of language codes.")] = None,
                calib_samples: Annotated[Optional[int], typer.Option("--calib-samples")] = None,
                calib_method: Annotated[Optional[str], typer.Option(
                    "--calib-method", help="minmax (percentile/entropy/MSE: see the calibration issue).")] = None,
                keep_fp32: Annotated[Optional[str], typer.Option(
                    "--keep-fp32", help="Regex of layers/nodes left unquantised ('' quantises all).")] = None,
                json_out: Json = False):
    """Build a variant directory (artefacts + manifest) from a checkpoint."""
    from xopt.variants import compile_variant

    opts = {k: v for k, v in {"calib_data": str(calib_data) if calib_data else None, "calib_langs": calib_langs,
                              "calib_samples": calib_samples, "calib_method": calib_method,
                              "keep_fp32": keep_fp32}.items() if v is not None}
    man = compile_variant(checkpoint, variant, out, force=force, options=opts)
    if json_out:
        return _print_json(man)
    typer.echo(f"wrote {out} ({variant}, built in {man['build_s']:.1f} s)")


@command("eval")
def eval_cmd(variant_dir: Annotated[Path, typer.Argument(help="Variant directory.")],
             suite: Annotated[str, typer.Option("--suite", help="demo (XTREME: see its issue).")] = "demo",
             data: Data = None,
             tasks: Annotated[Optional[str], typer.Option("--tasks", help="Comma-separated task names.")] = None,
             langs: Annotated[Optional[str], typer.Option("--langs", help="Comma-separated language codes.")] = None,
             split: Annotated[str, typer.Option("--split", help="test, or shared (same messages in every "
                                                                "language of the shared group).")] = "test",
             max_examples: Annotated[Optional[int], typer.Option("--max-examples")] = None,
             batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
             out: OutResults = None, json_out: Json = False):
    """Score a variant on a suite, per task and language (records to --out)."""
    from xopt import results
    from xopt.evaluate import evaluate

    recs = evaluate(variant_dir, suite, data, _csv(tasks), _csv(langs), split, batch_size, max_examples)
    if out:
        results.append(out, recs)
    if json_out:
        return _print_json([{k: v for k, v in r.items() if k not in ("outcomes", "host")} for r in recs])
    from xopt.report import print_eval

    print_eval(recs)


@command("bench")
def bench_cmd(variant_dirs: Annotated[list[Path], typer.Argument(help="Variant directories.")],
              batch: Annotated[str, typer.Option("--batch", help="Comma-separated batch sizes.")] = "1,8",
              seq_len: Annotated[str, typer.Option("--seq-len", help="Comma-separated fixed lengths.")] = "128",
              lengths: Annotated[Optional[str], typer.Option(
                  "--lengths", help="Real length mix: demo, demo:LANG, or a file of token counts.")] = None,
              rounds: Annotated[int, typer.Option("--rounds", help="Interleaved rounds per shape.")] = 3,
              min_time: Annotated[float, typer.Option("--min-time", help="Seconds per variant per round.")] = 1.0,
              min_iters: Annotated[int, typer.Option("--min-iters")] = 10,
              compare: Annotated[Optional[str], typer.Option(
                  "--compare", help="Reference variant name for the ratio table.")] = None,
              out: OutResults = None, json_out: Json = False):
    """Latency / throughput / memory of variants, interleaved in the same run."""
    from xopt.bench import bench
    from xopt.progress import bar
    from xopt.report import print_bench

    with bar() as progress:
        recs = bench(variant_dirs, _csv(batch, int), _csv(seq_len, int) or [], lengths, rounds, min_iters,
                     min_time, max(10.0, 4 * min_time), out, progress)
    if json_out:
        return _print_json([{k: v for k, v in r.items() if k != "host"} for r in recs])
    print_bench(recs, compare)


@command("report")
def report_cmd(results_files: Annotated[list[Path], typer.Argument(help="Result JSONL files.")],
               out: Annotated[Path, typer.Option("--out", help="Report directory.")],
               reference: Annotated[str, typer.Option("--reference")] = "fp32",
               baseline: Annotated[str, typer.Option("--baseline", help="Model name of the baseline.")] = "baseline",
               xstilts: Annotated[str, typer.Option("--xstilts", help="Model name of X-STILTs.")] = "xstilts",
               force: Force = False):
    """Gain-retention tables and plots (report.md + PNGs) from result records."""
    from xopt.report import write_report

    path = write_report(results_files, out, reference, baseline, xstilts, force=force)
    typer.echo(f"wrote {path}")


@command("pick")
def pick_cmd(results_files: Annotated[list[Path], typer.Argument(help="Result JSONL files.")],
             max_p50_ms: Annotated[Optional[float], typer.Option("--max-p50-ms")] = None,
             max_p99_ms: Annotated[Optional[float], typer.Option("--max-p99-ms")] = None,
             batch: Annotated[int, typer.Option("--batch")] = 1,
             seq_len: Annotated[Optional[int], typer.Option("--seq-len")] = 128,
             min_retention: Annotated[Optional[float], typer.Option("--min-retention")] = None,
             reference: Annotated[str, typer.Option("--reference")] = "fp32",
             baseline: Annotated[str, typer.Option("--baseline")] = "baseline",
             xstilts: Annotated[str, typer.Option("--xstilts")] = "xstilts",
             json_out: Json = False):
    """Choose the fastest variant that meets the constraints, and say why."""
    from xopt.pick import pick, render

    choice = pick(results_files, max_p50_ms=max_p50_ms, max_p99_ms=max_p99_ms, batch=batch, seq_len=seq_len,
                  min_retention=min_retention, reference=reference, baseline=baseline, xstilts=xstilts)
    if json_out:
        _print_json(choice)
    else:
        typer.echo(render(choice))
    if not choice["chosen"]:
        raise typer.Exit(1)


@command("demo")
def demo_cmd(out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("xopt-demo"),
             quick: Annotated[bool, typer.Option("--quick", help="Few languages and examples (CI, ~2 min).")] = False,
             force: Force = False):
    """The whole flow offline on the packaged multilingual model and the gettext demo suite."""
    from xopt.pipeline import run_demo

    run_demo(out, quick=quick, force=force)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
