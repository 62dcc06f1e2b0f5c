"""The one exception type for errors a user can cause.

The CLI turns an `XoptError` into a single line on stderr and a non-zero exit code; every
message names the thing that is wrong and how to fix it.
"""


class XoptError(Exception):
    """A user-facing error: bad input, missing file, a variant this host cannot run, ..."""


def parse_json(text: str | bytes, where, fix: str = "", what: str = ""):
    """JSON text a user hands us, or one line naming `where` (and the line, in a multi-line text),
    `what` it is and `fix`: malformed JSON and JSON nested deeper than the parser's stack (a
    RecursionError, not a ValueError) alike."""
    import json

    what = f"{what}: " if what else ""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        line = f":{err.lineno}" if err.doc.count("\n", 0, err.pos) else ""
        problem = f"{where}{line}: {what}malformed JSON ({err.msg})"
    except RecursionError:
        problem = f"{where}: {what}malformed JSON (nested too deeply to read)"
    raise XoptError(problem + (f"; {fix}" if fix else ""))


def read_json(path, what: str, fix: str):
    """A JSON file the user hands us: missing or corrupt ends in one line naming `what` and `fix`."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise XoptError(f"{path}: {what} not found; {fix}")
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise XoptError(f"{path}: corrupt {what} ({err}); {fix}") from None
    return parse_json(text, path, fix, f"corrupt {what}")


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
