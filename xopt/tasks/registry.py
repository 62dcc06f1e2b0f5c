"""One registry of tasks and task families.

A *family* (`TaskFamily`, implementations in xopt.tasks.families) knows how a kind of task
becomes features, batches, a loss, predictions and a score, and what text the model reads of
an example. A *task* (`TaskEntry`) is a name bound to a family, the suite it belongs to and
how its English training data is loaded. XTREME (xopt.tasks.xtreme), the intermediate tasks
(xopt.tasks.intermediate) and the demo tasks (xopt.tasks.demo) register their tasks here;
training, evaluation, bench length mixes and calibration ask this registry
(`task(name)`, `family(name)`, `names(...)`) and never branch on family names.

Adding a task family: a class in families.py registered with `register_family`; adding a
task: one `register_task(TaskEntry(...))` line in the module that loads its data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from xopt.errors import XoptError


@dataclass
class EvalContext:
    """What a family's `prepare` may ask of the evaluation run it prepares a unit for."""
    suite: str                        # the records' suite ("xtreme", "demo")
    model: str                        # the model's name, as its records carry it
    variant: str                      # the variant's registry name
    reference: str                    # the variant whose dev-split choices every variant of the model reuses
    protocol: str | None              # the retrieval protocol of the run (xopt.records.retrieval_protocol)
    output: str | None                # the runner output retrieval scores (None: the family's default)
    choices_from: list | None         # records files holding the reference's choices (--bucc-threshold-from)
    load: Callable[[Any, str, str], Any]     # (task, lang, split) -> that split's data
    run: Callable[[list[str], str], dict]   # (texts, progress description) -> the variant's outputs


@runtime_checkable
class TaskFamily(Protocol):
    name: str             # registry key; TaskData.kind of the tasks in this family
    head: str             # the model head the family trains and is evaluated with (ModelCard.head)
    metric: str           # dev metric for choosing the epoch: accuracy | f1 | qa_f1
    trainable: bool       # has English training data and a head to train
    target: bool          # may be a target task (else intermediate only)
    frozen_features: bool  # head-only training on frozen sentence embeddings works
    ties_embeddings: bool  # the head's weight is the encoder's word-embedding matrix (frozen)
    skips_english: bool    # demo: English -> English has nothing to measure
    scores_embedding: bool  # scored on the sentence embedding `--retrieval-layer` chooses (no head)

    def head_for(self, task, vocab: int = 0): ...
    def label_summary(self, labels: list): ...
    def features(self, task, examples: list, tokenizer, prefix: str, max_length: int, doc_stride: int = 64): ...
    def length(self, feature: dict) -> int: ...
    def collate(self, task, feats: list, idx, tok, seed: int, step: int) -> dict: ...
    def loss(self, forward: Callable, batch: dict): ...
    def rows(self, outputs: list, n: int) -> list: ...
    def decode(self, task, examples: list, feats: list, outs: list): ...
    def score(self, task, examples: list, feats: list, preds) -> list[float]: ...
    def texts(self, examples, joined: bool = False, lang: str | None = None) -> list: ...
    def prepare(self, task, langs: list, ctx: EvalContext) -> dict: ...
    def evaluate(self, task, lang: str, data, tokenizer, card, run: Callable, threshold=None,
                 output: str | None = None) -> tuple: ...
    def scoring_note(self, task) -> str: ...
    def demo_outcomes(self, out: dict, examples: list, index: dict, labels: list): ...


@dataclass
class TaskData:
    name: str
    kind: str                       # its task family (xopt.tasks.registry.FAMILIES key)
    labels: list[str]
    train: list[dict]
    dev: list[dict] = field(default_factory=list)
    metric: str = "accuracy"        # dev metric for choosing the epoch: accuracy | f1 (seqeval) | qa_f1


@dataclass(frozen=True)
class TaskEntry:
    name: str
    family: str                       # FAMILIES key
    suite: str                        # SUITES: "intermediate" | "text" (continued MLM) | "demo" | "xtreme"
    load: Callable[..., Any] | None = None   # (name, data: dict, stage) -> TaskData (English train/dev)
    spec: Any = None                  # the suite's own description (xtreme.Task, intermediate.Spec, ...)


FAMILIES: dict[str, TaskFamily] = {}
TASKS: dict[str, TaskEntry] = {}


def register_family(fam: TaskFamily) -> TaskFamily:
    if fam.name in FAMILIES:
        raise ValueError(f"task family {fam.name!r} registered twice")
    FAMILIES[fam.name] = fam
    return fam


def register_task(entry: TaskEntry) -> TaskEntry:
    if entry.name in TASKS and TASKS[entry.name] != entry:
        raise ValueError(f"task {entry.name!r} registered twice ({TASKS[entry.name].suite}, {entry.suite})")
    TASKS[entry.name] = entry
    return entry


def family(name: str) -> TaskFamily:
    """The family registered as `name` (a TaskData.kind)."""
    if name not in FAMILIES:
        raise XoptError(f"unknown task family {name!r}; families: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def task(name: str) -> TaskEntry | None:
    return TASKS.get(name)


def family_of(name: str) -> TaskFamily:
    """The family of registered task `name` (unknown task: one-line error)."""
    entry = task(name)
    if entry is None:
        raise XoptError(f"unknown task {name!r}; known: {', '.join(names())}")
    return family(entry.family)


def scoring_note(name: str) -> str:
    """How the records of task `name` are scored, in words (the report's protocol notes). Only
    retrieval records carry a protocol, so a task this registry does not hold is described as
    the retrieval family describes a task it knows nothing more of."""
    entry = task(name)
    return family(entry.family if entry else "retrieval").scoring_note(entry.spec if entry else None)


def is_trainable(entry: TaskEntry) -> bool:
    return entry.load is not None and family(entry.family).trainable


SUITES = ("intermediate", "text", "demo", "xtreme")


def names(suite: str | None = None, trainable: bool | None = None) -> list[str]:
    """Registered task names, suite by suite (SUITES), each suite in registration order."""
    hits = [e for e in TASKS.values() if (suite is None or e.suite == suite)
            and (trainable is None or is_trainable(e) == trainable)]
    return [e.name for e in sorted(hits, key=lambda e: SUITES.index(e.suite) if e.suite in SUITES else len(SUITES))]
