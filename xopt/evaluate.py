"""`xopt eval`: score a variant on a suite, per task and language, through its Runner only.

Every variant (eager, compiled, ONNX, int8, GPU) is evaluated by the same code: texts are
tokenised with the variant's tokenizer, sorted by length and padded per batch (little
padding waste), run, and put back in their original order, so results are deterministic
for a deterministic variant. Records keep per-example outcomes so that reports can
bootstrap confidence intervals on paired differences.

With an `out` file, each record is appended as soon as its task x language unit is scored
(`records.append` writes whole lines atomically), so a crash keeps every finished unit; with
`resume`, the units (task, lang, split, suite, retrieval protocol) that file already holds for the
variant and model are skipped, and said so in one line.

Retrieval (BUCC, Tatoeba and the demo's retrieval task) is scored on one embedding chosen by
`--retrieval-layer` (`parse_retrieval_layer`, `retrieval_view`): "middle" (default: XTREME's
protocol, mean-pooled hidden states of layer num_layers // 2), "last" (the last layer's mean,
the pooling a sentence embedder such as e5 was trained with) or a layer number that the variant
outputs. Every retrieval record carries the layer and pooling it was scored with, and the
demo's retrieval task is scored by the same method as XTREME's Tatoeba
(`RetrievalFamily.evaluate`), on the encodings of the demo's one pass over its texts.
"""

from __future__ import annotations

import json

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xopt import invariance, records
from xopt.batching import length_batches, pad, tokenize
from xopt.errors import XoptError
from xopt.progress import bar
from xopt.tasks import demo, registry


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


def _say_skipped(path, model: str, variant: str, skipped: list[tuple], total: int) -> None:
    """The one line `--resume` prints: which units of this variant the file already holds."""
    from xopt.progress import console

    if not skipped:
        console.print(f"resume: {path} holds none of the {total} units of {model}/{variant}; evaluating all",
                      highlight=False, soft_wrap=True)
        return
    names = [f"{t}:{lang}" for t, lang, *_ in skipped]
    shown = ", ".join(names[:6]) + (f", ... (+{len(names) - 6})" if len(names) > 6 else "")
    console.print(f"resume: {path} already holds {len(skipped)} of {total} units of {model}/{variant} ({shown}); "
                  f"skipping them, evaluating {total - len(skipped)}", highlight=False, soft_wrap=True)


class _Sink:
    """Where finished records go: the `out` file at once (one atomic append per unit), and the
    list this call returns."""

    def __init__(self, out):
        self.out, self.recs = out, []

    def add(self, rec: dict) -> None:
        if self.out is not None:
            records.append(self.out, [rec])
        self.recs.append(rec)


def eval_demo(loaded, suite: dict, tasks=demo.TASKS, langs=None, split: str = "test",
              batch_size: int = 64, max_examples: int | None = None, out=None, resume: bool = False,
              retrieval_layers=("middle",)) -> list[dict]:
    """Records for the demo suite's tasks on `langs` (default: all the suite has), appended to
    `out` (when given) unit by unit; `resume` skips the units `out` already holds. The retrieval
    task is scored once per `retrieval_layers` entry (parse_retrieval_layer's values), as XTREME's
    Tatoeba (`RetrievalFamily.evaluate`); every task reads the encodings of one pass over the
    distinct texts."""
    from xopt.tasks import xtreme as X

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
    card = loaded.card
    target_labels = suite["tasks"][demo.TARGET]["labels"]
    if demo.TARGET in tasks and card.labels != target_labels:
        raise XoptError(f"{loaded.directory}: model has no {demo.TARGET} head (labels {card.labels or 'none'}); "
                        f"train one with `xopt train --target {demo.TARGET}` or evaluate --tasks {demo.RETRIEVAL}")
    views = {}
    if any(registry.family_of(t).name == "retrieval" for t in tasks):
        for spec in retrieval_layers:
            v = retrieval_view(loaded, spec)
            views.setdefault(v.layer, v)     # "middle" and its number are one protocol, scored once
    examples = {lang: sets[lang][:max_examples] if max_examples else sets[lang] for lang in langs}
    model, variant = loaded.model_name, loaded.manifest["variant"]
    # (task, lang, view): one record each; English -> English retrieval is trivial
    units = [(task, lang, view) for task in tasks
             for view in (views.values() if registry.family_of(task).name == "retrieval" else (None,))
             for lang in langs if not (lang == "en" and registry.family_of(task).skips_english)]

    def key(task, lang, view):
        return (task, lang, split, "demo", view.protocol if view else None)

    held = held_units(out, model, variant) if resume else {}
    skipped = [u for u in units if key(*u) in held]
    if resume:
        _say_skipped(out, model, variant, skipped, len(units))
    sink = _Sink(out)
    common = dict(model=model, variant=variant, suite="demo", split=split,
                  **loaded.model_fields, variant_dir=str(loaded.directory), **calibration_fields(loaded.manifest))
    per_unit = {}     # (task, view layer) -> [(lang, value, n)] of every unit, held or new
    for u in skipped:
        r = held[key(*u)]
        per_unit.setdefault((u[0], u[2] and u[2].layer), []).append((u[1], r["value"], r["n_examples"]))
    timing = {}
    if len(skipped) < len(units):
        # one pass over every distinct text (translations and English sources alike), as an
        # uninterrupted run makes it, so that resumed units score exactly as they would have
        texts = sorted({e[k] for lang in langs for e in examples[lang] for k in ("text", "source")})
        tok = loaded.tokenizer()
        seqs = tokenize(tok, texts, card.input_prefix, card.max_length)
        t0 = time.perf_counter()
        with bar() as progress:
            outputs = run_ids(loaded, seqs, tok.pad_token_id, batch_size, progress,
                              f"eval {model}/{loaded.runner.name}")
        seconds = time.perf_counter() - t0
        timing = {"eval_s": round(seconds, 3), "examples_per_s": round(len(texts) / seconds, 2)}
        common.update(invariance.fields(loaded, seqs, tok.pad_token_id, batch_size))
        index = {t: i for i, t in enumerate(texts)}
        row_of = {tuple(s): i for i, s in enumerate(seqs)}

        def shared_run(batch_seqs):
            """The one pass's outputs for token sequences it encoded (retrieval's `run`)."""
            rows = [row_of[tuple(s)] for s in batch_seqs]
            return {name: arr[rows] for name, arr in outputs.items() if isinstance(arr, np.ndarray)}

        for task, lang, view in units:
            if (task, lang, view) in skipped:
                continue
            exs = examples[lang]
            fam = registry.family_of(task)
            if view is not None:    # XTREME's Tatoeba protocol, by its own code
                bitext = X.Bitext(lang, [e["id"] for e in exs], [e["text"] for e in exs],
                                  [e["id"] for e in exs], [e["source"] for e in exs])
                value, n, extra, _ = fam.evaluate(X.TASKS["tatoeba"], lang, bitext, tok, card, shared_run,
                                                  output=view.output)
                fields = dict(metric="accuracy", value=value, n_examples=n, **extra, **view.fields(),
                              note=f"Tatoeba protocol (XTREME): {lang} -> en top-1 by cosine, {view.describe()}")
            else:
                outcomes = fam.demo_outcomes(outputs, exs, index, target_labels)
                value = float(outcomes.mean() * 100)
                fields = dict(metric="accuracy", value=value, n_examples=len(exs),
                              outcomes=[round(float(o), 2) for o in outcomes])
            per_unit.setdefault((task, view and view.layer), []).append((lang, value, fields["n_examples"]))
            sink.add(records.record("eval", **common, task=task, lang=lang, example_ids=_ids_digest(exs),
                                    **fields, **timing))
    for task in tasks:
        for view in (views.values() if registry.family_of(task).name == "retrieval" else (None,)):
            got = sorted(per_unit.get((task, view and view.layer), []), key=lambda x: langs.index(x[0]))
            zs = [(v, n) for lang, v, n in got if lang != "en"]
            if zs and key(task, "avg", view) not in held:
                sink.add(records.record("eval", **common, task=task, lang="avg", metric="accuracy",
                                        value=float(np.mean([v for v, _ in zs])), n_examples=sum(n for _, n in zs),
                                        n_langs=len(zs), note="mean over evaluated languages other than en",
                                        **(view.fields() if view else {}), **timing))
    return sink.recs


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
             xtreme: dict | None = None, out: str | Path | None = None, resume: bool = False,
             retrieval_layer="middle") -> list[dict]:
    """`xopt eval`: the records of one variant on a suite. With `out`, each task x language unit's
    records are appended to it as soon as the unit is scored (under torchrun: to this process's
    own file, see `shard_out_path`); `resume` skips the units that file already holds.
    `retrieval_layer`: the embedding retrieval tasks score (parse_retrieval_layer)."""
    from xopt.variants import load_variant

    if resume and out is None:
        raise XoptError("--resume needs --out FILE: the records file of the run to finish")
    retrieval_layer = parse_retrieval_layer(retrieval_layer)
    out = shard_out_path(out) if out is not None else None
    if suite == "xtreme":
        if data is None:
            raise XoptError("--suite xtreme needs --data DIR (XTREME's download layout or google/xtreme HF dirs)")
        return evaluate_xtreme(variant_dir, data, tasks, langs, split, batch_size, max_examples, **(xtreme or {}),
                               out=out, resume=resume, retrieval_layer=retrieval_layer)
    if suite != "demo":
        raise XoptError(f"unknown suite {suite!r}; available: demo, xtreme")
    suite_data = demo.load_suite(Path(data) if data else demo.ensure_suite())
    loaded = load_variant(variant_dir)
    return eval_demo(loaded, suite_data, tuple(tasks or demo.TASKS), langs, split, batch_size, max_examples,
                     out=out, resume=resume, retrieval_layers=(retrieval_layer,))


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

REFERENCE_VARIANT = "fp32"


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


def bucc_thresholds(paths, model: str, protocol: str | None = None) -> dict[str, float]:
    """{lang: threshold} from the reference variant's bucc2018 records of `model` measured under
    retrieval `protocol` (records that carry none, written before schema 2, count as any)."""
    recs, _ = records.read(paths, strict=True)
    out = {}
    for r in recs:
        if (r["kind"] == "eval" and r.get("suite") == "xtreme" and r["task"] == "bucc2018" and r["model"] == model
                and r["variant"] == REFERENCE_VARIANT and "threshold" in r
                and records.retrieval_protocol(r) in (None, protocol)):
            out[r["lang"]] = float(r["threshold"])
    return out


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


def _choose_bucc_threshold(loaded, tok, lang, data_dir, batch_size, progress, view) -> float:
    """XTREME's protocol: mine the dev split, pick the F1-optimal threshold on its gold pairs."""
    from xopt.tasks import retrieval, xtreme as X

    dev = X.load("bucc2018", lang, "dev", data_dir)
    seqs = tokenize(tok, dev.src + dev.en, loaded.card.input_prefix, loaded.card.max_length)
    emb = run_ids(loaded, seqs, tok.pad_token_id, batch_size, progress, f"bucc2018 {lang} dev threshold")
    emb = emb[view.output]
    cands = retrieval.mine(emb[:len(dev.src)], emb[len(dev.src):], k=4)
    s_index, e_index = {i: n for n, i in enumerate(dev.src_ids)}, {i: n for n, i in enumerate(dev.en_ids)}
    return retrieval.optimal_threshold(cands, {(s_index[s], e_index[e]) for s, e in dev.gold})


def evaluate_xtreme(variant_dir, data_dir, tasks=None, langs=None, split: str = "test", batch_size: int = 64,
                    max_examples: int | None = None, bucc_threshold_from=None, out=None,
                    resume: bool = False, retrieval_layer="middle") -> list[dict]:
    """Zero-shot XTREME records of one variant (module notes above). Everything is loaded and
    checked before the model runs; sharded over torchrun's processes by (task, language). Each
    unit's record goes to `out` (when given) as soon as it is scored; `resume` skips the units
    `out` already holds (their values still count in the task's "avg")."""
    from xopt.tasks import xtreme as X
    from xopt.variants import load_variant

    rank, world = shard()
    if split not in X.SPLITS:
        raise XoptError(f"unknown split {split!r}; use one of {', '.join(X.SPLITS)}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise XoptError(f"--data {data_dir}: not a directory")
    loaded = load_variant(variant_dir)
    card = loaded.card
    units = _plan(card, tasks, langs)
    view = retrieval_view(loaded, retrieval_layer) if any(X.TASKS[t].kind == "retrieval" for t, _ in units) else None

    def proto(t):
        return view.protocol if view and X.TASKS[t].kind == "retrieval" else None

    def fields(t):
        return view.fields() if proto(t) else {}
    mine_units = units[rank::world]
    # every process reads and checks all the data first, so a bad file stops all of them alike
    data = _load_units(units, data_dir, split, max_examples)
    variant = loaded.manifest["variant"]
    held = held_units(out, loaded.model_name, variant) if resume else {}
    skipped = [u for u in mine_units if (*u, split, "xtreme", proto(u[0])) in held]
    if resume:
        _say_skipped(out, loaded.model_name, variant, skipped, len(mine_units))
    todo = [u for u in mine_units if u not in skipped]
    thresholds = {}
    bucc_langs = [lang for t, lang in todo if t == "bucc2018"]
    if bucc_langs:
        given = bucc_thresholds(bucc_threshold_from, loaded.model_name, view.protocol) if bucc_threshold_from else {}
        for lang in bucc_langs:
            if lang in given:
                thresholds[lang] = {"value": given[lang], "from": "records:" + ",".join(map(str, bucc_threshold_from))}
            elif variant != REFERENCE_VARIANT:
                raise XoptError(f"bucc2018 {lang}: variant {variant} is scored with the threshold the {REFERENCE_VARIANT} "
                                f"variant of model {loaded.model_name!r} chose on dev; evaluate that first and pass "
                                "--bucc-threshold-from ITS_RESULTS.jsonl")
            else:
                X.load("bucc2018", lang, "dev", data_dir)   # fail before running if the dev gold is missing
                thresholds[lang] = None
    tok = loaded.tokenizer()
    common = dict(model=loaded.model_name, variant=variant, suite="xtreme", split=split, **loaded.model_fields,
                  variant_dir=str(loaded.directory), rank=rank, world_size=world, **calibration_fields(loaded.manifest))
    sink = _Sink(out)
    probe: list = []     # the first unit's token sequences, on which batch invariance is measured
    with bar() as progress:
        for t, lang in todo:
            task = X.TASKS[t]
            if t == "bucc2018" and thresholds[lang] is None:
                thresholds[lang] = {"value": _choose_bucc_threshold(loaded, tok, lang, data_dir, batch_size, progress,
                                                                    view), "from": f"{variant} dev"}
            t0 = time.perf_counter()
            value, n, extra, n_run = _score_unit(loaded, tok, task, lang, data[(t, lang)], batch_size, progress,
                                                 thresholds.get(lang), view, probe if t == todo[0][0] else None)
            sec = time.perf_counter() - t0
            if probe and "batch_invariance" not in common:
                common.update(invariance.fields(loaded, probe, tok.pad_token_id, batch_size))
            sink.add(records.record("eval", **common, task=t, lang=lang, metric=task.metric, value=value,
                                    n_examples=n, eval_s=round(sec, 3), sequences_run=n_run,
                                    examples_per_s=round(n / sec, 2), **extra, **fields(t)))
    done = {(r["task"], r["lang"]): r for r in sink.recs}
    done.update({u: held[(*u, split, "xtreme", proto(u[0]))] for u in skipped})
    summary = [(t, lang, done[(t, lang)]["value"], done[(t, lang)]["n_examples"]) for t, lang in mine_units]
    if world > 1:
        summary = _gather(summary)
    if rank == 0:
        order = {u: i for i, u in enumerate(units)}
        summary.sort(key=lambda s: order[(s[0], s[1])])
        for t in dict.fromkeys(u[0] for u in units):
            if (t, "avg", split, "xtreme", proto(t)) in held:
                continue
            rows = [s for s in summary if s[0] == t]
            sink.add(records.record("eval", **common, task=t, lang="avg", metric=X.TASKS[t].metric,
                                    value=float(np.mean([s[2] for s in rows])), n_examples=sum(s[3] for s in rows),
                                    n_langs=len(rows), langs=[s[1] for s in rows],
                                    note="mean over the evaluated languages, English included (XTREME)",
                                    **fields(t)))
    return sink.recs


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
