"""Token ids in, padded batches out: what evaluation, training, calibration and bench share.

`tokenize` applies the model card's input prefix and truncation; `pad` right-pads a list of
sequences into `input_ids` and `attention_mask` arrays; `length_batches` groups sequences of
similar length so that a batch carries little padding.
"""

from __future__ import annotations

import numpy as np


def tokenize(tokenizer, texts: list[str], prefix: str = "", max_length: int = 512) -> list[list[int]]:
    enc = tokenizer([prefix + t for t in texts], truncation=True, max_length=max_length,
                    add_special_tokens=True)
    return enc["input_ids"]


def pad(seqs: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return ids, mask


def length_batches(lengths: list[int], batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length (longest first: memory peaks early)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
