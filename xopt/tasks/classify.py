"""Sentence-pair classification (XNLI, PAWS-X): accuracy.

API (stable):
- `features(examples, tokenizer, labels, max_length=128, prefix="") -> dict`:
  {"input_ids": [[int]], "label_ids": [int]}: the pair encoded as the tokenizer's pair template
  (XLM-R: <s> A </s></s> B </s>), `prefix` (the model card's input prefix) before sentence A,
  longest-first truncation to `max_length`; label ids index `labels` (-100 when unlabelled).
- `predict(logits) -> np.ndarray` label ids; `outcomes(pred_ids, label_ids)` per-example 0/1;
  `accuracy(outcomes)` in percent.
"""

from __future__ import annotations

import numpy as np


def features(examples: list[dict], tokenizer, labels, max_length: int = 128, prefix: str = "") -> dict:
    enc = tokenizer([prefix + e["text_a"] for e in examples], [e["text_b"] for e in examples],
                    truncation="longest_first", max_length=max_length)
    index = {lab: i for i, lab in enumerate(labels)}
    return {"input_ids": enc["input_ids"],
            "label_ids": [index.get(e.get("label"), -100) for e in examples]}


def predict(logits: np.ndarray) -> np.ndarray:
    return np.asarray(logits).argmax(-1)


def outcomes(pred_ids, label_ids) -> np.ndarray:
    return (np.asarray(pred_ids) == np.asarray(label_ids)).astype(np.float64)


def accuracy(outcome: np.ndarray) -> float:
    return float(np.mean(outcome) * 100)
