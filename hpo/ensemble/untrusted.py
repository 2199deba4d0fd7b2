"""Reading files from a folder someone else made (a bundle from a stranger).

Only a regular file is read: a symbolic link could point at the user's own files (and a
matching checksum would tell the bundle's author what they hold), a device such as
``/dev/zero`` never ends, and a FIFO blocks forever. The file is checked with ``lstat``,
opened without following a link and without blocking, checked again on the open
descriptor (it may have been swapped in between), and read up to a byte limit only.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpo.errors import HpoError, InputError

_CHUNK = 1 << 20


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_regular_file(path: Path, *, limit: int, exact_size: int | None = None) -> bytes:
    """The bytes of ``path``, a regular file (no link) of at most ``limit`` bytes.

    Args:
        path: the file; its last component is never followed if it is a link.
        limit: the most bytes read; a larger file is refused before any byte is read.
        exact_size: the size the file must have (a manifest's record), if known.

    Raises:
        HpoError: missing, a link, device, FIFO or folder, too large, of another size than
            ``exact_size``, or unreadable; one line naming the file and the rule.
    """
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        raise HpoError(f"{path}: no such file") from None
    except OSError as e:
        raise HpoError(f"{path}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(before.st_mode):
        raise HpoError(f"{path}: {_kind(before.st_mode)}; a bundle is read from regular files only")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:  # became a link after the lstat
            raise HpoError(
                f"{path}: a symbolic link; a bundle is read from regular files only"
            ) from None
        raise HpoError(f"{path}: cannot read ({e.strerror})") from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
            before.st_dev,
            before.st_ino,
        ):
            raise HpoError(f"{path}: changed while it was opened; refusing to read it")
        _check_size(path, opened.st_size, limit, exact_size)
        parts: list[bytes] = []
        total = 0
        while total <= limit:  # read one byte past the limit: a file that grows is caught
            part = os.read(fd, min(_CHUNK, limit + 1 - total))
            if not part:
                break
            parts.append(part)
            total += len(part)
    except OSError as e:
        raise HpoError(f"{path}: cannot read ({e.strerror})") from None
    finally:
        os.close(fd)
    _check_size(path, total, limit, exact_size)
    return b"".join(parts)


def _check_size(path: Path, size: int, limit: int, exact_size: int | None) -> None:
    if size > limit:
        raise HpoError(f"{path}: {size} bytes or more, above the limit of {limit} bytes")
    if exact_size is not None and size != exact_size:
        raise HpoError(
            f"{path}: {size} bytes, but the manifest records {exact_size} "
            "(the file changed after export); refusing to load the bundle"
        )


def load_json(raw: bytes, path: Path, *, max_depth: int, what: str) -> Any:
    """Parse JSON that nests at most ``max_depth`` levels of lists and objects.

    Args:
        raw: the bytes, read by :func:`read_regular_file`.
        path: the file, named in errors.
        max_depth: the most levels of lists and objects.
        what: what the JSON is, for errors (``"malformed manifest"``).

    Raises:
        HpoError: not UTF-8 JSON, or nested deeper than ``max_depth``.
    """
    too_deep = False
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise HpoError(f"{path}: {what} (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise HpoError(f"{path}: {what} (not JSON: {e.msg} at line {e.lineno})") from None
    except RecursionError:  # deeper than the parser's own limit
        too_deep = True  # refused below, outside the except clause: no chained traceback
    if too_deep or _deeper_than(value, max_depth):
        raise HpoError(f"{path}: {what} (nested deeper than the limit of {max_depth} levels)")
    return value


def _deeper_than(value: Any, max_depth: int) -> bool:
    """Whether lists and dicts nest more than ``max_depth`` levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def numeric_array(X: Any, names: Sequence[str], *, categorical: bool, dtype: Any) -> np.ndarray:
    """``X`` (rows by position) as a numeric array. A table with category columns needs
    its columns by name, so it must come as a DataFrame.

    Raises:
        InputError: category columns, or a value that is not a number.
    """
    if categorical:
        raise InputError(
            "this ensemble was trained on a table with category columns: pass a pandas "
            f"DataFrame with the columns {', '.join(names)}"
        )
    try:
        return np.asarray(X, dtype=dtype)
    except (TypeError, ValueError):
        raise InputError("X must be numeric (numbers only, no text or missing fields)") from None


PROBA_DIGITS = 6  # significant digits of a probability in hpo predict's CSV


def probability_text(p: float) -> str:
    """A class probability as ``hpo predict --proba`` writes it: 6 significant digits
    (``0.981234``, ``3.2e-07``); a float32 model is not more precise than that."""
    return f"{float(p):.{PROBA_DIGITS}g}"
