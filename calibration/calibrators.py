"""Calibrators: from observed activations to a clipping range (amax) per tensor.

One `Histogram` of |x| per tensor (fixed-width bins starting at 0, grown as larger values
arrive, as TensorRT's and Model-Optimizer's histogram calibrators do), plus the exact min and
max. The methods turn it into `amax`, the clipping threshold of a symmetric int8 grid:

| method | amax |
|---|---|
| `minmax` | max |x| seen (no clipping) |
| `percentile` | the `percentile`-th percentile of |x| (99.9, 99.99, ...) |
| `entropy` | the threshold whose 8-bit quantised histogram is closest in KL divergence to the clipped one (TensorRT's algorithm, Migacz 2017) |
| `mse` | the threshold minimising the mean squared int8 quantisation error (rounding + clipping) over the histogram |

A tensor's range for an asymmetric (uint8) grid is then [max(min, -amax), min(max, amax)].

Why our own and not ONNX Runtime's `HistogramCollector`: it takes a list of arrays per tensor
and calls `np.asarray` on it, which fails on calibration samples of different lengths (we run
batch 1, unpadded, so padded positions never enter the statistics); it has no MSE method; its
entropy method works on a signed histogram with 128 quantised bins over [-t, t] (7-bit
resolution, and its default of 128 bins leaves a single candidate). Its percentile is the same
definition as ours; tests/test_calibration.py checks the two agree on the same data.
"""

from __future__ import annotations

import math

import numpy as np

METHODS = ("minmax", "percentile", "entropy", "mse")
DEFAULTS = {"minmax": {}, "percentile": {"percentile": 99.99}, "entropy": {"start_bin": 128},
            "mse": {"start_bin": 128}}
NUM_BINS = 2048


class Histogram:
    """|x| histogram with bins of one width from 0; grows (and halves its resolution when it
    would exceed 4x `bins`) so that one early small batch cannot pin the range."""

    def __init__(self, bins: int = NUM_BINS):
        self.bins = bins
        self.counts: np.ndarray | None = None
        self.width = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.n = 0

    @property
    def edges(self) -> np.ndarray:
        return np.arange(len(self.counts) + 1) * self.width

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).ravel()
        if not x.size:
            return
        self.min, self.max = min(self.min, float(x.min())), max(self.max, float(x.max()))
        a = np.abs(x)
        amax = float(a.max())
        self.n += x.size
        if self.counts is None:
            self.width = amax / self.bins if amax > 0 else 1e-8
            self.counts = np.zeros(self.bins, dtype=np.int64)
        need = int(math.floor(amax / self.width)) + 1
        if need > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(need - len(self.counts), np.int64)])
        while len(self.counts) > 4 * self.bins:   # merge pairs: half the resolution, bounded memory
            c = self.counts if len(self.counts) % 2 == 0 else np.append(self.counts, 0)
            self.counts = c.reshape(-1, 2).sum(1)
            self.width *= 2
        idx = np.minimum((a / self.width).astype(np.int64), len(self.counts) - 1)
        self.counts += np.bincount(idx, minlength=len(self.counts))


def compact(hist: Histogram, max_bins: int = NUM_BINS) -> Histogram:
    """The histogram with neighbouring bins merged so it has at most `max_bins` bins (the
    search of entropy and MSE is linear in bins x candidates; TensorRT uses 2048 bins)."""
    if hist.counts is None or len(hist.counts) <= max_bins:
        return hist
    k = -(-len(hist.counts) // max_bins)
    c = np.concatenate([hist.counts, np.zeros(-len(hist.counts) % k, np.int64)])
    out = Histogram(hist.bins)
    out.counts, out.width = c.reshape(-1, k).sum(1), hist.width * k
    out.min, out.max, out.n = hist.min, hist.max, hist.n
    return out


def amax_percentile(hist: Histogram, percentile: float) -> float:
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    cdf = np.cumsum(hist.counts) / hist.counts.sum()
    idx = int(np.searchsorted(cdf, percentile / 100.0))
    return float(min(hist.edges[min(idx + 1, len(hist.counts))], max(abs(hist.min), abs(hist.max))))


def kl_divergences(counts: np.ndarray, start_bin: int = 128, levels: int = 256, stride: int = 1):
    """(candidate bin counts i, KL(P_i || Q_i)) for every threshold at bin edge i >= start_bin.

    P_i: the histogram clipped at edge i, the mass beyond folded into its last bin. Q_i: P_i's
    first i bins quantised to `levels` levels (the bins of a level share its mass equally,
    over the level's non-empty bins only) -- TensorRT's entropy calibration, as in NVIDIA's
    pytorch-quantization `_compute_amax_entropy` (levels 256: 8-bit on |x|), vectorised."""
    counts = np.asarray(counts, dtype=np.float64).copy()
    if len(counts) > 1:
        counts[0] = counts[1]   # the zero bin holds padding-like exact zeros; as TensorRT does
    total_tail = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])   # total_tail[i] = sum(counts[i:])
    cand, kls = [], []
    for i in range(min(start_bin, len(counts)), len(counts) + 1, stride):
        p = counts[:i].copy()
        p[-1] += total_tail[i]
        level = (np.arange(i) * levels) // i          # = digitize(range(i), linspace(0, i, levels+1)) - 1
        nz = counts[:i] > 0
        mass = np.bincount(level[nz], weights=counts[:i][nz], minlength=levels)
        cnt = np.bincount(level[nz], minlength=levels)
        q = np.zeros(i)
        q[nz] = (mass / np.maximum(cnt, 1))[level[nz]]
        p_sum, q_sum = p.sum(), q.sum()
        if p_sum == 0 or q_sum == 0:
            continue
        p, q = p / p_sum, q / q_sum
        pos = p > 0
        kl = np.inf if np.any(q[pos] == 0) else float(np.sum(p[pos] * np.log(p[pos] / q[pos])))
        cand.append(i)
        kls.append(kl)
    return np.asarray(cand), np.asarray(kls)


def amax_entropy(hist: Histogram, start_bin: int = 128, stride: int = 1) -> float:
    cand, kls = kl_divergences(hist.counts, start_bin, 256, stride)
    if not len(cand):
        return float(max(abs(hist.min), abs(hist.max)))
    best = len(kls) - 1 - int(np.argmin(kls[::-1]))   # ties: the largest threshold (as TensorRT)
    return float(hist.edges[cand[best]])


def mse_errors(hist: Histogram, candidates: np.ndarray, qmax: int = 127) -> np.ndarray:
    """Mean squared error of symmetric int8 fake-quantisation (step amax/qmax, clip at amax) of
    the histogram's bin centres, for each candidate amax."""
    centers = (np.arange(len(hist.counts)) + 0.5) * hist.width
    w = hist.counts.astype(np.float64)
    nz = w > 0
    centers, w = centers[nz], w[nz]
    out = np.empty(len(candidates))
    for k in range(0, len(candidates), 256):   # chunks: candidates x bins stays small
        a = np.asarray(candidates[k:k + 256], dtype=np.float64)[:, None]
        step = a / qmax
        q = np.minimum(np.round(centers[None, :] / step), qmax) * step
        out[k:k + 256] = ((centers[None, :] - q) ** 2 * w[None, :]).sum(1) / w.sum()
    return out


def amax_mse(hist: Histogram, start_bin: int = 128, stride: int = 1) -> float:
    edges = hist.edges
    cand = edges[min(start_bin, len(edges) - 1)::stride]
    cand = cand[cand > 0]
    if not len(cand):
        return float(max(abs(hist.min), abs(hist.max)))
    return float(cand[int(np.argmin(mse_errors(hist, cand)))])


def compute_amax(hist: Histogram, method: str, **params) -> float:
    """amax of one tensor's histogram by `method` (METHODS) with its parameters."""
    if hist.counts is None:
        raise ValueError("empty histogram: the tensor was never observed")
    if method == "minmax":
        return float(max(abs(hist.min), abs(hist.max)))
    if method == "percentile":
        return amax_percentile(hist, float(params.get("percentile", 99.99)))
    if method == "entropy":
        return amax_entropy(compact(hist), int(params.get("start_bin", 128)), int(params.get("stride", 1)))
    if method == "mse":
        return amax_mse(compact(hist), int(params.get("start_bin", 128)), int(params.get("stride", 1)))
    raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")


def tensor_range(hist: Histogram, amax: float) -> tuple[float, float]:
    """[rmin, rmax] for an asymmetric grid: the observed range clipped to [-amax, amax]."""
    return max(hist.min, -amax), min(hist.max, amax)


def int8_scale(amax):
    """The step of a symmetric int8 grid (zero point 0) that clips at `amax`: amax / 127. Works
    on a float, a numpy array or a torch tensor (per-channel amax), in its own dtype."""
    return amax / 127.0


def uint8_qparams(rmin: float, rmax: float) -> tuple[float, int]:
    """(scale, zero_point) of ONNX Runtime's asymmetric uint8 activations for [rmin, rmax]
    (the range is widened to include 0, as `onnxruntime.quantization.quant_utils` does)."""
    rmin, rmax = min(rmin, 0.0), max(rmax, 0.0)
    scale = (rmax - rmin) / 255.0 if rmax > rmin else 1.0
    return float(scale), int(round(-rmin / scale))
