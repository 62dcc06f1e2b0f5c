"""`xopt eval`: score a variant on a suite, per task and language, through its Runner only.

Every variant (eager, compiled, ONNX, int8, GPU) is evaluated by the same code: texts are
tokenised with the variant's tokenizer, sorted by length and padded per batch (little
padding waste), run, and put back in their original order, so results are deterministic
for a deterministic variant. Records keep per-example outcomes so that reports can
bootstrap confidence intervals on paired differences.

A suite (`DemoSuite`, `XtremeSuite`) checks and loads everything it evaluates, lists its units
(task x language x retrieval view) and scores each through the task's family
(xopt.tasks.registry); `xopt.eval_units.run_units` runs the units of either suite: resume, the
records file each unit is appended to as soon as it is scored, progress and the per-task
averages. A family prepares what its units need besides their data (BUCC: the threshold chosen
on dev, `RetrievalFamily.prepare`) before the model runs.

The demo's retrieval task is scored by the same method as XTREME's Tatoeba
(`RetrievalFamily.evaluate`), on the encodings of the demo's one pass over its texts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from xopt import invariance
from xopt.batching import tokenize
from xopt.comparison import DEFAULT
from xopt.errors import XoptError
from xopt.eval_units import (RETRIEVAL_LAYER_NAMES, RetrievalView, Sink as _Sink, Unit,  # noqa: F401 (API)
                             held_units, parse_retrieval_layer, resolve_retrieval_layer, retrieval_view,
                             run_ids, run_texts, run_units)
from xopt.progress import bar
from xopt.tasks import demo, registry


# --------------------------------------------------------------------------- the demo suite

def _demo_sets(suite: dict, tasks, langs, split: str) -> tuple[dict, list]:
    """The demo suite's examples of `split` per language, and the languages asked for (all by default)."""
    unknown = [t for t in tasks if t not in demo.TASKS]
    if unknown:
        raise XoptError(f"unknown demo task(s) {', '.join(unknown)}; tasks: {', '.join(demo.TASKS)}")
    sets = suite["test"] if split == "test" else suite["shared"] if split == "shared" else None
    if sets is None:
        raise XoptError(f"unknown split {split!r} for the demo suite; use test or shared")
    langs = list(langs or sets)
    missing = [lang for lang in langs if lang not in sets]
    if missing:
        raise XoptError(f"language(s) {', '.join(missing)} not in the demo suite's {split} split; "
                        f"it has: {', '.join(sets)}")
    return sets, langs


class DemoSuite:
    """The demo's units: its tasks on `langs` (a retrieval task once per distinct retrieval view;
    English -> English retrieval is trivial and left out). Every unit reads the encodings of one
    pass over the distinct texts of all languages (`prepare`), as an uninterrupted run makes it,
    so that resumed units score exactly as they would have."""
    name = "demo"

    def __init__(self, loaded, suite: dict, tasks, langs, split: str, batch_size: int, max_examples,
                 retrieval_layers):
        sets, langs = _demo_sets(suite, tasks, langs, split)
        card = loaded.card
        self.target_labels = suite["tasks"][demo.TARGET]["labels"]
        if demo.TARGET in tasks and card.labels != self.target_labels:
            raise XoptError(f"{loaded.directory}: model has no {demo.TARGET} head (labels {card.labels or 'none'}); "
                            f"train one with `xopt train --target {demo.TARGET}` or evaluate --tasks {demo.RETRIEVAL}")
        views = {}
        if any(registry.family_of(t).scores_embedding for t in tasks):
            for spec in retrieval_layers:
                v = retrieval_view(loaded, spec)
                views.setdefault(v.layer, v)     # "middle" and its number are one protocol, scored once
        self.loaded, self.split, self.batch_size, self.langs = loaded, split, batch_size, langs
        self.examples = {lang: sets[lang][:max_examples] if max_examples else sets[lang] for lang in langs}
        self.model, self.variant = loaded.model_name, loaded.manifest["variant"]
        self.units = [Unit(task, lang, view) for task in tasks
                      for view in (views.values() if registry.family_of(task).scores_embedding else (None,))
                      for lang in langs if not (lang == "en" and registry.family_of(task).skips_english)]
        self.common = dict(model=self.model, variant=self.variant, suite="demo", split=split, **loaded.model_fields,
                           variant_dir=str(loaded.directory), **calibration_fields(loaded.manifest))
        self.timing: dict = {}

    def prepare(self, todo: list) -> None:
        """The one pass over every distinct text (translations and English sources alike)."""
        if not todo:
            return
        loaded, card = self.loaded, self.loaded.card
        texts = sorted({e[k] for lang in self.langs for e in self.examples[lang] for k in ("text", "source")})
        tok = self.tok = loaded.tokenizer()
        seqs = tokenize(tok, texts, card.input_prefix, card.max_length)
        t0 = time.perf_counter()
        with bar() as progress:
            self.outputs = run_ids(loaded, seqs, tok.pad_token_id, self.batch_size, progress,
                                   f"eval {self.model}/{loaded.runner.name}")
        seconds = time.perf_counter() - t0
        self.timing = {"eval_s": round(seconds, 3), "examples_per_s": round(len(texts) / seconds, 2)}
        self.common.update(invariance.fields(loaded, seqs, tok.pad_token_id, self.batch_size))
        self.index = {t: i for i, t in enumerate(texts)}
        self.row_of = {tuple(s): i for i, s in enumerate(seqs)}

    def shared_run(self, batch_seqs) -> dict:
        """The one pass's outputs for token sequences it encoded (retrieval's `run`)."""
        rows = [self.row_of[tuple(s)] for s in batch_seqs]
        return {name: arr[rows] for name, arr in self.outputs.items() if isinstance(arr, np.ndarray)}

    def score(self, unit: Unit, progress) -> dict:
        exs, lang, view = self.examples[unit.lang], unit.lang, unit.view
        fam = registry.family_of(unit.task)
        if view is not None:    # XTREME's Tatoeba protocol, by its own code
            bitext = demo.bitext(lang, exs)
            value, n, extra, _ = fam.evaluate(registry.task(unit.task).spec, lang, bitext, self.tok, self.loaded.card,
                                              self.shared_run, output=view.output)
            fields = dict(metric="accuracy", value=value, n_examples=n, **extra, **view.fields(),
                          note=f"Tatoeba protocol (XTREME): {lang} -> en top-1 by cosine, {view.describe()}")
        else:
            outcomes = fam.demo_outcomes(self.outputs, exs, self.index, self.target_labels)
            fields = dict(metric="accuracy", value=float(outcomes.mean() * 100), n_examples=len(exs),
                          outcomes=[round(float(o), 2) for o in outcomes])
        return dict(task=unit.task, lang=lang, example_ids=_ids_digest(exs), **fields, **self.timing)

    def summary(self, rows: list) -> list:
        return rows

    def average(self, task: str, view, rows: list) -> dict | None:
        """The mean over the languages other than English (the demo's zero-shot languages)."""
        zs = [(v, n) for lang, v, n in rows if lang != "en"]
        if not zs:
            return None
        return dict(task=task, lang="avg", metric="accuracy", value=float(np.mean([v for v, _ in zs])),
                    n_examples=sum(n for _, n in zs), n_langs=len(zs), note="mean over evaluated languages other than en",
                    **(view.fields() if view else {}), **self.timing)


def eval_demo(loaded, suite: dict, tasks=demo.TASKS, langs=None, split: str = "test",
              batch_size: int = 64, max_examples: int | None = None, out=None, resume: bool = False,
              retrieval_layers=("middle",)) -> list[dict]:
    """Records for the demo suite's tasks on `langs` (default: all the suite has), appended to
    `out` (when given) unit by unit; `resume` skips the units `out` already holds. The retrieval
    task is scored once per `retrieval_layers` entry (parse_retrieval_layer's values), as XTREME's
    Tatoeba (`RetrievalFamily.evaluate`); every task reads the encodings of one pass over the
    distinct texts."""
    return run_units(DemoSuite(loaded, suite, tasks, langs, split, batch_size, max_examples, retrieval_layers),
                     out, resume)


def calibration_fields(manifest: dict) -> dict:
    """`calibration: {method, langs, samples}` for records of a calibrated variant (none otherwise)."""
    cal = manifest.get("calibration")
    if not cal:
        return {}
    return {"calibration": {"method": cal.get("method"), "langs": cal.get("languages"),
                            "samples": cal.get("samples"), "ids_sha256": cal.get("ids_sha256"),
                            "keep": cal.get("keep") or []}}


def _ids_digest(exs) -> str:
    import hashlib

    return hashlib.sha256("\n".join(e["id"] for e in exs).encode()).hexdigest()[:16]


def evaluate(variant_dir: str | Path, suite: str, data: str | Path | None = None, tasks=None, langs=None,
             split: str = "test", batch_size: int = 64, max_examples: int | None = None,
             threshold_from=None, out: str | Path | None = None, resume: bool = False,
             retrieval_layer="middle") -> list[dict]:
    """`xopt eval`: the records of one variant on a suite (SUITES). With `out`, each task x language
    unit's records are appended to it as soon as the unit is scored (under torchrun: to this
    process's own file, see `shard_out_path`); `resume` skips the units that file already holds.
    `threshold_from`: records files of the reference variant whose dev-chosen thresholds the
    families that need one read (XTREME's BUCC); `retrieval_layer`: the embedding retrieval tasks
    score (parse_retrieval_layer)."""
    if resume and out is None:
        raise XoptError("--resume needs --out FILE: the records file of the run to finish")
    retrieval_layer = parse_retrieval_layer(retrieval_layer)
    out = shard_out_path(out) if out is not None else None
    run = SUITES.get(suite)
    if run is None:
        raise XoptError(f"unknown suite {suite!r}; available: {', '.join(SUITES)}")
    return run(variant_dir, data, tasks, langs, split, batch_size, max_examples, threshold_from, out, resume,
               retrieval_layer)


def _evaluate_demo(variant_dir, data, tasks, langs, split, batch_size, max_examples, threshold_from, out, resume,
                   retrieval_layer) -> list[dict]:
    from xopt.variants import load_variant

    suite_data = demo.load_suite(Path(data) if data else demo.ensure_suite())
    return eval_demo(load_variant(variant_dir), suite_data, tuple(tasks or demo.TASKS), langs, split, batch_size,
                     max_examples, out=out, resume=resume, retrieval_layers=(retrieval_layer,))


def _evaluate_xtreme(variant_dir, data, tasks, langs, split, batch_size, max_examples, threshold_from, out, resume,
                     retrieval_layer) -> list[dict]:
    if data is None:
        raise XoptError("--suite xtreme needs --data DIR (XTREME's download layout or google/xtreme HF dirs)")
    return evaluate_xtreme(variant_dir, data, tasks, langs, split, batch_size, max_examples, threshold_from,
                           out=out, resume=resume, retrieval_layer=retrieval_layer)



# --------------------------------------------------------------------------- XTREME (zero-shot)
#
# Records: one per (task, language) plus one "avg" per task (mean over the evaluated languages,
# English included, as XTREME's tables). Besides `value` and `n_examples`, each per-language
# record keeps what a report needs to bootstrap:
#   accuracy tasks (xnli, pawsx, tatoeba): `outcomes`, 0/1 per example (mean = value / 100);
#   QA (xquad, mlqa, tydiqa): `outcomes` = per-question F1 in [0, 1] (mean = F1 / 100),
#       `em_outcomes` 0/1 and `exact_match`;
#   F1 over chunks (udpos, panx, bucc2018): `counts` = [tp, fp, fn] per sentence (BUCC: per source
#       sentence, only the non-zero rows, with `n_units` = all source sentences); F1 = micro F1 of
#       the summed counts; `outcome_kind` says which of the two forms a record carries.
# BUCC's `threshold` is chosen on the reference (fp32) variant's dev split (XTREME's
# bucc_optimize) and stored in its record; other variants of the same model read it back from
# those records (`--bucc-threshold-from RESULTS.jsonl`), so every variant is scored with the
# reference's threshold.

def shard() -> tuple[int, int]:
    """(rank, world size) of this process as set by torchrun / accelerate launch (RANK, WORLD_SIZE)."""
    from xopt.dist import launch

    run = launch()
    return run.rank, run.world_size


def shard_out_path(out: str | Path) -> Path:
    """Each process of a sharded run writes its own records file: results.jsonl ->
    results.rank0-of-2.jsonl, ...; the merge is simply reading all of them."""
    rank, world = shard()
    out = Path(out)
    return out if world == 1 else out.with_name(f"{out.stem}.rank{rank}-of-{world}{out.suffix}")



def _plan(card, task_names, langs) -> list[tuple[str, str]]:
    from xopt.tasks import xtreme as X

    if task_names is None:   # what this model can be evaluated on: its head's tasks + retrieval
        task_names = [t for t in X.EVAL_TASKS if _head_problem(card, X.TASKS[t]) is None]
    for t in task_names:
        if t not in X.EVAL_TASKS:
            raise XoptError(f"unknown XTREME task {t!r}; tasks: {', '.join(X.EVAL_TASKS)}")
    for t in task_names:
        if problem := _head_problem(card, X.TASKS[t]):
            raise XoptError(problem)
    if langs:
        every = {lang for t in task_names for lang in X.TASKS[t].langs}
        bad = [lang for lang in langs if lang not in every]
        if bad:
            raise XoptError(f"language code(s) {', '.join(bad)} not in the languages of {', '.join(task_names)}")
    units = [(t, lang) for t in task_names for lang in X.TASKS[t].langs if not langs or lang in langs]
    if not units:
        raise XoptError(f"none of the languages {', '.join(langs or [])} belongs to {', '.join(task_names)}")
    return units


def _head_problem(card, task) -> str | None:
    need = task.head
    if need == "none":
        return None
    if card.head != need:
        train = {"sequence": "a sentence-pair classifier", "token": "a tagger", "span": "an extractive QA model"}[need]
        return (f"{task.name} needs a {need!r} head ({train} fine-tuned on English {task.name}); this model has "
                f"head {card.head!r}: evaluate a fine-tuned checkpoint, or --tasks bucc2018,tatoeba for the encoder")
    if need in ("sequence", "token") and list(card.labels) != list(task.labels):
        return (f"{task.name} needs a head over its labels ({' '.join(task.labels)}); this model's head has "
                f"({' '.join(card.labels)}) (trained on {card.task or '?'}). If it was trained on {task.name} with "
                f"those classes in that order, set id2label in its config.json to "
                + json.dumps(dict(enumerate(task.labels))))
    return None


def _load_units(units, data_dir, split, max_examples):
    from xopt.tasks import xtreme as X

    data = {}
    for t, lang in units:
        d = X.load(t, lang, split, data_dir)
        if max_examples and not isinstance(d, X.Bitext):
            d = d[:max_examples]
        data[(t, lang)] = d
    return data


def _score_unit(loaded, tok, task, lang, data, batch_size, progress, threshold, view=None, seen=None):
    """(metric value, n_examples, extra record fields, examples run) of one task/language, scored by
    the task's family (xopt.tasks.families) on the variant's outputs; retrieval on `view`'s embedding.
    `seen` collects up to `batch_size` of the token sequences run (the batch-invariance probe)."""
    from xopt.tasks.registry import family

    def run(seqs):
        if seen is not None:
            seen.extend(seqs[:max(0, batch_size - len(seen))])
        return run_ids(loaded, seqs, tok.pad_token_id, batch_size, progress, f"{task.name} {lang}")
    return family(task.kind).evaluate(task, lang, data, tok, loaded.card, run, threshold,
                                      output=view.output if view is not None else None)


class XtremeSuite:
    """Zero-shot XTREME units of one variant (module notes above): everything is loaded and
    checked when the suite is made, before the model runs; sharded over torchrun's processes by
    (task, language). `bucc_threshold_from`: records files holding the reference's BUCC thresholds."""
    name = "xtreme"

    def __init__(self, loaded, data_dir: Path, tasks, langs, split: str, batch_size: int, max_examples,
                 bucc_threshold_from, retrieval_layer, rank: int = 0, world: int = 1):
        from xopt.tasks import xtreme as X

        self.rank, self.world = rank, world
        self.loaded, self.data_dir, self.split, self.batch_size = loaded, data_dir, split, batch_size
        plan = _plan(loaded.card, tasks, langs)
        scored_on_embedding = [registry.family(X.TASKS[t].kind).scores_embedding for t, _ in plan]
        self.view = view = retrieval_view(loaded, retrieval_layer) if any(scored_on_embedding) else None
        self.all_units = [Unit(t, lang, view if e else None) for (t, lang), e in zip(plan, scored_on_embedding)]
        self.units = self.all_units[self.rank::self.world]
        # every process reads and checks all the data first, so a bad file stops all of them alike
        self.data = _load_units(plan, data_dir, split, max_examples)
        self.model, self.variant = loaded.model_name, loaded.manifest["variant"]
        self.threshold_from = bucc_threshold_from
        self.tok = loaded.tokenizer()
        self.common = dict(model=self.model, variant=self.variant, suite="xtreme", split=split, **loaded.model_fields,
                           variant_dir=str(loaded.directory), rank=self.rank, world_size=self.world,
                           **calibration_fields(loaded.manifest))
        self.settings: dict = {}     # (task, lang) -> what the family prepared (evaluate's `threshold`)
        self.probe: list = []        # the first task's token sequences, on which batch invariance is measured
        self.progress = None

    def _run_texts(self, texts: list[str], description: str) -> dict:
        card = self.loaded.card
        seqs = tokenize(self.tok, texts, card.input_prefix, card.max_length)
        return run_ids(self.loaded, seqs, self.tok.pad_token_id, self.batch_size, self.progress, description)

    def prepare(self, todo: list) -> None:
        """Each family's preparation of its units (BUCC: the threshold's source), checked now."""
        from xopt.tasks import xtreme as X

        view = self.view
        ctx = registry.EvalContext(self.name, self.model, self.variant, DEFAULT.reference,
                                   view.protocol if view else None, view.output if view else None,
                                   self.threshold_from, lambda t, lang, split: X.load(t, lang, split, self.data_dir),
                                   self._run_texts)
        self.first_task = todo[0].task if todo else None
        langs: dict[str, list] = {}
        for u in todo:
            langs.setdefault(u.task, []).append(u.lang)
        for t, ls in langs.items():
            task = X.TASKS[t]
            for lang, make in registry.family(task.kind).prepare(task, ls, ctx).items():
                self.settings[(t, lang)] = make

    def score(self, unit: Unit, progress) -> dict:
        from xopt.tasks import xtreme as X

        task, self.progress = X.TASKS[unit.task], progress
        make = self.settings.get((unit.task, unit.lang))
        threshold = make() if make else None
        t0 = time.perf_counter()
        value, n, extra, n_run = _score_unit(self.loaded, self.tok, task, unit.lang, self.data[(unit.task, unit.lang)],
                                             self.batch_size, progress, threshold, unit.view,
                                             self.probe if unit.task == self.first_task else None)
        sec = time.perf_counter() - t0
        if self.probe and "batch_invariance" not in self.common:
            self.common.update(invariance.fields(self.loaded, self.probe, self.tok.pad_token_id, self.batch_size))
        return dict(task=unit.task, lang=unit.lang, metric=task.metric, value=value, n_examples=n,
                    eval_s=round(sec, 3), sequences_run=n_run, examples_per_s=round(n / sec, 2), **extra,
                    **(unit.view.fields() if unit.view else {}))

    def summary(self, rows: list) -> list | None:
        """Every process's rows in unit order, on rank 0 (which writes the averages); None elsewhere."""
        if self.world > 1:
            rows = _gather(rows)
        if self.rank != 0:
            return None
        order = {u: i for i, u in enumerate(self.all_units)}
        return sorted(rows, key=lambda r: order[r[0]])

    def average(self, task: str, view, rows: list) -> dict:
        from xopt.tasks import xtreme as X

        return dict(task=task, lang="avg", metric=X.TASKS[task].metric, value=float(np.mean([r[1] for r in rows])),
                    n_examples=sum(r[2] for r in rows), n_langs=len(rows), langs=[r[0] for r in rows],
                    note="mean over the evaluated languages, English included (XTREME)",
                    **(view.fields() if view else {}))


def evaluate_xtreme(variant_dir, data_dir, tasks=None, langs=None, split: str = "test", batch_size: int = 64,
                    max_examples: int | None = None, bucc_threshold_from=None, out=None,
                    resume: bool = False, retrieval_layer="middle") -> list[dict]:
    """Zero-shot XTREME records of one variant (XtremeSuite). Each unit's record goes to `out`
    (when given) as soon as it is scored; `resume` skips the units `out` already holds (their
    values still count in the task's "avg")."""
    from xopt.tasks import xtreme as X
    from xopt.variants import load_variant

    rank, world = shard()
    if split not in X.SPLITS:
        raise XoptError(f"unknown split {split!r}; use one of {', '.join(X.SPLITS)}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise XoptError(f"--data {data_dir}: not a directory")
    suite = XtremeSuite(load_variant(variant_dir), data_dir, tasks, langs, split, batch_size, max_examples,
                        bucc_threshold_from, retrieval_layer, rank, world)
    return run_units(suite, out, resume)


# `xopt eval --suite NAME`: how each suite's records are made
SUITES = {"demo": _evaluate_demo, "xtreme": _evaluate_xtreme}


def _gather(summary: list) -> list:
    """All processes' per-language summaries (gloo over the env that torchrun sets)."""
    import torch.distributed as dist

    own = not dist.is_initialized()
    if own:
        dist.init_process_group("gloo")
    try:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, summary)
    finally:
        if own:
            dist.destroy_process_group()
    return [s for p in parts for s in p]
