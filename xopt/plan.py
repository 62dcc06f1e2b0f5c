"""A training plan: its stages and outputs (`Stage`, `Plan`), read from a TOML file and checked
before any training starts (`load_plan`, `check_stage`), and the tasks its stages train on
(`load_task`). xopt.train runs a plan.

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
import types
import typing
from dataclasses import asdict, dataclass, field, fields
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
    if not all(isinstance(f, str) for f in d.get("mlm", [])):
        raise XoptError(f"{where}: mlm must be a list of file names")
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

MAX_STEPS = 10**6     # the step schedule lists every step's batch up front (xopt.schedule)
# Largest allowed value: beyond these a plan asks for more steps, memory or runs than any machine
# gives (the step schedule of every epoch is built up front), or for a rate or probability that
# has no meaning.
_STAGE_MAX = {"batch_size": 65536, "grad_accum": 65536, "epochs": 10000, "steps": MAX_STEPS, "lr": 10, "warmup": 10**6,
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
    if (st := plan.intermediate) is not None:
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


def check_stage(st: Stage, tasks: dict, role: str) -> None:
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


def jsonable(obj) -> dict:
    """A plan's or stage's fields as JSON values (what resolved.json and a stage's summary record)."""
    return json.loads(json.dumps(asdict(obj), default=str))
