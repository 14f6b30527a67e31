"""Micro-benchmarks of the hot path, each compiled and pure (pytest-benchmark)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import orjson
import pytest

from fasthub._wire import testing


def _twins(compiled: str, pure: str) -> list[Any]:
    params = [pytest.param(importlib.import_module(pure), id="py")]
    try:
        params.append(pytest.param(importlib.import_module(compiled), id="c"))
    except ImportError:
        params.append(pytest.param(None, id="c", marks=pytest.mark.skip(reason="not compiled")))
    return params


SIZES = [64, 1024, 65536]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("frames", _twins("fasthub._wire.frames_c", "fasthub._wire.frames_py"))
def test_build_frame(benchmark: Any, frames: ModuleType, size: int) -> None:
    payload = b"x" * size
    frame = benchmark(frames.build_frame, 1, payload)
    assert len(frame) > size


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("proto", _twins("fasthub._wire.protocol_c", "fasthub._wire.protocol_py"))
def test_parse_masked_text_frame(benchmark: Any, proto: ModuleType, size: int) -> None:
    data = testing.encode_frame(1, b"y" * size, mask=b"\x01\x02\x03\x04")
    engine = proto.ServerProtocol(max_message_size=0)

    def parse() -> Any:
        engine.receive_data(data)
        return engine.events_received()

    events = benchmark(parse)
    assert events == [(1, b"y" * size)]


@pytest.mark.parametrize("outbox", _twins("fasthub._core.outbox_c", "fasthub._core.outbox_py"))
def test_broadcast_to_10000_outboxes(benchmark: Any, outbox: ModuleType) -> None:
    """One room message to 10,000 members: encode once, push one payload to each outbox."""
    fanout = outbox.Fanout(schedule=lambda cb: None)
    members = {str(i): outbox.Outbox(1 << 30) for i in range(10_000)}
    envelope = {"type": "room_message", "room": "lobby", "payload": {"seq": 1, "pad": "x" * 40}}

    def broadcast() -> int:
        payload = outbox.Payload(1, orjson.dumps(envelope))
        count, overflow = fanout.push_many(members, payload, None)
        assert not overflow
        for ob in members.values():  # what a flush does to the queues, minus the syscalls
            ob.take()
            ob.done(ob.inflight)
        fanout.dirty.clear()
        fanout.flush_scheduled = False
        return int(count)

    assert benchmark(broadcast) == 10_000


def test_envelope_decode(benchmark: Any) -> None:
    from fasthub.messages import decode

    raw = orjson.dumps({"type": "room_message", "room": "lobby", "payload": {"seq": 1, "t": 123456789}, "id": 7})
    msg = benchmark(decode, raw)
    assert msg.room == "lobby"
