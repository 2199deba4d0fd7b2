"""Storage URLs made safe to print: parsed, not pattern-matched.

SQLAlchemy's ``make_url`` reads a URL the way the driver will, so it masks what the
driver would send as the password, whatever that holds (``/``, ``?``, regex characters,
percent escapes). It misreads one case: an unencoded ``@`` in the password ends up in the
host. There, and in text where a URL's end is a guess, the credentials are taken by hand:
everything between ``://`` and the last ``@`` is ``user:password``.

Example:
    >>> mask_url("postgresql://postgres:ab/cd@127.0.0.1/adv")
    'postgresql://postgres:***@127.0.0.1/adv'
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_plus

import sqlalchemy.exc
from sqlalchemy.engine import URL, make_url

MASK = "***"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&#\s]*)", re.IGNORECASE)


def parse_url(url: str) -> URL | None:
    """``make_url(url)``, or None where it fails or misreads (an ``@`` left in the host)."""
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError, TypeError):
        return None
    return None if "@" in (parsed.host or "") else parsed


def mask_url(url: str) -> str:
    """``url`` with its password (``user:PASSWORD@`` or ``?password=``) replaced by ``***``."""
    parsed = parse_url(url)
    if parsed is None:
        return _mask_by_hand(url)
    # Rendered only to hide a password: rendering re-encodes a path (sqlite:///a@b.db).
    shown = url if parsed.password is None else parsed.render_as_string(hide_password=True)
    return _mask_query_password(shown)


def url_secrets(url: str) -> list[str]:
    """Every form in which the password of ``url`` could be echoed, longest first."""
    found: set[str] = set()
    try:
        parsed = make_url(url)  # misread or not: what the driver was given may be echoed
        found.add(parsed.password or "")
        query_password = parsed.query.get("password", ())
        found.update((query_password,) if isinstance(query_password, str) else query_password)
    except (sqlalchemy.exc.ArgumentError, ValueError, TypeError):
        pass
    password = _hand_password(url)
    if password:
        # make_url reads the part after an unencoded '@' as the host, which errors echo.
        found.update((password, unquote(password), *password.split("@")))
    for raw in (m[2] for m in _QUERY_PASSWORD.finditer(url)):
        found.update((raw, unquote_plus(raw)))
    return sorted((s for s in found if s), key=len, reverse=True)


def mask_text(text: str, url: str) -> str:
    """``text`` with the password of ``url``, and of any other URL in it, masked.

    Drivers like to echo what they were given, so every form of the password is masked
    wherever it appears, not only inside the URL.
    """
    masked = mask_url(url)
    pieces = text.split(url)
    for secret in url_secrets(url):
        pieces = [piece.replace(secret, MASK) for piece in pieces]
    return mask_urls_in(masked.join(pieces))


def mask_urls_in(text: str) -> str:
    """Mask the password of every ``scheme://`` URL in free text (it ends at whitespace)."""
    return _URL_IN_TEXT.sub(lambda m: _mask_by_hand(m[0]), text)


def _split_authority(url: str) -> tuple[str, str | None, str]:
    """``(scheme://, user:password or None, @host...)``: the userinfo runs to the last ``@``."""
    match = _SCHEME.match(url)
    if not match:
        return "", None, url
    head, rest = url[: match.end()], url[match.end() :]
    if rest.startswith("/") or "@" not in rest:  # sqlite:///path: no authority at all
        return head, None, rest
    userinfo, _, host = rest.rpartition("@")
    return head, userinfo, f"@{host}"


def _hand_password(url: str) -> str | None:
    _, userinfo, _ = _split_authority(url)
    if userinfo is None or ":" not in userinfo:
        return None
    return userinfo.partition(":")[2]


def _mask_by_hand(url: str) -> str:
    head, userinfo, rest = _split_authority(url)
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}{colon}{MASK if colon else ''}{rest}"
    return head + _mask_query_password(rest)


def _mask_query_password(text: str) -> str:
    return _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", text)
