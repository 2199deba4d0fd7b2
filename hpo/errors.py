"""The one exception type for errors a user can cause."""

from __future__ import annotations


class HpoError(Exception):
    """Bad input from the user (spec, data, URL, bundle): the CLI prints it as one line."""


class InputError(HpoError, ValueError):
    """Input of the wrong shape, type or columns: an HpoError for the CLI, a ValueError for
    scikit-learn callers."""


def interrupted(e: BaseException) -> bool:
    """Whether ``e`` is a Ctrl-C, or an error some code raised while it arrived: Python
    turns a KeyboardInterrupt inside ``__set_name__`` (a class being built, as in a lazy
    import of ``torch._dynamo`` at a trial's first optimizer step) into a RuntimeError
    that only names it as its cause."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False
