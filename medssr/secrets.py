"""Credential hygiene: one home for removing secrets from anything logged, printed, cached or written.

Keys come from the environment only, but users still paste them where they do not belong: ``user:KEY@host`` in a
base_url, ``?api_key=KEY`` in a query string, an ``Authorization`` header in an error body. Every value that leaves
the process through MLflow, a report, a progress file or a log line goes through :func:`scrub_text` or
:func:`scrub_params` first. MLflow is reached through one gate (``medssr.tracking.TrackingGate`` / ``GatedClient``) that
applies :func:`scrub` with :func:`live_secrets` (the credential environment variables and every URL password seen in
the params) to every string and artifact it stores; :func:`params_secret_findings` names credentials typed into
params.yaml, which git and dvc.lock would keep.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlencode, urlsplit, urlunsplit

REDACTED = "***"
MIN_SECRET_LEN = 6  # shorter values (a 'user' name) would blank ordinary words; URLs lose their userinfo anyway
# The environment variables the backends read their keys from (medssr/llm/*_backend.py KEY_ENV), plus the usual
# others a stage may see; any other variable whose name looks like a credential's (SECRET_NAME_RE) counts too.
SECRET_ENV_VARS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MLFLOW_TRACKING_PASSWORD",
                   "MLFLOW_TRACKING_TOKEN", "WANDB_API_KEY")
PARAMS_SECRET_WARNING = "a credential in params.yaml is a git-tracked secret"
_KEY_LIKE_RE = re.compile(r"^(sk-|sk_|pk-|rk-|xox[abp]-|gh[pousr]_|hf_|AKIA)[A-Za-z0-9_\-]{8,}$|^sk-ant-")

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


# -- live secrets: what the process knows to be a credential, wherever it may turn up -----------------------------------

_REGISTERED: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember ``value`` (a password taken out of a URL, a key) so :func:`live_secrets` scrubs it everywhere."""
    if value and len(value) >= MIN_SECRET_LEN:
        _REGISTERED.add(value)


def url_password(url: Any) -> str | None:
    """The (percent-decoded) password of ``user:password@`` in a URL, or None."""
    if not isinstance(url, str) or "@" not in url or "://" not in url:
        return None
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def register_params_secrets(flat: Mapping[str, Any]) -> None:
    """Register every URL password and every secret-named value among flat params."""
    for k, v in flat.items():
        if isinstance(v, str):
            register_secret(url_password(v))
            if SECRET_NAME_RE.search(k.rsplit(".", 1)[-1]) or _KEY_LIKE_RE.match(v):
                register_secret(v)


def env_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the credential variables in the environment (``SECRET_ENV_VARS`` and any credential-named one)."""
    env = os.environ if environ is None else environ
    out = []
    for name, value in env.items():
        if name in SECRET_ENV_VARS or SECRET_NAME_RE.search(name):
            value = value.strip()
            if len(value) >= MIN_SECRET_LEN and value.upper() != "EMPTY":
                out.append(value)
            register_secret(url_password(value))
        elif "://" in value:  # OPENAI_BASE_URL=http://user:pw@host and the like
            register_secret(url_password(value))
    return out


def live_secrets() -> list[str]:
    """Every known secret value in the forms it can be written in (raw, URL-encoded, base64), longest first."""
    values = set(env_secrets()) | _REGISTERED
    forms: set[str] = set()
    for v in values:
        forms |= {v, quote(v, safe=""), quote_plus(v), base64.b64encode(v.encode()).decode().rstrip("=")}
    return sorted((f for f in forms if len(f) >= MIN_SECRET_LEN), key=lambda f: (-len(f), f))


def scrub(obj: Any, secrets: Iterable[str] | None = None) -> Any:
    """``obj`` (str, or dicts/lists/tuples of them, keys included) with every string through :func:`scrub_text` and the
    live secrets; other values pass unchanged."""
    known = live_secrets() if secrets is None else list(secrets)
    if isinstance(obj, str):
        return scrub_text(obj, known)
    if isinstance(obj, Mapping):
        return {scrub(k, known): scrub(v, known) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(scrub(v, known) for v in obj)
    return obj


def scrub_bytes(data: bytes, secrets: Iterable[str] | None = None) -> bytes:
    """A file's bytes: text (UTF-8) through :func:`scrub_text`; other bytes with known secret values cut out."""
    known = live_secrets() if secrets is None else list(secrets)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        for s in known:
            data = data.replace(s.encode(), REDACTED.encode())
        return data
    out = scrub_text(text, known)
    return data if out == text else out.encode("utf-8")


# -- credentials typed into params.yaml ----------------------------------------------------------------------------------


def params_secret_findings(flat: Mapping[str, Any]) -> list[str]:
    """One line per credential typed into params (a URL with a password, a secret-named or API-key-looking value),
    naming the environment variable to use instead; the value itself is never in the line."""
    lines = []
    for k, v in sorted(flat.items()):
        if not isinstance(v, str) or not v:
            continue
        leaf = k.rsplit(".", 1)[-1]
        env = "ANTHROPIC_API_KEY" if str(flat.get(k.rsplit(".", 1)[0] + ".backend", "")) == "anthropic" else "OPENAI_API_KEY"
        if url_password(v):
            lines.append(f"params.yaml: {k} carries a password (user:password@host): {PARAMS_SECRET_WARNING} (also copied into "
                         f"dvc.lock); write the URL without it and put the key in the {env} environment variable (sent as a "
                         "Bearer token, which vllm serve --api-key and OpenAI-compatible proxies accept)")
        elif SECRET_NAME_RE.search(leaf) or _KEY_LIKE_RE.match(v.strip()):
            lines.append(f"params.yaml: {k} looks like an API key: {PARAMS_SECRET_WARNING} (also copied into dvc.lock); "
                         f"remove it and set the {env} environment variable instead")
    return lines


__all__ = ["PARAMS_SECRET_WARNING", "REDACTED", "SECRET_ENV_VARS", "env_secrets", "live_secrets", "params_secret_findings",
           "register_params_secrets", "register_secret", "scrub", "scrub_bytes", "scrub_params", "scrub_text", "scrub_url",
           "scrub_value", "url_password"]
