"""Pure parts: the bearer header parser, payload schema checks, the settings and the caller's declared name."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hive_framework import ConfigError, HiveConfig, Kernel
from hypothesis import given
from hypothesis import strategies as st

from hive_plugin_mcp.audit import declared_client
from hive_plugin_mcp.http import bearer_token, fingerprint, token_matches
from hive_plugin_mcp.payloads import PayloadRejected, check_payloads, json_schema_of, problems
from hive_plugin_mcp.settings import DEFAULT_TOOLS, McpSettings, is_loopback

import mcp_apps

TOKENS = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=64)


@given(TOKENS)
def test_a_bearer_header_with_the_token_matches(token: str) -> None:
    assert token_matches(f"Bearer {token}", token)
    assert token_matches(f"bearer   {token} ", token)
    assert bearer_token(f"Bearer {token}") == token


@given(TOKENS, st.text(max_size=80))
def test_any_other_header_does_not_match(token: str, header: str) -> None:
    if bearer_token(header) == token:
        return  # hypothesis found the token itself
    assert not token_matches(header, token)


@given(st.text(max_size=80))
def test_no_header_matches_an_empty_token(header: str) -> None:
    assert not token_matches(header, "")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic abc", "Bearer a b", "Token abc", "abc"])
def test_malformed_headers_carry_no_token(header: str | None) -> None:
    assert bearer_token(header) is None


def test_a_token_is_logged_only_as_a_fingerprint() -> None:
    assert fingerprint("s3cret") == fingerprint("s3cret") != fingerprint("s3cret2")
    assert "s3cret" not in fingerprint("s3cret")


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=10))
def test_the_square_schema_accepts_exactly_integer_items_in_range(payload: Any) -> None:
    found = problems(mcp_apps.SQUARE_SCHEMA, payload)
    item = payload.get("item") if isinstance(payload, dict) else None
    fits = (isinstance(payload, dict) and type(item) is int and -1000 <= item <= 1000
            and isinstance(payload.get("description", ""), str))
    assert (found == []) == fits, (payload, found)


def test_refusals_name_each_bad_item_and_where() -> None:
    kernel = Kernel(HiveConfig.load(environ={}, env_file="/dev/null", toml_file=None), apps=[mcp_apps],
                    load_entry_points=False)
    check_payloads(kernel, "square", [{"item": 2}])
    check_payloads(kernel, "echo", [{"anything": ["goes"]}])  # no schema declared
    with pytest.raises(PayloadRejected) as refused:
        check_payloads(kernel, "square", [{"item": 1}, {"item": "x"}, {}], label="items")
    assert refused.value.problems == [
        "items[1] $.item: 'x' is not of type 'integer'",
        "items[2] $: 'item' is a required property",
    ]
    assert "nothing enqueued" in str(refused.value)


def test_a_broken_schema_is_reported_not_raised() -> None:
    assert problems({"type": "no-such-type"}, {})[0].startswith("the task type's own schema is invalid")


def test_read_only_tools_are_on_by_default_and_the_others_opt_in() -> None:
    assert McpSettings().tools == DEFAULT_TOOLS
    chosen = McpSettings.from_mapping({"enable": ["submit"], "disable": "parallel_execute, wait"}).tools
    assert "submit" in chosen and "cancel" not in chosen and "parallel_execute" not in chosen and "wait" not in chosen
    with pytest.raises(ConfigError, match=r"plugins\.mcp\.enable.*unknown tool\(s\) rm_rf"):
        McpSettings.from_mapping({"enable": ["rm_rf"]})
    with pytest.raises(ConfigError, match="unknown setting 'tokn'"):
        McpSettings.from_mapping({"tokn": "x"})


@pytest.mark.parametrize(("address", "loopback"), [("127.0.0.1", True), ("::1", True), ("[::1]", True),
                                                   ("localhost", True), ("0.0.0.0", False), ("10.1.2.3", False),
                                                   ("example.com", False)])
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


class _Ctx:
    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.session = type("S", (), {"client_params": None})()


def test_the_declared_client_name_cannot_forge_log_lines() -> None:
    info = {"io.modelcontextprotocol/clientInfo": {"name": "evil\nINFO fake line", "version": "1"}}
    assert declared_client(_Ctx(info)) == "evil?INFO fake line/1"  # type: ignore[arg-type]
    assert declared_client(_Ctx({})) == "unknown client"  # type: ignore[arg-type]


@attrs.frozen
class ResizePayload:
    """What resize needs: an image and the size to make it."""

    path: str
    width: int
    height: int | None = None
    tags: list[str] = attrs.field(factory=list)


def test_an_attrs_class_gives_a_json_schema_that_checks_payloads() -> None:
    schema = json_schema_of(ResizePayload)
    assert schema["required"] == ["path", "width"] and schema["additionalProperties"] is False
    assert schema["description"] == "What resize needs: an image and the size to make it."
    assert problems(schema, {"path": "a.png", "width": 10, "tags": ["x"]}) == []
    assert problems(schema, {"path": "a.png", "width": "wide"}) == ["$.width: 'wide' is not of type 'integer'"]
    assert problems(schema, {"path": "a.png"}) == ["$: 'width' is a required property"]
    assert problems(schema, {"path": "a.png", "width": 1, "colour": "red"})[0].startswith("$: Additional properties")
    with pytest.raises(TypeError):
        json_schema_of(dict)
