"""Per-connection outbound queues, byte budgets and the once-per-tick flush.

This is the fan-out hot path: ``Fanout.push_many`` hands one shared ``Payload`` to every member's
``Outbox`` without awaiting anything, and the first push of a tick schedules one ``flush`` for the
whole hub, which writes every dirty fast-path outbox itself (its frames joined once, one
``send(2)`` or ``transport.write``) and hands the others to their sink once (one wake-up of the
writer task on the portable path). Nothing here knows asyncio or HTTP: the
server layer injects ``schedule`` (``loop.call_soon``) and the sinks.

Compiled as ``fasthub._core.outbox_c`` with ``outbox_c.pxd``; this file is also the pure twin.
"""

from __future__ import annotations

from functools import partial
from time import monotonic_ns
from typing import TYPE_CHECKING, Any

from fasthub._ext import LIVE, load
from fasthub._wire import build_close, build_frame

if TYPE_CHECKING:
    from fasthub._wire import _nocython as cython
else:
    try:
        import cython
    except ImportError:  # pure-Python install: no Cython at run time
        from fasthub._wire import _nocython as cython

if cython.compiled:
    # outbox_c.pxd cimports send_some and SendBatch from sockio_c: C calls per member
    LIVE["fasthub._core.sockio_c"] = True
    from fasthub._core.sockio_c import BATCH as _SOCKIO_BATCH
elif TYPE_CHECKING:
    from fasthub._core.sockio_py import BATCH as _SOCKIO_BATCH
    from fasthub._core.sockio_py import SendBatch, send_some
else:  # the pure twin: from whichever sockio fasthub._ext chooses
    _sockio = load("fasthub._core.sockio_c", "fasthub._core.sockio_py")
    send_some = _sockio.send_some
    SendBatch = _sockio.SendBatch
    _SOCKIO_BATCH = _sockio.BATCH

#: how many sends a ``SendBatch`` holds (sockio's ``BATCH``): a pass runs its batch when full
_BATCH = _SOCKIO_BATCH
BATCH = _BATCH

_OP_TEXT = 0x1
_OP_BINARY = 0x2

# Public names for Python callers; the underscored twins are C ints in the compiled module.
_KIND_TEXT = 1  # a JSON envelope, sent as text (or as MessagePack to a client that chose it)
_KIND_BINARY = 2
_KIND_PLAIN = 4  # the application's own text (``send_text``): sent as it is to every client
_KIND_CLOSE = 8
_KIND_RAW = 16  # bytes that go out as they are: the 101 response ahead of the first frames
KIND_TEXT = _KIND_TEXT
KIND_BINARY = _KIND_BINARY
KIND_PLAIN = _KIND_PLAIN
KIND_CLOSE = _KIND_CLOSE
KIND_RAW = _KIND_RAW

# What a connection negotiated (``Outbox.encoding``): the low 4 bits are the deflate window
# the server compresses with (0: no compression), ``_ENC_MSGPACK`` the MessagePack subprotocol
_ENC_BITS = 15
_ENC_MSGPACK = 16
ENC_BITS = _ENC_BITS
ENC_MSGPACK = _ENC_MSGPACK

# Outbox.push results
_QUEUED = 0
_DROPPED = 1  # over budget, policy "drop": the message is counted and discarded
_OVERFLOW = 2  # over budget, policy "close": the caller closes the connection (slow consumer)
_CLOSED = 3  # the outbox takes no more messages (closing or closed)
QUEUED = _QUEUED
DROPPED = _DROPPED
OVERFLOW = _OVERFLOW
CLOSED = _CLOSED


class Payload:
    """One encoded message, shared by every receiver; its wire forms are built once, lazily."""

    def __init__(self, kind: int, data: bytes, code: int = 0, reason: str = "") -> None:
        self.kind = kind
        self.data = data
        self.nbytes = len(data)
        self.code = code
        self.reason = reason
        self._frame: bytes | None = None
        self._asgi: dict[str, Any] | None = None
        self._forms: dict[int, Any] | None = None  # frames by encoding, ASGI events by encoding | 0x100

    def frame(self) -> bytes:
        """The complete server frame (unmasked, so identical for every receiver)."""
        if self._frame is None:
            if self.kind == _KIND_CLOSE:
                self._frame = build_close(self.code, self.reason)
            elif self.kind == _KIND_RAW:
                self._frame = self.data
            else:
                self._frame = build_frame(_OP_BINARY if self.kind == _KIND_BINARY else _OP_TEXT, self.data)
        return self._frame

    def frame_as(self, enc: int, forms: Any) -> bytes:
        """The frame for connections that negotiated ``enc`` (``Outbox.encoding``), built once
        per encoding by ``forms`` (``fasthub._core.forms.Forms``) and shared by all of them."""
        if enc == 0 or self.kind >= _KIND_CLOSE:
            return self.frame()  # close frames and raw bytes have one form
        cache = self._forms
        if cache is not None:
            found: bytes | None = cache.get(enc)
            if found is not None:
                return found
        else:
            cache = self._forms = {}
        frame: bytes = forms.build(self, enc)
        cache[enc] = frame
        return frame

    def asgi_as(self, enc: int, forms: Any) -> dict[str, Any]:
        """The ASGI send event for a connection that negotiated ``enc`` (the portable path, where
        only MessagePack applies: the server compresses)."""
        if not enc & _ENC_MSGPACK:
            return self.asgi()
        cache = self._forms
        if cache is None:
            cache = self._forms = {}
        key = enc | 0x100  # beside the frames
        event: dict[str, Any] | None = cache.get(key)
        if event is None:
            event = cache[key] = forms.asgi(self, enc)
        return event

    def asgi(self) -> dict[str, Any]:
        """The ASGI send event; one dict shared by every receiver (servers only read it)."""
        if self._asgi is None:
            if self.kind == _KIND_TEXT or self.kind == _KIND_PLAIN:
                self._asgi = {"type": "websocket.send", "text": self.data.decode()}
            elif self.kind == _KIND_BINARY:
                self._asgi = {"type": "websocket.send", "bytes": self.data}
            else:
                self._asgi = {"type": "websocket.close", "code": self.code, "reason": self.reason}
        return self._asgi


class Outbox:
    """Ordered queue of payloads for one connection, bounded by a byte budget.

    The budget counts ``pending`` (queued here), ``inflight`` (taken by a writer, not yet
    confirmed) and ``buffered`` (the transport's write buffer when last flushed), and is checked
    before appending, so memory per connection is bounded by ``budget`` plus one message.
    """

    # the pure twin's slots match the compiled class's fields (an unknown attribute fails alike)
    __slots__ = (
        "budget",
        "buffered",
        "closing",
        "drop_when_full",
        "dropped",
        "encoding",
        "fd",
        "inflight",
        "pending",
        "queue",
        "scheduled",
        "sink",
        "transport",
        "unsure",
    )

    def __init__(self, budget: int, drop_when_full: bool = False) -> None:
        # None while empty, the Payload itself while one is queued (the usual tick: no list to
        # make, fill and free per member), a list from the second on
        self.queue: Payload | list[Payload] | None = None
        self.pending = 0
        self.inflight = 0
        self.buffered = 0
        self.budget = budget
        self.dropped = 0
        self.drop_when_full = drop_when_full
        self.closing = False
        self.scheduled = False
        self.sink: Any = None
        # Fast path: the open transport the flush writes to directly (None: go through sink),
        # its socket's fd for direct send(2) while the transport holds nothing (-1: never), and
        # whether the transport may hold bytes we have not counted (then re-read before a send).
        self.transport: Any = None
        self.fd = -1
        self.unsure = True
        # what the connection negotiated: compression window, MessagePack (``_ENC_*``; 0: none)
        self.encoding = 0

    def push(self, p: Payload) -> int:
        if self.closing:
            return _CLOSED
        if self.pending + self.inflight + self.buffered + p.nbytes > self.budget:
            if self.transport is not None:
                # the transport may have drained since the last flush: look before refusing
                self.buffered = self.transport.get_write_buffer_size()
                if self.pending + self.inflight + self.buffered + p.nbytes <= self.budget:
                    self._append(p)
                    return _QUEUED
            if self.drop_when_full:
                self.dropped += 1
                return _DROPPED
            return _OVERFLOW
        self._append(p)
        return _QUEUED

    def _append(self, p: Payload) -> None:
        q = self.queue
        if q is None:
            self.queue = p
        elif isinstance(q, list):
            q.append(p)
        else:
            self.queue = [q, p]
        self.pending += p.nbytes

    @property
    def items(self) -> list[Payload] | None:
        """The queued payloads in order (a new list; None when nothing is queued)."""
        q = self.queue
        if q is None:
            return None
        if isinstance(q, list):
            return list(q)
        return [q]

    def take(self) -> list[Payload]:
        """Hand every queued payload to the writer; their bytes count as in flight."""
        q = self.queue
        self.queue = None
        self.inflight += self.pending
        self.pending = 0
        if q is None:
            return []
        if isinstance(q, list):
            return q
        return [q]

    def done(self, n: int) -> None:
        """The writer confirms ``n`` bytes of taken payloads."""
        self.inflight -= n
        if self.inflight < 0:
            self.inflight = 0

    def close_with(self, p: Payload, discard: bool) -> None:
        """Queue the close ``p`` past the budget and refuse everything after it.

        With ``discard`` the queued messages are dropped first (a slow consumer gets its close
        without waiting for the backlog it cannot read).
        """
        if discard:
            self.discard()
        self.closing = True
        self._append(p)

    def discard(self) -> int:
        """Drop everything queued (the connection is going away); returns how many."""
        q = self.queue
        n = 0 if q is None else len(q) if isinstance(q, list) else 1
        self.queue = None
        self.pending = 0
        return n

    def size(self) -> int:
        return self.pending + self.inflight + self.buffered


class Fanout:
    """Delivers payloads to outboxes and flushes every dirty outbox once per loop tick."""

    def __init__(self, schedule: Any = None, owner: Any = None, overflow: Any = None) -> None:
        # what the owner (the hub) hands the core: its object, and what to do with an outbox
        # over budget under policy "close" (``Connection.send_payload`` calls it)
        self.owner = owner
        self.overflow = overflow
        self.dirty: list[Outbox] = []
        self.schedule = schedule
        self.flush_scheduled = False
        # A flush to at least ``hold_min`` outboxes waits for one more poll of the sockets first
        # (``held``: it did already); 0 never waits. See ``flush``.
        self.hold_min = 256
        self.held = False
        self.delivered = 0
        self.dropped = 0
        self.bytes_out = 0  # payload bytes queued for delivery
        # flow control: pushes that left an outbox holding more than ``soft_limit`` bytes
        # (0: not counted); the hub slows the publisher of a room whose members are over it
        self.soft_limit = 0
        self.congested = 0
        # the flush-size histogram (``fasthub.metrics``): flushes by connections written, one
        # count per bucket of ``FLUSH_BUCKETS`` (the last: more), and the connections in all
        self.flush_counts = [0] * (len(FLUSH_BUCKETS) + 1)
        self.flush_total = 0
        # builds the frames of connections with an encoding (``fasthub._core.forms.Forms``)
        self.forms: Any = None
        # ``quiet``: after this long (ns) with no flush nor direct pass, a message that comes
        # alone is written at once (``send_many``); 0 never. ``last_write``: when one last ran.
        self.quiet_ns = 1_000_000
        self.last_write = 0
        self.direct = 0  # ``send_many`` passes that wrote at once
        # ``input_ready()``: whether a socket of the server's set is ready (the ``Reactor``'s
        # ``input_waiting``; None: not known). A pass over many members looks every
        # ``look_every`` members and, when one is, leaves the rest for a flush after the loop
        # has served it, so a message that came meanwhile leaves joined with this one (``cut``:
        # passes cut short so). 0 never looks.
        self.input_ready: Any = None
        self.look_every = 64
        self.cut = 0
        # the direct sends of a pass, made together (``_run_batch``): one io_uring call per
        # ``SendBatch`` where the kernel has it, instead of one system call per member
        self.batch = SendBatch()

    def mark(self, ob: Outbox) -> None:
        ob.scheduled = True
        self.dirty.append(ob)
        if not self.flush_scheduled and self.schedule is not None:
            self.flush_scheduled = True
            self.schedule(self.flush)

    def push(self, ob: Outbox, p: Payload) -> int:
        r = ob.push(p)
        if r == _QUEUED:
            self.delivered += 1
            self.bytes_out += p.nbytes
            if not ob.scheduled:
                self.mark(ob)
        elif r == _DROPPED:
            self.dropped += 1
        return r

    def push_many(self, members: dict[Any, Any], p: Payload, exclude: Any = None) -> tuple[int, list[Outbox]]:
        """Push ``p`` to every outbox (the values of the dict ``members``) whose key is not in ``exclude``.

        Returns how many accepted it and the outboxes that overflowed (policy "close"), which the
        caller closes after the loop so that ``members`` is not changed while it is iterated.
        """
        overflow: list[Outbox] = []
        count = 0
        if exclude is None:
            # values only: the keys (connection id strings) stay untouched, a cache miss less
            # per member in a big room
            for ob in members.values():
                count += self._push_one(ob, p, overflow)
        else:
            for key, ob in members.items():
                if key not in exclude:
                    count += self._push_one(ob, p, overflow)
        self.delivered += count
        self.bytes_out += count * p.nbytes
        return count, overflow

    def quiet(self) -> bool:
        """No flush waits and none ran for ``quiet_ns``: a message that came alone in its read
        may be written at once (``send_many``) instead of queued for the next flush."""
        return self.quiet_ns > 0 and not self.flush_scheduled and monotonic_ns() - self.last_write >= self.quiet_ns

    def send_many(self, members: list[Any], p: Payload, first: Any = None) -> tuple[int, list[Outbox]]:
        """``push_many`` to a list of outboxes that writes ``p`` at once, with ``send(2)``, to
        every one that is empty and sendable directly (``first``, one of them, before the
        others); the others get it pushed, for the next flush. A transport that raises does
        not stop the others; its error goes to the loop through ``schedule`` (raised here
        when there is none).

        For a message that came alone after a quiet moment (``quiet``): no push pass, mark or
        flush stands between its read and its first send (the pass over a big room's cold
        objects costs tens of microseconds before the first byte leaves). Messages that come
        close together take ``push_many`` and leave joined, one ``send`` per member per flush.
        """
        overflow: list[Outbox] = []
        frame = p.frame()
        count = 0
        written = 0
        error: BaseException | None = None
        batch = self.batch
        if batch.n:  # left by a pass that an exception cut short: theirs go first
            error = self._run_batch(batch, True, error)
        if first is not None:
            try:
                r = self._send_one(first, p, frame, overflow, None)
                count += r & 1
                written += r >> 1
            except Exception as exc:
                error = exc
        n = len(members)
        look = self._look()
        next_look = look if look else n
        for i in range(n):
            if i == next_look:
                next_look += look
                if batch.n:  # what this pass wrote leaves before the look
                    error = self._run_batch(batch, True, error)
                if n - i >= look and self._input_waits():
                    # a message waits to be read: the rest get this one queued, and the flush
                    # after the read writes both in one send. This runs inside the loop's
                    # poll, so that flush waits for the next one (``_after_poll``).
                    if not self.flush_scheduled:
                        self.flush_scheduled = True
                        self.held = True  # it will have waited: no hold on top
                        self.schedule(self._after_poll)
                    for j in range(i, n):
                        ob = members[j]
                        if ob is not first:
                            count += self._push_one(ob, p, overflow)
                    self.cut += 1
                    break
            ob = members[i]
            _prefetch(members, i + 1)  # the next object arrives while this send(2) runs
            if ob is first:
                continue
            try:
                r = self._send_one(ob, p, frame, overflow, batch)
            except Exception as exc:  # one broken transport must not starve the others
                if error is None:
                    error = exc
                continue
            count += r & 1
            written += r >> 1
            if batch.n >= _BATCH:
                error = self._run_batch(batch, True, error)
        if batch.n:
            error = self._run_batch(batch, True, error)
        self.delivered += count
        self.bytes_out += count * p.nbytes
        if written:  # a pass of the flush histogram, as a flush of as many connections
            self._count_pass(written)
            self.direct += 1
            self.last_write = monotonic_ns()
        if error is not None:
            if self.schedule is None:
                raise error
            # raised by the loop, which logs it (as a flush's would be): not into the
            # publisher's read, which would close the publisher for another member's fault
            self.schedule(partial(_raise, error))
        return count, overflow

    def _look(self) -> int:
        """Every how many members a pass asks ``input_ready`` (0: never)."""
        if self.input_ready is None or self.schedule is None or self.look_every <= 0:
            return 0
        return self.look_every

    def _input_waits(self) -> bool:
        """``input_ready()``; a look that fails is taken as no input (the pass goes on)."""
        try:
            return bool(self.input_ready())
        except Exception:
            return False

    def _after_poll(self) -> None:
        """Schedule the flush from a callback: it then runs after the loop's next poll."""
        self.schedule(self.flush)

    def _send_one(self, ob: Outbox, p: Payload, frame: bytes, overflow: list[Outbox], batch: Any) -> int:
        """``send_many``'s step: 3 if ``p`` was written to ``ob`` now (or added to ``batch``, which
        the caller runs), 1 if pushed, 0 if not taken."""
        if (
            ob.queue is None
            and not ob.scheduled
            and ob.fd >= 0
            and not ob.unsure
            and not ob.closing
            and ob.encoding == 0
            and ob.transport is not None
            and ob.inflight + ob.buffered + p.nbytes <= ob.budget
        ):
            if batch is not None:
                batch.add(ob, ob.fd, frame)
                ob.unsure = True  # until its batch has run: no second direct send meanwhile
                return 3
            n = send_some(ob.fd, frame)
            if n != len(frame):  # the rest through the transport, as the flush does
                ob.unsure = True
                transport = ob.transport
                transport.write(frame[n:] if n > 0 else frame)
                ob.buffered = transport.get_write_buffer_size()
                if self.soft_limit and ob.buffered > self.soft_limit:
                    self.congested += 1
            return 3
        return self._push_one(ob, p, overflow)

    def _run_batch(self, batch: Any, direct: bool, error: BaseException | None) -> BaseException | None:
        """Make ``batch``'s sends; a member whose socket did not take its bytes whole gets the
        rest through its transport, as after one ``send``. Returns the first error (``error``
        if there was one already); a direct pass's (``direct``) transport writes count toward
        ``congested``, a flush's were counted when pushed."""
        batch.run()
        m = batch.n
        datas = batch.datas
        obs = batch.obs
        short = None  # (entry, bytes taken) of each send the socket did not take whole
        for k in range(m):
            n = batch.result(k)
            if n == len(datas[k]):
                ob = obs[k]
                ob.unsure = False  # all of it went: the transport holds nothing of it
            else:
                if short is None:
                    short = []
                short.append((k, n))
        batch.clear()  # empty before any transport runs code of its own
        if short is None:
            return error
        for k, n in short:
            ob = obs[k]
            data = datas[k]
            try:
                transport = ob.transport
                transport.write(data[n:] if n > 0 else data)
                ob.buffered = transport.get_write_buffer_size()
                if direct and self.soft_limit and ob.buffered > self.soft_limit:
                    self.congested += 1
            except Exception as exc:  # one broken transport must not starve the others
                if error is None:
                    error = exc
        return error

    def _push_one(self, ob: Outbox, p: Payload, overflow: list[Outbox]) -> int:
        """``push_many``'s step: 1 if ``ob`` took ``p``."""
        r = ob.push(p)
        if r == _QUEUED:
            if not ob.scheduled:
                self.mark(ob)
            if self.soft_limit and ob.pending + ob.inflight + ob.buffered > self.soft_limit:
                self.congested += 1
            return 1
        if r == _DROPPED:
            self.dropped += 1
        elif r == _OVERFLOW:
            overflow.append(ob)
        return 0

    def _count_pass(self, n: int) -> None:
        """The flush-size histogram: one pass that wrote ``n`` connections."""
        self.flush_total += n
        b = 0  # the bucket: FLUSH_BUCKETS are the powers of 4, compared in C arithmetic
        while b < 8 and n > (1 << (2 * b)):
            b += 1
        self.flush_counts[b] += 1

    def flush(self) -> None:
        """Hand each dirty outbox to its sink: called once per tick via ``schedule``.

        Fast-path outboxes are written here directly. Members of the same rooms usually hold
        the same payloads in the same order, so the bytes joined for one outbox are reused for
        the next when its items are the very same objects: one join per distinct sequence, then
        one ``write`` of one shared ``bytes`` per member (the uWebSockets cork, shared).

        A big flush costs one ``send(2)`` per member, so it is held back once: rescheduled, it
        runs after the loop has polled its sockets again (a few microseconds), and messages
        that arrived meanwhile (the rest of a publisher's burst) leave in the same ``send``.
        A long one looks every ``look_every`` members whether a socket is ready (``input_ready``)
        and, when one is, stops there and runs again after the loop has served it: the members
        not yet written get a message it read joined with theirs in one ``send``, and that
        message does not wait for the whole pass.
        """
        dirty = self.dirty
        if self.hold_min and not self.held and len(dirty) >= self.hold_min and self.schedule is not None:
            self.held = True
            self.schedule(self.flush)
            return
        self.held = False
        self.flush_scheduled = False
        self.dirty = []
        error: BaseException | None = None
        batch = self.batch
        if batch.n:  # left by a pass that an exception cut short: theirs go first
            error = self._run_batch(batch, False, error)
        last: list[Payload] = _NO_ITEMS
        last_enc = 0
        joined = b""
        count = len(dirty)
        done = count
        look = self._look()
        next_look = look if look else count
        for i in range(count):
            if i == next_look:
                next_look += look
                if batch.n:  # what this pass wrote leaves before the look
                    error = self._run_batch(batch, False, error)
                if count - i >= look and self._input_waits():
                    done = i
                    break
            ob = dirty[i]
            _prefetch(dirty, i + 1)
            ob.scheduled = False
            try:
                if ob.transport is not None and not ob.closing:
                    q = ob.queue
                    if q is None:
                        continue
                    ob.queue = None
                    ob.pending = 0
                    enc = ob.encoding
                    if isinstance(q, Payload):
                        first = q
                        data = first.frame() if enc == 0 else first.frame_as(enc, self.forms)
                    else:
                        items = q
                        if enc != last_enc or not _same(items, last):
                            joined = _join(items, enc, self.forms)
                            last = items
                            last_enc = enc
                        data = joined
                    # the transport object is not touched on a direct send (a cache miss per
                    # member in a big flush)
                    if ob.fd >= 0:
                        if ob.unsure:
                            ob.buffered = ob.transport.get_write_buffer_size()
                            ob.unsure = ob.buffered != 0
                        if not ob.unsure:
                            # picows' trick: the transport holds nothing, so write to the
                            # socket directly (in a batch); only a remainder goes through
                            # the transport (``_run_batch``)
                            full = batch.add(ob, ob.fd, data)
                            ob.unsure = True  # until its batch has run (``_run_batch``)
                            if full:
                                error = self._run_batch(batch, False, error)
                            continue
                    transport = ob.transport
                    transport.write(data)
                    ob.buffered = transport.get_write_buffer_size()
                elif ob.sink is not None:
                    ob.sink.flush()
            except Exception as exc:  # one broken sink must not starve the others
                if error is None:
                    error = exc
        if batch.n:
            error = self._run_batch(batch, False, error)
        if done:  # a pass of the flush histogram
            self._count_pass(done)
            self.last_write = monotonic_ns()
        if done < count:
            # the rest stay marked and go first in the next flush, after the loop's read (no
            # hold on top: it has polled by then); what was marked meanwhile follows them
            self.cut += 1
            rest = dirty[done:]
            rest.extend(self.dirty)
            self.dirty = rest
            self.held = True
            if not self.flush_scheduled:
                self.flush_scheduled = True
                self.schedule(self.flush)
        if error is not None:
            raise error  # after every sink had its turn; the event loop logs it


_NO_ITEMS: list[Payload] = []


def _raise(error: BaseException) -> None:
    """``send_many``'s error, raised by the loop that runs it (which logs it)."""
    raise error


#: upper bounds of the flush-size histogram (connections written by one flush): 4**0 .. 4**7
FLUSH_BUCKETS = tuple(4**i for i in range(8))

if not cython.compiled:

    def _prefetch(items: list[Any], i: int) -> None:
        """A CPU cache hint in the compiled module (``outbox_c.pxd``); nothing in the twin."""


def _same(a: list[Payload], b: list[Payload]) -> bool:
    """The same payload objects in the same order (identity, not equality: cheap and exact)."""
    n = len(a)
    if n != len(b):
        return False
    for i in range(n):  # noqa: SIM110  (a C loop once compiled; a generator would not be)
        if a[i] is not b[i]:
            return False
    return True


def _join(items: list[Payload], enc: int, forms: Any) -> bytes:
    if enc == 0:
        return b"".join([p.frame() for p in items])
    return b"".join([p.frame_as(enc, forms) for p in items])
