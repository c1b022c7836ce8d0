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
    says it was an interrupt all the same."""

    def __enter__(self) -> "CtrlC":
        self.seen = False
        self._previous = signal.signal(signal.SIGINT, self._noted)
        return self

    def _noted(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)


def main() -> int:
    with CtrlC() as ctrl_c:
        try:
            from bench.cli import main as run
        except BaseException:
            if not ctrl_c.seen:
                raise
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
