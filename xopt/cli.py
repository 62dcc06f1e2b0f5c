"""`xopt` command line (typer). Thin: every command parses, calls one function, prints.

Heavy libraries are imported inside the commands so that `xopt --help` is instant. Errors a
user can cause (`XoptError`) end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from xopt.errors import XoptError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Does the cross-lingual gain of intermediate-task training survive compilation? "
                       "train -> compile -> eval -> bench -> report / pick.")

# Options shared by several commands, one kebab-case spelling per meaning: --batch-size, --model
# (an input path), --device (where a variant runs), --filter-model / --filter-device (which
# records a report reads), --min/opt/max-shapes. --model and --device are spelled as optimum-cli
# spells them; the shapes take trtexec's value syntax (trtexec's own flag is --minShapes).
Force = Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Sequences per call.")]
BatchSizes = Annotated[str, typer.Option("--batch-size", help="Comma-separated batch sizes (server: the largest "
                                                              "dynamic batch).")]
ModelPath = Annotated[Optional[Path], typer.Option("--model", help="Checkpoint directory to start from.")]
Device = Annotated[Optional[str], typer.Option(
    "--device", help="cpu or cuda: where the variant runs (set in its config where the variant can run on "
                     "either; otherwise checked against the variant's device).")]
FilterModel = Annotated[Optional[str], typer.Option(
    "--filter-model", help="Only records of this model (records' base_model); default: every model, compared.")]
FilterDevice = Annotated[Optional[str], typer.Option(
    "--filter-device", help="Only bench records of this device (cpu, cuda, or part of a GPU name).")]
Split = Annotated[Optional[str], typer.Option(
    "--split", help="Only eval records of this split (test, validation, ...); needed when a task has several.")]
Suite = Annotated[Optional[str], typer.Option(
    "--suite", help="Only eval records of this suite (xtreme, demo, ...); needed when a task has several.")]
FilterHost = Annotated[Optional[str], typer.Option(
    "--filter-host", help="Only bench records of this host: its digest or part of its name (GPU, CPU), as "
                          "the error or the report names it; needed when the records come from several.")]
_SHAPES_HELP = ("of the TensorRT optimisation profile, in trtexec's syntax: NAME:BATCHxSEQUENCE per input, "
                "comma-separated, e.g. input_ids:1x16,attention_mask:1x16 (one shape for every input)")
MinShapes = Annotated[Optional[str], typer.Option("--min-shapes", help="Smallest shapes " + _SHAPES_HELP + ".")]
OptShapes = Annotated[Optional[str], typer.Option("--opt-shapes", help="Shapes the engine is tuned for, "
                                                                        + _SHAPES_HELP.removeprefix("of the ") + ".")]
MaxShapes = Annotated[Optional[str], typer.Option("--max-shapes", help="Largest shapes " + _SHAPES_HELP + ".")]
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


def os_error_line(e: OSError) -> str:
    """One line for an OS error reaching the CLI (a full disk, a missing or unreadable file)."""
    from xopt.errors import disk_full, is_disk_full

    where = f" {e.filename}" if e.filename else ""
    if is_disk_full(e):      # a copy's OSError names the source first, the file written second
        return f"{disk_full(e.filename2 or e.filename) if e.filename else 'no space left on the device'}: free " \
            "space or write elsewhere"
    return f"{e.strerror or e}{':' + where if where else ''}"


def command(*args, **kwargs):
    """app.command() whose XoptError, or OSError from the OS or a library (a full disk, a file
    that vanished), becomes one line on stderr and exit code 2. XOPT_DEBUG=1 keeps the traceback
    of an OSError and of a library error an XoptError carries as its cause; other exceptions are
    bugs and keep theirs."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            try:
                return fn(*a, **kw)
            except XoptError as e:
                if e.__cause__ is not None and os.environ.get("XOPT_DEBUG") == "1":
                    raise      # a library's error put in one line: its traceback, for debugging
                typer.echo(f"xopt: error: {e}", err=True)
                raise typer.Exit(2) from None
            except OSError as e:
                if os.environ.get("XOPT_DEBUG") == "1":
                    raise
                typer.echo(f"xopt: error: {os_error_line(e)}", err=True)
                raise typer.Exit(2) from None
        return app.command(*args, **kwargs)(wrapper)
    return deco


def _print_version(value: bool) -> None:
    """`xopt --version`: the package version, then exit (eager: before any command is parsed)."""
    if value:
        from xopt import __version__

        typer.echo(f"xopt {__version__}")
        raise typer.Exit()


@app.callback()
def _main(verbose: Annotated[bool, typer.Option(
        "--verbose", help="Let libraries' import-time log lines and warnings through (torchao, torch).")] = False,
          version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                                help="Print xopt's version and exit.")] = False):
    from xopt.host import env_threads
    from xopt.quiet import set_verbose

    if verbose:
        set_verbose(True)
    try:
        env_threads()      # read once here so that a bad value fails before any work starts
    except XoptError as e:
        typer.echo(f"xopt: error: {e}", err=True)
        raise typer.Exit(2) from None


def _positive(value, flag: str, example: str) -> None:
    """Refuse a count option below 1, before any file is read or written."""
    if value is not None and value < 1:
        raise XoptError(f"{flag} {value}: must be positive, e.g. {flag} {example}")


def _bounded(value: float, flag: str, low: float, high: float, example: str) -> None:
    """Refuse a number that is not finite, not above `low` or above `high`, before any work."""
    import math

    if not math.isfinite(value) or value <= low or value > high:
        raise XoptError(f"{flag} {value:g}: expected a number above {low:g} and at most {high:g}, e.g. {flag} {example}")


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
             "calibrated": v.calibrated, "peer": v.peer, "description": v.description,
             "config": v.config.to_json()} for v in REGISTRY.values()]
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
    from xopt.importers import import_model

    import_model(name, out, force=force)
    typer.echo(f"wrote {out}")


@command("train")
def train_cmd(plan: Annotated[Optional[Path], typer.Argument(
                  help="Plan file (TOML): encoder, stages, hyper-parameters, outputs (see xopt/train.py).")] = None,
              model: ModelPath = None,
              out: Annotated[Optional[Path], typer.Option(
                  "--out", help="Checkpoint directory to write (with a plan: its run directory).")] = None,
              target: Annotated[str, typer.Option("--target", help="English target task.")] = "demo-topic",
              intermediate: Annotated[Optional[str], typer.Option(
                  "--intermediate", help="English intermediate task(s), comma-separated for a mixture "
                                         "(X-STILTs); omit for the baseline.")] = None,
              data: Annotated[Optional[Path], typer.Option(
                  "--data", help="Task data: a directory (<DIR>/<task>/ or DIR itself) or the demo suite JSON "
                                 "(default: the cached demo suite).")] = None,
              seed: Annotated[int, typer.Option("--seed")] = 0,
              head: Annotated[Optional[str], typer.Option(
                  "--head", help="hf: Hugging Face's own task heads, the checkpoint opens with AutoModelFor* "
                                 "(default); mean-linear: xopt's linear head on the mean-pooled embedding "
                                 "(sentence-transformers' layout). A plan says it with head = \"...\".")] = None,
              resume: Annotated[bool, typer.Option(
                  "--resume", help="Continue from the last complete training-state checkpoint.")] = False,
              force: Force = False):
    """Train a baseline (target task only) or X-STILTs (intermediate, then target) checkpoint.

    Data parallel: launch the same command with `torchrun --nproc-per-node N -m xopt.cli train ...`."""
    from xopt.dist import is_main
    from xopt.train import load_plan, run_plan, train

    if plan is not None:
        p = load_plan(plan)
        if out is not None:
            p.out = str(out)
        if head is not None:
            p.head = head
        for role, path in run_plan(p, resume=resume, force=force, plan_text=plan.read_text()).items():
            if is_main():      # under torchrun: once, not once per process
                typer.echo(f"wrote {path} ({role})")
        return
    if model is None or out is None:
        raise XoptError("give a plan file, or --model and --out (see `xopt train --help`)")
    inter = _csv(intermediate)
    if data is None:
        from xopt.tasks.registry import names

        if not {target, *(inter or [])} <= set(names(suite="demo")):
            raise XoptError(f"--data DIR is needed for {target} (the default data is the demo suite)")
        from xopt.tasks.demo import ensure_suite

        data = ensure_suite()
    path = train(model, target, data, out, intermediate=(inter[0] if inter and len(inter) == 1 else inter),
                 seed=seed, force=force, resume=resume, head=head or "hf")
    if is_main():
        typer.echo(f"wrote {path}")


@command("run")
def run_cmd(plan: Annotated[Path, typer.Argument(help="Plan file (TOML): training stages plus a \\[run] section.")],
            resume: Annotated[bool, typer.Option("--resume", help="Finish an interrupted run.")] = False,
            force: Force = False):
    """The whole flow from a plan: train -> compile -> eval -> bench -> report / pick."""
    from xopt.pipeline import run_plan_file

    run_plan_file(plan, resume=resume, force=force)


# Calibration options (int8 variants and `xopt calibrate`; see xopt.calibration.run).
CalibMethod = Annotated[Optional[str], typer.Option(
    "--calib-method", help="minmax | percentile (99.99; percentile:99.9 for another) | entropy | mse, "
                           "or smoothquant / METHOD+smoothquant (alpha chosen on a held-out sample).")]
CalibProfile = Annotated[Optional[Path], typer.Option(
    "--calib-profile", help="Use this profile (from `xopt calibrate`) instead of calibrating.")]
KeepFp16 = Annotated[Optional[int], typer.Option(
    "--keep-fp16", help="Keep the k most sensitive layers unquantised (higher precision).")]
MaxDrop = Annotated[Optional[float], typer.Option(
    "--max-drop", help="Keep the most sensitive layers unquantised until the fidelity drop on the held-out "
                       "sample is at most this (points of 100 x cosine to full precision).")]


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
                calib_method: CalibMethod = None,
                keep: Annotated[Optional[str], typer.Option(
                    "--keep", help="Regex of Linear module names left unquantised, in the variant's higher "
                                   "precision (e.g. 'encoder\\.layer\\.\\d+\\.output\\.dense$|^(classifier|qa_outputs|head)'; "
                                   "'' quantises all).")] = None,
                keep_fp32: Annotated[Optional[str], typer.Option(
                    "--keep-fp32", hidden=True, help="Deprecated spelling of --keep.")] = None,
                calib_profile: CalibProfile = None,
                keep_fp16: KeepFp16 = None,
                max_drop: MaxDrop = None,
                option: Annotated[Optional[list[str]], typer.Option(
                    "--option", "-o", help="KEY=VALUE of any option of the variant's config, e.g. -o mode=max-autotune "
                                           "(repeatable; `xopt variants --json` lists each variant's options).")] = None,
                device: Device = None,
                min_shapes: MinShapes = None,
                opt_shapes: OptShapes = None,
                max_shapes: MaxShapes = None,
                json_out: Json = False):
    """Build a variant directory (artefacts + manifest) from a checkpoint."""
    from xopt.variants import compile_variant, get

    for flag, value in (("--keep", keep), ("--keep-fp32", keep_fp32)):
        _check_regex(value, flag)      # before the deprecation line, so that a bad one is the only line
    if keep_fp32 is not None:
        typer.echo("xopt: warning: --keep-fp32 is deprecated; use --keep (the layers it keeps run in the "
                   "variant's higher precision, fp16 on GPUs)", err=True)
        if keep is not None:
            raise XoptError("give --keep or its deprecated spelling --keep-fp32, not both")
        keep = keep_fp32
    opts = {k: v for k, v in {"calib_data": str(calib_data) if calib_data else None, "calib_langs": calib_langs,
                              "calib_samples": calib_samples, "calib_method": calib_method,
                              "keep": keep, "calib_profile": str(calib_profile) if calib_profile else None,
                              "keep_fp16": keep_fp16, "max_drop": max_drop}.items() if v is not None}
    flag_of = {}    # config option -> the flag that set it, for the "given twice" message
    shapes = {"min": ("--min-shapes", min_shapes), "opt": ("--opt-shapes", opt_shapes),
              "max": ("--max-shapes", max_shapes)}
    if any(v is not None for _, v in shapes.values()):
        v = get(variant)
        takes = v.config.options()
        for key, (flag, value) in shapes.items():
            if value is None:
                continue
            if key not in takes:
                raise XoptError(f"{flag} sets a TensorRT optimisation profile; variant {variant} has none "
                                f"(variants with one: {', '.join(_profiled_variants())})")
            opts[key], flag_of[key] = v.parse_flag(key, value, flag), flag
    if device is not None:
        if device not in ("cpu", "cuda"):
            raise XoptError(f"--device {device}: use cpu or cuda")
        v = get(variant)
        if "device" in v.config.options():        # the variant runs on either: its config records the choice
            opts["device"], flag_of["device"] = device, "--device"
        elif v.device != device:
            raise XoptError(f"--device {device}: variant {variant} runs on {v.device} only; pick a variant that "
                            f"runs on {device} (see `xopt variants`)")
    for item in option or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise XoptError(f"--option {item!r}: give KEY=VALUE, e.g. --option mode=max-autotune")
        key = key.strip().replace("-", "_")
        if key in opts:
            raise XoptError(f"option {key} given twice (as {flag_of.get(key, '--' + key.replace('_', '-'))} "
                            f"and --option)")
        opts[key] = value
    man = compile_variant(checkpoint, variant, out, force=force, options=opts)
    if json_out:
        return _print_json(man)
    typer.echo(f"wrote {out} ({variant}, built in {man['build_s']:.1f} s)")


def _check_regex(value: str | None, flag: str) -> None:
    import re

    if value is None:
        return
    try:
        re.compile(value)
    except re.error as e:
        raise XoptError(f"{flag} {value!r} is not a regular expression ({e}); escape literal characters, "
                        r"e.g. --keep 'encoder\.layer\.\d+\.output\.dense$'") from None


def _profiled_variants() -> list[str]:
    """Variants whose config holds an optimisation profile (min/opt/max shapes)."""
    from xopt.variants import REGISTRY

    return [n for n, v in REGISTRY.items() if {"min", "opt", "max"} <= set(v.config.options())]


@command("calibrate")
def calibrate_cmd(checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
                  out: Annotated[Path, typer.Option("--out", help="Profile JSON to write.")],
                  variant: Annotated[str, typer.Option(
                      "--variant", help="Whose recipe decides which layers are quantised (for SmoothQuant "
                                        "and sensitivity).")] = "onnx-int8",
                  calib_data: Annotated[Optional[Path], typer.Option(
                      "--calib-data", help="Demo suite JSON, a text file or a directory of <lang>.txt.")] = None,
                  calib_langs: Annotated[Optional[str], typer.Option(
                      "--calib-langs", help="all, en, or a comma-separated list of language codes.")] = None,
                  calib_samples: Annotated[Optional[int], typer.Option(
                      "--calib-samples", help="Calibration texts, balanced over the languages (default 256).")] = None,
                  calib_method: CalibMethod = None,
                  keep_fp16: KeepFp16 = None,
                  max_drop: MaxDrop = None,
                  sensitivity_unit: Annotated[str, typer.Option(
                      "--sensitivity-unit", help="layer (each Linear) or kind (query, key, ... across layers).")
                  ] = "layer",
                  results_out: Annotated[Optional[Path], typer.Option(
                      "--results", help="Append the sensitivity ranking as records to this JSONL file.")] = None,
                  force: Force = False, json_out: Json = False):
    """Calibrate a checkpoint on its own: write the calibration profile every int8 variant consumes."""
    from xopt.calibration.run import calibrate_to_file
    from xopt.variants import get
    from xopt.variants.base import FallbackConfig

    policy = getattr(get(variant).config, "keep", None)     # the recipe's layers; none kept without one
    opts = {k: val for k, val in {"calib_data": str(calib_data) if calib_data else None,
                                  "calib_langs": calib_langs, "calib_samples": calib_samples,
                                  "calib_method": calib_method, "keep_fp16": keep_fp16, "max_drop": max_drop,
                                  "sensitivity_unit": sensitivity_unit}.items() if val is not None}
    config = FallbackConfig.from_options(opts)       # the calibration options over their own defaults
    prof = calibrate_to_file(checkpoint, out, config, force=force, results_out=results_out, variant=variant,
                             quantized=policy.quantizes if policy is not None else None)
    if json_out:
        return _print_json({k: v for k, v in prof.to_json().items() if k not in ("activations", "weights")})
    typer.echo(f"wrote {out} ({prof.full_method}, {len(prof.activations)} layers, "
               f"{prof.calibration.get('samples')} samples in {', '.join(prof.calibration.get('languages', []))}"
               + (f"; kept unquantised: {', '.join(prof.keep)}" if prof.keep else "") + ")")


@command("eval")
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
    _positive(batch_size, "--batch-size", "64")
    _positive(max_examples, "--max-examples", "200")
    from xopt.evaluate import evaluate, parse_retrieval_layer

    layer = parse_retrieval_layer(retrieval_layer)

    recs = evaluate(variant_dir, suite, data, _csv(tasks), _csv(langs), split, batch_size, max_examples,
                    xtreme={"bucc_threshold_from": bucc_threshold_from} if suite == "xtreme" else None,
                    out=out, resume=resume, retrieval_layer=layer)
    if json_out:
        return _print_json([{k: v for k, v in r.items() if k not in ("outcomes", "em_outcomes", "counts",
                                                                  "count_units", "host")} for r in recs])
    from xopt.report import print_eval

    print_eval(recs)


@command("bench")
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
    from xopt.bench import BenchConfig, bench, ratio_table
    from xopt.measure import Timing
    from xopt.progress import bar
    from xopt.report import print_bench
    from xopt.scenarios.registry import scenario as scenario_config

    _positive(rounds, "--rounds", "3")
    _positive(server_runs, "--server-runs", "8")
    if warmup != "auto" and not warmup.isdigit():
        raise XoptError(f"--warmup {warmup}: expected auto or a number of calls")
    qps = _csv(server_qps.replace(":", ","), float) if server_qps else None
    if qps is not None and len(qps) != 2:
        raise XoptError(f"--server-qps {server_qps}: expected LOW:HIGH, e.g. 5:200")
    _bounded(latency_bound_ms, "--latency-bound-ms", 0.0, 3.6e6, "100")      # up to an hour per query
    if qps is not None:
        for q in qps:
            _bounded(q, "--server-qps", 0.0, 1e5, "5:200")
        if qps[0] >= qps[1]:
            raise XoptError(f"--server-qps {server_qps}: LOW must be below HIGH, e.g. 5:200")
    sc = scenario_config(scenario, rounds=rounds, latency_bound_ms=latency_bound_ms,
                         qps=tuple(qps) if qps else None, max_runs=server_runs)
    per = sc.splits         # fixed-batch splits --duration and --iters over its rounds
    min_time = (duration / per) if duration is not None else (0.0 if iters is not None else 1.0)
    min_iters = max(1, -(-iters // per)) if iters is not None else (3 if duration is not None else 10)
    config = BenchConfig(batches=tuple(_csv(batch_size, int) or [1]), seq_lens=tuple(_csv(seq_len, int) or []),
                         lengths=lengths, scenario=sc, compare=compare, data_dir=data, sort_by_length=sort_by_length,
                         timing=Timing(min_iters=min_iters, min_time_s=min_time, max_time_s=max(10.0, 4 * min_time),
                                       warmup=None if warmup == "auto" else int(warmup)))
    with bar() as progress:
        recs = bench(variant_dirs, config, out=out, progress=progress)
    if json_out:
        rows = [{k: v for k, v in r.items() if k != "host"} for r in recs]
        if compare:
            for row, ratio in zip(rows, ratio_table(recs, compare)):
                row["vs_" + compare] = {"p50_speedup": ratio["p50_speedup"],
                                        "throughput_ratio": ratio["throughput_ratio"]}
        return _print_json(rows)
    print_bench(recs, compare)
    if out and recs and recs[0].get("loadgen_log_dir"):     # a LoadGen scenario's sweep
        typer.echo(f"LoadGen logs: {Path(recs[0]['loadgen_log_dir']).parent}")


@command("report")
def report_cmd(results_files: Annotated[list[Path], typer.Argument(help="Result JSONL files.")],
               out: Annotated[Path, typer.Option("--out", help="Report directory.")],
               reference: Annotated[str, typer.Option("--reference")] = "fp32",
               baseline: Annotated[str, typer.Option("--baseline", help="Model name of the baseline.")] = "baseline",
               xstilts: Annotated[str, typer.Option("--xstilts", help="Model name of X-STILTs.")] = "xstilts",
               filter_model: FilterModel = None,
               filter_device: FilterDevice = None,
               split: Split = None,
               suite: Suite = None,
               filter_host: FilterHost = None,
               force: Force = False):
    """Gain-retention tables and plots: report.md, a single-file report.html, the PNGs and summary.csv
    (one row per variant x task x language and per variant x bench shape)."""
    from xopt.analysis import Comparison
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


@command("pick")
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
             reference: Annotated[str, typer.Option("--reference")] = "fp32",
             baseline: Annotated[str, typer.Option("--baseline")] = "baseline",
             xstilts: Annotated[str, typer.Option("--xstilts")] = "xstilts",
             json_out: Json = False):
    """Choose the fastest variant that meets the constraints, and say why (exit 1 when none does)."""
    from xopt.analysis import Comparison
    from xopt.pick import Budget, json_safe, pick, render

    budget = Budget(max_p50_ms=max_p50_ms, max_p99_ms=max_p99_ms, min_throughput=min_throughput,
                    min_retention=min_retention, min_lang_retention=min_lang_retention, max_mem_mb=max_mem_mb,
                    max_drop=max_drop, batch=batch_size, seq_len=seq_len, lengths=lengths, scenario=scenario)
    choice = pick(results_files, budget, Comparison(reference, baseline, xstilts), device=filter_device,
                  model=filter_model, split=split, suite=suite, host=filter_host)
    if json_out:
        _print_json(json_safe(choice))
    else:
        typer.echo(render(choice))
    if not choice["chosen"]:
        raise typer.Exit(1)


@command("export")
def export_cmd(variant_dir: Annotated[Path, typer.Argument(help="Variant directory (onnx-*, trt-*); with --format "
                                                                  "hf, a checkpoint directory.")],
               out: Annotated[Path, typer.Option("--out", help="Model repository directory (created if "
                                                              "missing; other models in it stay).")],
               fmt: Annotated[str, typer.Option("--format", help="triton: a Triton Inference Server model "
                                                                 "repository entry; hf: the checkpoint in the layout "
                                                                 "transformers / sentence-transformers load.")] = "triton",
               name: Annotated[Optional[str], typer.Option(
                   "--name", help="Model name in the repository (default: MODEL-VARIANT).")] = None,
               results_files: Annotated[Optional[list[Path]], typer.Option(
                   "--results", help="Bench records (JSONL) of the variant: max_batch_size and dynamic batching "
                                     "come from them.")] = None,
               force: Force = False, json_out: Json = False):
    """Export a compiled variant for serving (a Triton model repository entry: config.pbtxt, 1/, tokenizer), or a
    checkpoint in the Hugging Face layout of its head (--format hf)."""
    from xopt.export import export

    done = export(variant_dir, fmt, out, name=name, results=results_files, force=force)
    if json_out:
        return _print_json({k: v for k, v in done.items() if k != "config_text"})
    if fmt == "hf":
        return typer.echo(f"wrote {done['path']} ({done['layout']}); it opens with transformers' from_pretrained "
                          f"and as an xopt checkpoint (xopt compile {done['path']} ...)")
    typer.echo(f"wrote {done['path']} (batching from {done['batching_from']}); serve it with "
               f"`tritonserver --model-repository {out}`"
               + (f"; send raw text to {done['ensemble']} (its README.md)" if done.get("ensemble") else ""))


@command("demo")
def demo_cmd(out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("xopt-demo"),
             quick: Annotated[bool, typer.Option("--quick", help="Few languages and examples (the CI run).")] = False,
             force: Force = False,
             full_bench: Annotated[bool, typer.Option(
                 "--full-bench", help="Also benchmark batch 1 on the length mix and batch 8 at 128 tokens (the "
                                      "demo's table shows batch 1 at 128 tokens; its report batch 8 on the mix).")
             ] = False,
             head: Annotated[Optional[str], typer.Option(
                 "--head", help="The heads both checkpoints train: hf or mean-linear (as `xopt train --head`; "
                                "default: the one the README's measured gain is for).")] = None):
    """The whole flow offline on the packaged multilingual model and the gettext demo suite."""
    from xopt.pipeline import run_demo

    run_demo(out, quick=quick, force=force, full_bench=full_bench, head=head)


def main() -> None:
    import signal

    # SIGTERM (a CI timeout, `kill`, a scheduler) unwinds like Ctrl-C: half-built variant
    # dirs and temp exports are removed and finished results stay, instead of leaking GBs.
    # The exit status is 128 + SIGTERM even when the unwinding exception is not the SystemExit
    # raised here (a C extension being imported at that moment turns it into an ImportError).
    terminated = []

    def on_term(signum, frame):
        terminated.append(signum)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        app()
    except BaseException:
        if terminated:
            sys.exit(128 + terminated[0])
        raise


if __name__ == "__main__":
    sys.exit(main())
