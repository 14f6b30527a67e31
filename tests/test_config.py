"""HubConfig: the original's defaults, validation of every field, and room-name rules."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from fasthub import HubConfig


def test_defaults_are_the_originals() -> None:
    cfg = HubConfig()
    # the five timers and limits of the original Go package
    assert cfg.ping_interval == 54
    assert cfg.pong_timeout == 60
    assert cfg.write_timeout == 10
    assert cfg.max_message_size == 512 * 1024
    assert cfg.cleanup_interval == 30
    # ours, as documented
    assert cfg.send_buffer_size == 1024 * 1024
    assert cfg.slow_consumer == "close"
    assert cfg.member_events_limit == 256
    assert cfg.max_rooms_per_connection == 1000
    assert cfg.max_room_name_length == 128
    assert cfg.max_json_depth == 32
    assert cfg.transport_high_water == 64 * 1024


def test_ping_comes_before_the_pong_deadline_by_default() -> None:
    cfg = HubConfig()
    assert cfg.ping_interval < cfg.pong_timeout


def test_config_is_frozen_and_comparable() -> None:
    cfg = HubConfig(ping_interval=1.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ping_interval = 2.0  # type: ignore[misc]
    assert cfg == HubConfig(ping_interval=1.5)
    assert cfg != HubConfig()
    assert hash(cfg) == hash(HubConfig(ping_interval=1.5))
    assert dataclasses.replace(cfg, pong_timeout=3.0).pong_timeout == 3.0


def test_valid_custom_values_are_kept() -> None:
    cfg = HubConfig(
        ping_interval=0.3,
        pong_timeout=0.6,
        write_timeout=1,
        cleanup_interval=0.2,
        max_message_size=1,
        send_buffer_size=1024,
        slow_consumer="drop",
        member_events_limit=0,
        max_rooms_per_connection=1,
        max_room_name_length=1,
        max_json_depth=2,
        transport_high_water=1024,
    )
    assert cfg.ping_interval == 0.3 and cfg.cleanup_interval == 0.2 and cfg.write_timeout == 1
    assert cfg.slow_consumer == "drop" and cfg.member_events_limit == 0
    assert cfg.send_buffer_size == 1024 and cfg.max_message_size == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *[
            (name, bad)
            for name in ("ping_interval", "pong_timeout", "write_timeout", "cleanup_interval")
            for bad in (0, -1, -0.5, math.nan, "5", None, True)
        ],
        ("max_message_size", 0),
        ("max_message_size", -1),
        ("max_message_size", 1.5),
        ("max_message_size", "1024"),
        ("max_message_size", True),
        ("send_buffer_size", 1023),
        ("send_buffer_size", 2048.0),
        ("send_buffer_size", None),
        ("member_events_limit", -1),
        ("member_events_limit", 2.0),
        ("member_events_limit", False),
        ("max_rooms_per_connection", 0),
        ("max_rooms_per_connection", "10"),
        ("max_room_name_length", 0),
        ("max_room_name_length", 12.5),
        ("max_json_depth", 1),
        ("max_json_depth", 0),
        ("max_json_depth", None),
        ("transport_high_water", 1023),
        ("transport_high_water", -5),
        ("slow_consumer", "block"),
        ("slow_consumer", "CLOSE"),
        ("slow_consumer", None),
        ("room_name_pattern", "[unclosed"),
        ("room_name_pattern", "(?P<"),
    ],
)
def test_invalid_value_raises_value_error_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        HubConfig(**{field: value})


@pytest.mark.parametrize(("ping", "pong"), [(60, 60), (61, 60), (1.0, 0.5), (54, 54.0)])
def test_ping_interval_must_be_shorter_than_pong_timeout(ping: float, pong: float) -> None:
    with pytest.raises(ValueError, match="ping_interval") as info:
        HubConfig(ping_interval=ping, pong_timeout=pong)
    assert "pong_timeout" in str(info.value)


def test_ping_interval_just_below_pong_timeout_is_fine() -> None:
    cfg = HubConfig(ping_interval=0.59, pong_timeout=0.6)
    assert cfg.ping_interval < cfg.pong_timeout


def test_send_buffer_smaller_than_max_message_is_refused() -> None:
    with pytest.raises(ValueError, match="send_buffer_size") as info:
        HubConfig(max_message_size=64 * 1024, send_buffer_size=32 * 1024)
    assert "max_message_size" in str(info.value)
    # equal is fine
    cfg = HubConfig(max_message_size=32 * 1024, send_buffer_size=32 * 1024)
    assert cfg.send_buffer_size == cfg.max_message_size


def test_default_send_buffer_is_refused_below_a_large_max_message() -> None:
    with pytest.raises(ValueError, match="send_buffer_size"):
        HubConfig(max_message_size=2 * 1024 * 1024)


@pytest.mark.parametrize(
    "name",
    ["lobby", "a", "a" * 128, "Room_1", "chat:general", "team/dev", "x.y", "user@host", "a+b-c=d", "#tag", "~!$*"],
)
def test_valid_room_names(name: str) -> None:
    assert HubConfig().valid_room_name(name) is True


@pytest.mark.parametrize(
    "name",
    ["", "a" * 129, "bad room", "tab\there", "lobby\n", "\nlobby", "caf\u00e9", "emoji\U0001f600", "a,b", "q?", "<x>"],
)
def test_invalid_room_names(name: str) -> None:
    assert HubConfig().valid_room_name(name) is False


@pytest.mark.parametrize("value", [None, 5, 1.0, b"lobby", ["lobby"], {"room": "lobby"}])
def test_non_string_room_names_are_invalid(value: Any) -> None:
    assert HubConfig().valid_room_name(value) is False


def test_custom_room_name_rules() -> None:
    cfg = HubConfig(max_room_name_length=4, room_name_pattern=r"[a-z]+")
    assert cfg.valid_room_name("abcd")
    assert not cfg.valid_room_name("abcde")  # too long
    assert not cfg.valid_room_name("ABC")  # outside the pattern
    assert not cfg.valid_room_name("ab1")
    # the pattern must match the whole name, not a prefix
    assert not cfg.valid_room_name("ab c")
