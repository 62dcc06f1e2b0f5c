"""Compare two `xopt demo` output directories for a behaviour-preserving change: checkpoint
weights (sha256), variant manifests (their `files` hashes and every field but build times,
hosts and paths), eval records (all but times, hosts and paths), bench records' identity fields
(not their timings) and summary.csv's accuracy columns.

    python bench/demo_identity.py BEFORE_DIR AFTER_DIR     # exit status 1 when anything differs

Paths differ between two runs (the output and cache directories), and so does what a
calibration profile records of them; a `DIFF files` line on calibration_profile.json alone is
that, when the two runs used different directories.
"""
import csv, hashlib, json, sys
from pathlib import Path

a, b = Path(sys.argv[1]), Path(sys.argv[2])
VOL = {"created", "host", "build_s", "manifest_sha256", "variant_dir", "eval_s", "examples_per_s", "seconds", "source"}
# what a bench record measured on, not what it measured (tokens_per_call follows the time-bounded call count)
BENCH_ID = ("model", "variant", "batch", "seq_len", "length_dist", "scenario", "lang", "params", "non_embedding_params",
            "quantized_ops", "rounds", "input_ids", "mean_tokens", "length_stats", "artefact_mb", "batching")
bad = 0

def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if k not in VOL}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x

def check(label, x, y):
    global bad
    ok = x == y
    bad += not ok
    print(("same " if ok else "DIFF ") + label)
    return ok

def sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()

for p in sorted(a.glob("checkpoints/**/*.safetensors")):
    check(f"weights {p.relative_to(a)}", sha(p), sha(b / p.relative_to(a)))
for p in sorted(a.glob("variants/*/*/manifest.json")):
    m1, m2 = json.loads(p.read_text()), json.loads((b / p.relative_to(a)).read_text())
    check(f"files {p.parent.relative_to(a)}", m1.get("files"), m2.get("files"))
    if not check(f"manifest {p.parent.relative_to(a)}", strip(m1), strip(m2)):
        s1, s2 = strip(m1), strip(m2)
        print("   ", {k for k in set(s1) | set(s2) if s1.get(k) != s2.get(k)})

def recs(d):
    out = {"eval": [], "bench": []}
    for line in (d / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["kind"] == "eval":
            r = strip(r); r.get("batch_invariance", {}).pop("seconds", None); out["eval"].append(r)
        elif r["kind"] == "bench":
            out["bench"].append({k: r.get(k) for k in BENCH_ID})
    key = lambda r: json.dumps(r, sort_keys=True)
    return {k: sorted(v, key=key) for k, v in out.items()}

r1, r2 = recs(a), recs(b)
check(f"eval records ({len(r1['eval'])} vs {len(r2['eval'])})", r1["eval"], r2["eval"])
if r1["eval"] != r2["eval"]:
    for x, y in zip(r1["eval"], r2["eval"]):
        if x != y:
            print("   first diff keys:", {k for k in set(x) | set(y) if x.get(k) != y.get(k)}); break
check(f"bench identity ({len(r1['bench'])} vs {len(r2['bench'])})", r1["bench"], r2["bench"])
ACC = ("kind", "model", "variant", "task", "lang", "suite", "split", "metric", "n_examples", "score", "baseline_score",
       "gain", "reference_gain", "retention", "retention_lo", "retention_hi", "retention_uncertain", "batch", "seq_len")
rows = lambda d: sorted(tuple(r[k] for k in ACC) for r in csv.DictReader(open(d / "report" / "summary.csv")))
check("summary.csv accuracy columns", rows(a), rows(b))
print("DIFFERENCES:", bad)
sys.exit(1 if bad else 0)
