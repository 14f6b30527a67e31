"""Unit tests of the hub core (``fasthub._core``), run over both twins in the same run.

``outbox_py`` is the pure module; ``outbox_c`` is the same file compiled with ``outbox_c.pxd``.
Every test takes the ``core`` fixture, so each runs once per implementation; a hypothesis test
drives both with the same random operations and compares everything observable.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import pathlib
import socket
import struct
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fasthub
import fasthub._core
from fasthub import _ext
from fasthub._core import outbox_py

NO_EXTENSIONS = _ext.NO_EXTENSIONS


def load_compiled() -> ModuleType | None:
    if NO_EXTENSIONS:
        return None
    try:
        return importlib.import_module("fasthub._core.outbox_c")
    except ImportError:
        return None


outbox_c = load_compiled()
IMPLS = [
    pytest.param(outbox_py, id="py"),
    pytest.param(
        outbox_c,
        id="c",
        marks=pytest.mark.skipif(
            outbox_c is None,
            reason="FASTHUB_NO_EXTENSIONS is set" if NO_EXTENSIONS else "fasthub._core.outbox_c is not built",
        ),
    ),
]


@pytest.fixture(params=IMPLS)
def core(request: pytest.FixtureRequest) -> ModuleType:
    return request.param  # type: ignore[no-any-return]


class Sink:
    """Counts flushes."""

    def __init__(self) -> None:
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


class Scheduler:
    """Stands in for ``loop.call_soon``: records callbacks, runs them on ``tick()``."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def __call__(self, fn: Any) -> None:
        self.calls.append(fn)

    def tick(self) -> None:
        calls, self.calls = self.calls, []
        for fn in calls:
            fn()


def boxes_with_sinks(core: ModuleType, n: int) -> tuple[list[Sink], list[Any]]:
    """``n`` outboxes (budget 10,000), each with a counting sink of its own."""
    sinks = [Sink() for _ in range(n)]
    boxes = [core.Outbox(10_000) for _ in range(n)]
    for ob, sink in zip(boxes, sinks, strict=True):
        ob.sink = sink
    return sinks, boxes


def text(core: ModuleType, n: int, fill: bytes = b"x") -> Any:
    return core.Payload(core.KIND_TEXT, fill * n)


# -- which implementation is live ----------------------------------------------------------------


def test_live_core_is_the_compiled_one_unless_disabled() -> None:
    ext = [
        p
        for p in pathlib.Path(outbox_py.__file__).parent.iterdir()
        if p.name.startswith("outbox_c.") and any(p.name.endswith(s) for s in importlib.machinery.EXTENSION_SUFFIXES)
    ]
    live = fasthub.compiled(detail=True)
    assert isinstance(live, dict)
    if NO_EXTENSIONS:
        assert fasthub._core.Outbox is outbox_py.Outbox
        assert fasthub._core.Fanout is outbox_py.Fanout
        assert fasthub._core.Payload is outbox_py.Payload
        assert live["fasthub._core.outbox_c"] is False
    elif ext:
        compiled = importlib.import_module("fasthub._core.outbox_c")
        assert compiled.__file__ is not None and compiled.__file__.endswith(
            tuple(importlib.machinery.EXTENSION_SUFFIXES)
        )
        assert fasthub._core.Outbox is compiled.Outbox
        assert fasthub._core.Fanout is compiled.Fanout
        assert fasthub._core.Payload is compiled.Payload
        assert fasthub._core.Outbox is not outbox_py.Outbox
        assert live["fasthub._core.outbox_c"] is True
    else:
        pytest.skip("the extension is not built")


def test_constants_are_the_same_in_both(core: ModuleType) -> None:
    assert (core.KIND_TEXT, core.KIND_BINARY, core.KIND_CLOSE) == (1, 2, 8)
    assert (core.QUEUED, core.DROPPED, core.OVERFLOW, core.CLOSED) == (0, 1, 2, 3)


# -- Payload -------------------------------------------------------------------------------------


def test_payload_fields(core: ModuleType) -> None:
    p = core.Payload(core.KIND_TEXT, b"hello")
    assert (p.kind, p.data, p.nbytes, p.code, p.reason) == (core.KIND_TEXT, b"hello", 5, 0, "")
    c = core.Payload(core.KIND_CLOSE, b"", 4000, "bye")
    assert (c.kind, c.nbytes, c.code, c.reason) == (core.KIND_CLOSE, 0, 4000, "bye")


def test_payload_asgi_is_built_once(core: ModuleType) -> None:
    p = core.Payload(core.KIND_TEXT, '{"a":"é"}'.encode())
    first = p.asgi()
    assert first == {"type": "websocket.send", "text": '{"a":"é"}'}
    assert p.asgi() is first
    assert p.asgi() is first
    b = core.Payload(core.KIND_BINARY, b"\x00\xff")
    assert b.asgi() == {"type": "websocket.send", "bytes": b"\x00\xff"}
    assert b.asgi() is b.asgi()
    c = core.Payload(core.KIND_CLOSE, b"", 1008, "slow consumer")
    assert c.asgi() == {"type": "websocket.close", "code": 1008, "reason": "slow consumer"}
    assert c.asgi() is c.asgi()


def test_payload_frame_is_built_once(core: ModuleType) -> None:
    p = core.Payload(core.KIND_TEXT, b"hi")
    assert p.frame() == b"\x81\x02hi"
    assert p.frame() is p.frame()
    big = core.Payload(core.KIND_BINARY, b"z" * 300)
    assert big.frame() == b"\x82\x7e" + struct.pack("!H", 300) + b"z" * 300
    c = core.Payload(core.KIND_CLOSE, b"", 4001, "done")
    assert c.frame() == b"\x88\x06" + struct.pack("!H", 4001) + b"done"
    assert c.frame() is c.frame()


# -- Outbox --------------------------------------------------------------------------------------


def test_push_queues_and_counts_bytes(core: ModuleType) -> None:
    ob = core.Outbox(100)
    a, b = text(core, 10), text(core, 20)
    assert ob.push(a) == core.QUEUED
    assert ob.push(b) == core.QUEUED
    assert ob.items == [a, b]
    assert ob.items[0] is a
    assert (ob.pending, ob.inflight, ob.buffered, ob.size()) == (30, 0, 0, 30)
    assert ob.budget == 100 and ob.dropped == 0 and not ob.closing and not ob.scheduled


def test_budget_is_inclusive_then_overflow(core: ModuleType) -> None:
    ob = core.Outbox(100)
    assert ob.push(text(core, 60)) == core.QUEUED
    assert ob.push(text(core, 40)) == core.QUEUED  # exactly at the budget
    assert ob.push(text(core, 1)) == core.OVERFLOW
    assert ob.pending == 100 and len(ob.items) == 2
    assert ob.dropped == 0  # an overflow is not a drop
    assert ob.push(text(core, 0)) == core.QUEUED  # nothing more to hold


def test_drop_policy_counts_and_discards(core: ModuleType) -> None:
    ob = core.Outbox(50, True)
    assert ob.drop_when_full
    assert ob.push(text(core, 50)) == core.QUEUED
    assert ob.push(text(core, 1)) == core.DROPPED
    assert ob.push(text(core, 2)) == core.DROPPED
    assert ob.dropped == 2 and ob.pending == 50 and len(ob.items) == 1
    ob.take()
    ob.done(50)
    assert ob.push(text(core, 5)) == core.QUEUED


def test_a_single_message_over_the_budget_never_fits(core: ModuleType) -> None:
    assert core.Outbox(10).push(text(core, 11)) == core.OVERFLOW
    assert core.Outbox(10, True).push(text(core, 11)) == core.DROPPED


def test_inflight_and_buffered_count_against_the_budget(core: ModuleType) -> None:
    ob = core.Outbox(100)
    ob.push(text(core, 70))
    taken = ob.take()
    assert len(taken) == 1 and ob.items is None  # no list kept while empty
    assert (ob.pending, ob.inflight) == (0, 70)
    assert ob.push(text(core, 31)) == core.OVERFLOW  # 70 in flight
    ob.buffered = 20
    assert ob.size() == 90
    assert ob.push(text(core, 11)) == core.OVERFLOW
    assert ob.push(text(core, 10)) == core.QUEUED
    assert ob.size() == 100


def test_take_and_done_accounting(core: ModuleType) -> None:
    ob = core.Outbox(1000)
    ps = [text(core, n) for n in (1, 2, 3)]
    for p in ps:
        ob.push(p)
    taken = ob.take()
    assert taken == ps and all(x is y for x, y in zip(taken, ps, strict=True))
    assert ob.items is None and ob.pending == 0 and ob.inflight == 6
    assert ob.take() == []  # nothing new
    ob.push(text(core, 10))
    assert (ob.pending, ob.inflight, ob.size()) == (10, 6, 16)
    ob.done(1)
    ob.done(2)
    assert ob.inflight == 3
    second = ob.take()
    assert len(second) == 1 and ob.inflight == 13
    ob.done(100)  # more than in flight: clamps at zero
    assert ob.inflight == 0 and ob.size() == 0


def test_close_with_keeps_the_backlog_and_refuses_more(core: ModuleType) -> None:
    ob = core.Outbox(20)
    a, b = text(core, 10), text(core, 10)
    ob.push(a)
    ob.push(b)
    close = core.Payload(core.KIND_CLOSE, b"", 1000, "")
    ob.close_with(close, False)  # over the budget: a close always fits
    assert ob.closing
    assert ob.items == [a, b, close]
    assert ob.pending == 20
    for kind in (core.KIND_TEXT, core.KIND_BINARY):
        assert ob.push(core.Payload(kind, b"")) == core.CLOSED
    assert ob.items[-1] is close


def test_close_with_discard_drops_the_backlog(core: ModuleType) -> None:
    ob = core.Outbox(100)
    ob.push(text(core, 30))
    ob.take()
    ob.push(text(core, 40))
    ob.push(text(core, 5))
    close = core.Payload(core.KIND_CLOSE, b"", 1008, "slow consumer")
    ob.close_with(close, True)
    assert ob.items == [close]
    assert ob.pending == 0 and ob.inflight == 30  # in flight is the writer's, not discarded
    assert ob.push(text(core, 1)) == core.CLOSED
    assert ob.dropped == 0


def test_closed_beats_drop_policy(core: ModuleType) -> None:
    ob = core.Outbox(10, True)
    ob.close_with(core.Payload(core.KIND_CLOSE, b"", 1000, ""), False)
    assert ob.push(text(core, 100)) == core.CLOSED
    assert ob.dropped == 0


def test_discard_returns_how_many(core: ModuleType) -> None:
    ob = core.Outbox(100)
    assert ob.discard() == 0
    for _ in range(3):
        ob.push(text(core, 5))
    assert ob.discard() == 3
    assert ob.items is None and ob.pending == 0 and not ob.closing
    assert ob.push(text(core, 5)) == core.QUEUED  # discard alone does not close


# -- Fanout --------------------------------------------------------------------------------------


def test_fanout_push_counts_and_marks_dirty(core: ModuleType) -> None:
    sched = Scheduler()
    fan = core.Fanout(sched)
    ob = core.Outbox(15, True)
    assert fan.push(ob, text(core, 10)) == core.QUEUED
    assert fan.delivered == 1 and fan.dirty == [ob] and ob.scheduled
    assert fan.push(ob, text(core, 10)) == core.DROPPED
    assert fan.dropped == 1 and fan.delivered == 1
    assert fan.dirty == [ob]  # marked once
    closing = core.Outbox(100)
    closing.close_with(core.Payload(core.KIND_CLOSE, b"", 1000, ""), False)
    assert fan.push(closing, text(core, 1)) == core.CLOSED
    over = core.Outbox(5)
    assert fan.push(over, text(core, 10)) == core.OVERFLOW
    assert (fan.delivered, fan.dropped) == (1, 1)
    assert fan.dirty == [ob]
    assert len(sched.calls) == 1


def test_push_many_with_exclude_and_overflow(core: ModuleType) -> None:
    fan = core.Fanout(Scheduler())
    members = {
        "a": core.Outbox(100),
        "b": core.Outbox(100),
        "full": core.Outbox(5),
        "drop": core.Outbox(5, True),
        "closed": core.Outbox(100),
        "c": core.Outbox(100),
    }
    members["closed"].close_with(core.Payload(core.KIND_CLOSE, b"", 1000, ""), False)
    p = text(core, 10)
    count, overflow = fan.push_many(members, p)
    assert count == 3
    assert overflow == [members["full"]] and overflow[0] is members["full"]
    assert fan.delivered == 3 and fan.dropped == 1
    for key in ("a", "b", "c"):
        assert members[key].items == [p] and members[key].items[0] is p  # one shared payload
    assert members["full"].items is None and members["drop"].items is None
    assert set(map(id, fan.dirty)) == {id(members[k]) for k in ("a", "b", "c")}

    # exclude by one key (tuple), several (frozenset), or a key that is not there
    count, overflow = fan.push_many(members, text(core, 10), ("a",))
    assert count == 2 and overflow == [members["full"]]
    assert len(members["a"].items) == 1 and len(members["b"].items) == 2
    count, overflow = fan.push_many(members, text(core, 10), frozenset({"b", "c", "full"}))
    assert count == 1 and overflow == []
    assert [len(members[k].items) for k in ("a", "b", "c")] == [2, 2, 2]
    count, overflow = fan.push_many(members, text(core, 10), frozenset({"nobody"}))
    assert count == 3 and overflow == [members["full"]]
    assert [len(members[k].items) for k in ("a", "b", "c")] == [3, 3, 3]
    assert fan.delivered == 3 + 2 + 1 + 3
    assert fan.dropped == 4  # "drop" refused each of the four
    assert members["drop"].dropped == 4


def test_push_many_with_no_members(core: ModuleType) -> None:
    sched = Scheduler()
    fan = core.Fanout(sched)
    assert tuple(fan.push_many({}, text(core, 1))) == (0, [])
    assert fan.dirty == [] and sched.calls == [] and fan.delivered == 0


def test_one_schedule_per_tick_however_many_pushes(core: ModuleType) -> None:
    sched = Scheduler()
    fan = core.Fanout(sched)
    sinks, boxes = boxes_with_sinks(core, 5)
    members = {str(i): ob for i, ob in enumerate(boxes)}
    for _ in range(50):
        fan.push_many(members, text(core, 3))
        fan.push(boxes[0], text(core, 3))
    assert len(sched.calls) == 1
    assert fan.flush_scheduled
    assert len(fan.dirty) == 5
    sched.tick()
    assert [s.flushes for s in sinks] == [1] * 5  # each dirty sink once
    assert fan.dirty == [] and not fan.flush_scheduled
    assert not any(ob.scheduled for ob in boxes)
    # the next tick schedules again, once
    for _ in range(10):
        fan.push(boxes[3], text(core, 3))
    assert len(sched.calls) == 1
    sched.tick()
    assert [s.flushes for s in sinks] == [1, 1, 1, 2, 1]
    sched.tick()  # nothing pending: nothing flushed
    assert [s.flushes for s in sinks] == [1, 1, 1, 2, 1]


def test_a_big_flush_waits_for_one_more_tick_and_takes_what_came_meanwhile(core: ModuleType) -> None:
    """At ``hold_min`` dirty outboxes the flush is held back once (one more socket poll)."""
    sched = Scheduler()
    fan = core.Fanout(sched)
    assert fan.hold_min == 256 and not fan.held
    fan.hold_min = 4
    sinks, boxes = boxes_with_sinks(core, 6)
    small = {str(i): ob for i, ob in enumerate(boxes[:3])}
    big = {str(i): ob for i, ob in enumerate(boxes)}
    fan.push_many(small, text(core, 3))
    sched.tick()  # 3 dirty: below hold_min, flushed at once
    assert [s.flushes for s in sinks] == [1, 1, 1, 0, 0, 0] and not fan.held
    fan.push_many(big, text(core, 3))
    sched.tick()  # 6 dirty: held back, rescheduled once
    assert [s.flushes for s in sinks] == [1, 1, 1, 0, 0, 0]
    assert fan.held and fan.flush_scheduled and len(sched.calls) == 1
    fan.push_many(big, text(core, 3))  # arrives during the held tick: no second schedule
    assert len(sched.calls) == 1 and all(len(ob.items) == 2 for ob in boxes[3:])
    sched.tick()  # flushed now, both messages together, never held twice
    assert [s.flushes for s in sinks] == [2, 2, 2, 1, 1, 1]
    assert not fan.held and not fan.flush_scheduled and sched.calls == []
    fan.hold_min = 0  # 0: never held
    fan.push_many(big, text(core, 3))
    sched.tick()
    assert [s.flushes for s in sinks] == [3, 3, 3, 2, 2, 2]


def test_refused_pushes_schedule_nothing(core: ModuleType) -> None:
    sched = Scheduler()
    fan = core.Fanout(sched)
    fan.push(core.Outbox(1), text(core, 5))
    fan.push(core.Outbox(1, True), text(core, 5))
    fan.push_many({"x": core.Outbox(1)}, text(core, 5))
    assert sched.calls == [] and fan.dirty == [] and not fan.flush_scheduled


def test_flush_skips_outboxes_without_sink_and_without_schedule(core: ModuleType) -> None:
    fan = core.Fanout()  # no schedule: dirty outboxes wait for an explicit flush
    assert fan.schedule is None
    orphan = core.Outbox(100)
    owned = core.Outbox(100)
    sink = Sink()
    owned.sink = sink
    fan.push(orphan, text(core, 1))
    fan.push(owned, text(core, 1))
    assert len(fan.dirty) == 2 and not fan.flush_scheduled
    fan.flush()
    assert sink.flushes == 1 and fan.dirty == []
    assert not orphan.scheduled and not owned.scheduled


def test_push_during_flush_schedules_the_next_tick(core: ModuleType) -> None:
    sched = Scheduler()
    fan = core.Fanout(sched)
    ob = core.Outbox(100)

    class Echo(Sink):
        def flush(self) -> None:
            super().flush()
            if self.flushes == 1:
                fan.push(ob, text(core, 1))  # a reply queued while flushing

    sink = Echo()
    ob.sink = sink
    fan.push(ob, text(core, 1))
    sched.tick()
    assert sink.flushes == 1
    assert fan.dirty == [ob] and ob.scheduled and len(sched.calls) == 1
    sched.tick()
    assert sink.flushes == 2 and fan.dirty == []


def test_a_failing_sink_does_not_starve_the_others(core: ModuleType) -> None:
    """One sink raising in flush must not leave the other dirty outboxes unflushed forever.

    ``Fanout.flush`` empties ``dirty`` before the loop; if a sink raises, the outboxes after it
    are never handed to their sinks and keep ``scheduled == True``, so no later push marks them
    dirty again: those connections stop receiving anything.
    """
    sched = Scheduler()
    fan = core.Fanout(sched)

    class Broken(Sink):
        def flush(self) -> None:
            super().flush()
            raise RuntimeError("sink failed")

    broken_ob, ok_ob = core.Outbox(100), core.Outbox(100)
    broken, ok = Broken(), Sink()
    broken_ob.sink, ok_ob.sink = broken, ok
    fan.push(broken_ob, text(core, 1))
    fan.push(ok_ob, text(core, 1))
    with contextlib.suppress(RuntimeError):  # asyncio only logs what a call_soon callback raises
        sched.tick()
    # the next push to the healthy outbox must reach its sink
    fan.push(ok_ob, text(core, 1))
    sched.tick()
    assert ok.flushes >= 1


# -- both twins agree ----------------------------------------------------------------------------

N_BOXES = 4

ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, N_BOXES - 1), st.integers(0, 60), st.sampled_from([1, 2])),
        st.tuples(
            st.just("push_many"),
            st.integers(0, 60),
            st.one_of(st.none(), st.integers(0, N_BOXES - 1), st.sets(st.integers(0, N_BOXES - 1))),
        ),
        st.tuples(st.just("send_many"), st.integers(0, 60), st.one_of(st.none(), st.integers(0, N_BOXES - 1))),
        st.tuples(st.just("take"), st.integers(0, N_BOXES - 1)),
        st.tuples(st.just("done"), st.integers(0, N_BOXES - 1), st.integers(0, 150)),
        st.tuples(st.just("buffered"), st.integers(0, N_BOXES - 1), st.integers(0, 80)),
        st.tuples(st.just("close"), st.integers(0, N_BOXES - 1), st.booleans()),
        st.tuples(st.just("discard"), st.integers(0, N_BOXES - 1)),
        st.tuples(st.just("tick")),
    ),
    max_size=60,
)


# budgets, drop policies and a script of operations: what every random-operations test takes
RANDOM_RUN = (
    st.lists(st.integers(0, 200), min_size=N_BOXES, max_size=N_BOXES),
    st.lists(st.booleans(), min_size=N_BOXES, max_size=N_BOXES),
    ops,
)


def exclude_of(ex: int | set[int] | None) -> Any:
    """A ``push_many`` op's exclude argument: None, one member, or a set of them."""
    return None if ex is None else (f"m{ex}",) if isinstance(ex, int) else frozenset(f"m{i}" for i in ex)


def simulate(core: ModuleType, budgets: list[int], drops: list[bool], script: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``script`` on one implementation; return a trace of every observable result."""
    sched = Scheduler()
    fan = core.Fanout(sched)
    sinks = [Sink() for _ in range(N_BOXES)]
    boxes = [core.Outbox(b, d) for b, d in zip(budgets, drops, strict=True)]
    for ob, s in zip(boxes, sinks, strict=True):
        ob.sink = s
    tags: dict[int, int] = {}
    members = {f"m{i}": ob for i, ob in enumerate(boxes)}
    trace: list[Any] = []
    serial = 0

    def payload(kind: int, n: int) -> Any:
        nonlocal serial
        serial += 1
        p = core.Payload(kind, bytes([serial % 256]) * n)
        tags[id(p)] = serial
        return p

    alive: list[Any] = []  # keep payloads alive so id() tags stay unique
    for op in script:
        name = op[0]
        if name == "push":
            p = payload(op[3], op[2])
            alive.append(p)
            trace.append(("push", fan.push(boxes[op[1]], p)))
        elif name == "push_many":
            p = payload(1, op[1])
            alive.append(p)
            count, overflow = fan.push_many(members, p, exclude_of(op[2]))
            trace.append(("push_many", count, [boxes.index(o) for o in overflow]))
        elif name == "send_many":  # sinks, no sockets: every member is pushed, as by push_many
            p = payload(1, op[1])
            alive.append(p)
            count, overflow = fan.send_many(boxes, p, None if op[2] is None else boxes[op[2]])
            trace.append(("send_many", count, [boxes.index(o) for o in overflow], fan.direct))
        elif name == "take":
            trace.append(("take", [tags[id(p)] for p in boxes[op[1]].take()]))
        elif name == "done":
            boxes[op[1]].done(op[2])
        elif name == "buffered":
            boxes[op[1]].buffered = op[2]
        elif name == "close":
            p = payload(8, 0)
            alive.append(p)
            boxes[op[1]].close_with(p, op[2])
        elif name == "discard":
            trace.append(("discard", boxes[op[1]].discard()))
        elif name == "tick":
            sched.tick()
        trace.append(
            (
                [
                    (
                        [(tags[id(p)], p.nbytes) for p in ob.items or ()],
                        ob.pending,
                        ob.inflight,
                        ob.buffered,
                        ob.size(),
                        ob.dropped,
                        bool(ob.closing),
                        bool(ob.scheduled),
                    )
                    for ob in boxes
                ],
                [boxes.index(ob) for ob in fan.dirty],
                bool(fan.flush_scheduled),
                fan.delivered,
                fan.dropped,
                len(sched.calls),
                [s.flushes for s in sinks],
            )
        )
    return trace


@pytest.mark.skipif(outbox_c is None, reason="the compiled twin is not available")
@settings(max_examples=300, deadline=None)
@given(*RANDOM_RUN)
def test_twins_agree_on_random_operations(budgets: list[int], drops: list[bool], script: list[Any]) -> None:
    assert outbox_c is not None
    assert simulate(outbox_py, budgets, drops, script) == simulate(outbox_c, budgets, drops, script)


@settings(max_examples=200, deadline=None)
@given(*RANDOM_RUN)
def test_invariants_on_random_operations(budgets: list[int], drops: list[bool], script: list[Any]) -> None:
    """Whatever the operations, an outbox's counters match its queue and the budget holds."""
    for core in (outbox_py, outbox_c) if outbox_c is not None else (outbox_py,):
        trace = simulate(core, budgets, drops, script)
        states = [entry for entry in trace if not isinstance(entry[0], str)]
        for boxes_state, dirty, flush_scheduled, delivered, dropped, scheduled_calls, _flushes in states:
            for items, pending, inflight, buffered, size, ob_dropped, _closing, _scheduled in boxes_state:
                assert pending == sum(n for _, n in items)  # pending is exactly what is queued
                assert inflight >= 0
                assert size == pending + inflight + buffered
                assert ob_dropped <= dropped
            # an outbox is marked scheduled exactly while it waits in the dirty list
            assert sorted(dirty) == [i for i, st_ in enumerate(boxes_state) if st_[7]]
            assert len(set(dirty)) == len(dirty)
            assert flush_scheduled == (scheduled_calls == 1) and scheduled_calls <= 1
            if dirty:
                assert flush_scheduled
            assert delivered >= 0


class FakeTransport:
    """Records what the compiled flush writes; its buffer is always empty."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return 0


def test_flush_writes_attached_transports_once_and_shares_joined_bytes(core: ModuleType) -> None:
    from fasthub._wire import OP_TEXT, build_frame

    sched = Scheduler()
    fan = core.Fanout(sched)
    boxes = {str(i): core.Outbox(1 << 20) for i in range(3)}
    transports = {k: FakeTransport() for k in boxes}
    for k, ob in boxes.items():
        ob.transport = transports[k]
    a, b, c = text(core, 10, b"a"), text(core, 20, b"b"), text(core, 30, b"c")
    for p in (a, b, c):
        fan.push_many(boxes, p)
    other = core.Outbox(1 << 20)
    other_t = FakeTransport()
    other.transport = other_t
    for p in (c, a):  # a different sequence
        fan.push(other, p)
    single = core.Outbox(1 << 20)
    single_t = FakeTransport()
    single.transport = single_t
    fan.push(single, a)
    sched.tick()
    expected = b"".join(build_frame(OP_TEXT, p.data) for p in (a, b, c))
    writes = [t.writes for t in transports.values()]
    assert all(len(w) == 1 and w[0] == expected for w in writes)  # one write per member per tick
    assert writes[0][0] is writes[1][0] is writes[2][0]  # the same bytes object, joined once
    assert other_t.writes == [build_frame(OP_TEXT, c.data) + build_frame(OP_TEXT, a.data)]
    assert single_t.writes == [a.frame()] and single_t.writes[0] is a.frame()
    assert all(ob.pending == 0 and not ob.items for ob in [*boxes.values(), other, single])


# -- the queue's shapes: nothing, one payload, a list ----------------------------------------------


def test_one_payload_is_queued_as_itself_then_a_list(core: ModuleType) -> None:
    ob = core.Outbox(1000)
    a, b, c = text(core, 1, b"a"), text(core, 2, b"b"), text(core, 3, b"c")
    ob.push(a)
    assert ob.queue is a and ob.items == [a] and ob.pending == 1
    ob.push(b)
    assert type(ob.queue) is list and ob.items == [a, b] and ob.pending == 3
    ob.items.append(c)  # ``items`` is a copy: the queue is not changed through it
    assert ob.items == [a, b]
    with pytest.raises(AttributeError):
        ob.items = [c]
    assert ob.take() == [a, b] and ob.queue is None and ob.inflight == 3
    ob.push(c)  # after a take: one payload again, not the old list
    assert ob.queue is c and ob.items == [c]


def test_single_payload_take_discard_and_close(core: ModuleType) -> None:
    ob = core.Outbox(1000)
    a = text(core, 4)
    ob.push(a)
    assert ob.take() == [a] and ob.inflight == 4 and ob.pending == 0
    ob.push(a)
    assert ob.discard() == 1 and ob.queue is None and ob.pending == 0
    close = core.Payload(core.KIND_CLOSE, b"", 1000, "")
    ob.push(a)
    ob.close_with(close, False)  # the close follows the one payload
    assert ob.items == [a, close] and ob.closing
    ob2 = core.Outbox(1000)
    ob2.push(a)
    ob2.close_with(close, True)  # discard first: the close alone, as itself
    assert ob2.queue is close and ob2.pending == 0


def test_flush_reuses_joined_bytes_across_a_single_payload_member(core: ModuleType) -> None:
    """Members A, single, A': the single member's frame does not disturb A's joined bytes."""
    from fasthub._wire import OP_TEXT, build_frame

    sched = Scheduler()
    fan = core.Fanout(sched)
    a, b = text(core, 5, b"a"), text(core, 6, b"b")
    first, single, last = core.Outbox(1 << 20), core.Outbox(1 << 20), core.Outbox(1 << 20)
    ts = [FakeTransport() for _ in range(3)]
    for ob, t in zip((first, single, last), ts, strict=True):
        ob.transport = t
    for p in (a, b):
        fan.push(first, p)
    fan.push(single, b)
    for p in (a, b):
        fan.push(last, p)
    sched.tick()
    pair = build_frame(OP_TEXT, a.data) + build_frame(OP_TEXT, b.data)
    assert ts[0].writes == [pair] and ts[1].writes == [b.frame()] and ts[2].writes == [pair]
    assert ts[0].writes[0] is ts[2].writes[0]  # joined once, reused after the single member


def test_a_closing_member_with_one_payload_goes_through_its_sink(core: ModuleType) -> None:
    sched = Scheduler()
    fan = core.Fanout(sched)
    ob = core.Outbox(1000)
    t = FakeTransport()
    ob.transport = t
    ob.sink = Sink()
    fan.push(ob, text(core, 3))
    ob.closing = True
    sched.tick()
    assert ob.sink.flushes == 1 and t.writes == []  # the sink takes it (and writes the close)
    assert ob.items is not None and len(ob.items) == 1


def test_a_raising_transport_does_not_stop_the_others(core: ModuleType) -> None:
    class Broken(FakeTransport):
        def write(self, data: bytes) -> None:
            raise RuntimeError("gone")

    sched = Scheduler()
    fan = core.Fanout(sched)
    boxes = [core.Outbox(1000) for _ in range(3)]
    ts = [FakeTransport(), Broken(), FakeTransport()]
    for ob, t in zip(boxes, ts, strict=True):
        ob.transport = t
        fan.push(ob, text(core, 2))
    with pytest.raises(RuntimeError, match="gone"):
        fan.flush()
    assert len(ts[0].writes) == 1 and len(ts[2].writes) == 1
    assert not any(ob.scheduled for ob in boxes) and fan.dirty == []


# -- direct socket writes (the fast path's send(2) while the transport holds nothing) ---------------


class BufferingTransport(FakeTransport):
    """Counts what went through it as buffered until ``drain``."""

    def __init__(self) -> None:
        super().__init__()
        self.held = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self.held += len(data)

    def get_write_buffer_size(self) -> int:
        return self.held


def _recv_all(sock: socket.socket, n: int) -> bytes:
    out = b""
    sock.settimeout(2)
    while len(out) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


def test_flush_sends_directly_while_the_transport_is_empty(core: ModuleType) -> None:
    from fasthub._wire import OP_TEXT, build_frame

    a_sock, b_sock = socket.socketpair()
    a_sock.setblocking(False)
    try:
        sched = Scheduler()
        fan = core.Fanout(sched)
        ob = core.Outbox(1 << 20)
        t = BufferingTransport()
        ob.transport, ob.fd = t, a_sock.fileno()
        x, y = text(core, 3, b"x"), text(core, 4, b"y")
        fan.push(ob, x)  # one payload: its frame as it is
        sched.tick()
        assert not ob.unsure  # looked once: the transport is empty
        fan.push(ob, x)
        fan.push(ob, y)  # two: joined into one send
        sched.tick()
        want = x.frame() + build_frame(OP_TEXT, x.data) + build_frame(OP_TEXT, y.data)
        assert _recv_all(b_sock, len(want)) == want
        assert t.writes == [] and ob.queue is None and ob.pending == 0
    finally:
        a_sock.close()
        b_sock.close()


def test_a_partial_send_leaves_the_rest_to_the_transport_then_waits_for_it(core: ModuleType) -> None:
    a_sock, b_sock = socket.socketpair()
    a_sock.setblocking(False)
    a_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        sched = Scheduler()
        fan = core.Fanout(sched)
        ob = core.Outbox(1 << 24)
        t = BufferingTransport()
        ob.transport, ob.fd = t, a_sock.fileno()
        big = text(core, 1 << 20, b"z")  # far more than the socket takes at once
        fan.push(ob, big)
        sched.tick()
        frame = big.frame()
        assert len(t.writes) == 1 and 0 < len(t.writes[0]) < len(frame)
        assert frame.endswith(t.writes[0])  # the transport got exactly the unsent tail
        assert ob.unsure and ob.buffered == len(t.writes[0])
        small = text(core, 5, b"s")
        fan.push(ob, small)
        sched.tick()
        # the transport still holds bytes: no direct send may overtake them
        assert t.writes[-1] == small.frame() and len(t.writes) == 2
    finally:
        a_sock.close()
        b_sock.close()


@settings(max_examples=200, deadline=None)
@given(*RANDOM_RUN)
def test_queues_keep_push_order_on_random_operations(budgets: list[int], drops: list[bool], script: list[Any]) -> None:
    """Against a model: each queue holds exactly the payloads it accepted since the last take
    or discard, in push order (whatever shape it keeps them in: nothing, one payload, a list)."""
    for core in (outbox_py, outbox_c) if outbox_c is not None else (outbox_py,):
        sched = Scheduler()
        fan = core.Fanout(sched)
        boxes = [core.Outbox(b, d) for b, d in zip(budgets, drops, strict=True)]
        for ob in boxes:
            ob.sink = Sink()
        members = {f"m{i}": ob for i, ob in enumerate(boxes)}
        model: list[list[Any]] = [[] for _ in boxes]
        for op in script:
            name = op[0]
            if name == "push":
                p = core.Payload(op[3], b"p" * op[2])
                if fan.push(boxes[op[1]], p) == core.QUEUED:
                    model[op[1]].append(p)
            elif name in ("push_many", "send_many"):
                p = core.Payload(core.KIND_TEXT, b"m" * op[1])
                before = [len(ob.items or ()) for ob in boxes]
                if name == "push_many":
                    fan.push_many(members, p, exclude_of(op[2]))
                else:  # sinks only: pushed to every member, the first one first
                    fan.send_many(boxes, p, None if op[2] is None else boxes[op[2]])
                for i, ob in enumerate(boxes):
                    if len(ob.items or ()) == before[i] + 1:
                        model[i].append(p)
            elif name == "take":
                taken = boxes[op[1]].take()
                assert len(taken) == len(model[op[1]]) and all(a is b for a, b in zip(taken, model[op[1]], strict=True))
                model[op[1]] = []
            elif name == "done":
                boxes[op[1]].done(op[2])
            elif name == "buffered":
                boxes[op[1]].buffered = op[2]
            elif name == "close":
                close = core.Payload(core.KIND_CLOSE, b"", 1000, "")
                boxes[op[1]].close_with(close, op[2])
                model[op[1]] = [*([] if op[2] else model[op[1]]), close]
            elif name == "discard":
                assert boxes[op[1]].discard() == len(model[op[1]])
                model[op[1]] = []
            elif name == "tick":
                sched.tick()  # sinks only count: nothing is taken
            for ob, want in zip(boxes, model, strict=True):
                got = ob.items or []
                assert len(got) == len(want) and all(a is b for a, b in zip(got, want, strict=True))
                assert (ob.queue is None) == (not want)
                assert ob.pending == sum(p.nbytes for p in want)


@pytest.mark.parametrize(("dirty", "bucket"), [(1, 0), (2, 1), (4, 1), (5, 2), (16, 2), (17, 3), (300, 5), (20_000, 8)])
def test_flush_counts_connections_per_flush_in_power_of_4_buckets(core: ModuleType, dirty: int, bucket: int) -> None:
    fan = core.Fanout(None)
    fan.hold_min = 0
    for _ in range(dirty):
        fan.push(core.Outbox(100), text(core, 1))  # no transport, no sink: flushed as nothing
    fan.flush()
    assert fan.flush_counts == [1 if i == bucket else 0 for i in range(9)]
    assert fan.flush_total == dirty
    assert core.FLUSH_BUCKETS == (1, 4, 16, 64, 256, 1024, 4096, 16384)


# -- send_many: a lone message written at once -----------------------------------------------


def _direct_box(core: ModuleType, sock: socket.socket) -> tuple[Any, BufferingTransport]:
    """An outbox on the fast path, ``sock`` its socket, its transport known to be empty."""
    sock.setblocking(False)
    ob = core.Outbox(1 << 20)
    t = BufferingTransport()
    ob.transport, ob.fd, ob.unsure = t, sock.fileno(), False
    return ob, t


def test_send_many_writes_at_once_to_empty_outboxes(core: ModuleType) -> None:
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        sched = Scheduler()
        fan = core.Fanout(sched)
        boxes = [_direct_box(core, a)[0] for a, _ in pairs]
        p = text(core, 50, b"m")
        count, overflow = fan.send_many(boxes, p, boxes[2])
        assert (count, overflow) == (3, [])
        for _, b in pairs:  # on every socket before any tick: nothing queued, no flush
            assert _recv_all(b, len(p.frame())) == p.frame()
        assert sched.calls == [] and not fan.flush_scheduled
        assert all(ob.queue is None and not ob.scheduled and not ob.unsure for ob in boxes)
        assert fan.delivered == 3 and fan.bytes_out == 150 and fan.direct == 1
        assert fan.flush_total == 3 and fan.flush_counts[1] == 1  # one pass of 3 (the bucket of <= 4)
        assert fan.last_write > 0
        fan.quiet_ns = 10**12
        assert not fan.quiet()  # it wrote
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_send_many_queues_behind_what_an_outbox_holds(core: ModuleType) -> None:
    """A member with something queued (or a transport that may hold bytes, or no transport)
    gets the message pushed after it: nothing overtakes what an outbox holds."""
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        sched = Scheduler()
        fan = core.Fanout(sched)
        (busy, _), (idle, _), (unsure, t3) = (_direct_box(core, a) for a, _ in pairs)
        unsure.unsure = True
        t3.held = 7  # the transport holds bytes: no direct send may pass them
        portable = core.Outbox(1 << 20)
        portable.sink = Sink()
        earlier = text(core, 5, b"e")
        fan.push(busy, earlier)
        p = text(core, 8, b"p")
        count, _ = fan.send_many([busy, idle, unsure, portable], p)
        assert count == 4 and fan.direct == 1
        assert _recv_all(pairs[1][1], len(p.frame())) == p.frame()  # the idle one: at once
        assert busy.items == [earlier, p] and unsure.items == [p] and portable.items == [p]
        sched.tick()
        assert _recv_all(pairs[0][1], len(earlier.frame()) + len(p.frame())) == earlier.frame() + p.frame()
        assert t3.writes == [p.frame()]  # behind the transport's bytes
        assert portable.sink.flushes == 1
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_send_many_leaves_a_partial_write_to_the_transport(core: ModuleType) -> None:
    a_sock, b_sock = socket.socketpair()
    a_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        sched = Scheduler()
        fan = core.Fanout(sched)
        ob, t = _direct_box(core, a_sock)
        big = text(core, 1 << 20, b"z")
        count, _ = fan.send_many([ob], big)
        frame = big.frame()
        assert count == 1 and len(t.writes) == 1 and 0 < len(t.writes[0]) < len(frame)
        assert frame.endswith(t.writes[0]) and ob.unsure and ob.buffered == len(t.writes[0])
        small = text(core, 5, b"s")
        fan.send_many([ob], small)  # unsure now: queued for the flush, then through the transport
        assert ob.items == [small] and t.writes[-1] != small.frame()
        sched.tick()
        assert t.writes[-1] == small.frame()
    finally:
        a_sock.close()
        b_sock.close()


def _fill(sock: socket.socket) -> None:
    """Write to ``sock`` until it would block: its next send takes nothing."""
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        for _ in range(100_000):
            sock.send(b"f" * 65536)


def _drain_all(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    out = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := sock.recv(1 << 20):
            out += chunk
    return out


@pytest.mark.parametrize("path", ["flush", "send_many"])
def test_a_pass_over_more_members_than_a_batch_sends_each_once_and_hands_short_ones_on(
    core: ModuleType, path: str
) -> None:
    """A pass makes its direct sends in batches (``SendBatch``, one io_uring call each in the
    compiled sockio): 150 members are 3 batches; a member whose socket took part of the frame
    (``short``) or none of it (``full``) gets the rest through its transport, as after one send."""
    from fasthub._core import sockio_py

    assert core.BATCH == sockio_py.BATCH == 64
    pairs = [socket.socketpair() for _ in range(150)]
    short, full = 70, 130
    try:
        sched = Scheduler()
        fan = core.Fanout(sched)
        fan.quiet_ns = 0
        boxes = [_direct_box(core, a) for a, _ in pairs]
        pairs[short][0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        _fill(pairs[full][0])
        p = text(core, 20_000, b"b")
        frame = p.frame()
        if path == "flush":
            for ob, _ in boxes:
                fan.push(ob, p)
            fan.flush()
            assert fan.flush_counts[4] == 1 and fan.flush_total == 150  # one pass of 150 (<= 256)
        else:
            count, overflow = fan.send_many([ob for ob, _ in boxes], p)
            assert count == 150 and overflow == [] and fan.direct == 1
        assert fan.batch.n == 0 and fan.dirty == []
        for i, ((ob, t), (_, b)) in enumerate(zip(boxes, pairs, strict=True)):
            if i == full:
                assert t.writes == [frame] and ob.unsure and ob.buffered == len(frame)
                continue
            got = _drain_all(b)
            if i == short:
                assert 0 < len(got) < len(frame) and len(t.writes) == 1, (len(got), t.writes)
                assert got + t.writes[0] == frame and ob.unsure and ob.buffered == len(t.writes[0])
            else:
                assert got == frame and t.writes == [] and not ob.unsure, i
    finally:
        for a, b in pairs:
            a.close()
            b.close()


@pytest.mark.parametrize("path", ["flush", "send_many"])
def test_what_a_pass_wrote_has_left_before_it_looks_for_input(core: ModuleType, path: str) -> None:
    """The batch runs before each look: at the look after 64 members those 64 have their frame
    in their sockets and none after them has, and none of them is still marked unsure."""
    import select

    pairs = [socket.socketpair() for _ in range(150)]
    try:
        sched = Scheduler()
        fan = core.Fanout(sched)
        fan.hold_min = 0
        fan.quiet_ns = 0
        boxes = [_direct_box(core, a)[0] for a, _ in pairs]
        seen: list[tuple[int, int]] = []

        def look() -> bool:
            readable, _, _ = select.select([b for _, b in pairs], [], [], 0)
            in_batch = sum(1 for ob in boxes if ob.unsure)
            seen.append((len(readable), in_batch))
            return False

        fan.input_ready = look
        p = text(core, 10, b"l")
        if path == "flush":
            for ob in boxes:
                fan.push(ob, p)
            sched.tick()
        else:
            fan.send_many(boxes, p)
        assert seen == [(64, 0)]  # one look (86 left; at 128, 22 left: none), after 64 written
        assert all(_drain_all(b) == p.frame() for _, b in pairs) and not any(ob.unsure for ob in boxes)
        assert fan.batch.n == 0
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_send_many_keeps_the_budget_and_the_slow_consumer_policy(core: ModuleType) -> None:
    sched = Scheduler()
    fan = core.Fanout(sched)
    full = core.Outbox(100)
    full.sink = Sink()
    dropping = core.Outbox(100, True)
    dropping.sink = Sink()
    for ob in (full, dropping):
        fan.push(ob, text(core, 90))
    count, overflow = fan.send_many([full, dropping], text(core, 20))
    assert count == 0 and overflow == [full] and fan.dropped == 1 and dropping.dropped == 1


def test_quiet_after_a_pause_without_writes(core: ModuleType) -> None:
    import time

    sched = Scheduler()
    fan = core.Fanout(sched)
    assert fan.quiet_ns == 1_000_000 and fan.quiet() and fan.last_write == 0  # nothing written yet
    ob = core.Outbox(1 << 20)
    ob.transport = FakeTransport()
    fan.push(ob, text(core, 3))
    assert not fan.quiet()  # a flush is waiting
    sched.tick()
    fan.quiet_ns = 10**12
    assert not fan.quiet()  # it wrote
    fan.quiet_ns = 2_000_000
    time.sleep(0.003)
    assert fan.quiet()
    fan.quiet_ns = 0  # never
    assert not fan.quiet()


def test_send_many_pushes_to_whoever_cannot_take_a_direct_write(core: ModuleType) -> None:
    """Closing, a negotiated encoding, or no fd (TLS): pushed, never written at once."""
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        sched = Scheduler()
        fan = core.Fanout(sched)
        closing, encoded, no_fd = (_direct_box(core, a)[0] for a, _ in pairs)
        closing.closing = True
        encoded.encoding = 15  # a deflate window
        no_fd.fd = -1
        p = text(core, 4)
        count, _ = fan.send_many([closing, encoded, no_fd], p)
        assert count == 2 and fan.direct == 0  # the closing one refuses, as push does
        assert closing.queue is None and encoded.items == [p] and no_fd.items == [p]
        assert fan.flush_scheduled
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_send_many_goes_on_past_a_raising_transport_and_hands_its_error_to_the_loop(core: ModuleType) -> None:
    class Broken(BufferingTransport):
        def write(self, data: bytes) -> None:
            raise RuntimeError("gone")

    pairs = [socket.socketpair() for _ in range(3)]
    try:
        sched = Scheduler()
        fan = core.Fanout(sched)
        boxes = [_direct_box(core, a)[0] for a, _ in pairs]
        for ob in boxes[:2]:  # a closed socket: send(2) fails, the frame goes to the transport
            ob.transport = Broken()
            ob.fd = 10_000  # not an open fd
        p = text(core, 6)
        count, overflow = fan.send_many(boxes, p, boxes[0])  # the sender's transport raises too
        assert _recv_all(pairs[2][1], len(p.frame())) == p.frame()  # the others still got it
        # the sender's copy went alone and raised at once (not counted); the other broken one was
        # in the pass's batch, counted when taken (as a flush counts a push) and failed after
        assert count == 2 and overflow == [] and len(sched.calls) == 1  # the error, for the loop to raise
        with pytest.raises(RuntimeError, match="gone"):
            sched.tick()
        lone = core.Outbox(1 << 20)
        lone.transport, lone.fd, lone.unsure = Broken(), 10_000, False
        with pytest.raises(RuntimeError, match="gone"):  # no loop to hand it to
            core.Fanout(None).send_many([lone], text(core, 2))
    finally:
        for a, b in pairs:
            a.close()
            b.close()


# -- a long pass looks for input -------------------------------------------------------------


class InputOnce:
    """Stands in for ``Reactor.input_waiting``: input waits at the first ``hits`` looks."""

    def __init__(self, hits: int = 1) -> None:
        self.hits = hits
        self.looks = 0

    def __call__(self) -> bool:
        self.looks += 1
        return self.looks <= self.hits


class LoggedTransport(FakeTransport):
    """A ``FakeTransport`` that also logs, in one list for every member, who was written when."""

    def __init__(self, log: list[tuple[int, bytes]], index: int) -> None:
        super().__init__()
        self.log = log
        self.index = index

    def write(self, data: bytes) -> None:
        super().write(data)
        self.log.append((self.index, data))


def test_a_long_flush_stops_where_input_waits_and_the_rest_leave_joined(core: ModuleType) -> None:
    sched = Scheduler()
    fan = core.Fanout(sched)
    assert fan.look_every == 64 and fan.input_ready is None and fan.cut == 0
    fan.hold_min = 0
    fan.look_every = 4
    fan.input_ready = ready = InputOnce()
    log: list[tuple[int, bytes]] = []
    boxes = {str(i): core.Outbox(1 << 20) for i in range(10)}
    for i, ob in enumerate(boxes.values()):
        ob.transport = LoggedTransport(log, i)
    first, second = text(core, 3, b"a"), text(core, 3, b"b")
    fan.push_many(boxes, first)
    sched.tick()
    # looked after 4 members (6 left): input waits, so the flush stops and runs again later
    assert [i for i, _ in log] == [0, 1, 2, 3] and ready.looks == 1 and fan.cut == 1
    members = list(boxes.values())
    assert fan.dirty == members[4:] and all(ob.scheduled and ob.items == [first] for ob in members[4:])
    assert fan.flush_scheduled and fan.held and len(sched.calls) == 1  # no hold on top of it
    fan.push_many(boxes, second)  # what the loop read meanwhile
    assert len(sched.calls) == 1 and fan.dirty == members[4:] + members[:4]
    sched.tick()
    # the rest first, each with both messages in one write; then the others' second message
    assert [i for i, _ in log] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3]
    assert all(data == first.frame() + second.frame() for i, data in log[4:10])
    assert all(data == second.frame() for _, data in log[10:])
    assert ready.looks == 2 and fan.cut == 1  # looked again after 4; 2 left after 8: no look
    assert not fan.flush_scheduled and not fan.held and fan.dirty == []
    assert fan.flush_total == 4 + 10 and fan.flush_counts[1] == 1 and fan.flush_counts[2] == 1  # <= 4, <= 16


def test_a_pass_does_not_look_without_input_ready_a_loop_or_enough_members_left(core: ModuleType) -> None:
    def never() -> bool:
        raise AssertionError("looked")

    for look_every, ready, sched in ((64, never, Scheduler()), (0, never, Scheduler()), (4, never, None)):
        fan = core.Fanout(sched)
        fan.hold_min = 0
        fan.look_every = look_every
        fan.input_ready = ready
        boxes = {str(i): core.Outbox(1 << 20) for i in range(20)}
        for ob in boxes.values():
            ob.transport = FakeTransport()
        fan.push_many(boxes, text(core, 3))
        if sched is None:
            fan.flush()
        else:
            sched.tick()  # 20 members: fewer than 64, or looking is off (0), or no loop to yield to
        assert all(len(ob.transport.writes) == 1 for ob in boxes.values()) and fan.cut == 0
    fan = core.Fanout(Scheduler())
    fan.look_every = 4
    fan.input_ready = ready = InputOnce(hits=0)  # looks, finds nothing: the pass goes on
    boxes = {str(i): core.Outbox(1 << 20) for i in range(12)}
    for ob in boxes.values():
        ob.transport = FakeTransport()
    fan.push_many(boxes, text(core, 3))
    fan.schedule.tick()
    assert ready.looks == 2  # after 4 and 8 members (8, then 4 left), not after 12
    assert fan.cut == 0 and all(len(ob.transport.writes) == 1 for ob in boxes.values())


def test_send_many_cut_short_by_input_queues_the_rest_for_a_joined_flush(core: ModuleType) -> None:
    pairs = [socket.socketpair() for _ in range(10)]
    try:
        sched = Scheduler()
        fan = core.Fanout(sched)
        fan.look_every = 4
        fan.input_ready = ready = InputOnce()
        boxes = [_direct_box(core, a)[0] for a, _ in pairs]
        first, second = text(core, 40, b"a"), text(core, 40, b"b")
        count, overflow = fan.send_many(boxes, first, boxes[9])  # the sender: written first
        assert (count, overflow) == (10, []) and ready.looks == 1 and fan.cut == 1 and fan.direct == 1
        for ob in boxes[:4] + boxes[9:]:  # written at once
            assert ob.queue is None and not ob.scheduled
        for ob in boxes[4:9]:  # queued from where input was seen
            assert ob.items == [first] and ob.scheduled
        assert fan.flush_scheduled and fan.held and fan.delivered == 10
        assert fan.flush_total == 5  # the pass counts what it wrote: the sender and 4
        # the cut ran inside the loop's poll: the flush is scheduled from the next step, so it
        # runs after the poll that reads the waiting message
        assert len(sched.calls) == 1
        sched.tick()
        assert len(sched.calls) == 1 and all(ob.items == [first] for ob in boxes[4:9])
        fan.push_many({str(i): ob for i, ob in enumerate(boxes)}, second)  # the message that waited
        sched.tick()
        for i, (_, b) in enumerate(pairs):
            want = first.frame() + second.frame()
            assert _recv_all(b, len(want)) == want, i
        assert all(ob.queue is None for ob in boxes) and not fan.flush_scheduled
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_a_cut_flush_is_not_held_again_and_a_failing_look_counts_as_no_input(core: ModuleType) -> None:
    sched = Scheduler()
    fan = core.Fanout(sched)
    fan.hold_min = 4
    fan.look_every = 4
    fan.input_ready = InputOnce()
    boxes = {str(i): core.Outbox(1 << 20) for i in range(10)}
    for ob in boxes.values():
        ob.transport = FakeTransport()
    fan.push_many(boxes, text(core, 3))
    sched.tick()  # 10 >= hold_min: held once
    assert all(ob.transport.writes == [] for ob in boxes.values()) and fan.held
    sched.tick()  # runs, stops after 4 for the input
    assert [len(ob.transport.writes) for ob in boxes.values()] == [1] * 4 + [0] * 6 and fan.cut == 1
    sched.tick()  # the rest (6 >= hold_min) is not held again: the loop has polled
    assert all(len(ob.transport.writes) == 1 for ob in boxes.values()) and not fan.flush_scheduled

    def broken() -> bool:
        raise RuntimeError("no poll set")

    fan.input_ready = broken
    fan.push_many(boxes, text(core, 3))
    sched.tick()
    sched.tick()
    assert all(len(ob.transport.writes) == 2 for ob in boxes.values()) and fan.cut == 1


def test_a_sink_that_raises_in_a_cut_flush_keeps_the_rest_for_the_next_one(core: ModuleType) -> None:
    class Failing(Sink):
        def flush(self) -> None:
            raise RuntimeError("sink broke")

    sched = Scheduler()
    fan = core.Fanout(sched)
    fan.hold_min = 0
    fan.look_every = 4
    fan.input_ready = InputOnce()
    members = [core.Outbox(1 << 20) for _ in range(10)]
    for ob in members:
        ob.transport = FakeTransport()
    members[1].transport = None  # a portable member: its sink writes
    members[1].sink = Failing()
    fan.push_many({str(i): ob for i, ob in enumerate(members)}, text(core, 3))
    with pytest.raises(RuntimeError, match="sink broke"):
        sched.tick()  # raised after the cut was settled
    assert fan.cut == 1 and fan.dirty == members[4:] and fan.flush_scheduled and len(sched.calls) == 1
    sched.tick()
    assert all(len(ob.transport.writes) == 1 for i, ob in enumerate(members) if i != 1)
    assert fan.dirty == [] and not fan.flush_scheduled
