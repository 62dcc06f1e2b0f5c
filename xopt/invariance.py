"""Batch invariance: whether a variant gives a text the same outputs alone as among neighbours.

A dynamic-quantised variant takes its activation scales at run time over the whole input
tensor: over every row of the batch, padding included. A text's answer then depends on the
texts it is batched with, so a server that batches requests (Triton's dynamic batching) answers
differently from a batch-1 server, and `xopt eval` (batch 64) scores neither exactly. Per-token
(per-row) dynamic scales and static (calibrated) scales do not depend on the neighbours.

`measure` runs a fixed sample of the eval's own token sequences twice: once as one batch of the
eval batch size (`PROBE_TEXTS` probe texts among evenly spaced neighbours of the eval data,
padded to the longest, as a dynamic batcher forms it) and once each probe text alone (batch 1,
no padding). It compares the probe rows: the largest |difference| of every output, the argmax
agreement of the head's scores, the lowest cosine of the embeddings. The cost is `PROBE_TEXTS`
batch-1 calls and one batch call per evaluated variant. The result goes into every eval record
of the run as `batch_invariance` (xopt.records.EvalRecord).
"""

from __future__ import annotations

import time

import numpy as np

from xopt.batching import pad
from xopt.modeling import PER_TOKEN_OUTPUTS

PROBE_TEXTS = 16
# Outputs whose argmax is the answer (classification, tagging, span ends); the rest are embeddings.
SCORE_OUTPUTS = ("logits", "token_logits", "start_logits", "end_logits")
# Invariant: every output's largest |difference| within this fraction of the output's own largest
# magnitude (at least 1), every argmax equal. Float kernels that pick another blocking for another
# batch shape stay far below it; per-batch int8 scales do not.
TOLERANCE = 1e-4


def _rows(arr: np.ndarray, name: str, length: int) -> np.ndarray:
    """One row of an output as compared: per-token outputs cut to the text's own length."""
    return arr[:length] if name in PER_TOKEN_OUTPUTS else arr


def _compare(name: str, alone: list[np.ndarray], batched: list[np.ndarray]) -> dict:
    """Largest |difference| of one output over the probe texts, and the agreement of its argmax
    over the last axis (scores: a text's class, a token's tag, a span end's token) or the lowest
    cosine (embeddings)."""
    out = {"max_abs_diff": max(float(np.abs(a - b).max()) for a, b in zip(alone, batched)),
           "max_abs": max(float(np.abs(a).max()) for a in alone)}
    if name in SCORE_OUTPUTS:
        same = np.concatenate([np.ravel(a.argmax(-1) == b.argmax(-1)) for a, b in zip(alone, batched)])
        out["argmax_agreement"] = float(same.mean())
    else:
        a, b = np.stack(alone), np.stack(batched)
        cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)
        out["min_cosine"] = float(cos.min())
    return out


def measure(loaded, seqs: list[list[int]], pad_id: int, batch_size: int, activation_scales: str | None = None,
            n_probe: int = PROBE_TEXTS) -> dict | None:
    """The `batch_invariance` record field of a variant on the eval's token sequences `seqs`
    (module doc); None when there are fewer than two sequences or batch 1 is the eval batch."""
    batch = min(batch_size, len(seqs))
    if batch < 2:
        return None
    t0 = time.perf_counter()
    rows = np.unique(np.linspace(0, len(seqs) - 1, batch).round().astype(int))
    probe = rows[np.unique(np.linspace(0, len(rows) - 1, min(n_probe, len(rows))).round().astype(int))]
    ids, mask = pad([seqs[i] for i in rows], pad_id)
    together = loaded.runner(ids, mask)
    at = {int(r): k for k, r in enumerate(rows)}
    alone: dict[str, list] = {}
    batched: dict[str, list] = {}
    for i in probe:
        one = loaded.runner(*pad([seqs[i]], pad_id))
        for name, arr in one.items():
            alone.setdefault(name, []).append(_rows(np.asarray(arr[0], np.float32), name, len(seqs[i])))
            batched.setdefault(name, []).append(_rows(np.asarray(together[name][at[int(i)]], np.float32), name,
                                                      len(seqs[i])))
    outputs = {name: _compare(name, alone[name], batched[name]) for name in alone}
    agree = [o["argmax_agreement"] for o in outputs.values() if "argmax_agreement" in o]
    cosines = [o["min_cosine"] for o in outputs.values() if "min_cosine" in o]
    invariant = all(o["max_abs_diff"] <= TOLERANCE * max(1.0, o["max_abs"]) for o in outputs.values()) and \
        all(a == 1.0 for a in agree)
    head = [n for n in SCORE_OUTPUTS if n in outputs]
    return {"batch": int(len(rows)), "texts": int(len(probe)),
            "max_abs_diff": max(outputs[n]["max_abs_diff"] for n in (head or outputs)),
            "max_abs_diff_of": "/".join(head) if head else "embeddings",
            "argmax_agreement": min(agree) if agree else None, "min_cosine": min(cosines) if cosines else None,
            "invariant": bool(invariant), "tolerance": TOLERANCE, "activation_scales": activation_scales,
            "outputs": outputs, "seconds": round(time.perf_counter() - t0, 3)}



def fields(loaded, seqs: list[list[int]], pad_id: int, batch_size: int) -> dict:
    """{"batch_invariance": measure(...)} for the eval records of a variant (empty when not
    measurable), with the registry's account of its activation scales."""
    from xopt.variants import REGISTRY

    entry = REGISTRY.get(loaded.manifest.get("variant"))
    got = measure(loaded, seqs, pad_id, batch_size, entry.activation_scales if entry else None)
    return {"batch_invariance": got} if got else {}
