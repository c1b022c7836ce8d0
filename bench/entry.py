"""The ``bench`` command's entry point, and its exit codes. Importing torch and the harness takes seconds; a Ctrl-C
during them ends as one anywhere else does (:func:`bench.cli.main`): one line, exit code 130. So this module imports
nothing heavy before that."""

import sys

EXIT_USER_ERROR = 2  # a mistake in the input, a damaged file, a path that cannot be written
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


def main() -> int:
    try:
        from bench.cli import main as run
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return run()
