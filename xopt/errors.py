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
