"""The one error policy of every command (docs/errors.md): ``ait2i generate``, ``tokens``, ``bench``, ``tune`` and
``demo`` end the same way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

#: Exceptions that mean bad input or a file problem: one ``ait2i: error:`` line, exit code 2, no traceback.
ANTICIPATED = (ValueError, TypeError, OSError)


class RunFailed(RuntimeError):
    """A run that started and failed part-way for a reason already explained (a worker process exited with an
    error): one ``ait2i: error:`` message and exit code 1; every finished output stays."""


def error_message(e: BaseException) -> str:
    """One line for an anticipated error (an `OSError` names its file)."""
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.strerror}: {os.fspath(e.filename)!r}"
    text = str(e).strip() or type(e).__name__
    return text


def run_command(func: Callable[[], int | None]) -> int:
    """Run a command under the one error policy (docs/errors.md) and return its exit code.

    Anticipated errors (:data:`ANTICIPATED`: refusals of bad input, files that cannot be read or written) print
    ``ait2i: error: <message>`` on stderr and return 2 (with ``AIT2I_DEBUG=1`` they propagate with their
    traceback); :class:`RunFailed` prints its message and returns 1; Ctrl-C prints ``ait2i: interrupted`` and
    returns 130; anything else is a bug and propagates with its traceback.
    """
    try:
        return int(func() or 0)
    except (*ANTICIPATED, RunFailed) as e:
        if os.environ.get("AIT2I_DEBUG"):
            raise
        print(f"ait2i: error: {error_message(e)}", file=sys.stderr)
        return 1 if isinstance(e, RunFailed) else 2
    except KeyboardInterrupt:
        print("ait2i: interrupted (every file reported as written is complete)", file=sys.stderr)
        return 130
