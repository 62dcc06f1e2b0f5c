"""`xopt` command line (typer). Thin: every command parses, calls one function, prints.

This module holds the one typer `app`, its error handling and the commands that run the whole
flow (`run`, `demo`) or export a variant; the other commands live in a module per job
(xopt/cli_train.py, cli_compile.py, cli_measure.py, cli_results.py, their shared options in
cli_options.py) and are added to `app` here, in the order `xopt --help` lists them.

Heavy libraries are imported inside the commands so that `xopt --help` is instant. Errors a
user can cause (`XoptError`) end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from xopt import cli_compile, cli_measure, cli_results, cli_train
from xopt.cli_options import Force, Json, print_json
from xopt.errors import XoptError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Does the cross-lingual gain of intermediate-task training survive compilation? "
                       "train -> compile -> eval -> bench -> report / pick.")


def os_error_line(e: OSError) -> str:
    """One line for an OS error reaching the CLI (a full disk, a missing or unreadable file)."""
    from xopt.errors import disk_full, is_disk_full

    where = f" {e.filename}" if e.filename else ""
    if is_disk_full(e):      # a copy's OSError names the source first, the file written second
        return f"{disk_full(e.filename2 or e.filename) if e.filename else 'no space left on the device'}: free " \
            "space or write elsewhere"
    return f"{e.strerror or e}{':' + where if where else ''}"


def _guarded(fn):
    """`fn` whose XoptError, or OSError from the OS or a library (a full disk, a file that
    vanished), becomes one line on stderr and exit code 2. XOPT_DEBUG=1 keeps the traceback of an
    OSError and of a library error an XoptError carries as its cause; other exceptions are bugs
    and keep theirs."""
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
    return wrapper


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


def run_cmd(plan: Annotated[Path, typer.Argument(help="Plan file (TOML): training stages plus a \\[run] section.")],
            resume: Annotated[bool, typer.Option("--resume", help="Finish an interrupted run.")] = False,
            force: Force = False):
    """The whole flow from a plan: train -> compile -> eval -> bench -> report / pick."""
    from xopt.pipeline import run_plan_file

    run_plan_file(plan, resume=resume, force=force)


# export is defined here: cli.py is the one module that imports xopt.export (tests/test_export.py
# checks it by file name).
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
        return print_json({k: v for k, v in done.items() if k != "config_text"})
    if fmt == "hf":
        return typer.echo(f"wrote {done['path']} ({done['layout']}); it opens with transformers' from_pretrained "
                          f"and as an xopt checkpoint (xopt compile {done['path']} ...)")
    typer.echo(f"wrote {done['path']} (batching from {done['batching_from']}); serve it with "
               f"`tritonserver --model-repository {out}`"
               + (f"; send raw text to {done['ensemble']} (its README.md)" if done.get("ensemble") else ""))


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


# Every command, in the order `xopt --help` lists them.
COMMANDS = (("variants", cli_compile.variants_cmd), ("import", cli_train.import_cmd), ("train", cli_train.train_cmd),
            ("run", run_cmd), ("compile", cli_compile.compile_cmd), ("calibrate", cli_compile.calibrate_cmd),
            ("eval", cli_measure.eval_cmd), ("bench", cli_measure.bench_cmd), ("report", cli_results.report_cmd),
            ("pick", cli_results.pick_cmd), ("export", export_cmd), ("demo", demo_cmd))
for _name, _fn in COMMANDS:
    app.command(_name)(_guarded(_fn))


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
