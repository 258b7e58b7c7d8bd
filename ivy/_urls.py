"""URL helpers for backends and configuration: masking secrets for logs, several hosts in
one URL, the URL a driver gets, and boolean options."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ivy.errors import ConfigurationError

#: a query key whose value is a secret (case-insensitive): ``password``, ``passwd``, ``pwd``,
#: ``secret``, ``token``, any name ending in ``key`` (``access_key``, ``api_key``), ``sas``...
_SECRET_QUERY_KEY = re.compile(r"pass|pwd|secret|token|credential|key$|^(sas|sig)$",
                               re.IGNORECASE)


def mask_url(url: str) -> str:
    """Hide the password of a URL, for logs and reprs (also in a URL naming several hosts,
    ``amqp://user:pw@host1:5672,host2:5673/vhost``), and the value of every query parameter
    whose name says it is a secret (``redis://host/0?password=...``, which redis-py honours;
    ``?token=``, ``?api_key=``...). Other parameters are kept as written.

    Args:
        url: A backend URL, as configured.

    Returns:
        The URL with ``***`` in place of each secret.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    # as urlsplit cuts it: the fragment after the first "#", the query after the first "?"
    rest, hash_, fragment = url.partition("#")
    head, mark, query = rest.partition("?")
    if password is not None:
        userinfo, _, hosts = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        head = urlunsplit(urlsplit(head)._replace(netloc=f"{user}:***@{hosts}"))
    return f"{head}{mark}{_mask_query(query)}{hash_}{fragment}"


def _mask_query(query: str) -> str:
    masked = []
    for field in query.split("&"):
        name, eq, _ = field.partition("=")
        if eq and _SECRET_QUERY_KEY.search(unquote(name.replace("+", " ")).strip()):
            field = f"{name}=***"
        masked.append(field)
    return "&".join(masked)


def split_hosts(url: str) -> list[str]:
    """A URL naming several hosts, ``scheme://user:pw@host1:port1,host2:port2/path?query``,
    as one URL per host, in the order given (each with the same credentials, path and
    query); a URL with one host as itself. An empty host in the list is refused."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(f"malformed URL {mask_url(url)!r}: {exc}") from None
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return [url]
    names = [h.strip() for h in hosts.split(",")]
    if not all(names):
        raise ConfigurationError(
            f"malformed host list {hosts!r} in {mask_url(url)!r}: name each node as host or "
            "host:port, separated by commas (amqp://user:pw@host1:5672,host2:5672/vhost)")
    return [urlunsplit(parts._replace(netloc=f"{userinfo}{at}{name}")) for name in names]


def join_hosts(url: str, hosts: Iterable[str]) -> str:
    """``url`` with its host part replaced by ``hosts`` (``host`` or ``host:port`` each),
    comma-separated: the URL form of a list of nodes."""
    names = [str(h).strip() for h in hosts]
    if not names or not all(names) or any(("," in n or "/" in n or "@" in n) for n in names):
        raise ConfigurationError(
            f"nodes {names!r} for {mask_url(url)!r}: give a non-empty list of 'host' or "
            "'host:port' strings, such as ['rabbit1:5672', 'rabbit2:5672']")
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{','.join(names)}"))


def driver_url(url: str, ivy_options: Iterable[str],
               defaults: Mapping[str, str] | None = None) -> str:
    """The URL to hand a driver: ivy's own query options removed, driver defaults added where
    the URL does not set them."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ivy_options]
    query += [(k, v) for k, v in (defaults or {}).items() if all(k != key for key, _ in query)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def bool_option(config: Mapping[str, Any], name: str, default: bool, what: str) -> bool:
    """The boolean option ``name`` of a backend's config (a bool, or the words true/false,
    yes/no, on/off, 1/0 from a URL's query); ``what`` names the backend in the error."""
    value = config.get(name, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(
        f"{name} {value!r} for {what} must be true or false (e.g. ?{name}=false)")
