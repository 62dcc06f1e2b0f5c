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
