"""What a report or a pick compares: which checkpoints carry the gain and which variant's gain
counts as the whole of it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Comparison:
    """`baseline` and `xstilts`: the model names of the checkpoint without and with
    intermediate-task training (their score difference is the gain); `reference`: the variant
    whose gain a retention divides by."""

    reference: str = "fp32"
    baseline: str = "baseline"
    xstilts: str = "xstilts"


DEFAULT = Comparison()
