"""The ``bench`` command's entry point, its exit codes, and how a Ctrl-C is told apart. Importing torch and the
harness takes seconds; a Ctrl-C during them ends as one anywhere else does (:func:`bench.cli.main`): one line, exit
code 130. So this module imports nothing heavy before that."""

import os
import signal
import sys

EXIT_USER_ERROR = 2  # a mistake in the input, a damaged file, a path that cannot be written
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class CtrlC:
    """While in use, a Ctrl-C is noted before it raises KeyboardInterrupt as usual. One that lands in the middle of
    an import can surface as another exception (a half-imported numpy recursing until RecursionError, say): the note
    says it was an interrupt all the same.

    With ``defer``, a first Ctrl-C is only noted, and the code in use looks at ``seen`` once done: for the start-up
    imports, where KeyboardInterrupt can land in Python code that C++ called (torch's pybind11 bindings) and abort the
    process with a C++ error instead of ending it. A second Ctrl-C raises at once, for an import that hangs."""

    def __init__(self, defer: bool = False):
        self.defer = defer

    def __enter__(self) -> "CtrlC":
        self.seen = False
        self._previous = signal.signal(signal.SIGINT, self._noted)
        return self

    def _noted(self, signum, frame):
        first = not self.seen
        self.seen = True
        if not (self.defer and first):
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)


def main() -> int:
    with CtrlC(defer=True) as ctrl_c:  # the imports finish (a second or two), then a Ctrl-C ends them
        try:
            from bench.cli import main as run
        except BaseException:
            if not ctrl_c.seen:
                raise
        if ctrl_c.seen:  # whether the import ended or not
            print("interrupted", file=sys.stderr)
            run = None
    code = run() if run is not None else EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:
        # A Ctrl-C that reached Python code run from C (an extension module's import) is remembered by CPython even
        # once handled, and its normal exit then kills the process with SIGINT instead of returning 130. Everything
        # is written and closed by now: leave at once, with the code.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
