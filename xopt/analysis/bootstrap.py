"""The one bootstrap: per-example outcomes and paired resampling over examples.

Per-example outcomes an eval record may keep (one of):
- `outcomes`: list of numbers, one per example; score = 100 * mean (accuracy, exact match,
  per-example F1 of extractive QA);
- `counts` (alias `outcome_counts`): list of [tp, fp, fn], one per example (sentence, or
  source sentence for BUCC); score = 100 * micro-F1 of the summed counts (NER: F1 of the
  summed counts, not the mean of per-sentence F1). With `n_units` > len(counts), the rows
  kept are the non-zero ones and the rest are zero rows (they count when resampling).

A resampling is a weight matrix [n_boot, n]: how often each example is drawn in each replicate.
Every record resampled with the same matrix is paired with the others (same examples drawn), and
a replicate of any statistic that sums over examples is one matrix product.
"""

from __future__ import annotations

import math
import zlib

import numpy as np


class Outcomes:
    """The per-example outcomes of one eval record, resampleable."""

    def __init__(self, rec: dict):
        self.counts = None
        counts = rec.get("counts", rec.get("outcome_counts"))
        if counts is not None:
            self.counts = np.asarray(counts, dtype=np.float64).reshape(-1, 3)
            if rec.get("n_units", 0) > len(self.counts):      # only the units with non-zero counts were kept
                self.counts = np.vstack([self.counts, np.zeros((rec["n_units"] - len(self.counts), 3))])
            self.n = len(self.counts)
        elif rec.get("outcomes") is not None:
            self.values = np.asarray(rec["outcomes"], dtype=np.float64)
            self.n = len(self.values)
        else:
            raise ValueError("no per-example outcomes")
        ids = rec.get("example_ids")
        self.ids = ids if ids is None or isinstance(ids, str) else str(zlib.crc32(repr(ids).encode()))

    @staticmethod
    def f1(c: np.ndarray) -> np.ndarray:
        tp, fp, fn = c[..., 0], c[..., 1], c[..., 2]
        den = 2 * tp + fp + fn
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0) * 100

    def score(self) -> float:
        """The score (0-100)."""
        return self.from_sums(self.columns().sum(0))

    def columns(self) -> np.ndarray:
        """[n, k]: what a replicate sums over its resampled examples."""
        return self.counts if self.counts is not None else self.values[:, None]

    def from_sums(self, sums: np.ndarray):
        """Score(s) from summed columns ([k] or [B, k]): micro-F1 of counts, or the mean."""
        if self.counts is not None:
            return self.f1(sums)
        return sums[..., 0] / self.n * 100


def resample_weights(n: int, n_boot: int = 1000, seed: int = 0, stream: str = "") -> np.ndarray:
    """[n_boot, n] float64: how often each of `n` examples is drawn in each of `n_boot` replicates.
    Deterministic in (seed, stream): `stream` names what is resampled (e.g. "family/task/lang"), so
    each language gets its own draws and a report is reproducible whatever order it computes in."""
    rng = np.random.default_rng([seed, zlib.crc32(stream.encode())])
    idx = rng.integers(0, n, (n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def replicate_means(values, w: np.ndarray) -> np.ndarray:
    """[n_boot]: the mean of `values` ([n]) in each replicate of the weights `w`."""
    v = np.asarray(values, dtype=np.float64)
    return w @ v / len(v)


def percentile_ci(a: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of the finite replicates in `a`; (nan, nan) when there are none."""
    a = np.asarray(a)[np.isfinite(a)]
    return tuple(float(x) for x in np.percentile(a, [2.5, 97.5])) if len(a) else (math.nan, math.nan)
