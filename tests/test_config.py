"""HiveConfig: the seed's env names and defaults, every source in order, and one clear error per bad key."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hive_framework import ConfigError, HiveConfig
from hive_framework.config import ENV_NAMES, mask_url


def load(environ: dict[str, str] | None = None, **kwargs: object) -> HiveConfig:
    """Only the sources a test names: no stray ./.env, ./hive.toml or real environment."""
    kwargs.setdefault("env_file", os.devnull)
    kwargs.setdefault("toml_file", os.devnull)
    return HiveConfig.load(environ=environ or {}, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Defaults look for ./.env and ./hive.toml: run every test in an empty directory.
    monkeypatch.chdir(tmp_path)


# --- the seed's names and defaults ------------------------------------------------------------------


SEED_DEFAULTS = {
    "ENABLE_HIVE": ("enable_hive", True),
    "REDIS_HOST": ("redis_host", "localhost"),
    "REDIS_PORT": ("redis_port", 6379),
    "REDIS_DB": ("redis_db", 0),
    "REDIS_PASSWORD": ("redis_password", ""),
    "HIVE_HIGH_PRIORITY_QUEUE": ("high_priority_queue", "venom:tasks:high"),
    "HIVE_BACKGROUND_QUEUE": ("background_queue", "venom:tasks:background"),
    "HIVE_BROADCAST_CHANNEL": ("broadcast_channel", "venom:broadcast"),
    "HIVE_TASK_TIMEOUT": ("task_timeout", 300),
    "HIVE_MAX_RETRIES": ("max_retries", 3),
    "HIVE_ZOMBIE_TASK_TIMEOUT": ("zombie_task_timeout", 600),
}


@pytest.mark.parametrize("env_name", sorted(SEED_DEFAULTS))
def test_seed_env_names_map_to_settings_with_the_seed_defaults(env_name: str) -> None:
    # Given no source at all
    config = load()
    field, default = SEED_DEFAULTS[env_name]
    # Then the seed's environment name is read into that setting, whose default is the seed's
    assert ENV_NAMES[env_name] == field
    assert getattr(config, field) == default


def test_seed_env_values_are_read_and_typed() -> None:
    # Given every seed variable set in the environment
    environ = {
        "ENABLE_HIVE": "false",
        "REDIS_HOST": "redis.internal",
        "REDIS_PORT": "6380",
        "REDIS_DB": "2",
        "REDIS_PASSWORD": "pw",
        "HIVE_HIGH_PRIORITY_QUEUE": "q:hi",
        "HIVE_BACKGROUND_QUEUE": "q:bg",
        "HIVE_BROADCAST_CHANNEL": "chan",
        "HIVE_TASK_TIMEOUT": "12.5",
        "HIVE_MAX_RETRIES": "0",
        "HIVE_ZOMBIE_TASK_TIMEOUT": "90",
    }
    # When loaded
    config = load(environ)
    # Then each has the right type and value
    assert config.enable_hive is False
    assert (config.redis_host, config.redis_port, config.redis_db) == ("redis.internal", 6380, 2)
    assert config.redis_password == "pw"
    assert (config.high_priority_queue, config.background_queue, config.broadcast_channel) == ("q:hi", "q:bg", "chan")
    assert config.task_timeout == 12.5
    assert config.max_retries == 0
    assert config.zombie_task_timeout == 90.0
    assert config.effective_redis_url() == "redis://:pw@redis.internal:6380/2"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("true", True), (" YES ", True), ("on", True), ("0", False), ("False", False), ("off", False),
     ("no", False), ("", False)],
)
def test_boolean_spellings(text: str, expected: bool) -> None:
    # Given a boolean setting spelled one of the usual ways, Then it is read as that boolean
    assert load({"ENABLE_HIVE": text}).enable_hive is expected


def test_name_lists_are_comma_separated_and_an_empty_plugin_allow_list_differs_from_none() -> None:
    # Given HIVE_APP as a sloppy comma list, and HIVE_LOAD_PLUGINS set but empty
    config = load({"HIVE_APP": " a.tasks, b ,,c ", "HIVE_LOAD_PLUGINS": ""})
    # Then names are stripped and blanks dropped; an empty allow-list means "no entry-point plugins"
    assert config.apps == ("a.tasks", "b", "c")
    assert config.load_plugins == ()
    # And when it is not set at all, every installed plugin is allowed (None)
    assert load().load_plugins is None


# --- Redis URL ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["redis://cache.example:6390/3", "rediss://:s3cret@cache.example:6380/1", "redis://user:pw@h:1/0"]
)
def test_redis_url_overrides_host_port_db_and_password(url: str) -> None:
    # Given REDIS_URL together with the separate host/port variables
    config = load({"REDIS_URL": url, "REDIS_HOST": "ignored", "REDIS_PORT": "1234", "REDIS_PASSWORD": "nope"})
    # Then the URL is the one used
    assert config.effective_redis_url() == url
    assert config.redis_is_configured()


def test_redis_url_is_built_from_parts_with_the_password_quoted() -> None:
    # Given a password with URL-special characters
    config = load({"REDIS_HOST": "db", "REDIS_PORT": "7000", "REDIS_DB": "4", "REDIS_PASSWORD": "p@ss/w:rd"})
    # Then the built URL quotes it, and the safe form hides it entirely
    assert config.effective_redis_url() == "redis://:p%40ss%2Fw%3Ard@db:7000/4"
    assert "p%40ss" not in config.safe_redis_url()
    assert config.safe_redis_url() == "redis://:***@db:7000/4"


def test_defaults_are_not_a_configured_redis() -> None:
    # Given nothing set, Then the CLI may fall back to an embedded Redis
    assert not load().redis_is_configured()
    assert load({"REDIS_HOST": "elsewhere"}).redis_is_configured()


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://alice:s3cret@h.example:6380/2", "rediss://alice:***@h.example:6380/2"),
        ("redis://:s3cret@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://:p@ss@h/0", "redis://:***@h/0"),
    ],
)
def test_mask_url_hides_only_the_password(url: str, masked: str) -> None:
    # Given a URL, When masked, Then the password (and only it) is replaced
    assert mask_url(url) == masked


@pytest.mark.parametrize("url", ["http://h:6379", "h:6379", "redis://h:99999/0", "redis://:pw@h:port/0"])
def test_a_bad_redis_url_is_a_config_error_naming_it(url: str) -> None:
    # Given a REDIS_URL that redis-py would refuse with a bare ValueError later on
    # When loaded, Then it is refused up front, naming REDIS_URL, without echoing a password
    with pytest.raises(ConfigError, match="REDIS_URL") as info:
        load({"REDIS_URL": url})
    assert "pw@" not in str(info.value)


# --- sources and their order -------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_precedence_defaults_toml_dotenv_environ_overrides(tmp_path: Path) -> None:
    # Given one setting at every level, and one more setting per level that only that level sets
    toml = write(tmp_path / "hive.toml", '[hive]\nredis_host = "from-toml"\nredis_db = 5\nnode_name = "t"\n')
    dotenv = write(tmp_path / "x.env", "REDIS_HOST=from-dotenv\nREDIS_DB=6\nHIVE_MAX_RETRIES=7\n")
    environ = {"REDIS_HOST": "from-environ", "REDIS_DB": "8"}
    # When loaded with an override on top
    config = HiveConfig.load(environ=environ, env_file=dotenv, toml_file=toml, redis_host="from-override")
    # Then the highest source wins each key, and lower sources still fill the rest
    assert config.redis_host == "from-override"
    assert config.redis_db == 8  # environ beats .env beats TOML
    assert config.max_retries == 7  # only in .env
    assert config.node_name == "t"  # only in TOML
    assert config.redis_port == 6379  # default


def test_dotenv_beats_toml_and_environ_beats_dotenv(tmp_path: Path) -> None:
    # Given the same key in TOML and .env (and later also in the environment)
    toml = write(tmp_path / "hive.toml", "[hive]\nconcurrency = 2\n")
    dotenv = write(tmp_path / ".env", "HIVE_CONCURRENCY=3\n")
    # Then .env wins over TOML, and the environment wins over .env
    assert HiveConfig.load(environ={}, env_file=dotenv, toml_file=toml).concurrency == 3
    assert HiveConfig.load(environ={"HIVE_CONCURRENCY": "4"}, env_file=dotenv, toml_file=toml).concurrency == 4


def test_default_files_are_found_in_the_working_directory_and_by_env_name(tmp_path: Path) -> None:
    # Given ./hive.toml and ./.env in the working directory (the autouse fixture's tmp_path)
    write(tmp_path / "hive.toml", "[hive]\nkey_prefix = 'from-toml'\nconcurrency = 2\n")
    write(tmp_path / ".env", "HIVE_KEY_PREFIX=from-dotenv\n")
    # When loaded with no file named, Then both are read
    config = HiveConfig.load(environ={})
    assert (config.key_prefix, config.concurrency) == ("from-dotenv", 2)
    # And HIVE_CONFIG / HIVE_ENV_FILE name other files instead
    other = tmp_path / "other"
    other.mkdir()
    write(other / "c.toml", "concurrency = 9\n")  # a bare file, without a [hive] table
    write(other / "e.env", "HIVE_KEY_PREFIX=elsewhere\n")
    config = HiveConfig.load(environ={"HIVE_CONFIG": str(other / "c.toml"), "HIVE_ENV_FILE": str(other / "e.env")})
    assert (config.key_prefix, config.concurrency) == ("elsewhere", 9)


def test_plugin_sections_come_from_toml(tmp_path: Path) -> None:
    # Given [plugins.NAME] tables beside [hive]
    toml = write(tmp_path / "hive.toml", "[hive]\nconcurrency = 2\n[plugins.scrape]\ntimeout = 5\n")
    # When loaded
    config = load(toml_file=toml)
    # Then a plugin reads its own section, and a missing one is empty
    assert config.plugin_config("scrape") == {"timeout": 5}
    assert config.plugin_config("absent") == {}


# --- mistakes: one ConfigError naming the key ----------------------------------------------------------


def test_unknown_hive_env_var_names_the_variable_and_lists_known_ones() -> None:
    # Given a typo in a HIVE_* variable
    with pytest.raises(ConfigError) as info:
        load({"HIVE_TASK_TIMEOUTS": "5"})
    # Then the error names it and shows the real names
    assert "HIVE_TASK_TIMEOUTS" in str(info.value)
    assert "HIVE_TASK_TIMEOUT," in str(info.value)


def test_unknown_hive_var_in_a_dotenv_file_names_the_file(tmp_path: Path) -> None:
    # Given a .env file with a typo
    dotenv = write(tmp_path / "prod.env", "HIVE_CONCURENCY=4\n")
    # Then the error names the variable and the file
    with pytest.raises(ConfigError, match=r"HIVE_CONCURENCY.*prod\.env"):
        load(env_file=dotenv)


def test_non_setting_hive_vars_and_foreign_vars_are_allowed() -> None:
    # Given hive's own non-setting variables and unrelated ones, Then loading works
    config = load({"HIVE_REQUIRE_REDIS": "1", "HIVE_TEST_REDIS_URL": "redis://x", "PATH": "/bin", "REDISCLI_AUTH": "x"})
    assert config.redis_host == "localhost"


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[hive]\nredis_hots = 'x'\n", "redis_hots"),
        ("concurency = 3\n", "concurency"),
        ("[hive]\nconcurrency = 2\n[hiev]\nx = 1\n", "hiev"),
        ("[hive]\nconcurrency = 'many'\n", "HIVE_CONCURRENCY"),
        ("[hive]\nredis_host = 5\n", "REDIS_HOST"),
        ("[hive]\nenable_hive = 'perhaps'\n", "ENABLE_HIVE"),
        ("[hive]\nplugins = 3\n", "plugins"),
        ("hive = 3\n", "hive"),
    ],
)
def test_bad_toml_keys_and_values_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
    # Given a TOML file with a wrong key or value, Then the error names it
    with pytest.raises(ConfigError, match=key):
        load(toml_file=write(tmp_path / "hive.toml", toml))


@pytest.mark.parametrize("content", ["[hive\n", "x = = 1\n"])
def test_broken_toml_is_a_config_error_naming_the_file(tmp_path: Path, content: str) -> None:
    path = write(tmp_path / "broken.toml", content)
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load(toml_file=path)


def test_missing_unreadable_or_binary_toml_is_a_config_error(tmp_path: Path) -> None:
    # Given a config path that does not exist, is a directory, or is not text
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    for path in (tmp_path / "nope.toml", tmp_path, binary):
        # Then each is one ConfigError naming the path
        with pytest.raises(ConfigError, match=r"^config file "):
            load(toml_file=path)


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("REDIS_PORT", "abc"),
        ("REDIS_PORT", "0"),
        ("REDIS_PORT", "70000"),
        ("REDIS_DB", "-1"),
        ("HIVE_MAX_RETRIES", "-1"),
        ("HIVE_MAX_RETRIES", "2.5"),
        ("HIVE_TASK_TIMEOUT", "0"),
        ("HIVE_TASK_TIMEOUT", "soon"),
        ("HIVE_TASK_TIMEOUT", "nan"),
        ("HIVE_RESULT_TTL", "inf"),
        ("HIVE_CONCURRENCY", "0"),
        ("ENABLE_HIVE", "maybe"),
    ],
)
def test_bad_env_values_name_the_variable(env: str, value: str) -> None:
    # Given a value that does not parse or is out of range
    with pytest.raises(ConfigError) as info:
        load({env: value})
    # Then the message names the environment variable
    assert env in str(info.value)


def test_evolve_validates_like_any_source() -> None:
    # Given a valid config, When evolved with a bad value, Then it is refused; a good one is applied
    base = load()
    with pytest.raises(ConfigError, match="REDIS_PORT"):
        base.evolve(redis_port=0)
    assert base.evolve(redis_port="6390").redis_port == 6390
    assert base.redis_port == 6379  # frozen: the original is untouched


# --- property tests over user input ---------------------------------------------------------------------

INT_SETTINGS = ["REDIS_PORT", "REDIS_DB", "HIVE_MAX_RETRIES", "HIVE_CONCURRENCY", "HIVE_MAX_PAYLOAD_BYTES"]
FLOAT_SETTINGS = ["HIVE_TASK_TIMEOUT", "HIVE_ZOMBIE_TASK_TIMEOUT", "HIVE_POLL_INTERVAL", "HIVE_RETRY_BACKOFF",
                  "HIVE_RESULT_TTL", "HIVE_SHUTDOWN_GRACE"]
BOOL_SETTINGS = ["ENABLE_HIVE", "HIVE_TRACE_PLUGINS"]

number_like = st.one_of(
    st.text(),
    st.from_regex(r"\A\s*[-+]?[0-9_]{0,6}(\.[0-9]*)?([eE][-+]?[0-9]{1,4})?\s*\Z"),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "0x10", "1_000", "٣", "²", " 7 ", "", "true"]),
)


@given(name=st.sampled_from(INT_SETTINGS + FLOAT_SETTINGS + BOOL_SETTINGS), text=number_like)
def test_any_string_for_a_typed_setting_parses_or_is_a_config_error(name: str, text: str) -> None:
    # Given arbitrary user text for a typed setting
    try:
        config = load({name: text})
    except ConfigError as exc:
        # Then either it is refused naming the variable...
        assert name in str(exc)
        return
    # ...or it parsed into a usable value of the right type
    value = getattr(config, ENV_NAMES[name])
    if name in INT_SETTINGS:
        assert type(value) is int
    elif name in FLOAT_SETTINGS:
        assert type(value) is float and math.isfinite(value)
    else:
        assert type(value) is bool


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@given(field=st.sampled_from([f.name for f in attrs.fields(HiveConfig)]), value=json_values)
def test_any_toml_like_value_for_any_setting_parses_or_is_a_config_error(field: str, value: object) -> None:
    # Given any TOML-ish value (as an override) for any setting
    try:
        config = load(**{field: value})
    except ConfigError as exc:
        # Then it is refused naming the key (its env name or the field name)...
        env = attrs.fields_dict(HiveConfig)[field].metadata.get("env")
        assert field in str(exc) or (env and env in str(exc))
        return
    # ...or it was accepted as a valid config
    assert isinstance(config, HiveConfig)


safe_names = st.text(alphabet=st.characters(categories=["L", "N"], include_characters="_.:-"), min_size=1,
                     max_size=12)


@given(
    redis_host=st.text(min_size=1, max_size=20),
    redis_port=st.integers(1, 65535),
    redis_password=st.text(max_size=20),
    task_timeout=st.floats(min_value=0.001, max_value=1e9),
    max_retries=st.integers(0, 1000),
    enable_hive=st.booleans(),
    apps=st.lists(safe_names, max_size=3).map(tuple),
    load_plugins=st.none() | st.lists(safe_names, max_size=3).map(tuple),
    key_prefix=st.text(max_size=20),
)
def test_to_env_round_trips(**settings: object) -> None:
    # Given any valid config
    config = load(**settings)
    # When written as environment variables and read back
    again = load(config.to_env())
    # Then nothing is lost
    assert again == config


def test_a_float_setting_beyond_float_range_is_a_config_error() -> None:
    # Given a TOML integer too large for a float (TOML integers are unbounded), Then it is refused, not a crash
    with pytest.raises(ConfigError, match="HIVE_TASK_TIMEOUT"):
        load(task_timeout=10**400)


# --- plugin settings: HiveConfig.plugin_settings ---------------------------------------------------------


def _at_most_ten(inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value > 10:
        raise ValueError(f"{attribute.name} must be <= 10, got {value!r}")


def _mode(value: object) -> str:
    if value not in ("fast", "slow"):
        raise ValueError(f"expected 'fast' or 'slow', got {value!r}")
    return str(value)


@attrs.frozen(kw_only=True)
class DemoSettings:
    """A plugin's settings as a plugin author declares them: attrs fields with defaults."""

    enabled: bool = True
    retries: int = attrs.field(default=3, validator=_at_most_ten)
    timeout: float = 2.5
    label: str = "demo"
    hosts: tuple[str, ...] = ()
    limit: int | None = None
    mode: str = attrs.field(default="fast", converter=_mode)  # its own converter: gets the value as written


def demo(section: dict[str, object], cls: type[DemoSettings] = DemoSettings) -> DemoSettings:
    return HiveConfig(plugins={"demo": section}).plugin_settings("demo", cls)


def test_plugin_settings_default_when_the_section_is_absent_or_empty() -> None:
    # Given no [plugins.demo] section, or an empty one, Then every field has its default
    assert HiveConfig().plugin_settings("demo", DemoSettings) == DemoSettings()
    assert demo({}) == DemoSettings()


def test_plugin_settings_convert_values_like_hive_settings() -> None:
    # Given values written loosely (strings for numbers and booleans, a comma list)
    settings = demo({"enabled": "no", "retries": "7", "timeout": 4, "hosts": " a, b ,,", "limit": "5",
                     "mode": "slow", "label": "x"})
    # Then each is parsed into its field's type, the way HiveConfig parses its own settings
    assert settings == DemoSettings(enabled=False, retries=7, timeout=4.0, hosts=("a", "b"), limit=5, mode="slow",
                                    label="x")
    assert type(settings.timeout) is float
    assert demo({"hosts": ["a", " b "], "timeout": "0.5", "enabled": True}).hosts == ("a", "b")
    assert demo({"limit": None}).limit is None


def test_plugin_settings_from_a_toml_file(tmp_path: Path) -> None:
    # Given a [plugins.demo] table beside [hive]
    toml = write(tmp_path / "hive.toml", '[hive]\nconcurrency = 2\n[plugins.demo]\nretries = 9\nhosts = ["h"]\n')
    # Then the plugin reads it through the loaded config
    assert load(toml_file=toml).plugin_settings("demo", DemoSettings) == DemoSettings(retries=9, hosts=("h",))


def test_an_unknown_plugin_setting_names_the_key_the_plugin_and_the_known_keys() -> None:
    with pytest.raises(ConfigError) as info:
        demo({"retires": 2})
    message = str(info.value)
    assert "unknown setting 'retires' in [plugins.demo]" in message
    assert "known settings: enabled, hosts, label, limit, mode, retries, timeout" in message
    # Several unknown keys are all named
    with pytest.raises(ConfigError, match="unknown settings 'a', 'b' in"):
        demo({"b": 1, "a": 2, "retries": 1})


@pytest.mark.parametrize(
    ("section", "key", "reason"),
    [
        ({"retries": "many"}, "retries", "expected a whole number"),
        ({"retries": 2.5}, "retries", "expected a whole number"),
        ({"retries": True}, "retries", "expected a whole number"),
        ({"retries": 11}, "retries", "retries must be <= 10"),  # the class's validator
        ({"timeout": "soon"}, "timeout", "expected a number"),
        ({"timeout": "nan"}, "timeout", "expected a finite number"),
        ({"timeout": 10**400}, "timeout", "expected a number"),
        ({"enabled": "perhaps"}, "enabled", "expected true/false"),
        ({"label": 5}, "label", "expected a string"),
        ({"hosts": 7}, "hosts", "expected a list"),
        ({"hosts": [["nested"]]}, "hosts", "expected a list"),
        ({"mode": "medium"}, "mode", "expected 'fast' or 'slow'"),  # the class's converter
        ({"mode": ["fast"]}, "mode", "expected 'fast' or 'slow'"),
    ],
)
def test_a_bad_plugin_setting_is_a_config_error_naming_plugins_name_key(
    section: dict[str, object], key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        demo({"label": "ok", **section})
    assert f"bad value for {key} (plugins.demo.{key})" in str(info.value)
    assert reason in str(info.value)


def test_a_check_across_plugin_settings_names_the_section() -> None:
    def _above_low(inst: object, attribute: attrs.Attribute[int], value: int) -> None:
        if value < getattr(inst, "low", 0):
            raise ValueError(f"high must be >= low, got {value!r}")

    @attrs.frozen(kw_only=True)
    class Range:
        low: int = 0
        high: int = attrs.field(default=10, validator=_above_low)

    # Given two values each fine alone but not together, Then the error names the section
    with pytest.raises(ConfigError, match=r"bad settings in \[plugins\.range\]: high must be >= low"):
        HiveConfig(plugins={"range": {"low": 5, "high": 3}}).plugin_settings("range", Range)


def test_convert_false_hands_values_to_the_class_as_written() -> None:
    def _whole(inst: object, attribute: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{attribute.name} must be a whole number, got {value!r}")

    @attrs.frozen(kw_only=True)
    class Strict:
        count: int = attrs.field(default=1, validator=_whole)

    config = HiveConfig(plugins={"strict": {"count": "10"}})
    assert config.plugin_settings("strict", Strict).count == 10  # parsed
    with pytest.raises(ConfigError, match=r"plugins\.strict\.count.*must be a whole number, got '10'"):
        config.plugin_settings("strict", Strict, convert=False)


def test_real_type_annotations_are_parsed_too() -> None:
    # Given a class built without `from __future__ import annotations` (types, not strings)
    optional_float: Any = float | None
    typed = attrs.make_class("Typed", {"n": attrs.field(default=1, type=int),
                                       "names": attrs.field(default=(), type=tuple[str, ...]),
                                       "cap": attrs.field(default=None, type=optional_float)}, frozen=True)
    settings: Any = HiveConfig(plugins={"t": {"n": "4", "names": "a,b", "cap": "1.5"}}).plugin_settings("t", typed)
    assert (settings.n, settings.names, settings.cap) == (4, ("a", "b"), 1.5)


def test_a_badly_declared_settings_class_is_a_type_error_not_a_config_error() -> None:
    # Given fields hive cannot read (no default; a type without a parser and no converter), Then the plugin's bug
    # shows as a TypeError, whatever the user wrote
    no_default = attrs.make_class("NoDefault", {"n": attrs.field(type=int)})
    with pytest.raises(TypeError, match="needs a default"):
        HiveConfig().plugin_settings("x", no_default)
    odd_type = attrs.make_class("OddType", {"p": attrs.field(default=Path("."), type=Path)})
    with pytest.raises(TypeError, match="give the field a converter"):
        HiveConfig().plugin_settings("x", odd_type)


DEMO_KEYS = [field.name for field in attrs.fields(DemoSettings)]


@given(section=st.dictionaries(st.sampled_from(DEMO_KEYS) | st.text(max_size=6), json_values, max_size=4))
def test_any_plugin_section_reads_into_typed_settings_or_is_a_config_error(section: dict[str, object]) -> None:
    # Given any TOML-ish section
    try:
        settings = demo(section)
    except ConfigError as exc:
        # Then it is refused naming an unknown key or the plugins.demo.KEY it could not use...
        message = str(exc)
        assert message.startswith("unknown setting") or any(f"plugins.demo.{key}" in message for key in section)
        return
    # ...or every value has its field's type
    assert set(section) <= set(DEMO_KEYS)
    assert type(settings.enabled) is bool and type(settings.label) is str and settings.mode in {"fast", "slow"}
    assert type(settings.retries) is int and settings.retries <= 10
    assert type(settings.timeout) is float and math.isfinite(settings.timeout)
    assert all(type(host) is str and host for host in settings.hosts)
    assert settings.limit is None or type(settings.limit) is int
