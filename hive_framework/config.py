"""HiveConfig: every setting, read from defaults < TOML file < ``.env`` < environment < keyword overrides.

The environment names are the seed's (``REDIS_HOST``, ``HIVE_TASK_TIMEOUT``...). An unknown ``HIVE_*`` name, an
unknown TOML key or a value that does not parse is a :class:`ConfigError` naming the key, never silently dropped.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import attrs
from dotenv import dotenv_values

from .errors import ConfigError
from .limits import limit_from_table

#: An attrs class of plugin settings (see :meth:`HiveConfig.plugin_settings`).
SettingsT = TypeVar("SettingsT", bound=attrs.AttrsInstance)
#: Turns one raw value (TOML, environment text or an override) into a setting's type; raises ValueError/TypeError.
Parser = Callable[[Any, Any], Any]

# Environment names that belong to hive but are not settings.
NON_SETTING_ENV = frozenset(
    {"HIVE_CONFIG", "HIVE_ENV_FILE", "HIVE_REQUIRE_REDIS", "HIVE_TEST_REDIS_URL", "HIVE_REQUIRE_BROWSER",
     "HIVE_TEST_BROKER", "HIVE_TEST_SPORE_REDIS_URL", "HIVE_REQUIRE_NETNS", "HIVE_COMPOSE_FILE", "HIVE_SENTINEL_TASKS"}
)


def _label(attribute: attrs.Attribute[Any]) -> str:
    env = attribute.metadata.get("env")
    return f"{env} ({attribute.name})" if env else attribute.name


def positive(inst: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    """attrs validator: the value must be > 0 (for HiveConfig and plugin settings alike)."""
    if value <= 0:
        raise ValueError(f"{_label(attribute)} must be > 0, got {value!r}")


def non_negative(inst: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    """attrs validator: the value must be >= 0."""
    if value < 0:
        raise ValueError(f"{_label(attribute)} must be >= 0, got {value!r}")


def _port(inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 < value < 65536:
        raise ValueError(f"{_label(attribute)} must be a TCP port 1-65535, got {value!r}")


def _redis_url(inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        return
    try:
        parts = urlsplit(value)
        if "+" not in parts.scheme:  # a sentinel or cluster URL lists several host:port (connection.py parses it)
            parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"{_label(attribute)} is not a valid URL: {exc}") from None
    if parts.scheme not in {"redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster",
                            "rediss+cluster"}:
        raise ValueError(
            f"{_label(attribute)} must start with redis://, rediss://, unix:// or redis+sentinel://, "
            f"got {mask_url(value)!r}"
        )


def _setting(default: Any, env: str, doc: str, validator: Any = None) -> Any:
    return attrs.field(default=default, validator=validator, metadata={"env": env, "doc": doc})


@attrs.frozen(kw_only=True)
class HiveConfig:
    """All settings of one hive (nexus, spore or client). Field names are the TOML keys."""

    enable_hive: bool = _setting(True, "ENABLE_HIVE", "Master switch; when false the CLI refuses to start.")
    redis_host: str = _setting("localhost", "REDIS_HOST", "Redis host.")
    redis_port: int = _setting(6379, "REDIS_PORT", "Redis port.", _port)
    redis_db: int = _setting(0, "REDIS_DB", "Redis database number.", non_negative)
    redis_password: str = _setting("", "REDIS_PASSWORD", "Redis password (never logged).")
    redis_url: str = _setting(
        "", "REDIS_URL", "redis://, rediss:// or redis+sentinel:// URL; overrides host, port, db and password.",
        _redis_url,
    )
    redis_ca_file: str = _setting("", "HIVE_REDIS_CA_FILE", "CA bundle that verifies a rediss:// server.")
    redis_cert_file: str = _setting("", "HIVE_REDIS_CERT_FILE", "Client certificate for rediss:// (optional).")
    redis_key_file: str = _setting("", "HIVE_REDIS_KEY_FILE", "Private key of the client certificate.")
    redis_tls_verify: bool = _setting(
        True, "HIVE_REDIS_TLS_VERIFY", "Verify the rediss:// server's certificate and name (off: tests only)."
    )
    redis_sentinel_password: str = attrs.field(
        default="",
        repr=False,
        metadata={"env": "HIVE_REDIS_SENTINEL_PASSWORD", "doc": "Password of the sentinels (never logged)."},
    )
    redis_wait_replicas: int = _setting(
        0, "HIVE_REDIS_WAIT_REPLICAS", "Enqueue returns after this many replicas have the task (WAIT); 0: off.",
        non_negative,
    )
    redis_wait_aof: bool = _setting(
        False, "HIVE_REDIS_WAIT_AOF", "Also wait for the AOF fsync (WAITAOF, Redis 7.2+)."
    )
    redis_wait_timeout: float = _setting(
        1.0, "HIVE_REDIS_WAIT_TIMEOUT", "How long an enqueue waits for those acknowledgements, seconds.", positive
    )
    high_priority_queue: str = _setting("venom:tasks:high", "HIVE_HIGH_PRIORITY_QUEUE", "High-priority queue.")
    background_queue: str = _setting("venom:tasks:background", "HIVE_BACKGROUND_QUEUE", "Background queue.")
    broadcast_channel: str = _setting("venom:broadcast", "HIVE_BROADCAST_CHANNEL", "Pub/sub control channel.")
    task_timeout: float = _setting(300.0, "HIVE_TASK_TIMEOUT", "Default task timeout, seconds.", positive)
    max_retries: int = _setting(3, "HIVE_MAX_RETRIES", "Default retries after a failed attempt.", non_negative)
    zombie_task_timeout: float = _setting(
        600.0, "HIVE_ZOMBIE_TASK_TIMEOUT", "A task running longer than this is a zombie, seconds.", positive
    )
    key_prefix: str = _setting("venom", "HIVE_KEY_PREFIX", "Prefix of every Redis key hive writes.")
    max_payload_bytes: int = _setting(
        1024 * 1024, "HIVE_MAX_PAYLOAD_BYTES", "Largest accepted payload (JSON bytes).", positive
    )
    retry_backoff: float = _setting(
        1.0, "HIVE_RETRY_BACKOFF", "First retry delay; doubles each attempt, seconds.", non_negative
    )
    retry_backoff_max: float = _setting(60.0, "HIVE_RETRY_BACKOFF_MAX", "Cap on the retry delay.", non_negative)
    concurrency: int = _setting(10, "HIVE_CONCURRENCY", "Tasks one spore runs at once.", positive)
    prefetch: int = _setting(
        0, "HIVE_PREFETCH",
        "Tasks a spore begins beyond its slots while its tasks run under 0.1 s, each waiting in it for a slot "
        "(streams engine; for spores far from Redis).", non_negative,
    )
    poll_interval: float = _setting(0.05, "HIVE_POLL_INTERVAL", "Spore queue poll interval, seconds.", positive)
    lease_seconds: float = _setting(
        30.0, "HIVE_LEASE_SECONDS", "A dead spore's task is re-run after this, seconds.", positive
    )
    heartbeat_interval: float = _setting(
        5.0, "HIVE_HEARTBEAT_INTERVAL", "Spore heartbeat interval, seconds.", positive
    )
    redis_auth_limit: float = _setting(
        300.0, "HIVE_REDIS_AUTH_LIMIT",
        "A spore or nexus that Redis refuses to authenticate for this long exits non-zero, seconds.", positive,
    )
    shutdown_grace: float = _setting(
        10.0, "HIVE_SHUTDOWN_GRACE", "On SIGTERM, wait this long for running tasks, then requeue.", non_negative
    )
    result_ttl: float = _setting(86400.0, "HIVE_RESULT_TTL", "How long finished tasks are kept.", positive)
    node_name: str = _setting("", "HIVE_NODE_NAME", "Spore name and id (default: host name + a persisted id).")
    node_tags: tuple[str, ...] = _setting(
        (), "HIVE_NODE_TAGS", "Capability tags this spore declares (comma separated)."
    )
    code_version: str = _setting("", "HIVE_CODE_VERSION", "Version of the code a spore runs (shown in status).")
    state_dir: str = _setting(
        "", "HIVE_STATE_DIR", "Where a spore keeps its node id (default: ~/.local/state/hive-framework)."
    )
    broker: str = _setting(
        "streams", "HIVE_BROKER", "Queue engine: a create_engine plugin's name (streams or arq built in)."
    )
    balancer: str = _setting("load_score", "HIVE_BALANCER", "Balancing strategy: a route_task plugin's name.")
    balancer_weights: tuple[float, float, float] = _setting(
        (0.4, 0.3, 0.3), "HIVE_BALANCER_WEIGHTS", "load_score weights for cpu, memory and tasks (comma separated)."
    )
    idempotency_window: float = _setting(
        86400.0, "HIVE_IDEMPOTENCY_WINDOW",
        "Seconds a submit's idempotency key keeps answering with the task it first made.", positive,
    )
    watchdog_interval: float = _setting(
        5.0, "HIVE_WATCHDOG_INTERVAL", "How often the nexus looks for zombies and stranded tasks, seconds.", positive
    )
    monitor: bool = _setting(True, "HIVE_MONITOR", "Serve the Hive Monitor dashboard (and /metrics) from `hive nexus`.")
    monitor_address: str = _setting(
        "127.0.0.1", "HIVE_MONITOR_ADDRESS", "Address the Hive Monitor listens on (0.0.0.0: every interface)."
    )
    monitor_port: int = _setting(8765, "HIVE_MONITOR_PORT", "TCP port of the Hive Monitor.", _port)
    monitor_token: str = attrs.field(
        default="",
        repr=False,
        metadata={
            "env": "HIVE_MONITOR_TOKEN",
            "doc": "Bearer token the Hive Monitor's actions require; empty: actions refused (never logged).",
        },
    )
    apps: tuple[str, ...] = _setting((), "HIVE_APP", "Modules with task types to load (comma separated).")
    disable_plugins: tuple[str, ...] = _setting((), "HIVE_DISABLE_PLUGINS", "Plugin names to block.")
    load_plugins: tuple[str, ...] | None = _setting(
        None, "HIVE_LOAD_PLUGINS", "Only these entry-point plugins are loaded (empty: none)."
    )
    trace_plugins: bool = _setting(False, "HIVE_TRACE_PLUGINS", "Log every hook call.")
    log_tasks: bool = _setting(
        False, "HIVE_LOG_TASKS", "Spores log one INFO line per task received and finished (costs CPU per task)."
    )
    plugins: dict[str, dict[str, Any]] = attrs.field(
        factory=dict, metadata={"env": "", "doc": "Per-plugin sections ([plugins.NAME] in TOML)."}
    )
    schedules: dict[str, dict[str, Any]] = attrs.field(
        factory=dict, metadata={"env": "", "doc": "Periodic tasks the leading nexus fires ([schedules.NAME] in TOML)."}
    )
    limits: dict[str, dict[str, Any]] = attrs.field(
        factory=dict,
        metadata={"env": "", "doc": "Per task type: rate, burst and a spore's concurrency ([limits.NAME] in TOML)."},
    )

    # --- derived -----------------------------------------------------------------------------------------

    def effective_redis_url(self) -> str:
        """The URL to connect to: ``redis_url`` when set, else one built from host, port, db and password."""
        if self.redis_url:
            return self.redis_url
        auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"

    def redis_is_configured(self) -> bool:
        """True when the user named a Redis (URL or host/port) rather than relying on defaults."""
        return bool(self.redis_url) or (self.redis_host, self.redis_port) != ("localhost", 6379)

    def safe_redis_url(self) -> str:
        """The Redis URL with any password masked, for logs and messages."""
        return mask_url(self.effective_redis_url())

    def plugin_config(self, name: str) -> dict[str, Any]:
        """The ``[plugins.NAME]`` section (empty when absent)."""
        return dict(self.plugins.get(name, {}))

    def plugin_settings(self, name: str, cls: type[SettingsT], *, convert: bool = True) -> SettingsT:
        """The ``[plugins.NAME]`` section as an instance of the attrs class ``cls``, values parsed like hive's own.

        An unknown key or a bad value is a :class:`ConfigError` naming it; see :func:`read_plugin_settings`."""
        return read_plugin_settings(name, self.plugin_config(name), cls, convert=convert)

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables, e.g. to hand them to spore subprocesses."""
        env: dict[str, str] = {}
        for field in attrs.fields(HiveConfig):
            name = field.metadata.get("env")
            value = getattr(self, field.name)
            if not name or value is None:
                continue
            if isinstance(value, bool):
                env[name] = "true" if value else "false"
            elif isinstance(value, tuple):
                env[name] = ",".join(str(v) for v in value)
            else:
                env[name] = str(value)
        return env

    def evolve(self, **changes: Any) -> HiveConfig:
        """A copy with some settings changed (validated like any other source)."""
        return _build({**attrs.asdict(self, recurse=False), **changes}, source="override")

    # --- loading -----------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        *,
        environ: Mapping[str, str] | None = None,
        env_file: str | Path | None = None,
        toml_file: str | Path | None = None,
        **overrides: Any,
    ) -> HiveConfig:
        """Read every source in order; ``environ`` defaults to ``os.environ``.

        ``env_file`` defaults to ``$HIVE_ENV_FILE`` or ``./.env`` when it exists; ``toml_file`` to
        ``$HIVE_CONFIG`` or ``./hive.toml`` when it exists.
        """
        env = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        toml_path = toml_file or env.get("HIVE_CONFIG") or ("hive.toml" if Path("hive.toml").is_file() else None)
        if toml_path:
            values.update(_read_toml(Path(toml_path)))
        env_path = env_file or env.get("HIVE_ENV_FILE") or (".env" if Path(".env").is_file() else None)
        if env_path:
            file_env = {k: v for k, v in dotenv_values(env_path).items() if v is not None}
            values.update(_from_env(file_env, source=str(env_path)))
        values.update(_from_env(env, source="environment"))
        values.update(overrides)
        return _build(values, source="settings")


ENV_NAMES: dict[str, str] = {
    f.metadata["env"]: f.name for f in attrs.fields(HiveConfig) if f.metadata.get("env")
}


def mask_url(url: str) -> str:
    """Replace the password in a URL with ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # unparseable (a stray '['): hide whatever may be credentials
        scheme, sep, rest = url.partition("://")
        return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else url
    # Keep the host part as written (IPv6 brackets, port) and replace only the credentials.
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _to_bool(value: Any, _: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def _to_names(value: Any, _: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str | int | float) for i in items):
        raise ValueError(f"expected a list of names or a comma-separated string, got {value!r}")
    return tuple(str(i).strip() for i in items if str(i).strip())


def _to_int(value: Any, _: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"expected a whole number, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a whole number, got {value!r}") from None


def _to_float(value: Any, _: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        number = float(value)  # OverflowError: an int beyond float's range (TOML integers are unbounded)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):  # 'nan' passes every '> 0' check; 'inf' overflows int(ms) TTLs
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def _to_str(value: Any, _: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


# Keyed by the annotation as written; ``X | None`` of any of these is handled by _parser_for.
_PARSERS: dict[str, Parser] = {
    "bool": _to_bool,
    "int": _to_int,
    "float": _to_float,
    "str": _to_str,
    "tuple[str, ...]": _to_names,
    "tuple[float, float, float]": lambda v, _: _to_weights(v),
}


def _parser_for(field: attrs.Attribute[Any]) -> Parser | None:
    """The parser of a field's annotation (a string under ``from __future__ import annotations``, else a type)."""
    hint = field.type
    kind = hint if isinstance(hint, str) else hint.__name__ if isinstance(hint, type) else str(hint)
    if kind in _PARSERS:
        return _PARSERS[kind]
    parse = _PARSERS.get(kind.removesuffix(" | None")) if kind.endswith(" | None") else None
    if parse is None:
        return None
    return lambda value, _: None if value is None else parse(value, None)


def _as_written(value: Any, _: Any) -> Any:
    return value


def _to_weights(value: Any) -> tuple[float, float, float]:
    parts = _to_names(value, None) if isinstance(value, str) else tuple(value)
    if len(parts) != 3:
        raise ValueError(f"expected three numbers (cpu, memory, tasks), got {value!r}")
    weights = tuple(_to_float(p, None) for p in parts)
    if any(w < 0 for w in weights):
        raise ValueError(f"weights must be >= 0, got {value!r}")
    return (weights[0], weights[1], weights[2])


def _from_env(env: Mapping[str, str], *, source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in env.items():
        field = ENV_NAMES.get(name)
        if field is not None:
            out[field] = value
        elif name.startswith("HIVE_") and name not in NON_SETTING_ENV:
            known = ", ".join(sorted(n for n in ENV_NAMES if n.startswith("HIVE_")))
            close = difflib.get_close_matches(name, ENV_NAMES, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"unknown setting {name} in {source}; {hint}known HIVE_* settings: {known}")
    return out


#: Settings that are tables of tables in TOML ([NAME.SUB]), beside [hive].
_TABLES = ("plugins", "schedules", "limits")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
    if "hive" not in data:
        return dict(data)
    section = data["hive"]
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [hive] must be a table")
    values = dict(section)
    for key, value in data.items():
        if key in _TABLES and key not in values:
            values[key] = value  # [plugins.NAME], [schedules.NAME] and [limits.NAME] beside [hive]
        elif key != "hive":
            # Never drop a setting silently: next to [hive], only the tables of _TABLES belong.
            raise ConfigError(
                f"unknown top-level key {key!r} in config file {path}; put settings under [hive], "
                "plugin settings under [plugins.NAME], periodic tasks under [schedules.NAME] and task types' "
                "limits under [limits.NAME]"
            )
    return values


def _build(values: dict[str, Any], *, source: str) -> HiveConfig:
    fields = {f.name: f for f in attrs.fields(HiveConfig)}
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        field = fields.get(key)
        if field is None:
            raise ConfigError(f"unknown setting {key!r} in {source}; known settings: {', '.join(sorted(fields))}")
        label = field.metadata.get("env") or key
        if key in _TABLES:
            if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
                raise ConfigError(f"setting {key!r} must map names to tables ([{key}.NAME])")
            if key == "limits":
                for name, table in raw.items():
                    try:
                        limit_from_table(name, table)
                    except ValueError as exc:
                        raise ConfigError(f"{exc} (in {source})") from None
            kwargs[key] = raw
            continue
        parse = _parser_for(field)
        assert parse is not None, f"HiveConfig.{key} has no parser"
        try:
            kwargs[key] = parse(raw, None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"bad value for {label} ({key}): {exc}") from None
    try:
        return HiveConfig(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"bad setting: {exc}") from None


# --- plugin settings ---------------------------------------------------------------------------------------


def read_plugin_settings(
    name: str, section: Mapping[str, Any], cls: type[SettingsT], *, convert: bool = True
) -> SettingsT:
    """``section`` (a ``[plugins.NAME]`` table) as the attrs class ``cls``, whose fields all have defaults.

    Values are parsed by field type like HiveConfig's own, then cls's converters and validators run."""
    # Parsed types: bool, int, float, str, tuple[str, ...], each also "| None" ("2.5" and 2 make a float, "yes" a
    # bool, "a, b" a tuple). A field with its own converter gets the value as written, and so does every field
    # when convert=False (for a class whose validators check types). A bad user value is a ConfigError naming
    # plugins.NAME.KEY; a field without a default or a parser is a TypeError, a bug in the plugin.
    where = f"[plugins.{name}]"
    fields = {field.alias or field.name: field for field in attrs.fields(cls) if field.init}
    unknown = sorted((key for key in section if key not in fields), key=str)
    if unknown:
        listed = ", ".join(repr(key) for key in unknown)
        raise ConfigError(
            f"unknown setting{'s' if len(unknown) > 1 else ''} {listed} in {where}; "
            f"known settings: {', '.join(sorted(fields))}"
        )
    values: dict[str, Any] = {}
    for key, field in fields.items():
        if field.default is attrs.NOTHING:
            raise TypeError(f"{cls.__qualname__}.{field.name} needs a default: plugin settings are optional")
        parse = _parser_for(field) if convert and field.converter is None else _as_written
        if parse is None:
            raise TypeError(
                f"{cls.__qualname__}.{field.name}: no parser for type {field.type!r}; give the field a converter"
            )
        if key not in section:
            continue
        try:
            values[key] = parse(section[key], None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"bad value for {key} (plugins.{name}.{key}): {exc}") from None
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        # A validator or converter refused something: find the key it refused on its own, if one is to blame.
        culprit = next((key for key, value in values.items() if _refuses(cls, key, value)), None)
        if culprit is None:
            raise ConfigError(f"bad settings in {where}: {exc}") from None
        raise ConfigError(f"bad value for {culprit} (plugins.{name}.{culprit}): {exc}") from None


def _refuses(cls: type[Any], key: str, value: Any) -> bool:
    try:
        cls(**{key: value})
    except (ValueError, TypeError):
        return True
    return False
