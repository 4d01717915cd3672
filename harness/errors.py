"""The one user-facing error type.

Raised at the edges (config load, model load, target lookup, output paths) with a message that names the thing
and says what to do. The CLI catches it once and prints one line; anything else is a bug and keeps its traceback.
"""


class HarnessError(Exception):
    """An error the user can fix. ``str(err)`` is the complete message: what went wrong and the fix."""
