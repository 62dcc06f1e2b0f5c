"""`xopt import` and `xopt train`: the checkpoints every later command starts from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from xopt.cli_options import Force, ModelPath, csv_list
from xopt.errors import XoptError


def import_cmd(name: Annotated[str, typer.Argument(help="Packaged model to import: e5-small.")],
               out: Annotated[Path, typer.Option("--out", help="Checkpoint directory to write.")],
               force: Force = False):
    """Turn a packaged model into a standard Hugging Face checkpoint directory."""
    from xopt.importers import import_model

    import_model(name, out, force=force)
    typer.echo(f"wrote {out}")


def train_cmd(plan: Annotated[Optional[Path], typer.Argument(
                  help="Plan file (TOML): encoder, stages, hyper-parameters, outputs (see xopt/plan.py).")] = None,
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
    inter = csv_list(intermediate)
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
