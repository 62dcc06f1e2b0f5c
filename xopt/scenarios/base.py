"""What every benchmark scenario shares: the sweep it runs in, and the scenario interface.

A scenario is a frozen config object (`FixedBatch`, `SingleStream`, `Offline`, `Server`),
chosen once from its CLI name by `xopt.scenarios.registry`; the bench verb hands it each
shape of the sweep and appends what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from xopt.measure import Timing


@dataclass
class Sweep:
    """One sweep's fixed parts: the loaded variants ({key: Loaded}), each one's loading figures
    ({key: {load_s, mem_load_mb, peak_mem_scope}}), the tokenizer's vocabulary size and pad id,
    the timed loop's bounds, the progress display (or None) and, for LoadGen, the sweep's own
    log directory."""

    loaded: dict
    load: dict
    vocab_size: int
    pad_id: int
    timing: Timing
    progress: object = None
    log_dir: Path | None = None


class ScenarioConfig:
    """The interface of a scenario config: its record name, how it adapts the sweep's batch
    sizes, how many parts the timed budget (--duration, --iters) is split into, the log
    directory it prepares, and `run`: the records of every variant on one shape."""

    name: ClassVar[str]

    @property
    def splits(self) -> int:
        return 1

    def batches(self, batches: list[int]) -> list[int]:
        return batches

    def prepare(self, loadgen_dir, out) -> Path | None:
        """The sweep's log directory, made before anything is measured; None when it keeps none."""
        return None

    def run(self, sweep: Sweep, shape) -> list[dict]:
        raise NotImplementedError
