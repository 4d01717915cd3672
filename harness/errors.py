"""The one user-facing error type.

Raised at the edges (config load, model load, target lookup, output paths) with a message that names the thing
and says what to do. The CLI catches it once and prints one line; anything else is a bug and keeps its traceback.
"""


class HarnessError(Exception):
    """An error the user can fix. ``str(err)`` is the complete message: what went wrong and the fix."""


#: Exit codes of ``sparsebench run`` / ``demo`` (documented in the README and ``--help``).
EXIT_OK = 0  # every planned row measured, none ERROR
EXIT_USAGE = 2  # bad input (config, model, CLI): nothing was run
EXIT_ROWS_ERROR = 3  # the run finished, but some rows are ERROR
EXIT_STOPPED = 4  # the run stopped early (device lost, interrupted, store unwritable): resume it with --resume


class DeviceLost(HarnessError):
    """The device stayed unreachable after the configured reconnects, or its host key changed: the run stops.
    ``str(err)`` names the device and what was tried."""
