"""The one exception type for errors a user can cause."""

from __future__ import annotations


class HpoError(Exception):
    """Bad input from the user (spec, data, URL, bundle): the CLI prints it as one line."""
