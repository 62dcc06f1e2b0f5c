"""The one exception type for errors a user can cause.

The CLI turns an `XoptError` into a single line on stderr and a non-zero exit code; every
message names the thing that is wrong and how to fix it.
"""


class XoptError(Exception):
    """A user-facing error: bad input, missing file, a variant this host cannot run, ..."""


def read_json(path, what: str, fix: str):
    """A JSON file the user hands us: missing or corrupt ends in one line naming `what` and `fix`."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise XoptError(f"{path}: {what} not found; {fix}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise XoptError(f"{path}: corrupt {what} ({err}); {fix}") from None


def is_disk_full(err: BaseException) -> bool:
    """Whether `err` is a full disk or quota: an OSError's errno, or a library's own error type
    that carries the OS message (safetensors' SafetensorError says "os error 28")."""
    import errno

    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(err)
    return "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text


def disk_full(path, need_bytes: int | None = None) -> str:
    """The start of the one line for a full disk: the file system (its mount point) and the path
    written, what the write needs where the writer knows it, and what is free now; the caller
    says what is kept."""
    import os
    import shutil
    from pathlib import Path

    path = Path(os.path.abspath(path))
    mount = next((p for p in (path, *path.parents) if p.exists() and os.path.ismount(p)), Path("/"))
    where = next((p for p in (path, *path.parents) if p.exists()), mount)
    free = shutil.disk_usage(where).free / 1e6
    need = f"at least {need_bytes / 1e6:.0f} MB needed, " if need_bytes else ""
    return f"no space left on {mount} writing {path}; {need}{free:.0f} MB free"
