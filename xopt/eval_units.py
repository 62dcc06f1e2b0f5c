"""What both evaluation suites share (xopt.evaluate's DemoSuite and XtremeSuite): running a
variant over texts in length buckets (`run_texts`, `run_ids`), the retrieval embedding a run
scores (`--retrieval-layer`: `RetrievalView`), and `run_units`, which scores a suite's units with
resume, the records sink, progress and per-task averages.

A unit (`Unit`: task, language, retrieval view) is one record's worth of work. With an `out`
file each unit's record is appended as soon as it is scored (`records.append` writes whole lines
atomically), so a crash keeps every finished unit; with `resume`, the units (task, lang, split,
suite, retrieval protocol) that file already holds for the variant and model are skipped, and
said so in one line, and their values still count in the averages.

Retrieval (BUCC, Tatoeba and the demo's retrieval task) is scored on one embedding chosen by
`--retrieval-layer` (`parse_retrieval_layer`, `retrieval_view`): "middle" (default: XTREME's
protocol, mean-pooled hidden states of layer num_layers // 2), "last" (the last layer's mean,
the pooling a sentence embedder such as e5 was trained with) or a layer number that the variant
outputs. Every retrieval record carries the layer and pooling it was scored with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from xopt import records
from xopt.batching import length_batches, pad, tokenize
from xopt.errors import XoptError
from xopt.progress import bar


def run_texts(loaded, texts: list[str], batch_size: int = 64, tokenizer=None, progress=None,
              description: str = "") -> dict[str, np.ndarray]:
    """Outputs of the variant for `texts`, in input order."""
    if not texts:
        raise XoptError("nothing to evaluate: empty text list")
    tok = tokenizer or loaded.tokenizer()
    card = loaded.card
    seqs = tokenize(tok, texts, card.input_prefix, card.max_length)
    return run_ids(loaded, seqs, tok.pad_token_id, batch_size, progress, description)


def run_ids(loaded, seqs: list[list[int]], pad_id: int, batch_size: int = 64, progress=None,
            description: str = "") -> dict:
    """Outputs of the variant for token-id sequences, in input order. Batches are bucketed by
    length (sorted, padded per batch). Per-sequence outputs are arrays [N, ...]; per-token outputs
    (`modeling.PER_TOKEN_OUTPUTS`) are lists of arrays cut to each sequence's own length."""
    from xopt.modeling import PER_TOKEN_OUTPUTS

    batches = length_batches([len(s) for s in seqs], batch_size)
    out: dict = {}
    task = progress.add_task(description or loaded.runner.name, total=len(seqs), rate="") if progress else None
    t0, done = time.perf_counter(), 0
    for idx in batches:
        ids, mask = pad([seqs[i] for i in idx], pad_id)
        got = loaded.runner(ids, mask)
        for name, arr in got.items():
            if name in PER_TOKEN_OUTPUTS:
                lst = out.setdefault(name, [None] * len(seqs))
                for row, i in enumerate(idx):
                    lst[i] = np.asarray(arr[row, :len(seqs[i])], dtype=np.float32)
                continue
            if name not in out:
                out[name] = np.empty((len(seqs),) + arr.shape[1:], dtype=np.float32)
            out[name][idx] = arr
        done += len(idx)
        if progress:
            progress.update(task, advance=len(idx), rate=f"{done / (time.perf_counter() - t0):.0f} ex/s")
    return out



# --------------------------------------------------------------------------- retrieval protocol

RETRIEVAL_LAYER_NAMES = ("middle", "last")


def parse_retrieval_layer(value) -> str | int:
    """`--retrieval-layer`: "middle" (XTREME's), "last", or a hidden-state number N >= 0 (0 = the
    word embeddings, num_layers = the last layer). Anything else is a one-line XoptError."""
    text = str(value).strip().lower()
    if text in RETRIEVAL_LAYER_NAMES:
        return text
    try:
        n = int(text)
    except ValueError:
        n = None
    if n is None or n < 0 or isinstance(value, bool):
        raise XoptError(f"--retrieval-layer {value!r}: expected middle (XTREME's protocol), last (the model's own "
                        f"pooling) or a layer number N >= 0 (0 = the word embeddings)")
    return n


@dataclass(frozen=True)
class RetrievalView:
    """Which embedding retrieval scores: runner output `output` = `pooling` over hidden state
    `layer` of an encoder of `num_layers` layers; `spec` is what was asked for."""
    spec: str | int
    output: str
    layer: int
    num_layers: int
    pooling: str = "mean"

    def fields(self) -> dict:
        """What a retrieval record says about its protocol (xopt.records.EvalRecord)."""
        return {"retrieval_layer": self.layer, "num_layers": self.num_layers, "pooling": self.pooling}

    @property
    def protocol(self) -> str:
        return records.retrieval_protocol(self.fields())

    def describe(self) -> str:
        what = ("the middle layer: XTREME's protocol" if self.layer == self.num_layers // 2 else
                "the last layer: the model's own pooling" if self.layer == self.num_layers else "")
        return f"{self.pooling}-pooled layer {self.layer} of {self.num_layers}" + (f" ({what})" if what else "")


def resolve_retrieval_layer(spec, num_layers: int, card_layer: int | None = None, where: str = "the variant"
                            ) -> RetrievalView:
    """The RetrievalView of `spec` (parse_retrieval_layer's values) for an encoder of `num_layers`
    layers whose `layer_embedding` output pools layer `card_layer` (None: the middle one) and whose
    `sentence_embedding` pools the last: a layer neither output pools is refused in one line."""
    spec = parse_retrieval_layer(spec)
    mid = num_layers // 2
    layer = mid if spec == "middle" else num_layers if spec == "last" else spec
    if layer > num_layers:
        raise XoptError(f"--retrieval-layer {spec}: the encoder has {num_layers} layers "
                        f"(0 = the word embeddings, {num_layers} = the last)")
    exposed = {num_layers: "sentence_embedding", (mid if card_layer is None else card_layer): "layer_embedding"}
    if layer not in exposed:
        shown = " and ".join(str(x) for x in sorted(exposed))
        raise XoptError(f"--retrieval-layer {spec}: {where} outputs the mean-pooled layers {shown} only; use one of "
                        f"them (middle = {mid}, last = {num_layers}), or rebuild from a checkpoint whose model card "
                        f"sets retrieval_layer = {layer}")
    return RetrievalView(spec, exposed[layer], layer, num_layers)


def retrieval_view(loaded, spec="middle") -> RetrievalView:
    """resolve_retrieval_layer for a loaded variant (its manifest says how many layers the encoder
    has; a variant built before it did is read from its source checkpoint's config.json)."""
    from xopt.hf import num_layers

    n = loaded.manifest["model"].get("num_layers")
    if n is None:
        src = (loaded.manifest.get("source") or {}).get("checkpoint")
        n = num_layers(src) if src else None
    if n is None:
        raise XoptError(f"{loaded.directory}: its manifest does not say how many layers the encoder has (built by an "
                        f"older xopt, source checkpoint gone); rebuild it with `xopt compile`")
    return resolve_retrieval_layer(spec, n, loaded.card.retrieval_layer, str(loaded.directory))


def _unit_key(rec: dict) -> tuple:
    """(task, lang, split, suite, retrieval protocol or None): what `--resume` counts as one unit."""
    return (rec.get("task"), rec.get("lang"), rec.get("split"), rec.get("suite"), records.retrieval_protocol(rec))


def held_units(path: str | Path | None, model: str, variant: str) -> dict[tuple, dict]:
    """{(task, lang, split, suite, protocol): record} of the eval records `path` holds for
    `model`/`variant` (the last one of each unit); empty when there is no such file."""
    if path is None or not Path(path).is_file():
        return {}
    recs, _ = records.read([path])
    return {_unit_key(r): r for r in recs
            if r.get("kind") == "eval" and r.get("model") == model and r.get("variant") == variant}


def _say_skipped(path, model: str, variant: str, skipped: list, total: int) -> None:
    """The one line `--resume` prints: which units of this variant the file already holds."""
    from xopt.progress import console

    if not skipped:
        console.print(f"resume: {path} holds none of the {total} units of {model}/{variant}; evaluating all",
                      highlight=False, soft_wrap=True)
        return
    names = [f"{u.task}:{u.lang}" for u in skipped]
    shown = ", ".join(names[:6]) + (f", ... (+{len(names) - 6})" if len(names) > 6 else "")
    console.print(f"resume: {path} already holds {len(skipped)} of {total} units of {model}/{variant} ({shown}); "
                  f"skipping them, evaluating {total - len(skipped)}", highlight=False, soft_wrap=True)


class Sink:
    """Where finished records go: the `out` file at once (one atomic append per unit), and the
    list this call returns."""

    def __init__(self, out):
        self.out, self.recs = out, []

    def add(self, rec: dict) -> None:
        if self.out is not None:
            records.append(self.out, [rec])
        self.recs.append(rec)


# --------------------------------------------------------------------------- units and their run

@dataclass(frozen=True)
class Unit:
    """One record's worth of work: `task` on `lang`; retrieval units carry the embedding they score."""
    task: str
    lang: str
    view: RetrievalView | None = None

    @property
    def protocol(self) -> str | None:
        return self.view.protocol if self.view else None


class Suite(Protocol):
    """What `run_units` asks of a suite (xopt.evaluate.DemoSuite, XtremeSuite)."""
    name: str           # the records' `suite`
    split: str
    model: str
    variant: str
    units: list         # this process's units, in order
    common: dict        # the fields every record of the run starts with

    def prepare(self, todo: list) -> None: ...          # checks and work before the units are scored
    def score(self, unit: Unit, progress) -> dict: ...   # the unit's record fields after `common`
    def summary(self, rows: list) -> list | None: ...    # all (unit, value, n) rows; None: no averages here
    def average(self, task: str, view, rows: list) -> dict | None: ...   # "avg" fields of [(lang, value, n)]


def unit_key(suite, unit: Unit) -> tuple:
    """The unit's `--resume` key (`_unit_key` of its record)."""
    return (unit.task, unit.lang, suite.split, suite.name, unit.protocol)


def run_units(suite: Suite, out=None, resume: bool = False) -> list[dict]:
    """The records of `suite`'s units, each appended to `out` (when given) as soon as it is
    scored, then one "avg" record per task and retrieval view (`suite.average`); `resume` skips
    the units `out` already holds, their values still counting in the averages."""
    held = held_units(out, suite.model, suite.variant) if resume else {}
    skipped = [u for u in suite.units if unit_key(suite, u) in held]
    if resume:
        _say_skipped(out, suite.model, suite.variant, skipped, len(suite.units))
    todo = [u for u in suite.units if u not in skipped]
    suite.prepare(todo)
    sink, done = Sink(out), {}
    if todo:
        with bar() as progress:
            for u in todo:
                fields = suite.score(u, progress)
                done[u] = records.record("eval", **suite.common, **fields)
                sink.add(done[u])
    rows = [(u, r["value"], r["n_examples"]) for u in suite.units for r in (done.get(u) or held[unit_key(suite, u)],)]
    summary = suite.summary(rows)
    groups: dict[tuple, list] = {}      # (task, view) -> [(lang, value, n)], in unit order
    for u, value, n in summary or ():
        groups.setdefault((u.task, u.view), []).append((u.lang, value, n))
    for (task, view), got in groups.items():
        if unit_key(suite, Unit(task, "avg", view)) in held:
            continue
        fields = suite.average(task, view, got)
        if fields is not None:
            sink.add(records.record("eval", **suite.common, **fields))
    return sink.recs
