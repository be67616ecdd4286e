"""Credential hygiene: one home for removing secrets from anything logged, printed, cached or written.

Keys come from the environment only, but users still paste them where they do not belong: ``user:KEY@host`` in a
base_url, ``?api_key=KEY`` in a query string, an ``Authorization`` header in an error body. Every value that leaves
the process through MLflow, a report, a progress file or a log line goes through :func:`scrub_text` or
:func:`scrub_params` first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "***"

# Query parameters and header/field names whose values are credentials (case-insensitive substring match).
SECRET_NAME_RE = re.compile(r"^(?:.*[_-])?(api[_-]?key|apikey|key|token|access[_-]?token|secret|password|passwd|authorization|"
                            r"credentials?|sig|signature)$", re.I)
_URL_RE = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_AUTH_HEADER_RE = re.compile(r"(?i)\b(authorization|x-api-key|api-key)(\"?\s*[:=]\s*\"?)(bearer\s+|basic\s+)?([^\s\"',;]+)")
_BEARER_RE = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}")


def scrub_url(url: str | None) -> str | None:
    """``url`` without userinfo (``user:pass@``) and with secret-looking query values replaced by ``***``."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # not a parseable URL: fall back to removing anything before an '@' in the authority
        return re.sub(r"(://)[^/@\s]*@", r"\1", url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = (parts.hostname or "") + (f":{port}" if port else "")
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(SECRET_NAME_RE.search(k) for k, _ in pairs):
            query = urlencode([(k, REDACTED if SECRET_NAME_RE.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with known secret values, URL credentials and Authorization/API-key header values replaced."""
    for s in secrets:
        if s:
            text = text.replace(s, REDACTED)
    text = _URL_RE.sub(lambda m: scrub_url(m.group(0)) or "", text)
    text = _AUTH_HEADER_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}{REDACTED}", text)
    return _BEARER_RE.sub(f"Bearer {REDACTED}", text)


def scrub_value(name: str, value: Any) -> Any:
    """One param: a secret-named key is redacted whole; strings lose URL credentials; other values pass."""
    leaf = name.rsplit(".", 1)[-1]
    if SECRET_NAME_RE.search(leaf) and value not in (None, "", [], {}):
        return REDACTED
    if isinstance(value, str):
        return scrub_text(value)
    return value


def scrub_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat params (``a.b.c`` -> value) safe to log: see :func:`scrub_value`."""
    return {k: scrub_value(k, v) for k, v in flat.items()}


__all__ = ["REDACTED", "scrub_params", "scrub_text", "scrub_url", "scrub_value"]
