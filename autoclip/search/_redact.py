"""Storage URLs without their secrets, by parsing them (SQLAlchemy's URL object).

A secret can sit in three places: ``user:password@host``, a query key such as
``?password=...``, and the text of a driver's error, which may quote either. Every URL that
autoclip prints or stores goes through :func:`redact_url`, and every driver message through
:func:`redact_text`.

A password with an unencoded ``@`` (``me:p@ss@host``) is ambiguous to a URL parser, which
would take ``ss@host`` for the host; :func:`normalize_url` reads the userinfo up to the
*last* ``@`` and percent-encodes the password, which is what the user meant, so the driver
connects with it and no tail of it is ever printed as a host name.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlencode

__all__ = ["normalize_url", "redact_text", "redact_url"]

HIDDEN = "***"
_SECRET_KEYS = ("password", "passwd", "pwd", "secret", "token")
# key=value pairs in libpq-style connection strings that drivers quote in their errors
_DSN_SECRET = re.compile(r"(?i)\b(password|passwd|pwd|sslpassword)\s*=\s*('[^']*'|\S+)")


def _is_secret_key(key: str) -> bool:
    return any(s in key.lower() for s in _SECRET_KEYS)


def _split(url: str) -> tuple[str, str, str, str]:
    """(scheme, userinfo, host-and-path, query) of ``url``, userinfo up to the last ``@``."""
    scheme, _, rest = url.partition("://")
    head, _, query = rest.partition("?")
    if "@" not in head and "@" in query and "/" not in head:  # a password holding "?"
        userinfo, _, after = rest.rpartition("@")
        hostpath, _, query = after.partition("?")
        head = f"{userinfo}@{hostpath}"
    at = head.rfind("@")
    if at < 0:
        return scheme, "", head, query
    return scheme, head[:at], head[at + 1 :], query


def normalize_url(url: str) -> str:
    """``url`` with its password percent-encoded (an unencoded ``@`` or ``/`` in it kept)."""
    if "://" not in url:
        return url
    scheme, userinfo, hostpath, query = _split(url)
    if not userinfo:
        return url
    user, colon, password = userinfo.partition(":")
    if colon:
        userinfo = f"{user}:{quote(unquote(password), safe='')}"
    return f"{scheme}://{userinfo}@{hostpath}" + (f"?{query}" if query else "")


def _parse(url: str):
    from sqlalchemy.engine import make_url

    try:
        return make_url(normalize_url(url))
    except Exception:  # not a URL SQLAlchemy can read: nothing of it is safe to show
        return None


def redact_url(url: str | None) -> str | None:
    """``url`` as it may be printed or stored: password and secret query values as ``***``.

    A file path comes back unchanged; a URL that cannot be parsed keeps only its scheme.
    """
    if url is None or "://" not in url:
        return url
    parsed = _parse(url)
    if parsed is None:
        return url.partition("://")[0] + "://" + HIDDEN
    items = []
    for key, value in parsed.query.items():
        for v in value if isinstance(value, tuple) else (value,):
            items.append((key, HIDDEN if _is_secret_key(key) else v))
    shown = parsed.set(query={}).render_as_string(hide_password=True)
    return shown + ("?" + urlencode(items, safe="*") if items else "")


def secrets(url: str | None) -> list[str]:
    """The secret strings in ``url`` (as given, decoded and encoded), longest first."""
    if url is None or "://" not in url:
        return []
    found: set[str] = set()
    _, userinfo, _, _ = _split(url)
    user, colon, password = userinfo.partition(":")
    if colon and password:
        found |= {password, unquote(password), quote(unquote(password), safe="")}
    parsed = _parse(url)
    if parsed is not None:
        if parsed.password:
            found.add(str(parsed.password))
        for key, value in parsed.query.items():
            if _is_secret_key(key):
                vals = value if isinstance(value, tuple) else (value,)
                found |= {v for v in vals if v} | {quote(v, safe="") for v in vals if v}
    return sorted((s for s in found if s), key=len, reverse=True)


def redact_text(text: str, url: str | None) -> str:
    """``text`` (a driver's error, say) with the secrets of ``url`` and any ``password=...``
    connection-string pair replaced by ``***``; the URL itself by its redacted form."""
    if url and "://" in url:
        for form in {url, normalize_url(url)}:
            text = text.replace(form, redact_url(url) or HIDDEN)
    for secret in secrets(url):
        text = text.replace(secret, HIDDEN)
    return _DSN_SECRET.sub(lambda m: f"{m.group(1)}={HIDDEN}", text)
