"""The one exception type for mistakes in what a user asked for.

Anything raised as a :class:`UserError` is the user's to fix (a misspelt name, a value out of range, a model that does
not fit the tile size). The command line prints its message on one line and exits with code 2, with no traceback;
every other exception is a bug and keeps its traceback.
"""

import traceback


class UserError(ValueError):
    """A mistake in the user's input, reported in one line."""


class ContractError(UserError, TypeError):
    """A registered entry that does not keep its registry's contract (no ``size_divisor``, a masker's ``check`` with
    the wrong signature): the mistake of whoever wrote the entry, reported in one line that names where it came
    from."""


def where_raised(err: BaseException) -> str:
    """Where an exception was raised: ``file line N`` (a plugin's ``sys.exit()``, say, which has no message)."""
    frame = traceback.extract_tb(err.__traceback__)[-1]
    return f"{frame.filename} line {frame.lineno}"
