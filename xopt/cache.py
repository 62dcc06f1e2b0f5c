"""Where xopt keeps what it can rebuild: the imported default model, the demo suite."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$XOPT_CACHE, else $XDG_CACHE_HOME/xopt, else ~/.cache/xopt."""
    if os.environ.get("XOPT_CACHE"):
        return Path(os.environ["XOPT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xopt"
