"""`xopt train`: baseline and X-STILTs checkpoints, from flags or a plan file.

X-STILTs = an English intermediate task first (encoder + that task's head; one task or a
mixture), then the English target task on the carried-over encoder with a fresh head; the
baseline runs the same target stage from the original encoder with the same seed. The
intermediate heads are discarded. Each stage keeps the epoch that scores best on its English
dev split (zero-shot protocol: nothing in another language is seen before evaluation).
Retrieval targets (BUCC, Tatoeba, demo-retrieval) have no target stage: the X-STILTs
checkpoint is the encoder right after the intermediate stage (head "none").

A stage trains either the encoder (its transformer layers, optionally only the top k; the
250k-row embedding matrix stays frozen, which keeps the optimiser state small and the
multilingual vocabulary untouched) plus the heads, or the head alone on frozen features
(`train = "head"`, sequence tasks), which the demo uses for its target stage.

The plan and its file format are xopt.plan's; one stage's runs are xopt.stagerun's. Running a
plan (`run_plan`) first checks everything a user can get wrong (roles, head, tasks, stages,
output directories), then writes the run's metadata (resolved.json, plan.toml), then trains each
role's stages from the checkpoint's encoder and saves the role's checkpoint.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from xopt.errors import XoptError
from xopt.plan import HEAD_CHOICES, Plan, Stage, check_stage, is_retrieval_target, jsonable, load_plan, load_task

# the entry points cli.py, pipeline.py and users' scripts import from here (the plan's names are xopt.plan's)
__all__ = ["DEMO_HEAD", "DEMO_INTERMEDIATE", "DEMO_TARGET", "HEAD_CHOICES", "Plan", "Stage", "load_plan",
           "load_task", "run_plan", "train"]

# The demo's intermediate stage trains every transformer layer at a small rate (the embeddings,
# 82% of the parameters and the multilingual vocabulary, stay frozen); the fresh head is first
# trained alone on the frozen encoder (a linear probe: LP-FT, Kumar et al. 2022), so that the
# encoder's training starts from a head that already points the right way instead of dragging the
# encoder with random gradients, which costs it its cross-lingual alignment. The design study
# behind this choice: bench/results/demo-design-study-2026-11-30-cpu.md
DEMO_INTERMEDIATE = Stage("demo-intermediate", train="encoder", epochs=1, lr=3e-5, batch_size=16, probe_epochs=10)
DEMO_TARGET = Stage("demo-topic", train="head", epochs=100, lr=3e-3, batch_size=64, length_grouped=False)
# `xopt demo --head`: the head its measured gain is for (bench/results/demo-heads-2026-12-07-cpu.md)
DEMO_HEAD = "mean-linear"


# --- running -----------------------------------------------------------------------------------

def _seed_all(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_plan(plan: Plan, resume: bool = False, force: bool = False, plan_text: str | None = None,
             single_out: bool = False, on_step=None, name: str | None = None) -> dict:
    """Train the plan's checkpoints; returns {role: path}. `single_out`: `plan.out` is the one
    checkpoint directory (the flags form) rather than a run directory. Rank 0, which writes,
    holds `plan.out`'s lock throughout: a second run into the same `out` is refused."""
    import contextlib

    from xopt.manifest import output_lock
    from xopt.trainloop import dist_info

    with output_lock(plan.out) if dist_info()[0] == 0 else contextlib.nullcontext():
        return _run_plan(plan, resume, force, plan_text, single_out, on_step, name)


@dataclass
class _Run:
    """One run of a plan: what its roles and their stages share."""
    plan: Plan
    ckpt: object         # the checkpoint every role starts from (xopt.modeling.open_checkpoint)
    tasks: dict          # every stage's tasks: name -> TaskData
    roles: list
    layout: str          # the heads' layout (HEAD_CHOICES' value)
    retrieval: bool      # a retrieval target: no target stage
    out: Path
    targets: dict        # role -> its checkpoint directory
    state_root: Path     # resumable training state and finished stages
    single_out: bool
    resume: bool
    on_step: object
    name: str | None
    rank: int
    world: int
    tok: object = None   # loaded once every rank has checked the outputs

    @property
    def meta_dir(self) -> Path:
        """Where resolved.json, plan.toml and metrics.jsonl go."""
        return self.state_root if self.single_out else self.out


def _run_plan(plan: Plan, resume: bool, force: bool, plan_text: str | None, single_out: bool, on_step,
              name: str | None) -> dict:
    from xopt.hf import load_tokenizer
    from xopt.modeling import open_checkpoint
    from xopt.progress import bar
    from xopt.trainloop import barrier, dist_info

    roles, layout, retrieval = _roles(plan)
    tasks = _load_tasks(plan, retrieval)       # everything a user can get wrong fails here, before any training
    ckpt = open_checkpoint(plan.model)
    for st in filter(None, (plan.intermediate, plan.target)):    # no longer than the model's positions
        st.max_length = min(st.max_length, ckpt.card.max_length)
    out = Path(plan.out)
    rank, world, _ = dist_info()
    run = _Run(plan, ckpt, tasks, roles, layout, retrieval, out, {r: (out if single_out else out / r) for r in roles},
               out.parent / f".{out.name}.state" if single_out else out / ".state", single_out, resume, on_step,
               name, rank, world)
    _check_outputs(run, force)
    barrier(world)          # every rank checks the directories before rank 0 writes into them
    if rank == 0:
        _start_run(run, force, plan_text)
    barrier(world)
    run.tok = load_tokenizer(ckpt.path)
    written = {}
    with bar() as progress:
        inter = None     # the intermediate stage's result (`run_stage`), trained once
        for role in roles:
            if not (run.targets[role].exists() and resume):
                inter = _train_role(run, role, inter, progress)
            written[role] = run.targets[role]
    if rank == 0 and single_out:
        shutil.rmtree(run.state_root, ignore_errors=True)    # finished: the checkpoint holds the history
    return written


def _roles(plan: Plan) -> tuple[list, str, bool]:
    """The roles the plan trains, its heads' layout, and whether its target is a retrieval task."""
    roles = list(plan.models)
    if not set(roles) <= {"baseline", "xstilts"} or not roles:
        raise XoptError(f"models must be a subset of baseline, xstilts (got {roles})")
    if plan.head not in HEAD_CHOICES:
        raise XoptError(f"head = {plan.head!r}: use {' or '.join(HEAD_CHOICES)}")
    if plan.intermediate is None:
        roles = [r for r in roles if r == "baseline"] or ["baseline"]
    retrieval = plan.target is not None and is_retrieval_target(plan.target.tasks[0])
    return roles, HEAD_CHOICES[plan.head], retrieval


def _load_tasks(plan: Plan, retrieval: bool) -> dict:
    """Every stage's tasks, loaded, and each stage checked against them."""
    tasks = {}
    for role, st in (("intermediate", plan.intermediate), ("target", None if retrieval else plan.target)):
        if st is None:
            continue
        for n in st.tasks:
            tasks[n] = load_task(n, plan.data, st)
        check_stage(st, tasks, role)
    return tasks


def _check_outputs(run: _Run, force: bool) -> None:
    """Refuse outputs that exist (without --force or --resume) and directories xopt did not write."""
    from xopt import manifest as mf

    if not run.resume:
        for p in run.targets.values():
            if p.exists() and not force:
                raise XoptError(f"{p} already exists; pass --force to replace it (or --resume to finish a run)")
        if run.state_root.exists() and not force:
            raise XoptError(f"{run.state_root} holds an unfinished run; pass --resume to continue it or --force to "
                            "start over")
    # whatever the flags, xopt writes only into its own directories (or empty ones), as --force does
    if not run.single_out:
        mf.check_replaceable(run.out, "run")
    for p in run.targets.values():
        mf.check_replaceable(p, "checkpoint")


def _start_run(run: _Run, force: bool, plan_text: str | None) -> None:
    """Rank 0: a fresh state directory (with --force), the run directory's stamp, resolved.json
    (the plan as run, world size, roles, tasks) and the plan's text."""
    from xopt import manifest as mf
    from xopt.manifest import atomic_write
    from xopt.tasks.registry import family

    if force and not run.resume and run.state_root.exists():
        shutil.rmtree(run.state_root)
    run.state_root.mkdir(parents=True, exist_ok=True)
    if not run.single_out:
        mf.stamp(run.out, "run")
    resolved = {"plan": jsonable(run.plan), "world_size": run.world, "roles": run.roles,
                "tasks": {n: {"kind": t.kind, "labels": family(t.kind).label_summary(t.labels),
                              "train": len(t.train), "dev": len(t.dev)} for n, t in run.tasks.items()}}
    atomic_write(run.meta_dir / "resolved.json", json.dumps(resolved, indent=1, default=str))
    if plan_text is not None:
        atomic_write(run.meta_dir / "plan.toml", plan_text)


def _train_role(run: _Run, role: str, inter: dict | None, progress) -> dict | None:
    """Train `role`'s stages on the checkpoint's encoder (X-STILTs: the intermediate stage's
    result `inter`, trained here if None) and save its checkpoint; returns `inter`."""
    from xopt.modeling import ModelCard, NoHead, load_module
    from xopt.stagerun import load_encoder, run_stage
    from xopt.trainloop import barrier

    plan, card0 = run.plan, run.ckpt.card
    _seed_all(plan.seed)
    model, stages = load_module(run.ckpt).with_head(NoHead()), []    # a stage composes its own heads with it
    if role == "xstilts":
        if inter is None:
            inter = run_stage(_job(run, model, plan.intermediate, role, "intermediate", progress),
                              run.state_root / "xstilts-intermediate", run.resume, run.on_step, keep_encoder=True)
        else:
            load_encoder(model, inter["encoder"])
        stages.append(inter["summary"])
    if not run.retrieval:
        res = run_stage(_job(run, model, plan.target, role, "target", progress), run.state_root / f"{role}-target",
                        run.resume, run.on_step)
        model, card = _with_target_head(run, model, res["head"])
        stages.append(res["summary"])
    else:
        card = ModelCard(pooling=card0.pooling, input_prefix=card0.input_prefix, max_length=card0.max_length,
                         task=plan.target.tasks[0], retrieval_layer=card0.retrieval_layer)
    if run.rank == 0:
        _save_role(run, role, model, card, stages)
    barrier(run.world)
    return inter


def _job(run: _Run, model, stage: Stage, role: str, stage_name: str, progress):
    """The `StageJob` of `role`'s stage `stage_name` (intermediate or target) on `model`."""
    from xopt.stagerun import StageJob, metrics_writer

    return StageJob(model, run.tok, run.ckpt.card.input_prefix, {n: run.tasks[n] for n in stage.tasks}, stage,
                    run.plan.seed, progress, metrics_writer(run.meta_dir / "metrics.jsonl", role, stage_name,
                                                            run.resume), run.layout)


def _with_target_head(run: _Run, model, head_state: dict):
    """The model with the target stage's trained head, and its model card."""
    from xopt.modeling import ModelCard
    from xopt.trainee import head_of

    card0 = run.ckpt.card
    t = run.tasks[run.plan.target.tasks[0]]
    head = head_of(t)
    model = model.with_head(head, head_state, run.layout, list(t.labels))
    card = ModelCard(pooling=card0.pooling, input_prefix=card0.input_prefix, labels=list(t.labels), task=t.name,
                     max_length=card0.max_length, head=head.kind, retrieval_layer=card0.retrieval_layer,
                     head_layout=run.layout)
    return model, card


def _save_role(run: _Run, role: str, model, card, stages: list) -> None:
    """Rank 0: `role`'s checkpoint, its manifest's source recording how it was trained."""
    from xopt.modeling import save_checkpoint

    plan, ckpt = run.plan, run.ckpt
    src_files = ckpt.manifest.get("files", {})
    source = {"kind": "train", "from": str(ckpt.path.resolve()), "from_sha256": src_files.get("model.safetensors"),
              "data": plan.data, "target": plan.target.tasks[0],
              "intermediate": plan.intermediate.tasks if role == "xstilts" else None,
              "seed": plan.seed, "world_size": run.world, "stages": stages}
    base_model = (ckpt.manifest.get("base_model") or ckpt.manifest.get("source", {}).get("name")
                  or ckpt.path.name)
    name = role if not run.single_out else run.name or run.targets[role].name
    save_checkpoint(model, run.tok, card, run.targets[role], source, force=True,
                    manifest_extra={"role": role, "name": name, "base_model": base_model})


def train(model_path: str | Path, target: str, data: str | Path, out: str | Path,
          intermediate: str | list | None = None,
          seed: int = 0, force: bool = False, target_stage: Stage | None = None,
          intermediate_stage: Stage | None = None, name: str | None = None, resume: bool = False,
          on_step=None, head: str = "hf") -> Path:
    """Baseline (no `intermediate`) or X-STILTs checkpoint at `out` (the flags form of `xopt train`)."""
    tstage = target_stage or (DEMO_TARGET if target == DEMO_TARGET.task else Stage(target))
    if tstage.task != target:
        tstage = replace(tstage, task=target)
    istage = None
    if intermediate:
        istage = intermediate_stage or (DEMO_INTERMEDIATE if intermediate == DEMO_INTERMEDIATE.task
                                        else Stage(intermediate, epochs=1, lr=2e-5))
        if istage.task != intermediate:
            istage = replace(istage, task=intermediate)
    plan = Plan(model=str(model_path), out=str(out), target=tstage, intermediate=istage,
                data={"root": str(data)}, seed=seed, models=["xstilts" if intermediate else "baseline"], head=head)
    written = run_plan(plan, resume=resume, force=force, single_out=True, on_step=on_step, name=name)
    return next(iter(written.values()))
