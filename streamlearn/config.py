"""Where streamlearn finds its Kafka and its Redis.

Resolution order (:meth:`Settings.resolve`):

1. ``STREAMLEARN_KAFKA`` (bootstrap servers, ``host:port[,host:port…]``) and
   ``STREAMLEARN_REDIS`` (URL: ``redis://[user:pass@]host:port/db`` or ``rediss://…``);
2. otherwise the running local stack (``streamlearn stack up``), read from its state file in
   ``$STREAMLEARN_HOME`` (default ``~/.local/state/streamlearn/stack``);
3. otherwise a :class:`ConfigError` that says what to do.

Kafka client security (and any other librdkafka property) passes through the environment:
``STREAMLEARN_KAFKA_<PROP>`` becomes the property ``<prop>`` lower-cased with ``_`` → ``.``
(``__`` → a literal ``_``), e.g. ``STREAMLEARN_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` →
``security.protocol=SASL_SSL``; ``STREAMLEARN_KAFKA_SSL_CA_LOCATION`` → ``ssl.ca.location``.
Those properties are merged into every client config built by
:meth:`Settings.kafka_client_conf`.

Secrets (the Redis password, Kafka passwords/secrets) never appear in ``repr``/``str`` or in
:meth:`Settings.shell_lines` unless ``reveal=True`` is asked for explicitly.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

from streamlearn.devstack.state import live_state, stale_hint
from streamlearn.errors import ServiceUnavailable, UserError

__all__ = ["ConfigError", "KafkaUnreachable", "Settings", "mask_url", "kafka_env_conf", "kafka_logging",
           "local_stack_settings", "LIBRDKAFKA_LOGGER"]

ENV_KAFKA = "STREAMLEARN_KAFKA"
ENV_REDIS = "STREAMLEARN_REDIS"
ENV_KAFKA_PREFIX = "STREAMLEARN_KAFKA_"

MASK = "***"

# confluent_kafka keys that are Python-level (callbacks), not librdkafka dotted properties.
_PY_LEVEL_KEYS = frozenset(
    {"error_cb", "stats_cb", "throttle_cb", "oauth_cb", "on_delivery", "on_commit", "logger"}
)
_SECRET_KEY = re.compile(r"password|secret|token|\.pem$|sasl\.oauthbearer\.config|sasl\.jaas", re.I)


#: librdkafka's own log lines go to this Python logger (the CLI shows them only with ``-v``);
#: like any library's, they reach the handlers an application configures, never Python's
#: last-resort stderr printer
LIBRDKAFKA_LOGGER = "streamlearn.librdkafka"
logging.getLogger(LIBRDKAFKA_LOGGER).addHandler(logging.NullHandler())


class ConfigError(UserError, RuntimeError):
    """The configuration is missing or wrong (message says what to set; never holds a secret)."""


class KafkaUnreachable(ServiceUnavailable, ConnectionError):
    """No Kafka broker answered within a short-lived command's bounded wait."""


def kafka_logging(conf: Mapping[str, Any]) -> dict:
    """``conf`` with librdkafka's log lines routed through Python logging (the ``logger``
    property), unless it names a logger of its own: without it librdkafka writes every
    connection failure straight to stderr, hundreds of lines while a broker is down."""
    return {"logger": logging.getLogger(LIBRDKAFKA_LOGGER), **conf}


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (user names are kept)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{user}:{MASK}@{host}"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _mask_conf(conf: Mapping[str, Any]) -> dict:
    return {k: (MASK if _SECRET_KEY.search(str(k)) else v) for k, v in conf.items()}


def _env_key_to_prop(suffix: str) -> str:
    # "__" is an escaped literal underscore; a single "_" is a dot.
    return ".".join(part.replace("\0", "_") for part in suffix.replace("__", "\0").lower().split("_"))


def kafka_env_conf(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The librdkafka properties given as ``STREAMLEARN_KAFKA_<PROP>`` environment variables."""
    env = os.environ if env is None else env
    conf: dict[str, str] = {}
    for key, value in env.items():
        if key.startswith(ENV_KAFKA_PREFIX) and len(key) > len(ENV_KAFKA_PREFIX):
            conf[_env_key_to_prop(key[len(ENV_KAFKA_PREFIX):])] = value
    return conf


def _client_key(key: str) -> str:
    if "." in key or key in _PY_LEVEL_KEYS:
        return key
    return key.replace("_", ".")


@dataclass(frozen=True)
class Settings:
    """Connection settings for Kafka and Redis.

    ``kafka``: bootstrap servers; ``redis``: Redis URL; ``kafka_conf``: extra librdkafka
    properties for every client (security etc.); ``redis_conf``: extra keyword arguments for
    :func:`redis.Redis.from_url`.
    """

    kafka: str
    redis: str
    kafka_conf: dict = field(default_factory=dict)
    redis_conf: dict = field(default_factory=dict)

    # -- resolution -------------------------------------------------------------------------
    @classmethod
    def resolve(
        cls,
        env: Mapping[str, str] | None = None,
        home: Path | str | None = None,
    ) -> "Settings":
        """Settings from the environment, else from the running local stack.

        ``env`` defaults to ``os.environ``; ``home`` is the local stack's home (default
        ``$STREAMLEARN_HOME`` or ``~/.local/state/streamlearn/stack``).
        """
        env = os.environ if env is None else env
        kafka = (env.get(ENV_KAFKA) or "").strip()
        redis_url = (env.get(ENV_REDIS) or "").strip()
        kafka_conf = kafka_env_conf(env)
        if kafka and redis_url:
            return cls(kafka=kafka, redis=redis_url, kafka_conf=kafka_conf)

        local = local_stack_settings(home, env=env)
        for what, var, given in (("Kafka", ENV_KAFKA, kafka), ("Redis", ENV_REDIS, redis_url)):
            if not given and local is None:
                raise ConfigError(f"no {what} configured: set {var} or run `streamlearn stack up`"
                                  + stale_hint(home, env=env))
        kafka = kafka or local.kafka
        redis_url = redis_url or local.redis
        merged = dict(local.kafka_conf) if local is not None and not env.get(ENV_KAFKA) else {}
        merged.update(kafka_conf)
        return cls(kafka=kafka, redis=redis_url, kafka_conf=merged,
                   redis_conf=dict(local.redis_conf) if local is not None else {})

    @classmethod
    def of_stack(cls, state: dict) -> "Settings":
        """The settings a local stack's state file records (:mod:`streamlearn.devstack.state`)."""
        return cls(kafka=state["settings"]["kafka"], redis=state["settings"]["redis"])

    # -- Kafka ------------------------------------------------------------------------------
    def kafka_client_conf(self, **extra: Any) -> dict:
        """A config dict for confluent_kafka Producer/Consumer/AdminClient.

        ``extra`` keys may be dotted (``**{"group.id": "g"}``) or use underscores
        (``group_id="g"`` → ``group.id``); Python callback keys (``error_cb``, ``on_delivery``…)
        pass unchanged. Precedence: ``extra`` > ``STREAMLEARN_KAFKA_*`` > bootstrap. librdkafka's
        log lines go to the ``streamlearn.librdkafka`` logger (:func:`kafka_logging`).
        """
        conf: dict[str, Any] = {"bootstrap.servers": self.kafka}
        conf.update(self.kafka_conf)
        for key, value in extra.items():
            conf[_client_key(key)] = value
        return kafka_logging(conf)

    # -- Redis ------------------------------------------------------------------------------
    def redis_client(self, *, check: bool = True, **extra: Any):
        """A ``redis.Redis`` (bytes responses) for :attr:`redis`.

        With ``check`` (default) the server is PINGed once so that wrong credentials fail here,
        as a :class:`ConfigError` that does not contain the password. A server that cannot be
        reached right now does not fail here (outages are transient, not configuration: the
        client connects on its first command, and raises redis' ``ConnectionError`` then).
        Credentials rejected later (e.g. on a reconnect) also raise :class:`ConfigError`.
        """
        import redis  # start-up cost: a command that never talks to Redis does not load redis-py

        kwargs = dict(self.redis_conf)
        kwargs.update(extra)
        kwargs["decode_responses"] = False
        kwargs.setdefault("command_packer", _large_value_packer())
        kwargs.setdefault("socket_read_size", 1 << 20)  # state chunks arrive in MBs: fewer reads
        try:
            client = _redis_class().from_url(self.redis, **kwargs)
        except ValueError as exc:
            raise ConfigError(
                f"{ENV_REDIS} is not a valid Redis URL ({mask_url(self.redis)}): {_scrub(exc, self.redis)}"
            ) from None
        client._sl_masked_url = mask_url(self.redis)  # for error messages
        if check:
            try:
                client.ping()
            except redis.exceptions.AuthenticationError as exc:
                client.close()
                raise _auth_error(self.redis, exc) from None
            except redis.exceptions.ResponseError as exc:
                if _is_auth_message(str(exc)):
                    client.close()
                    raise _auth_error(self.redis, exc) from None
                raise
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                pass  # down right now: not a configuration problem
        return client

    # -- printing ---------------------------------------------------------------------------
    def shell_lines(self, *, reveal: bool = False, export: bool = False) -> list[str]:
        """``NAME=value`` lines (shell-quoted) that reproduce these settings; ``export``
        prefixes ``export `` so that ``eval "$(streamlearn stack up)"`` reaches child processes.

        Passwords are masked unless ``reveal=True`` (e.g. for ``eval "$(streamlearn stack env)"``).
        """
        redis_url = self.redis if reveal else mask_url(self.redis)
        lines = [f"{ENV_KAFKA}={shlex.quote(self.kafka)}", f"{ENV_REDIS}={shlex.quote(redis_url)}"]
        conf = self.kafka_conf if reveal else _mask_conf(self.kafka_conf)
        for key, value in conf.items():
            name = ENV_KAFKA_PREFIX + key.replace("_", "__").replace(".", "_").upper()
            lines.append(f"{name}={shlex.quote(str(value))}")
        return [f"export {line}" for line in lines] if export else lines

    def env(self) -> dict[str, str]:
        """Environment variables (real values, unquoted) that make a child process resolve to
        these settings: ``subprocess.Popen(..., env={**os.environ, **settings.env()})``."""
        out = {ENV_KAFKA: self.kafka, ENV_REDIS: self.redis}
        for key, value in self.kafka_conf.items():
            out[ENV_KAFKA_PREFIX + key.replace("_", "__").replace(".", "_").upper()] = str(value)
        return out

    def masked(self) -> dict:
        """A printable dict view with secrets masked."""
        return {
            "kafka": self.kafka,
            "redis": mask_url(self.redis),
            "kafka_conf": _mask_conf(self.kafka_conf),
            "redis_conf": _mask_conf(self.redis_conf),
        }

    def __repr__(self) -> str:
        m = self.masked()
        return (
            f"Settings(kafka={m['kafka']!r}, redis={m['redis']!r}, "
            f"kafka_conf={m['kafka_conf']!r}, redis_conf={m['redis_conf']!r})"
        )

    __str__ = __repr__


def local_stack_settings(home: Path | str | None = None, env: Mapping[str, str] | None = None) -> Settings | None:
    """Settings of the local stack (``streamlearn stack up``) in ``home`` when it is running, else None."""
    state = live_state(home, env)
    return None if state is None else Settings.of_stack(state)


# -- helpers ------------------------------------------------------------------------------


_REDIS_CLASS = None


def _large_value_packer():
    """redis-py's pure-Python command packer: it sends values over a few KiB (state chunks,
    snapshots) as their own buffers, where the hiredis packer copies every argument into
    one bytes object first (100 ms for an 80 MB commit). hiredis still parses replies."""
    from redis._parsers.encoders import Encoder
    from redis.connection import PythonRespSerializer

    return PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)


def _redis_class():
    """redis.Redis subclass whose auth failures (e.g. after a reconnect) become ConfigError."""
    global _REDIS_CLASS
    if _REDIS_CLASS is None:
        import redis

        class _Redis(redis.Redis):
            _sl_masked_url = "redis://?"

            def execute_command(self, *args, **options):
                try:
                    return super().execute_command(*args, **options)
                except redis.exceptions.AuthenticationError as exc:
                    raise _auth_error_masked(self._sl_masked_url, exc) from None
                except redis.exceptions.NoPermissionError as exc:  # name the command refused (keys are no secret)
                    raise redis.exceptions.NoPermissionError(f"{exc} ({_command_of(args)})") from None

            def pipeline(self, transaction=True, shard_hint=None):
                pipe = super().pipeline(transaction=transaction, shard_hint=shard_hint)
                pipe.__class__ = _Pipeline
                pipe._sl_masked_url = self._sl_masked_url
                return pipe

        class _Pipeline(redis.client.Pipeline):
            _sl_masked_url = "redis://?"

            def execute(self, raise_on_error=True):
                try:
                    return super().execute(raise_on_error=raise_on_error)
                except redis.exceptions.AuthenticationError as exc:
                    raise _auth_error_masked(self._sl_masked_url, exc) from None

        _REDIS_CLASS = _Redis
    return _REDIS_CLASS


def _command_of(args: tuple) -> str:
    words = [a.decode(errors="replace") if isinstance(a, bytes) else str(a) for a in args[:2]]
    return " ".join(w[:100] for w in words)


def _is_auth_message(msg: str) -> bool:
    m = msg.upper()
    return "WRONGPASS" in m or "NOAUTH" in m or "AUTH" in m and "PASSWORD" in m


def _scrub(exc: BaseException, url: str) -> str:
    text = str(exc)
    try:
        pw = urlsplit(url).password
    except ValueError:
        pw = None
    if pw:
        text = text.replace(pw, MASK)
    return text


def _auth_error(url: str, exc: BaseException) -> ConfigError:
    return _auth_error_masked(mask_url(url), exc, _scrub(exc, url))


def _auth_error_masked(masked: str, exc: BaseException, detail: str | None = None) -> ConfigError:
    detail = detail if detail is not None else str(exc)
    return ConfigError(
        f"Redis rejected the credentials in {ENV_REDIS} ({masked}): {detail.strip()} "
        f"— check the user/password in the URL (redis://user:password@host:port/db)"
    )
