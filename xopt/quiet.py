"""Library noise kept off the terminal unless `--verbose`.

Importing transformers' model classes imports torchao (transformers registers its torchao
quantizer when the library is installed). torchao then logs one "Failed to load ….so" line per
C extension built for another Python or GPU, and torch's pytree module logs a deprecation
warning for each Enum torchao registers. None of it concerns xopt's user, and it lands before
the one line that matters. The call sites that import those libraries wrap the import in
`quiet_imports()`; `xopt --verbose` (or XOPT_VERBOSE=1) lets everything through.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

# Loggers whose records during a library import are noise: torchao's C-extension loader and
# torch's pytree registration warnings.
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def verbose() -> bool:
    return os.environ.get("XOPT_VERBOSE", "0") not in ("", "0")


def set_verbose(on: bool) -> None:
    """Set for this process and the processes it starts (torchrun workers, fresh bench processes)."""
    os.environ["XOPT_VERBOSE"] = "1" if on else "0"


@contextlib.contextmanager
def quiet_imports():
    """Run an import of torchao / transformers' model classes without their load-time log lines
    and warnings; errors still propagate. A no-op when verbose."""
    if verbose():
        yield
        return
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"torchao(\.|$)")     # torchao's own import-time warnings
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
