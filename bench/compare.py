"""Compare a pytest-benchmark JSON against the saved baseline of this kind of machine.

    python -m pytest bench/ --benchmark-json=bench-now.json
    python bench/compare.py bench-now.json [--baseline bench/baselines/KIND.json] [--threshold 0.15]

Exit 1 when any benchmark's median is more than `threshold` slower than the baseline's.
Save a new baseline: copy bench-now.json to bench/baselines/$(python bench/compare.py --kind).json.
"""

import argparse
import json
import sys
from pathlib import Path

from xopt.measure import compare_benchmark_json, machine_kind

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("current", nargs="?", help="pytest-benchmark JSON of this run")
    ap.add_argument("--baseline", help="baseline JSON (default: bench/baselines/<machine kind>.json)")
    ap.add_argument("--threshold", type=float, default=0.15, help="allowed median regression (0.15 = 15%%)")
    ap.add_argument("--kind", action="store_true", help="print this machine's kind and exit")
    a = ap.parse_args(argv)
    if a.kind:
        print(machine_kind())
        return 0
    if not a.current:
        ap.error("give the pytest-benchmark JSON of this run")
    base = Path(a.baseline) if a.baseline else HERE / "baselines" / f"{machine_kind()}.json"
    if not base.is_file():
        print(f"compare: error: no baseline {base}; save one with: cp {a.current} {base}", file=sys.stderr)
        return 2
    rows, failed = compare_benchmark_json(json.loads(base.read_text()), json.loads(Path(a.current).read_text()),
                                          a.threshold)
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "new"
        flag = "  REGRESSED" if r.get("regressed") else ""
        print(f"{r['name']:<70} {r['median_s'] * 1e3:9.3f} ms  vs baseline {ratio}{flag}")
    print(f"{sum(bool(r.get('regressed')) for r in rows)} of {len(rows)} medians regressed by more than "
          f"{a.threshold:.0%} against {base}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
