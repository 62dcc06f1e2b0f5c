"""Per-layer sensitivity and the mixed-precision fallback.

Quantise one unit at a time (one Linear, or one kind of Linear across all layers: query,
key, value, attention output, FFN in, FFN out) with the profile's ranges, everything else
in full precision, and measure the drop of `output_fidelity` (100 x mean cosine of every
model output against the unquantised model) on the held-out multilingual sample. The
simulation is torch's fake-quantisation with exactly the scales the backend uses
(`profile.fake_quantize`), which is what makes 60+ one-layer builds cheap enough to run;
the graph the backend builds then leaves the chosen layers out (ONNX: `nodes_to_exclude`).

Fallback: `keep_k` keeps the k most sensitive units; `max_drop` keeps the most sensitive
units, one at a time, until the measured drop with everything else quantised is <= max_drop
(fidelity points), re-measured after each step.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

from xopt.calibration.profile import Profile, fake_quantize, output_fidelity
from xopt.errors import XoptError

_LAYER = re.compile(r"\.layer\.(\d+)\.")


def kind_of(name: str) -> str:
    """`encoder.layer.3.attention.self.query` -> `attention.self.query` (the op kind)."""
    m = _LAYER.search(name)
    return name[m.end():] if m else name


def units(names: list[str], unit: str = "layer") -> dict[str, list[str]]:
    """unit name -> Linear names: "layer" = one Linear each; "kind" = grouped by op kind."""
    if unit == "layer":
        return {n: [n] for n in names}
    if unit == "kind":
        groups = defaultdict(list)
        for n in names:
            groups[kind_of(n)].append(n)
        return dict(groups)
    raise XoptError(f"unknown sensitivity unit {unit!r}; use layer or kind")


def run_outputs(model, batches, output_names) -> dict[str, np.ndarray]:
    """Outputs of `model` over padded (ids, mask, index) batches, in original order."""
    import torch

    out: dict[str, np.ndarray] = {}
    n = sum(len(idx) for _, _, idx in batches)
    with torch.inference_mode():
        for ids, mask, idx in batches:
            got = model(torch.from_numpy(ids), torch.from_numpy(mask))
            for name, t in zip(output_names, got):
                arr = t.float().numpy()
                if name not in out:
                    out[name] = np.empty((n,) + arr.shape[1:], dtype=np.float32)
                out[name][idx] = arr
    # per-token outputs differ in length between batches: compare pooled outputs only
    return {k: v for k, v in out.items() if v.ndim == 2}


def dev_batches(tokenizer, texts: list[str], prefix: str = "", max_length: int = 512, batch_size: int = 32):
    from xopt.batching import length_batches, pad, tokenize

    if not texts:
        raise XoptError("empty held-out sample: sensitivity and SmoothQuant's alpha need held-out texts "
                        "(raise --calib-dev-samples, or give a source with more text than --calib-samples)")
    seqs = tokenize(tokenizer, texts, prefix, max_length)
    return [(*pad([seqs[i] for i in idx], tokenizer.pad_token_id), idx)
            for idx in length_batches([len(s) for s in seqs], batch_size)]


def fidelity(model, profile: Profile, batches, output_names, ref, **fq) -> float:
    with fake_quantize(model, profile, **fq):
        return output_fidelity(ref, run_outputs(model, batches, output_names))


def rank(model, profile: Profile, batches, output_names, names: list[str], unit: str = "layer",
         ref=None) -> list[dict]:
    """Sensitivity of each unit, most sensitive first: [{"unit", "layers", "drop", "rank"}]."""
    from xopt.progress import track

    ref = ref or run_outputs(model, batches, output_names)
    rows = []
    for u, members in track(list(units(names, unit).items()), "sensitivity"):
        drop = 100.0 - fidelity(model, profile, batches, output_names, ref, only=members)
        rows.append({"unit": u, "layers": members, "drop": drop})
    rows.sort(key=lambda r: -r["drop"])
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def choose_keep(model, profile: Profile, batches, output_names, names: list[str], ranking: list[dict],
                keep_k: int | None = None, max_drop: float | None = None, ref=None) -> tuple[list[str], float]:
    """(Linear names to keep in higher precision, measured drop with the rest quantised)."""
    ref = ref or run_outputs(model, batches, output_names)
    keep: list[str] = []
    if keep_k is not None:
        if keep_k < 0:
            raise XoptError("--keep-fp16 must be >= 0")
        for r in ranking[:keep_k]:
            keep += r["layers"]
    drop = 100.0 - fidelity(model, profile, batches, output_names, ref, only=names, skip=keep)
    if max_drop is not None:
        for r in ranking:
            if drop <= max_drop:
                break
            if all(n in keep for n in r["layers"]):
                continue
            keep += [n for n in r["layers"] if n not in keep]
            drop = 100.0 - fidelity(model, profile, batches, output_names, ref, only=names, skip=keep)
    return keep, drop
