"""Calibration study: en-only vs multilingual calibration, and calibration methods,
for `onnx-int8-static` on one checkpoint, scored per language on the demo suite.

    python bench/calibration_study.py CHECKPOINT --out DIR [--langs de,ar,...] [--samples 256]
        [--configs minmax:en,minmax:all,percentile:all,entropy:all,mse:all,smoothquant:all]

Builds the fp32 reference and one onnx-int8-static variant per configuration, evaluates each on the
demo suite (records with their `calibration` field appended to DIR/results.jsonl as they are
produced), then prints `xopt.report.calibration_section` as Markdown (the tables `xopt report`
shows; the sensitivity plots, when there are sensitivity records, go into DIR).
Not a test: minutes of CPU time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--langs", default=None, help="evaluation languages (default: every demo language)")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--max-examples", type=int, default=None)
    ap.add_argument("--configs", default="minmax:en,minmax:all,percentile:all,entropy:all,mse:all,smoothquant:all")
    args = ap.parse_args(argv)

    from xopt import records
    from xopt.evaluate import eval_demo
    from xopt.tasks import demo
    from xopt.variants import compile_variant, load_variant

    args.out.mkdir(parents=True, exist_ok=True)
    res = args.out / "results.jsonl"
    suite_path = demo.ensure_suite()
    suite = demo.load_suite(suite_path)
    langs = args.langs.split(",") if args.langs else None
    todo = [("fp32", "fp32", {})]
    for cfg in args.configs.split(","):
        method, cl = cfg.rsplit(":", 1)
        todo.append((f"int8-{method}-{cl}", "onnx-int8-static", {"calib_method": method, "calib_langs": cl,
                                                          "calib_samples": args.samples,
                                                          "calib_data": str(suite_path)}))
    done = {r.get("variant_dir") for r in records.read([res])[0]} if res.is_file() else set()
    for tag, variant, opts in todo:
        d = args.out / "variants" / tag
        if str(d) in done:   # a re-run continues where an interrupted one stopped
            continue
        t0 = time.perf_counter()
        if not d.exists():
            compile_variant(args.checkpoint, variant, d, options=opts or None)
        t1 = time.perf_counter()
        recs = eval_demo(load_variant(d), suite, langs=langs, max_examples=args.max_examples)
        records.append(res, recs)
        print(f"{tag}: built in {t1 - t0:.0f} s, evaluated in {time.perf_counter() - t1:.0f} s", flush=True)
    recs, _ = records.read([res])
    print(study_markdown(recs, args.out))


def study_markdown(recs: list[dict], out: Path) -> str:
    """The report's calibration section of `recs`, as Markdown."""
    from xopt.report import Doc, calibration_section
    from xopt.report.render import to_markdown

    doc = Doc()
    calibration_section(doc, recs, out=out)
    return to_markdown(doc)


if __name__ == "__main__":
    main()
