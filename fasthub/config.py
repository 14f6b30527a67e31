"""HubConfig: every limit and timer of the hub in one frozen dataclass.

The defaults of the original Go package are kept (ping 54 s, pong timeout 60 s, write timeout
10 s, max message 512 KiB, cleanup 30 s); the other limits are ours and are documented in the
README. Invalid values fail at construction, not at the first connection.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Literal

SlowConsumerPolicy = Literal["close", "drop"]

_ROOM_PATTERN = re.compile(r"[A-Za-z0-9_.:@/+\-=#~!$*]+")


@dataclass(frozen=True, slots=True)
class HubConfig:
    """Limits and timers of one hub. All durations are seconds, all sizes bytes."""

    #: WebSocket ping period (the fast path pings; on the portable path the server's own ping does).
    ping_interval: float = 54.0
    #: A connection that sends nothing and answers no ping for this long is closed (1011).
    pong_timeout: float = 60.0
    #: A connection whose writes make no progress for this long is closed (1008 "write timeout").
    write_timeout: float = 10.0
    #: Largest message accepted from a client, on the wire (close 1009 above it).
    max_message_size: int = 512 * 1024
    #: Period of the sweep that removes dead connections and enforces write_timeout.
    cleanup_interval: float = 30.0
    #: Outbound budget per connection: bytes queued in the hub plus bytes in the transport buffer.
    send_buffer_size: int = 1024 * 1024
    #: Over budget: "close" the connection with 1008 "slow consumer", or "drop" the message (counted).
    slow_consumer: SlowConsumerPolicy = "close"
    #: user_joined/user_left events go to the other members only while a room has at most this
    #: many members (0 disables them); big rooms would otherwise cost O(members^2) on a join storm.
    member_events_limit: int = 256
    #: A connection's ``typing`` events in one room go out at most once per this many seconds;
    #: the ones in between are dropped silently (0: no throttle).
    typing_interval: float = 2.0
    #: Rooms one connection may be in at once.
    max_rooms_per_connection: int = 1000
    #: Longest room name, and the characters a room name may use.
    max_room_name_length: int = 128
    room_name_pattern: str = _ROOM_PATTERN.pattern
    #: Deepest JSON nesting accepted in an envelope.
    max_json_depth: int = 32
    #: Keep each connection's ASGI scope (``Connection.scope``) after ``on_connect``; about 2 KB
    #: per connection, so by default it is dropped once the connection is set up.
    keep_scope: bool = False
    #: Largest ``metadata`` object a client may put on a message, encoded (0: no limit).
    max_metadata_bytes: int = 8 * 1024
    #: Write-buffer high-water mark set on transports (low mark is a quarter of it).
    transport_high_water: int = 64 * 1024
    #: Messages per second per connection, with a burst of twice as many (0 disables).
    rate_limit: float = 1000.0
    #: Bytes per second per connection, with a burst of twice as many (0 disables).
    rate_limit_bytes: float = 4 * 1024 * 1024
    #: Refused messages in a row after which a client is closed with 1008.
    rate_limit_strikes: int = 100
    #: Connections this process accepts at once (HTTP 503 above it; 0: no limit).
    max_connections: int = 50_000
    #: Connections at once per client IP (HTTP 429 above it; 0: no limit). Off by default:
    #: clients behind one NAT or proxy share an address.
    max_connections_per_ip: int = 0
    #: Connections at once per authenticated user (HTTP 429 above it; 0: no limit).
    max_connections_per_user: int = 100
    #: New connections per second per client IP, burst twice as many (HTTP 429; 0: no limit).
    connect_rate_per_ip: float = 0.0
    #: Seconds a client may take to send its upgrade request (slowloris; 0: no limit).
    handshake_timeout: float = 10.0
    #: Largest request line plus headers of the upgrade request (HTTP 431 above it).
    max_request_size: int = 16 * 1024
    #: Flow control: a client that publishes to a room whose members hold more than this
    #: fraction of ``send_buffer_size`` is not read (TCP slows it) until they drain, so members
    #: that read steadily keep up instead of being closed as slow consumers (0: off).
    publish_watermark: float = 0.5
    #: Messages kept per room stream and per user stream, so clients can recover what they
    #: missed (0: no history; messages then carry no offset).
    history_size: int = 100
    #: Seconds a stored message is kept.
    history_ttl: float = 300.0
    #: Overrides per room name pattern: ``((pattern, size, ttl), ...)``, fnmatch, first match
    #: wins; size 0 turns history off for the rooms that match.
    room_history: tuple[tuple[str, int, float], ...] = ()
    #: Most messages one recovery sends; a client that missed more gets ``recovered: false``.
    recovery_max: int = 300
    #: Seconds a stream with no message kept remembers its position (afterwards its next
    #: message starts a new epoch).
    history_meta_ttl: float = 86400.0
    #: Seconds after a disconnect during which a client may resume its session with the
    #: ``connected`` message's token (0: no session resume).
    session_ttl: float = 120.0
    #: Key that signs session tokens. None: a random key of this process (set one shared key
    #: when several processes serve one hub, or a resume on another process is refused).
    session_secret: str | None = None
    #: Graceful drain (SIGTERM, ``Hub.drain``): connections closed per second with 1012, in
    #: batches every 100 ms, so their clients do not all reconnect at once (0: all at once).
    #: Raised when needed to close every connection within 80% of ``drain_timeout``.
    drain_rate: float = 2000.0
    #: Seconds a drain may take before the process exits anyway.
    drain_timeout: float = 30.0
    #: ``/healthz`` fails (503) while the event loop was this many seconds late in the last 10 s.
    health_max_lag: float = 2.0
    #: permessage-deflate (RFC 7692) for clients that offer it, on the fast path. A message is
    #: compressed once per window size and the same frame goes to every member.
    compression: bool = True
    #: Messages shorter than this many bytes (as encoded) go uncompressed.
    compression_threshold: int = 256
    #: Let clients keep their compression context between messages (better ratio for what they
    #: send, but one inflater of about 40 KB for the life of each connection that sends a
    #: compressed message); off: they are asked not to, and no inflater outlives its message.
    compression_client_context: bool = False
    # compiled room_name_pattern, set in __post_init__
    _compiled_room_pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)
    # room name -> history (size, ttl) or None, filled by history_for
    _history_cache: dict[str, tuple[int, float] | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        positive = {
            "ping_interval": self.ping_interval,
            "pong_timeout": self.pong_timeout,
            "write_timeout": self.write_timeout,
            "cleanup_interval": self.cleanup_interval,
            "health_max_lag": self.health_max_lag,
        }
        for name, value in positive.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"HubConfig.{name} must be a number > 0, got {value!r}")
        sizes = {
            "max_message_size": (self.max_message_size, 1),
            "send_buffer_size": (self.send_buffer_size, 1024),
            "member_events_limit": (self.member_events_limit, 0),
            "max_rooms_per_connection": (self.max_rooms_per_connection, 1),
            "max_room_name_length": (self.max_room_name_length, 1),
            "max_json_depth": (self.max_json_depth, 2),
            "transport_high_water": (self.transport_high_water, 1024),
            "max_metadata_bytes": (self.max_metadata_bytes, 0),
            "rate_limit_strikes": (self.rate_limit_strikes, 1),
            "max_connections": (self.max_connections, 0),
            "max_connections_per_ip": (self.max_connections_per_ip, 0),
            "max_connections_per_user": (self.max_connections_per_user, 0),
            "max_request_size": (self.max_request_size, 1024),
            "history_size": (self.history_size, 0),
            "recovery_max": (self.recovery_max, 0),
            "compression_threshold": (self.compression_threshold, 0),
        }
        for name, (value, low) in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"HubConfig.{name} must be an integer >= {low}, got {value!r}")
        non_negative = {
            "rate_limit": self.rate_limit,
            "rate_limit_bytes": self.rate_limit_bytes,
            "connect_rate_per_ip": self.connect_rate_per_ip,
            "handshake_timeout": self.handshake_timeout,
            "history_ttl": self.history_ttl,
            "history_meta_ttl": self.history_meta_ttl,
            "session_ttl": self.session_ttl,
            "drain_rate": self.drain_rate,
            "drain_timeout": self.drain_timeout,
            "typing_interval": self.typing_interval,
        }
        for name, value in non_negative.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"HubConfig.{name} must be a number >= 0 (0 disables), got {value!r}")
        if self.rate_limit_bytes and self.rate_limit_bytes * 2 < self.max_message_size:
            raise ValueError(
                "HubConfig.rate_limit_bytes allows a burst of twice its value, which must hold one "
                f"max_message_size message ({self.rate_limit_bytes} * 2 < {self.max_message_size})"
            )
        if self.ping_interval >= self.pong_timeout:
            raise ValueError(
                f"HubConfig.ping_interval ({self.ping_interval}) must be shorter than pong_timeout "
                f"({self.pong_timeout}), or a healthy idle client would be dropped before it is pinged"
            )
        if not isinstance(self.publish_watermark, (int, float)) or not 0 <= self.publish_watermark < 1:
            raise ValueError(f"HubConfig.publish_watermark must be in [0, 1), got {self.publish_watermark!r}")
        if self.slow_consumer not in ("close", "drop"):
            raise ValueError(f"HubConfig.slow_consumer must be 'close' or 'drop', got {self.slow_consumer!r}")
        if self.send_buffer_size < self.max_message_size:
            raise ValueError(
                "HubConfig.send_buffer_size must be >= max_message_size "
                f"({self.send_buffer_size} < {self.max_message_size})"
            )
        try:
            compiled = re.compile(self.room_name_pattern)
        except re.error as exc:
            raise ValueError(f"HubConfig.room_name_pattern is not a valid regex: {exc}") from None
        object.__setattr__(self, "_compiled_room_pattern", compiled)
        rules = self.room_history
        if not isinstance(rules, tuple):
            object.__setattr__(self, "room_history", rules := tuple(tuple(r) for r in rules))
        for rule in rules:
            if (
                len(rule) != 3
                or not isinstance(rule[0], str)
                or not isinstance(rule[1], int)
                or isinstance(rule[1], bool)
                or rule[1] < 0
                or not isinstance(rule[2], (int, float))
                or rule[2] < 0
            ):
                raise ValueError(f"HubConfig.room_history entries are (pattern, size >= 0, ttl >= 0), got {rule!r}")
        if self.session_secret is not None and (not isinstance(self.session_secret, str) or not self.session_secret):
            raise ValueError("HubConfig.session_secret must be a non-empty string or None")
        object.__setattr__(self, "_history_cache", {})

    def history_for(self, room: str) -> tuple[int, float] | None:
        """``(size, ttl)`` of a room's history, or None when the room keeps none."""
        cache = self._history_cache
        found = cache.get(room, False)
        if found is not False:
            return found  # type: ignore[return-value]
        size, ttl = self.history_size, self.history_ttl
        for pattern, psize, pttl in self.room_history:
            if fnmatch.fnmatchcase(room, pattern):
                size, ttl = psize, pttl
                break
        result = (size, float(ttl)) if size and ttl else None
        if len(cache) >= 10_000:  # bounded: room names come from clients
            cache.clear()
        cache[room] = result
        return result

    def user_history(self) -> tuple[int, float] | None:
        """``(size, ttl)`` of every user's stream of direct messages, or None."""
        return (self.history_size, float(self.history_ttl)) if self.history_size and self.history_ttl else None

    def valid_room_name(self, name: object) -> bool:
        """True when ``name`` is a string of allowed length and characters."""
        return (
            isinstance(name, str)
            and 0 < len(name) <= self.max_room_name_length
            and self._compiled_room_pattern.fullmatch(name) is not None
        )
