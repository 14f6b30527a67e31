"""Unit tests of ``Connection`` in the hub core, over both twins in the same run.

``conn_py`` (on ``outbox_py``) is the pure module; ``conn_c`` (on ``outbox_c``) is the same file
compiled with ``conn_c.pxd``. A connection is its own outbox, keeps its token buckets in its own
fields and makes its rarely used fields and room list on demand; these tests pin that behaviour
and that both twins agree with each other and with ``RateLimiter``.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fasthub import _ext
from fasthub._core import conn_py, limits_py, outbox_py

NO_EXTENSIONS = _ext.NO_EXTENSIONS


def _compiled() -> tuple[ModuleType, ModuleType] | None:
    if NO_EXTENSIONS:
        return None
    try:
        return importlib.import_module("fasthub._core.conn_c"), importlib.import_module("fasthub._core.outbox_c")
    except ImportError:
        return None


COMPILED = _compiled()
IMPLS = [
    pytest.param((conn_py, outbox_py), id="py"),
    pytest.param(
        COMPILED,
        id="c",
        marks=pytest.mark.skipif(COMPILED is None, reason="no compiled fasthub._core.conn_c here"),
    ),
]


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> tuple[ModuleType, ModuleType]:
    return request.param  # type: ignore[no-any-return]


def make(impl: tuple[ModuleType, ModuleType], budget: int = 1000, **kw: Any) -> Any:
    """A connection on the same twin's fan-out, owned by a stand-in hub (the core never calls it)."""
    conn_mod, outbox_mod = impl
    overflowed: list[Any] = []
    owner = SimpleNamespace(overflowed=overflowed)
    fanout = outbox_mod.Fanout(None, owner, overflowed.append)
    return conn_mod.Connection(fanout, "c1", kw.pop("user_id", None), budget, kw.pop("drop", False), None, True, 5.0)


def test_a_connection_is_its_own_outbox(impl: tuple[ModuleType, ModuleType]) -> None:
    _, outbox_mod = impl
    conn = make(impl)
    assert isinstance(conn, outbox_mod.Outbox)
    assert conn.items is None  # no list while nothing is queued
    assert conn.send_text("hi") is True
    assert conn.items is not None and [p.data for p in conn.items] == [b"hi"]
    assert conn.scheduled and conn.fanout.dirty == [conn]
    # a room's member map holds the connection itself: fan-out pushes to it directly
    count, overflow = conn.fanout.push_many({"c1": conn}, outbox_mod.Payload(outbox_mod.KIND_TEXT, b"x"))
    assert (count, overflow) == (1, []) and [p.data for p in conn.items] == [b"hi", b"x"]


def test_over_budget_send_is_refused_and_reported(impl: tuple[ModuleType, ModuleType]) -> None:
    conn = make(impl, budget=10)
    assert conn.send_text("0123456789") is True
    assert conn.send_text("more") is False  # policy "close": the hub is told
    assert conn.hub.overflowed == [conn]


def test_rooms_kept_as_a_name_then_a_tuple(impl: tuple[ModuleType, ModuleType]) -> None:
    conn = make(impl)
    assert conn._rooms is None and conn.room_count() == 0 and conn.rooms == frozenset()
    conn.add_room("abc")
    assert conn._rooms == "abc" and conn.room_count() == 1
    # one room is a plain string: membership is equality, never a substring match
    assert conn.in_room("abc") and not conn.in_room("ab") and not conn.in_room("b")
    conn.add_room("ab")
    assert conn._rooms == ("abc", "ab") and conn.room_names() == ("abc", "ab")
    assert conn.in_room("ab") and conn.room_count() == 2
    conn.drop_room("zzz")  # not a member: nothing changes
    assert conn.room_count() == 2
    conn.drop_room("abc")
    assert conn._rooms == "ab" and conn.rooms == frozenset({"ab"})
    conn.drop_room("ab")
    assert conn._rooms is None and conn.room_names() == ()


def test_rare_fields_are_made_on_first_use(impl: tuple[ModuleType, ModuleType]) -> None:
    conn = make(impl)
    assert conn._rare is None
    assert (conn.close_code, conn.close_reason, conn.ip, conn.expires_at, conn.expiry) == (None, "", None, None, None)
    assert conn._rare is None  # reading does not make it
    conn.ip = "10.0.0.1"
    assert conn._rare is not None and conn.ip == "10.0.0.1" and conn.close_code is None
    conn.close(4000, "bye")
    assert (conn.close_code, conn.close_reason, conn.closed) == (4000, "bye", True)
    assert conn.send_text("late") is False


def test_close_rejects_codes_that_may_not_be_sent(impl: tuple[ModuleType, ModuleType]) -> None:
    conn = make(impl)
    with pytest.raises(ValueError, match="may not be sent"):
        conn.close(1006)
    with pytest.raises(ValueError, match="123 bytes"):
        conn.close(1000, "x" * 124)
    assert conn._rare is None and not conn.closed


def test_user_id_of_anonymous_and_named_connections(impl: tuple[ModuleType, ModuleType]) -> None:
    conn_mod, _ = impl
    anon = make(impl)
    assert anon.user_id == "anon-c1" and anon.anonymous
    named = conn_mod.Connection(anon.fanout, "c2", "alice", 100, False, None, False, 0.0)
    assert named.user_id == "alice" and not named.anonymous


_STEPS = st.lists(st.tuples(st.floats(0.0, 0.05), st.integers(0, 5000)), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(rate=st.sampled_from([0.0, 5.0, 100.0]), byte_rate=st.sampled_from([0.0, 2000.0, 50_000.0]), steps=_STEPS)
def test_spend_is_the_rate_limiters_bucket(rate: float, byte_rate: float, steps: list[tuple[float, int]]) -> None:
    """Every twin's ``spend`` answers like ``RateLimiter.take`` step by step (same buckets)."""
    impls = [(conn_py, outbox_py)] + ([COMPILED] if COMPILED is not None else [])
    conns = [make(i) for i in impls]
    for c in conns:
        c.limit(rate, byte_rate, 1.0)
    ref = limits_py.RateLimiter(rate, byte_rate, 1.0)
    now = 1.0
    for dt, nbytes in steps:
        now += dt
        want = ref.take(now, nbytes)
        for c in conns:
            assert c.spend(now, nbytes, rate, byte_rate) == pytest.approx(want, abs=1e-12)
            assert (c.strikes, c.refused) == (ref.strikes, ref.refused)
            assert c.tokens == pytest.approx(ref.tokens) and c.byte_tokens == pytest.approx(ref.byte_tokens)


@pytest.mark.skipif(COMPILED is None, reason="no compiled fasthub._core.conn_c here")
def test_compiled_connection_stays_small() -> None:
    """The idle-memory budget (issue 5): one compiled object, C fields, no per-connection extras."""
    conn = make(COMPILED)  # type: ignore[arg-type]
    conn.add_room("lobby")
    assert sys.getsizeof(conn) <= 224, "a field was added to Connection: check docs/design-notes.md, Idle memory"
    assert conn._rare is None and conn.items is None


def test_twins_take_no_attributes_of_their_own(impl: tuple[ModuleType, ModuleType]) -> None:
    conn = make(impl)
    with pytest.raises(AttributeError):
        conn.colour = "blue"
    with pytest.raises(AttributeError):
        impl[1].Outbox(10).colour = "blue"


def test_close_code_and_reason_set_together(impl: tuple[ModuleType, ModuleType]) -> None:
    """What the server does when the peer's close frame arrives (a tuple assignment)."""
    conn = make(impl)
    conn.close_code, conn.close_reason = (1001, "going away")
    assert (conn.close_code, conn.close_reason) == (1001, "going away")


def test_setting_a_default_makes_no_rare_object(impl: tuple[ModuleType, ModuleType]) -> None:
    conn = make(impl)
    conn.expires_at = None  # a token refresh without an expiry
    conn.expiry = None
    conn.ip = None
    conn.close_code = None
    conn.close_reason = ""
    assert conn._rare is None
    conn.expires_at = 12.5
    conn.expires_at = None  # once made, it records the change
    assert conn._rare is not None and conn.expires_at is None


class _Transport:
    """Takes writes; holds nothing back (so the flush would write directly if it had an fd)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return 0


def test_flush_writes_connections_and_leaves_no_lists(impl: tuple[ModuleType, ModuleType]) -> None:
    """The compiled flush over connection members: one write each, shared bytes, lists dropped."""
    _, outbox_mod = impl
    conns = [make(impl) for _ in range(3)]
    fan = conns[0].fanout
    for c in conns:
        c.fanout = fan
        c.transport = _Transport()
    members = {f"c{i}": c for i, c in enumerate(conns)}
    for text in (b"one", b"two"):
        fan.push_many(members, outbox_mod.Payload(outbox_mod.KIND_TEXT, text))
    conns[2].send_text("three")  # the last member's sequence differs: its own join
    fan.flush()
    frames = [c.transport.written for c in conns]
    assert frames[0] == frames[1] == [b"\x81\x03one\x81\x03two"]
    assert frames[2] == [b"\x81\x03one\x81\x03two\x81\x05three"]
    assert all(c.items is None and c.pending == 0 and not c.scheduled for c in conns)
    conns[1].send_text("again")
    fan.flush()
    assert conns[1].transport.written[-1] == b"\x81\x05again" and conns[1].items is None
