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

Plan file (TOML), every key but `model`, `out` and `[target]` optional:

    model = "ckpt/e5-small"          # checkpoint directory (xopt or plain Hugging Face)
    out = "runs/xnli"                # run directory: baseline/, xstilts/, plan.toml, resolved.json,
                                     # metrics.jsonl, .state/ (resumable training state)
    data = "data"                    # root: a task's files are in <data>/<task>/ (or data itself)
    # data = {root = "data", mnli = "glue/MNLI"}    # or per-task locations
    seed = 0
    models = ["baseline", "xstilts"]
    [intermediate]                   # omit for a baseline-only run
    tasks = ["mnli", "qqp"]          # or task = "mnli"; several = multi-task mixture
    mixing = "capped"                # proportional | capped (cap = N examples) | temperature (temperature = T)
    cap = 50000
    mlm = ["mono/de.txt"]            # continue MLM on unlabelled target-language text, mixed in
    translated = {mnli = ["mnli.de.jsonl"]}   # machine-translated intermediate data, same format
    epochs = 1
    lr = 2e-5
    [target]
    task = "xnli"
    epochs = 2
    # any Stage field: batch_size, grad_accum, warmup, max_length, max_examples, top_layers, head_lr,
    # dropout, weight_decay, precision (fp32|bf16|fp16), length_grouped, checkpoint_every, steps,
    # interpolate, average, probe_epochs, probe_lr, train (encoder|head), head (sequence|token|span: checked
    # against the task),
    # doc_stride
"""

from __future__ import annotations

import json
import math
import shutil
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from xopt.errors import XoptError

try:
    import tomllib
except ImportError:          # Python 3.10
    import tomli as tomllib


@dataclass
class Stage:
    task: str | list = ""      # one task, or a list (multi-task mixture)
    train: str = "encoder"     # "encoder" (layers + head) | "head" (frozen encoder)
    epochs: int = 2
    steps: int | None = None   # overrides epochs
    lr: float = 5e-5
    batch_size: int = 32       # global (all processes, all accumulation micro-batches)
    grad_accum: int = 1
    warmup: float = 0.1        # fraction of steps (< 1) or a number of steps
    max_length: int = 128
    max_examples: int | None = None
    top_layers: int | None = None   # train only the top k transformer layers (None: all)
    head_lr: float | None = None    # learning rate of the fresh task heads in encoder mode (None: lr)
    weight_decay: float = 0.01
    dropout: float | None = None    # None: the model's own
    precision: str = "fp32"    # fp32 | bf16 | fp16 (autocast)
    length_grouped: bool = True
    mixing: str = "proportional"
    cap: int | None = None
    temperature: float = 2.0
    checkpoint_every: int = 0  # steps between training-state saves (0: each epoch end only)
    interpolate: float = 1.0   # encoder stages: keep this fraction of the stage's change of the encoder
                               # weights (WiSE-FT: start + f * (trained - start); 1 = all of it)
    average: int = 1           # train this many runs (seeds seed, seed+1, ...) from the same weights and keep
                               # the mean of their weights: heads on the same frozen features (head-only
                               # stages) or whole encoders and heads (a model soup; before `interpolate`)
    doc_stride: int = 64
    probe_epochs: int = 0      # encoder stages: first train the fresh heads alone this many epochs on the
                               # frozen encoder (at probe_lr, batch 64), then the encoder and those heads
                               # (LP-FT, Kumar et al. 2022: a trained head distorts the encoder less)
    probe_lr: float = 3e-3
    head: str | None = None    # expected head kind; checked against the task
    mlm: list = field(default_factory=list)          # unlabelled text files (continued MLM)
    translated: dict = field(default_factory=dict)   # task -> extra training files

    @property
    def tasks(self) -> list[str]:
        names = [self.task] if isinstance(self.task, str) else list(self.task)
        return names + (["mlm"] if self.mlm else [])


# every transformer layer at a small rate (the embeddings stay frozen: 82% of the parameters,
# the multilingual vocabulary); the fresh head is first trained alone on the frozen encoder (a
# linear probe: LP-FT, Kumar et al. 2022), so that the encoder's training starts from a head that
# already points the right way instead of dragging the encoder with random gradients, which is
# what costs the encoder its cross-lingual alignment. Of the designs measured, this one gives the
# most stable gain over draws of the English examples and seeds, positive in every draw
# (bench/results/demo-design-study-2026-11-30-cpu.md)
DEMO_INTERMEDIATE = Stage("demo-intermediate", train="encoder", epochs=1, lr=3e-5, batch_size=16, probe_epochs=10)
DEMO_TARGET = Stage("demo-topic", train="head", epochs=100, lr=3e-3, batch_size=64, length_grouped=False)
# `xopt demo --head`: the head its measured gain is for (bench/results/demo-heads-2026-12-07-cpu.md)
DEMO_HEAD = "mean-linear"


@dataclass
class Plan:
    model: str
    out: str
    target: Stage | None
    intermediate: Stage | None = None
    data: dict = field(default_factory=dict)   # task -> path; "root" -> default location
    seed: int = 0
    models: list = field(default_factory=lambda: ["baseline", "xstilts"])
    run: dict = field(default_factory=dict)    # `xopt run`: compile/eval/bench settings (xopt/pipeline.py)
    head: str = "hf"     # HEAD_CHOICES: the heads every stage trains and the checkpoint keeps


# `xopt train --head`: Hugging Face's own task heads (the checkpoint opens with AutoModelFor*),
# or xopt's linear head (on the mean-pooled embedding for sequence tasks; sentence-transformers'
# Pooling + Dense). The value is the model card's head layout.
HEAD_CHOICES = {"hf": "hf", "mean-linear": "linear"}


def _stage(d: dict, where: str) -> Stage:
    d = dict(d)
    if "tasks" in d:
        d["task"] = d.pop("tasks")
    known = {f.name for f in fields(Stage)}
    bad = [k for k in d if k not in known]
    if bad:
        raise XoptError(f"{where}: unknown key {bad[0]!r}; known: tasks, {', '.join(sorted(known))}")
    if not d.get("task"):
        raise XoptError(f"{where}: no task (set task = \"NAME\" or tasks = [...])")
    hints = typing.get_type_hints(Stage)
    for k, v in d.items():
        if not _is(v, hints[k]):
            raise XoptError(f"{where}: {k} = {_shown(v)} is {_toml_type(v)}, expected {_type_name(hints[k])}")
    if not all(isinstance(t, str) and t for t in ([d["task"]] if isinstance(d["task"], str) else d["task"])):
        raise XoptError(f"{where}: tasks must be task names (strings)")
    for k in ("mlm",):
        if not all(isinstance(f, str) for f in d.get(k, [])):
            raise XoptError(f"{where}: {k} must be a list of file names")
    if not all(isinstance(fs, list) and all(isinstance(f, str) for f in fs) for fs in d.get("translated", {}).values()):
        raise XoptError(f"{where}: translated must map task names to lists of file names")
    for k, low in _STAGE_MIN.items():
        if d.get(k) is not None and d[k] < low:
            raise XoptError(f"{where}: {k} = {d[k]} must be at least {low}")
    for k, high in _STAGE_MAX.items():
        if d.get(k) is not None and d[k] > high:
            raise XoptError(f"{where}: {k} = {d[k]} must be at most {high:g}{_STAGE_WHY.get(k, '')}")
    return Stage(**d)


# Smallest allowed value of the numeric Stage fields (a zero batch size or accumulation would
# divide by zero or train on nothing).
_STAGE_MIN = {"batch_size": 1, "grad_accum": 1, "epochs": 0, "steps": 1, "lr": 0, "warmup": 0, "max_length": 2,
              "max_examples": 1, "top_layers": 0, "head_lr": 0, "weight_decay": 0, "dropout": 0, "cap": 1,
              "temperature": 0, "checkpoint_every": 0, "doc_stride": 1, "average": 1, "interpolate": 0,
              "probe_epochs": 0, "probe_lr": 0}

# Largest allowed value: beyond these a plan asks for more steps, memory or runs than any machine
# gives (the step schedule of every epoch is built up front), or for a rate or probability that
# has no meaning.
_STAGE_MAX = {"batch_size": 65536, "grad_accum": 65536, "epochs": 10000, "steps": 10**6, "lr": 10, "warmup": 10**6,
              "max_length": 65536, "max_examples": 10**9, "top_layers": 1000, "head_lr": 10, "weight_decay": 10,
              "dropout": 0.99, "cap": 10**9, "temperature": 1000, "checkpoint_every": 10**6, "doc_stride": 65536,
              "average": 100, "probe_epochs": 10000, "probe_lr": 10}
_STAGE_WHY = {"dropout": " (a probability)", "average": " (runs trained one after the other)"}


def _is(value, tp) -> bool:
    """Whether a TOML value fits a Stage field's annotation (an int is a float; a bool is not a number)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_is(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, typing.get_origin(tp) or tp)


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(tp, getattr(tp, "__name__", str(tp)))


def _toml_type(v) -> str:
    return _type_name(type(v)) if not isinstance(v, float) or math.isfinite(v) else "not finite"


def _shown(v) -> str:
    """A plan value as the user wrote it (true, not True), shortened for a one-line message."""
    r = json.dumps(v, default=str)
    return r if len(r) <= 30 else r[:27] + "..."


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    if not path.is_file():
        raise XoptError(f"plan {path} not found")
    try:
        d = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise XoptError(f"plan {path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise XoptError(f"plan {path}: not valid TOML ({e})") from None
    known = {"model", "out", "data", "seed", "models", "intermediate", "target", "run", "head"}
    bad = [k for k in d if k not in known]
    if bad:
        raise XoptError(f"plan {path}: unknown key {bad[0]!r}; known: {', '.join(sorted(known))}")
    for k in ("model", "out", "target"):
        if k not in d:
            raise XoptError(f"plan {path}: missing {k!r}")
    for k, tp in (("model", str), ("out", str), ("target", dict), ("intermediate", dict), ("seed", int),
                  ("models", list), ("run", dict), ("head", str)):
        if k in d and not _is(d[k], tp):
            raise XoptError(f"plan {path}: {k} = {_shown(d[k])} is {_toml_type(d[k])}, expected {_type_name(tp)}")
    if not 0 <= d.get("seed", 0) < 2**32:     # numpy's and torch's seeds are 32-bit
        raise XoptError(f"plan {path}: seed = {d['seed']} must be at least 0 and at most {2**32 - 1}")
    data = d.get("data", {})
    if not (isinstance(data, str) or isinstance(data, dict) and all(isinstance(v, str) for v in data.values())):
        raise XoptError(f"plan {path}: data must be a directory (a string) or a table of task = \"path\"")
    if not all(isinstance(m, str) for m in d.get("models", [])):
        raise XoptError(f"plan {path}: models must be a list of names, e.g. [\"baseline\", \"xstilts\"]")
    base = path.parent
    data = {"root": data} if isinstance(data, str) else dict(data)
    data = {k: str(base / v) for k, v in data.items()}     # relative to the plan file
    plan = Plan(model=str(base / d["model"]), out=str(base / d["out"]),
                target=_stage(d["target"], f"plan {path} [target]"),
                intermediate=_stage(d["intermediate"], f"plan {path} [intermediate]") if "intermediate" in d else None,
                data=data, seed=int(d.get("seed", 0)), models=list(d.get("models", ["baseline", "xstilts"])),
                run=dict(d.get("run", {})), head=d.get("head", "hf"))
    for st in filter(None, (plan.intermediate,)):
        st.mlm = [str(base / f) for f in st.mlm]
        st.translated = {t: [str(base / f) for f in fs] for t, fs in st.translated.items()}
    return plan


# --- tasks -------------------------------------------------------------------------------------

def load_task(name: str, data: dict, stage: Stage):
    """TaskData for a trainable registered task (xopt.tasks.registry: intermediate, demo, XTREME, `mlm`)."""
    from xopt.tasks import registry

    entry = registry.task(name)
    if entry is None or not registry.is_trainable(entry):
        known = registry.names(trainable=True) + [n for n in registry.names(trainable=False)]
        raise XoptError(f"unknown task {name!r}; known: {', '.join(k for k in known if k != 'mlm')}")
    return entry.load(name, data, stage)


def is_retrieval_target(name: str) -> bool:
    """A target without a target stage: the checkpoint is the encoder (BUCC, Tatoeba, demo-retrieval)."""
    from xopt.tasks import registry

    entry = registry.task(name)
    return entry is not None and not registry.family(entry.family).trainable


def _check_stage(st: Stage, tasks: dict, role: str) -> None:
    from xopt.tasks.registry import family

    if st.train not in ("encoder", "head"):
        raise XoptError(f"{role} stage: train must be 'encoder' or 'head', not {st.train!r}")
    if st.precision not in ("fp32", "bf16", "fp16"):
        raise XoptError(f"{role} stage: precision must be fp32, bf16 or fp16, not {st.precision!r}")
    for n in st.tasks:
        t = tasks[n]
        fam = family(t.kind)
        if st.head and fam.head != st.head:
            raise XoptError(f"{role} stage: task {n} needs a {fam.head!r} head, the plan says {st.head!r}")
        if st.train == "head" and not fam.frozen_features:
            raise XoptError(f"{role} stage: train = 'head' (frozen features) supports sequence tasks only; "
                            f"{n} is a {t.kind} task: use train = 'encoder'")
    if st.interpolate > 1:
        raise XoptError(f"{role} stage: interpolate = {st.interpolate} must be at most 1 (the fraction of the "
                        "encoder's change that is kept)")
    if st.probe_epochs and (st.train != "encoder" or not all(family(tasks[n].kind).frozen_features
                                                               for n in st.tasks)):
        raise XoptError(f"{role} stage: probe_epochs = {st.probe_epochs} needs train = 'encoder' and sequence "
                        f"tasks (the probe trains heads on frozen sentence embeddings)")
    if st.interpolate < 1 and st.train != "encoder":
        raise XoptError(f"{role} stage: interpolate = {st.interpolate} needs train = 'encoder'")
    if role == "target" and len(st.tasks) != 1:
        raise XoptError("target stage: exactly one task (mixtures are for the intermediate stage)")
    if role == "target" and not family(tasks[st.tasks[0]].kind).target:
        raise XoptError(f"target task {st.tasks[0]}: a {tasks[st.tasks[0]].kind} task is an intermediate task only")


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


def _run_plan(plan: Plan, resume: bool, force: bool, plan_text: str | None, single_out: bool, on_step,
              name: str | None) -> dict:
    from xopt import manifest as mf
    from xopt.manifest import atomic_write
    from xopt.modeling import ModelCard, NoHead, load_module, open_checkpoint, save_checkpoint
    from xopt.hf import load_tokenizer
    from xopt.progress import bar
    from xopt.tasks.registry import family
    from xopt.trainloop import barrier, dist_info, fit, head_of

    out = Path(plan.out)
    roles = list(plan.models)
    if not set(roles) <= {"baseline", "xstilts"} or not roles:
        raise XoptError(f"models must be a subset of baseline, xstilts (got {roles})")
    if plan.head not in HEAD_CHOICES:
        raise XoptError(f"head = {plan.head!r}: use {' or '.join(HEAD_CHOICES)}")
    layout = HEAD_CHOICES[plan.head]
    if plan.intermediate is None:
        roles = [r for r in roles if r == "baseline"] or ["baseline"]
    retrieval = plan.target is not None and is_retrieval_target(plan.target.tasks[0])
    # 1. everything a user can get wrong fails here, before any training
    tasks = {}
    for role, st in (("intermediate", plan.intermediate), ("target", None if retrieval else plan.target)):
        if st is None:
            continue
        for n in st.tasks:
            tasks[n] = load_task(n, plan.data, st)
        _check_stage(st, tasks, role)
    ckpt = open_checkpoint(plan.model)
    for st in filter(None, (plan.intermediate, plan.target)):    # no longer than the model's positions
        st.max_length = min(st.max_length, ckpt.card.max_length)
    targets = {r: (out if single_out else out / r) for r in roles}
    state_root = out.parent / f".{out.name}.state" if single_out else out / ".state"
    if not resume:
        for r, p in targets.items():
            if p.exists() and not force:
                raise XoptError(f"{p} already exists; pass --force to replace it (or --resume to finish a run)")
        if state_root.exists() and not force:
            raise XoptError(f"{state_root} holds an unfinished run; pass --resume to continue it or --force to "
                            "start over")
    # whatever the flags, xopt writes only into its own directories (or empty ones), as --force does
    if not single_out:
        mf.check_replaceable(out, "run")
    for p in targets.values():
        mf.check_replaceable(p, "checkpoint")
    rank, world, _ = dist_info()
    barrier(world)          # every rank checks the directories before rank 0 writes into them
    if rank == 0:
        if force and not resume and state_root.exists():
            shutil.rmtree(state_root)
        state_root.mkdir(parents=True, exist_ok=True)
        if not single_out:
            mf.stamp(out, "run")
        resolved = {"plan": _jsonable(plan), "world_size": world, "roles": roles,
                    "tasks": {n: {"kind": t.kind, "labels": family(t.kind).label_summary(t.labels),
                                  "train": len(t.train), "dev": len(t.dev)} for n, t in tasks.items()}}
        meta_dir = state_root if single_out else out
        atomic_write(meta_dir / "resolved.json", json.dumps(resolved, indent=1, default=str))
        if plan_text is not None:
            atomic_write(meta_dir / "plan.toml", plan_text)
    barrier(world)
    tok = load_tokenizer(ckpt.path)
    prefix = ckpt.card.input_prefix
    metrics = (state_root if single_out else out) / "metrics.jsonl"

    def records(role, stage_name):
        return _metrics_writer(metrics, role, stage_name, resume)

    def fresh():     # the checkpoint's encoder, no head: a stage composes its own heads with it
        _seed_all(plan.seed)
        return load_module(ckpt).with_head(NoHead())

    written = {}
    with bar() as progress:
        inter = None     # (trainable encoder tensors after the intermediate stage, history)
        for role in roles:
            if targets[role].exists() and resume:
                written[role] = targets[role]
                continue
            model, stages = fresh(), []
            if role == "xstilts":
                if inter is None:
                    inter = _stage_run(model, tok, prefix, tasks, plan.intermediate, plan.seed,
                                       state_root / "xstilts-intermediate", resume, progress,
                                       records(role, "intermediate"), on_step, fit, layout, keep_encoder=True)
                else:
                    _load_encoder(model, inter["encoder"])
                stages.append(inter["summary"])
            if not retrieval:
                res = _stage_run(model, tok, prefix, tasks, plan.target, plan.seed, state_root / f"{role}-target",
                                 resume, progress, records(role, "target"), on_step, fit, layout)
                t = tasks[plan.target.tasks[0]]
                head = head_of(t)
                model = model.with_head(head, res["head"], layout, list(t.labels))
                stages.append(res["summary"])
                card = ModelCard(pooling=ckpt.card.pooling, input_prefix=prefix, labels=list(t.labels),
                                 task=t.name, max_length=ckpt.card.max_length, head=head.kind,
                                 retrieval_layer=ckpt.card.retrieval_layer, head_layout=layout)
            else:
                card = ModelCard(pooling=ckpt.card.pooling, input_prefix=prefix, max_length=ckpt.card.max_length,
                                 task=plan.target.tasks[0], retrieval_layer=ckpt.card.retrieval_layer)
            if rank == 0:
                src_files = ckpt.manifest.get("files", {})
                source = {"kind": "train", "from": str(ckpt.path.resolve()),
                          "from_sha256": src_files.get("model.safetensors"), "data": plan.data,
                          "target": plan.target.tasks[0],
                          "intermediate": plan.intermediate.tasks if role == "xstilts" else None,
                          "seed": plan.seed, "world_size": world, "stages": stages}
                base_model = (ckpt.manifest.get("base_model") or ckpt.manifest.get("source", {}).get("name")
                              or ckpt.path.name)
                save_checkpoint(model, tok, card, targets[role], source, force=True,
                                manifest_extra={"role": role,
                                                "name": role if not single_out else name or targets[role].name,
                                                "base_model": base_model})
            barrier(world)
            written[role] = targets[role]
    if rank == 0 and single_out:
        shutil.rmtree(state_root, ignore_errors=True)    # finished: the checkpoint holds the history
    return written


def _metrics_writer(metrics: Path, role: str, stage: str, resume: bool):
    """The callback that appends a stage's epoch records to metrics.jsonl. A resumed stage
    replays the epochs after its last saved state, whose records were written before the state
    was: each epoch is written once."""
    from xopt.records import append as append_records

    held = _epochs_held(metrics, role, stage) if resume else set()

    def write(rec):
        if rec["epoch"] not in held:
            held.add(rec["epoch"])
            append_records(metrics, [{"kind": "train", "model": role, "stage": stage, **rec}])
    return write


def _epochs_held(metrics: Path, role: str, stage: str) -> set:
    """The epochs of (role, stage) that metrics.jsonl already records (unreadable lines skipped)."""
    held = set()
    if metrics.is_file():
        for line in metrics.read_text(errors="replace").splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and r.get("model") == role and r.get("stage") == stage:
                held.add(r.get("epoch"))
    return held


def _load_encoder(model, tensors: dict) -> None:
    import torch

    with torch.no_grad():
        for n, p in model.encoder.named_parameters():
            if n in tensors:
                p.copy_(tensors[n])


def _stage_run(model, tok, prefix, tasks, stage, seed, state_dir, resume, progress, records, on_step, fit,
               layout, keep_encoder=False) -> dict:
    """One stage, or its saved result when a resumed run already finished it."""
    from safetensors.torch import load_file, save_file

    from xopt.manifest import atomic_dir
    from xopt.tasks.registry import family
    from xopt.trainloop import barrier, dist_info

    rank, world, _ = dist_info()
    done = state_dir.with_name(state_dir.name + ".done")
    if resume and (done / "result.json").is_file():
        summary = json.loads((done / "result.json").read_text())
        enc = load_file(str(done / "encoder.safetensors"))
        _load_encoder(model, enc)
        return {"encoder": enc, "summary": summary, "head": load_file(str(done / "head.safetensors"))
                if (done / "head.safetensors").is_file() else None}
    stage_tasks = {n: tasks[n] for n in stage.tasks}
    soup = stage.average > 1 and stage.train == "encoder"
    start = ({n: p.detach().clone() for n, p in model.encoder.named_parameters() if not n.startswith("embeddings.")}
             if stage.interpolate < 1 or soup else None)
    probed = None    # a resumed run's saved state holds its heads already
    if stage.probe_epochs and not (resume and (state_dir / "state.json").is_file()):
        probe = replace(stage, train="head", epochs=stage.probe_epochs, steps=None, lr=stage.probe_lr, batch_size=64,
                        grad_accum=1, head_lr=None, length_grouped=False, probe_epochs=0)
        probed = fit(model, tok, prefix, stage_tasks, probe, seed, progress=progress, records=records,
                     label="probe ", layout=layout)["trainee"].heads.state_dict()
    res = fit(model, tok, prefix, stage_tasks, stage, seed, state_dir=state_dir, resume=resume, progress=progress,
              records=records, label="", on_step=on_step, heads=probed, layout=layout)
    trainee = res.pop("trainee")
    features = res.pop("features", None)
    if soup:
        # a soup of encoder runs (Wortsman et al. 2022): each run starts from the same weights with
        # another seed (head init, batch order); the mean of their weights keeps what the runs
        # learned in common and averages out much of each run's own drift
        from xopt.trainloop import average_states

        def weights():
            return {n: p.detach().clone() for n, p in model.encoder.named_parameters() if n in start}

        runs, heads = [weights()], [trainee.heads.state_dict()]
        for j in range(1, stage.average):
            _load_encoder(model, start)
            heads.append(fit(model, tok, prefix, stage_tasks, stage, seed + j, progress=progress, records=records,
                             label=f"{j + 1}/{stage.average} ", heads=probed, layout=layout)["trainee"].heads.state_dict())
            runs.append(weights())
        _load_encoder(model, average_states(runs))
        trainee.heads.load_state_dict(average_states(heads))
        res["average"] = {"seeds": list(range(seed, seed + stage.average))}
    if stage.interpolate < 1:
        # WiSE-FT (Wortsman et al. 2022): part of the way back to the starting weights keeps more
        # of what the encoder knew before the stage (here: its cross-lingual alignment)
        import torch

        with torch.no_grad():
            for n, p in model.encoder.named_parameters():
                if n in start:
                    p.copy_(start[n] + stage.interpolate * (p - start[n]))
    if stage.average > 1 and not soup:
        # a soup of head-only runs: the same frozen features, other seeds (head init, batch order,
        # best epoch), the heads' weights averaged: one head that depends less on any one seed
        from xopt.trainloop import average_states

        heads = [trainee.heads]
        for j in range(1, stage.average):
            heads.append(fit(model, tok, prefix, stage_tasks, stage, seed + j, progress=progress,
                             label=f"{j + 1}/{stage.average} ", features=features, layout=layout)["trainee"].heads)
        avg = average_states([h.state_dict() for h in heads])
        trainee.heads.load_state_dict(avg)
        res["average"] = {"seeds": list(range(seed, seed + stage.average))}
    summary = {"stage": _jsonable(stage), "seed": seed, "labels": {n: t.labels for n, t in stage_tasks.items()
                                                                  if not family(t.kind).ties_embeddings},
               **{k: v for k, v in res.items()}}
    enc = {n: p.detach().cpu().contiguous() for n, p in model.encoder.named_parameters()
           if not n.startswith("embeddings.")}
    head = None
    if not keep_encoder:
        from xopt.trainloop import key

        head = trainee.heads[key(stage.tasks[0])].xopt_state()
    if rank == 0:
        with atomic_dir(done, force=True) as tmp:
            (tmp / "result.json").write_text(json.dumps(summary, default=str))
            save_file(enc, str(tmp / "encoder.safetensors"))
            if head:
                save_file(head, str(tmp / "head.safetensors"))
        shutil.rmtree(state_dir, ignore_errors=True)
    barrier(world)
    return {"encoder": enc, "summary": summary, "head": head}


def _jsonable(obj):
    return json.loads(json.dumps(asdict(obj), default=str))


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
