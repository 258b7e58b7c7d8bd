"""PostgreSQL URLs (libpq's, ivy's own options taken out) and the connection pool of one
backend, opened on first use after the schema is migrated."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from ivy._postgres import schema
from ivy._urls import mask_url
from ivy.errors import ConfigurationError, IvyError

log = logging.getLogger("ivy.postgres")

SCHEMES = ("postgresql", "postgres")
#: ivy's own query options: read by ivy, removed before the URL reaches libpq
IVY_OPTIONS = ("schema", "max_deliveries", "dead_letter_ttl", "poll_interval", "pool_size",
               "result_ttl", "publish_timeout")
DEFAULT_SCHEMA = "ivy"
#: seconds libpq waits for each host to answer, unless the URL (or PGCONNECT_TIMEOUT) says
DEFAULT_CONNECT_TIMEOUT = 10
#: longest a waiting consumer goes without looking at its queue (a lost NOTIFY costs this)
DEFAULT_POLL_INTERVAL = 1.0
#: most connections one backend object holds open at once
DEFAULT_POOL_SIZE = 10
ACCEPTED = ("postgresql://[user[:password]@][host][:port][,host2[:port2],...][/dbname]"
            "[?param=value&...] (libpq's URL, postgres:// too; ivy's own options: schema, "
            "pool_size, poll_interval, and a queue's max_deliveries, dead_letter_ttl, "
            "publish_timeout, and a notifier's result_ttl)")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,49}")


class PostgresError(IvyError):
    """A PostgreSQL operation failed; the message names the server and the masked URL."""


class PostgresUnavailable(PostgresError, ConnectionError):
    """PostgreSQL could not be reached within the connect timeout, or the connection was
    lost; the message names the hosts and ports tried."""


@dataclass(frozen=True, slots=True)
class Settings:
    """A parsed PostgreSQL URL. ``conninfo`` (what libpq gets, password included) is never
    logged; ``url`` is the masked URL for logs and errors."""

    url: str
    conninfo: str
    #: ``host:port`` of each host the URL names, for errors
    where: str
    schema: str
    connect_timeout: float
    poll_interval: float
    pool_size: int
    #: ivy's options not handled here (``max_deliveries``, ``dead_letter_ttl``, a notifier's
    #: ``result_ttl``), as given: each backend reads its own and ignores the others', so one
    #: URL can name both the queue and the notifier
    options: dict[str, str]

    def __repr__(self) -> str:
        return f"Settings(url={self.url!r}, schema={self.schema!r})"


def _split_options(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without ivy's options, and those options. The other query fields are kept as
    written: libpq decodes ``%XX`` but not ``+``, so re-encoding them could change them."""
    rest, hash_, fragment = url.partition("#")
    head, _, query = rest.partition("?")
    kept: list[str] = []
    ours: dict[str, str] = {}
    for field in query.split("&") if query else []:
        name, _, value = field.partition("=")
        if unquote(name) in IVY_OPTIONS:
            ours[unquote(name)] = unquote(value)
        elif field:
            kept.append(field)
    return f"{head}{'?' if kept else ''}{'&'.join(kept)}{hash_}{fragment}", ours


def _with_default(conninfo: str, name: str, value: str) -> str:
    return f"{conninfo}{'&' if '?' in conninfo else '?'}{name}={value}"


def _bad(url: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"malformed PostgreSQL URL {mask_url(url)!r}: {why}. "
                              f"Expected {ACCEPTED}")


def _where(params: Mapping[str, Any], url: str) -> str:
    """``host:port, ...`` as libpq will try them (one port applies to every host)."""
    hosts = str(params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST")
                or "localhost").split(",")
    ports = str(params.get("port") or os.environ.get("PGPORT") or "").split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    if len(ports) != len(hosts):
        raise _bad(url, f"{len(hosts)} hosts but {len(ports)} ports")
    for port in ports:
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise _bad(url, f"port {port!r} is not a number from 1 to 65535")
    return ", ".join(f"{h or 'localhost'}:{p or '5432'}" for h, p in zip(hosts, ports,
                                                                       strict=True))


def _number(value: Any, name: str, url: str, *, whole: bool) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = 0.0
    if isinstance(value, bool) or not 0 < number < float("inf") or (
            whole and number != int(number)):
        kind = "a whole number >= 1" if whole else "a number of seconds > 0"
        raise ConfigurationError(f"{name}={value!r} for the PostgreSQL URL {mask_url(url)!r}: "
                                 f"expected {kind}, such as ?{name}="
                                 f"{DEFAULT_POOL_SIZE if whole else DEFAULT_POLL_INTERVAL:g}")
    return number


def parse_url(url: str, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Check a PostgreSQL URL and split it into what libpq gets and ivy's options; options
    in ``overrides`` (not None) win over the URL's. A URL libpq would refuse, or a bad
    option, raises :class:`ivy.ConfigurationError` showing the accepted form."""
    if not isinstance(url, str):
        raise ConfigurationError(f"a PostgreSQL URL must be a string, got {url!r}: "
                                 f"expected {ACCEPTED}")
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise _bad(url, str(exc)) from None
    if scheme not in SCHEMES or "://" not in url:
        raise _bad(url, "it must start with postgresql:// or postgres://")
    conninfo, options = _split_options(url)
    options.update({k: str(v) for k, v in (overrides or {}).items()
                    if k in IVY_OPTIONS and v is not None})
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise _bad(url, str(exc).strip() or type(exc).__name__) from None
    where = _where(params, url)
    if "connect_timeout" not in params and "PGCONNECT_TIMEOUT" not in os.environ:
        conninfo = _with_default(conninfo, "connect_timeout", str(DEFAULT_CONNECT_TIMEOUT))
    timeout = params.get("connect_timeout") or os.environ.get("PGCONNECT_TIMEOUT")
    if "application_name" not in params and "PGAPPNAME" not in os.environ:
        conninfo = _with_default(conninfo, "application_name", "ivy")
    name = options.pop("schema", DEFAULT_SCHEMA)
    if not _SCHEMA_NAME.fullmatch(name):
        raise ConfigurationError(
            f"schema={name!r} in the PostgreSQL URL {mask_url(url)!r}: a schema name of 1 to "
            "50 lower-case letters, digits and underscores, not starting with a digit, such "
            f"as ?schema={DEFAULT_SCHEMA}")
    poll = _number(options.pop("poll_interval", DEFAULT_POLL_INTERVAL), "poll_interval", url,
                   whole=False)
    size = _number(options.pop("pool_size", DEFAULT_POOL_SIZE), "pool_size", url, whole=True)
    try:
        connect_timeout = float(timeout or DEFAULT_CONNECT_TIMEOUT)
    except ValueError:
        raise _bad(url, f"connect_timeout={timeout!r} is not a number of seconds") from None
    return Settings(mask_url(url), conninfo, where, name, connect_timeout, poll, int(size),
                    options)


def _check_idle(conn: psycopg.Connection[Any]) -> None:
    """The pool's check of a connection it hands out: one that the server terminated while
    it was idle (``pg_terminate_backend``, a restart) has a notice waiting, or its end: a
    round trip then tells, and a dead one is replaced by a new connection instead of failing
    the caller's operation. An idle connection with nothing to read costs one ``select``."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    if select.select([conn.fileno()], [], [], 0)[0]:
        ConnectionPool.check_connection(conn)


class Database:
    """The connections of one backend object to one PostgreSQL database: a pool opened on
    first use, once the schema is migrated (:func:`ivy._postgres.schema.migrate`), and
    connections of their own for listeners. Failures become :class:`PostgresError`
    (:class:`PostgresUnavailable` when the server cannot be reached) naming the server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        #: the schema version found or made on first use
        self.version: int | None = None
        #: whether the server answered once (a send then rides out a restart; one to a
        #: server never reached fails within the connect timeout)
        self.reached = False

    def describe(self, exc: BaseException) -> str:
        """One line about ``exc``, naming the server and the masked URL."""
        s = self.settings
        text = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, PoolTimeout):
            text = f"no connection became free or could be made ({text})"
        return f"PostgreSQL at {s.where} ({s.url}): {text}"

    def _error(self, exc: psycopg.Error) -> PostgresError:
        if isinstance(exc, psycopg.OperationalError):
            return PostgresUnavailable(self.describe(exc))
        return PostgresError(self.describe(exc))

    def connect(self) -> psycopg.Connection[Any]:
        """A new autocommit connection of its own (the caller closes it); a server that does
        not answer raises :class:`PostgresUnavailable` within the connect timeout."""
        s = self.settings
        try:
            conn = psycopg.connect(s.conninfo, autocommit=True)
            self.reached = True
            return conn
        except psycopg.Error as exc:
            raise PostgresUnavailable(
                f"cannot connect to PostgreSQL at {s.where} ({s.url}) within "
                f"connect_timeout={s.connect_timeout:g} s: "
                f"{' '.join(str(exc).split()) or type(exc).__name__}") from None

    def migrate(self) -> tuple[int, list[int]]:
        """Bring the schema to this ivy's version now (see :func:`schema.migrate`): the
        version, and the migrations applied."""
        with contextlib.closing(self.connect()) as conn:
            try:
                version, applied = schema.migrate(conn, self.settings.schema, self.settings.url)
            except psycopg.Error as exc:
                raise self._error(exc) from None
        self.version = version
        return version, applied

    def _open(self) -> ConnectionPool[psycopg.Connection[Any]]:
        pool = self._pool
        if pool is not None and self._pid == os.getpid():
            return pool
        with self._lock:
            if self._pid != os.getpid():  # a forked child: its parent's connections are not
                self._pool, self._pid = None, os.getpid()  # its own (nor closed by it)
            if self._closed:
                raise PostgresError(f"the PostgreSQL backend of {self.settings.url} is closed")
            if self._pool is None:
                self.migrate()  # also tells at once when the server is unreachable
                self._pool = ConnectionPool(
                    self.settings.conninfo, min_size=1, max_size=self.settings.pool_size,
                    kwargs={"autocommit": True}, open=True, check=_check_idle,
                    name=f"ivy-postgres-{self.settings.schema}",
                    timeout=self.settings.connect_timeout + 5)
            return self._pool

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None, *,
                   direct: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection for the block (``with conn.transaction()`` for
        several statements at once), waited for up to ``timeout`` s (default: the connect
        timeout + 5 s); psycopg's errors become :class:`PostgresError`. With ``direct``, a
        pool that has none to give in time is passed by: the block gets a connection of its
        own (after a restart the pool reconnects only on its backoff, seconds apart)."""
        pool = self._open()
        pooled = True
        try:
            try:
                conn = pool.getconn(timeout)
            except PoolTimeout:
                if not direct:
                    raise
                conn, pooled = self.connect(), False
            try:
                with conn:  # as the pool's own connection(): ends the block's transaction,
                    yield conn  # and closes a connection that is not the pool's
            finally:
                if pooled:
                    pool.putconn(conn)
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    def close(self) -> None:
        """Close the pool; the database is not used afterwards."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
