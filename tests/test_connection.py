"""The one place that builds Redis clients: URL forms, TLS settings, the durable acknowledgement."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.sentinel import SentinelConnectionPool

from hive_framework.config import HiveConfig
from hive_framework.connection import NotDurable, confirm_durable, parse_sentinel_url, redis_client
from hive_framework.errors import ConfigError

hosts = st.sampled_from(["127.0.0.1", "localhost", "sentinel-1.example", "10.0.0.7"])
ports = st.integers(min_value=1, max_value=65535)
services = st.text(alphabet=st.characters(codec="ascii", categories=["L", "N"]) | st.sampled_from("-_."),
                   min_size=1, max_size=20)


@given(st.lists(st.tuples(hosts, ports), min_size=1, max_size=5), services, st.integers(0, 15),
       st.one_of(st.none(), st.text(min_size=1, max_size=12)))
def test_sentinel_urls_round_trip(sentinels: list[tuple[str, int]], service: str, db: int,
                                  password: str | None) -> None:
    auth = f"hive:{quote(password, safe='')}@" if password is not None else ""
    url = f"redis+sentinel://{auth}{','.join(f'{h}:{p}' for h, p in sentinels)}/{quote(service)}/{db}"
    HiveConfig(redis_url=url)  # the setting's validator accepts it
    assert parse_sentinel_url(url) == (sentinels, service, db, "hive" if password is not None else None, password)


@given(st.text(max_size=60))
def test_any_sentinel_url_parses_or_names_the_problem(tail: str) -> None:
    try:
        sentinels, service, _, _, _ = parse_sentinel_url("redis+sentinel://" + tail)
    except ConfigError as exc:
        assert "redis_url" in str(exc)
    except ValueError:
        pass  # urlsplit's own refusal (a stray '[')
    else:
        assert sentinels and service


@pytest.mark.parametrize("url", ["redis+sentinel://127.0.0.1:26379", "redis+sentinel:///hive",
                                 "redis+sentinel://h:notaport/hive", "redis+sentinel://h:1/hive/x"])
def test_malformed_sentinel_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="redis_url"):
        parse_sentinel_url(url)


def test_sentinel_client_uses_a_sentinel_pool() -> None:
    config = HiveConfig(redis_url="redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/hive/2",
                        redis_sentinel_password="s3")
    client = redis_client(config)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "hive" and pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == "pw"
    assert [s.connection_pool.connection_kwargs["password"] for s in pool.sentinel_manager.sentinels] == ["s3", "s3"]


def test_tls_settings_reach_the_connection() -> None:
    config = HiveConfig(redis_url="rediss://127.0.0.1:6380/0", redis_ca_file="/ca.pem", redis_cert_file="/c.pem",
                        redis_key_file="/k.pem")
    kwargs = redis_client(config).connection_pool.connection_kwargs
    assert kwargs["ssl_cert_reqs"] == "required" and kwargs["ssl_ca_certs"] == "/ca.pem"
    assert kwargs["ssl_certfile"] == "/c.pem" and kwargs["ssl_keyfile"] == "/k.pem"
    off = redis_client(config.evolve(redis_tls_verify=False)).connection_pool.connection_kwargs
    assert off["ssl_cert_reqs"] == "none" and off["ssl_check_hostname"] is False


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ConfigError, match="redis\\+sentinel://"):
        HiveConfig.load(environ={"REDIS_URL": "http://127.0.0.1:6379"}, env_file=None, toml_file=None)


async def test_durable_acknowledgement_fails_clearly_without_replicas(hive_config: HiveConfig) -> None:
    # Given the shared test Redis, which has no replica, and an enqueue that wants one
    config = hive_config.evolve(redis_wait_replicas=1, redis_wait_timeout=0.05)
    client = redis_client(config)
    try:
        # Then the acknowledgement is refused, naming what was missing
        with pytest.raises(NotDurable, match="only 0 of 1 replicas acknowledged"):
            await confirm_durable(client, config, "1 task(s)")
        # and with it off nothing is waited for
        await confirm_durable(client, hive_config, "1 task(s)")
        # and WAITAOF on a server older than 7.2 says so
        version = (await client.info("server"))["redis_version"]
        if tuple(int(x) for x in str(version).split(".")[:2]) < (7, 2):
            with pytest.raises(ConfigError, match="WAITAOF"):
                await confirm_durable(client, config.evolve(redis_wait_aof=True), "1 task(s)")
    finally:
        await client.aclose()
