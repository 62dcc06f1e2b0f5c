"""Sentence retrieval on the encoder itself (BUCC 2018 mining: F1; Tatoeba: top-1 accuracy).

Embeddings are the model's `layer_embedding` (mean-pooled hidden states of
`ModelCard.retrieval_layer`, default the middle layer, as XTREME), L2-normalised.

API (stable):
- `normalize(x)`; `knn(x, y, k) -> (sims, idx)` by cosine: the similarity matrix in blocks of rows
  (`CHUNK_BYTES` each, or `chunk_rows`), keeping only each row's top k: memory O(N k + block),
  which mines BUCC's ~400k x 400k test sides where the whole matrix (640 GB) would not fit.
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


# Bytes of one block of the similarity matrix (rows of one side x every sentence of the other):
# the only part of the N x M matrix that exists at any time.
CHUNK_BYTES = 256 << 20


def _chunk_rows(m: int, chunk_rows: int | None) -> int:
    return max(1, chunk_rows or CHUNK_BYTES // (4 * max(m, 1)))


def _best_first(vals, idx):
    """Rows of top-k (values, indices) ordered by descending value, ties by ascending index (the
    order of a stable argsort of the full row)."""
    idx, order = idx.sort(dim=1)
    vals = vals.gather(1, order)
    order = vals.argsort(dim=1, descending=True, stable=True)
    return vals.gather(1, order), idx.gather(1, order)


def _row_topk(s, k: int):
    """The first k of a stable descending argsort of each row of the block `s`, with their values.
    Top-k leaves open which of several values tied at the k-th place it keeps; the rows where
    that happens (the (k+1)-th value equals the k-th) are sorted whole, so that the lower indices
    stay, as in the whole-matrix argsort."""
    import torch

    if k == 1:
        return s.max(dim=1, keepdim=True)        # the first maximal index of each row
    kk = min(k + 1, s.shape[1])
    v, i = s.topk(kk, dim=1)
    tied = (v[:, k] == v[:, k - 1]).nonzero().flatten().tolist() if kk > k else []
    v, i = _best_first(v[:, :k], i[:, :k])
    for r in tied:
        o = torch.argsort(s[r], descending=True, stable=True)[:k]
        v[r], i[r] = s[r, o], o
    return v, i


def knn(x: np.ndarray, y: np.ndarray, k: int, chunk_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours in `y` of each row of `x` (both already normalised), best first
    (ties: lower index first): the first k of a stable argsort of each row of x @ y.T, computed in
    blocks of `chunk_rows` rows (default: `CHUNK_BYTES` of similarities), so that memory is
    O(N k + chunk_rows M), never the N x M matrix. Torch (a dependency already) does the block
    products and top-k; an exact flat index (faiss' IndexFlatIP) does the same products and would
    add a dependency for nothing. `mine` runs one pass per direction, so that top-k always runs
    along a block's contiguous rows (along its columns it is strided and much slower)."""
    import torch

    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
    k = min(k, len(yt))
    rows = _chunk_rows(len(yt), chunk_rows)
    sims_out, idx_out = np.empty((len(xt), k), np.float32), np.empty((len(xt), k), np.int64)
    block = torch.empty(min(rows, len(xt)), len(yt))
    with torch.no_grad():
        for a in range(0, len(xt), rows):
            sims = block[:len(xt[a:a + rows])]
            torch.mm(xt[a:a + rows], yt.T, out=sims)
            v, i = _row_topk(sims, k)
            sims_out[a:a + rows], idx_out[a:a + rows] = v.numpy(), i.numpy()
    return sims_out, idx_out


def _margin_best(q: np.ndarray, other: np.ndarray, cand: np.ndarray, q_mean: np.ndarray, other_mean: np.ndarray,
                 rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per query row: the best ratio-margin score among its candidates and that candidate's index;
    in blocks of rows so that the gathered candidate vectors stay small."""
    best_s, best_j = np.empty(len(q), np.float32), np.empty(len(q), np.int64)
    for a in range(0, len(q), rows):
        c = cand[a:a + rows]
        cos = np.einsum("id,ikd->ik", q[a:a + rows], other[c])
        score = cos / ((q_mean[a:a + rows, None] + other_mean[c]) / 2)
        arg = score.argmax(1)
        best_s[a:a + rows] = score[np.arange(len(c)), arg]
        best_j[a:a + rows] = c[np.arange(len(c)), arg]
    return best_s, best_j


def mine(src: np.ndarray, en: np.ndarray, k: int = 4, chunk_rows: int | None = None) -> list[tuple[float, int, int]]:
    x, y = normalize(src), normalize(en)
    x2y_sim, x2y_ind = knn(x, y, k, chunk_rows)
    y2x_sim, y2x_ind = knn(y, x, k, chunk_rows)
    x2y_mean, y2x_mean = x2y_sim.mean(1), y2x_sim.mean(1)
    fwd_score, fwd_best = _margin_best(x, y, x2y_ind, x2y_mean, y2x_mean)
    bwd_score, bwd_best = _margin_best(y, x, y2x_ind, y2x_mean, x2y_mean)
    pairs = np.concatenate([np.stack([np.arange(len(x)), fwd_best], 1), np.stack([bwd_best, np.arange(len(y))], 1)])
    scores = np.concatenate([fwd_score, bwd_score])
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
