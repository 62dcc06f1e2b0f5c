"""The distributed launch, read in one place: rank, world size and local rank of this process.

A launcher (`torchrun`, `accelerate launch`, `python -m torch.distributed.run`) starts one
process per device and tells each who it is through the environment: RANK (global index),
WORLD_SIZE (number of processes) and LOCAL_RANK (index on this machine, which picks the GPU).
Training and evaluation take the launcher's word through `launch()`; nothing else in xopt
reads those variables. A plain `python -m xopt.cli ...` is rank 0 of a world of 1.

When `accelerate` has already been imported and initialised its state in this process, its
answer wins (it may have set the process group up itself); xopt never imports it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from xopt.errors import XoptError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Launch:
    """Who this process is in a (possibly single-process) launch."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The process that prints and writes shared outputs (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int_env(env, name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise XoptError(f"{name}={raw!r} must be an integer (as torchrun sets it); unset it for a "
                        f"single-process run") from None


def _from_accelerate() -> Launch | None:
    """accelerate's view, only when it is already imported and its state initialised."""
    mod = sys.modules.get("accelerate.state")
    if mod is None:
        return None
    try:
        shared = getattr(mod, "PartialState")._shared_state
        if not shared:
            return None
        state = mod.PartialState()
        return Launch(int(state.process_index), int(state.num_processes), int(state.local_process_index))
    except Exception:  # an accelerate version without these attributes: the environment answers
        return None


def launch(env=None) -> Launch:
    """Rank, world size and local rank of this process (torchrun's RANK / WORLD_SIZE / LOCAL_RANK).

    `env` (a mapping) replaces os.environ, for tests. Inconsistent values are one-line errors."""
    if env is None:
        acc = _from_accelerate()
        if acc is not None:
            return acc
        env = os.environ
    world = _int_env(env, "WORLD_SIZE", 1)
    rank = _int_env(env, "RANK", 0)
    local = _int_env(env, "LOCAL_RANK", 0)
    if world < 1:
        raise XoptError(f"WORLD_SIZE {world} must be at least 1")
    if not 0 <= rank < world:
        raise XoptError(f"RANK {rank} is not in [0, WORLD_SIZE={world})")
    if local < 0:
        raise XoptError(f"LOCAL_RANK {local} must not be negative")
    return Launch(rank, world, local)


def rank() -> int:
    return launch().rank


def world_size() -> int:
    return launch().world_size


def local_rank() -> int:
    return launch().local_rank


def is_main() -> bool:
    """True in the process that should print once per run (rank 0; always in a plain run)."""
    return launch().is_main
