"""The scenarios by CLI name: `scenario("server", latency_bound_ms=50)` is the one place a
scenario's name is read; everything after it calls the config's methods."""

from __future__ import annotations

from dataclasses import fields

from xopt.errors import XoptError
from xopt.scenarios.base import ScenarioConfig
from xopt.scenarios.fixed_batch import FixedBatch
from xopt.scenarios.loadgen import Offline, Server, SingleStream

SCENARIOS: dict[str, type[ScenarioConfig]] = {c.name: c for c in (FixedBatch, SingleStream, Offline, Server)}


def scenario(name: str, **options) -> ScenarioConfig:
    """The config of scenario `name`, from those of `options` that it has (the others belong to
    other scenarios: --rounds is fixed-batch's, --latency-bound-ms the server's)."""
    cls = SCENARIOS.get(name)
    if cls is None:
        raise XoptError(f"--scenario {name}: expected one of {', '.join(SCENARIOS)}")
    own = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in own})
