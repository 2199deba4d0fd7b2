"""The one exception type for errors a user can cause."""

from __future__ import annotations


class HpoError(Exception):
    """Bad input from the user (spec, data, URL, bundle): the CLI prints it as one line."""


class InputError(HpoError, ValueError):
    """Input of the wrong shape, type or columns: an HpoError for the CLI, a ValueError for
    scikit-learn callers."""
