"""Sentence retrieval on the encoder itself (BUCC 2018 mining: F1; Tatoeba: top-1 accuracy).

Embeddings are the model's `layer_embedding` (mean-pooled hidden states of
`ModelCard.retrieval_layer`, default the middle layer, as XTREME), L2-normalised.

API (stable):
- `normalize(x)`; `knn(x, y, k) -> (sims, idx)` by cosine.
- `mine(src, en, k=4) -> list[(score, i_src, j_en)]`: BUCC candidates as XTREME (LASER's
  `mine_bitexts`, retrieval "max", margin "ratio"): score(x, y) = cos(x, y) / ((mean cos of x's k
  nearest English neighbours + mean cos of y's k nearest source neighbours) / 2); each source
  sentence proposes its best-scoring English neighbour and each English sentence its best source
  neighbour; pairs are taken by descending score with every sentence used at most once. No threshold.
- `optimal_threshold(cands, gold) -> float`: XTREME's `bucc_optimize`: the score threshold that
  maximises F1 on labelled (dev) data; midpoint between the last kept and the next candidate.
- `bucc_counts(cands, threshold, gold, n_src) -> [n_src, 3]`: per source sentence (tp, fp, fn) of the
  pairs scoring above `threshold`; `f1(counts)` in percent (xopt.tasks.tagging.f1).
- `tatoeba_outcomes(src, en) -> 0/1` per source sentence: its nearest English sentence is its
  translation (xx -> en, as XTREME).
"""

from __future__ import annotations

import numpy as np

from xopt.tasks.tagging import f1  # noqa: F401  (one micro-F1 for tagging and mining)


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours in `y` of each row of `x` (both already normalised), best first."""
    sims = x @ y.T
    k = min(k, y.shape[0])
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, 1), idx


def mine(src: np.ndarray, en: np.ndarray, k: int = 4) -> list[tuple[float, int, int]]:
    x, y = normalize(src), normalize(en)
    x2y_sim, x2y_ind = knn(x, y, k)
    y2x_sim, y2x_ind = knn(y, x, k)
    x2y_mean, y2x_mean = x2y_sim.mean(1), y2x_sim.mean(1)
    fwd = np.einsum("id,ikd->ik", x, y[x2y_ind]) / ((x2y_mean[:, None] + y2x_mean[x2y_ind]) / 2)
    bwd = np.einsum("jd,jkd->jk", y, x[y2x_ind]) / ((y2x_mean[:, None] + x2y_mean[y2x_ind]) / 2)
    fwd_best = x2y_ind[np.arange(len(x)), fwd.argmax(1)]
    bwd_best = y2x_ind[np.arange(len(y)), bwd.argmax(1)]
    pairs = np.concatenate([np.stack([np.arange(len(x)), fwd_best], 1), np.stack([bwd_best, np.arange(len(y))], 1)])
    scores = np.concatenate([fwd.max(1), bwd.max(1)])
    seen_s, seen_e, out = set(), set(), []
    for i in np.argsort(-scores, kind="stable"):
        s, e = int(pairs[i, 0]), int(pairs[i, 1])
        if s not in seen_s and e not in seen_e:
            seen_s.add(s); seen_e.add(e)
            out.append((float(scores[i]), s, e))
    return out


def optimal_threshold(cands: list[tuple[float, int, int]], gold: set[tuple[int, int]]) -> float:
    items = sorted(cands, key=lambda c: -c[0])
    n_gold = len(gold)
    extracted = correct = 0
    best_f1, threshold = 0.0, items[0][0] + 1.0 if items else 0.0
    for i, (score, s, e) in enumerate(items):
        extracted += 1
        correct += (s, e) in gold
        if correct:
            p, r = correct / extracted, correct / n_gold
            f = 2 * p * r / (p + r)
            if f > best_f1:
                best_f1 = f
                threshold = (score + items[i + 1][0]) / 2 if i + 1 < len(items) else score - 1e-6
    return float(threshold)


def bucc_counts(cands: list[tuple[float, int, int]], threshold: float, gold: set[tuple[int, int]],
                n_src: int) -> np.ndarray:
    counts = np.zeros((n_src, 3), dtype=np.int64)
    for score, s, e in cands:
        if score > threshold:
            counts[s, 0 if (s, e) in gold else 1] += 1
    for s, e in gold:
        counts[s, 2] += 1
    counts[:, 2] -= counts[:, 0]
    return counts


def tatoeba_outcomes(src: np.ndarray, en: np.ndarray) -> np.ndarray:
    _, idx = knn(normalize(src), normalize(en), 1)
    return (idx[:, 0] == np.arange(len(src))).astype(np.float64)
