"""The one exception type for errors a user can cause.

The CLI turns an `XoptError` into a single line on stderr and a non-zero exit code; every
message names the thing that is wrong and how to fix it.
"""


class XoptError(Exception):
    """A user-facing error: bad input, missing file, a variant this host cannot run, ..."""
