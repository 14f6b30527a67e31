#!/usr/bin/env python3
"""Choose a deflate library (and a MessagePack one) for permessage-deflate broadcasts.

The hub will compress a broadcast ONCE (server_no_context_takeover: no back-reference to an
earlier message) and send the same compressed frame to every member. This script measures and
verifies what that choice depends on, for stdlib ``zlib``, ``zlib_ng.zlib_ng`` and
``isal.isal_zlib`` (``pip install isal zlib-ng ormsgpack msgpack``; missing ones are skipped):

  env          versions, CPU flags
  api          what each library accepts (wbits 8..15, levels, memLevel, Z_FULL_FLUSH, max_length)
  independent  a shared compressobj + Z_FULL_FLUSH per message gives messages that a fresh
               decompressobj(-15) decodes alone (checked over a sequence with repeats, with a
               negative control), plus a pure-Python deflate parser's check that no distance
               reaches before the message start
  compress     time per message and compressed size: (a) shared compressobj + Z_FULL_FLUSH,
               (b) new compressobj + Z_SYNC_FLUSH, (c) copy() of a pristine compressobj + SYNC
  wbits        the same for wbits 9 and 12 (and memLevel 8/5/1)
  inflate      fresh decompressobj(-15) per message, decompress(data + tail, max_length)
  identity     whether outputs are byte-identical across libraries
  memory       RSS (and malloc) deltas for 1,000 compressobj / decompressobj (one subprocess each)
  window8      is a wbits=9 stream decodable with a 256-byte window (server_max_window_bits=8)?
  msgpack      ormsgpack / msgpack timings, value types, errors, depth

Usage: python bench/deflate_libs.py [--libs=zlib,zlib-ng,isal] [SECTION ...]
(no section: all of them, a couple of minutes; --libs restricts the deflate libraries measured)
Timings are min-of-N (timeit.repeat), so they are robust to a noisy, shared machine; every single
measurement lasts a few tens of milliseconds.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import platform
import random
import reprlib
import subprocess
import sys
import timeit
import zlib
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

TAIL = b"\x00\x00\xff\xff"
REPEAT = 25  # this VM's timings have a long upper tail: min of 7 still wandered by 50%, min of 25 does not
TARGET = 0.003  # seconds per timed run (each measurement ~ (REPEAT + calibration) * TARGET ~ 0.1 s)


# --------------------------------------------------------------------------- libraries
def _load_libs() -> dict[str, Any]:
    libs: dict[str, Any] = {"zlib": zlib}
    for name, modname in (("zlib-ng", "zlib_ng.zlib_ng"), ("isal", "isal.isal_zlib")):
        try:
            libs[name] = importlib.import_module(modname)
        except ImportError:
            print(f"[{name} not installed: skipped]")
    return libs


LIBS = _load_libs()
# levels measured per library (isal has 0..3 only; its 0 is "fastest", not "stored")
LEVELS = {"zlib": [1, 6], "zlib-ng": [1, 6], "isal": [0, 1, 2, 3]}


# --------------------------------------------------------------------------- data
_WORDS_TEXT = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look two more write "
    "go see number no way could people my than first water been call who oil its now find long down day did "
    "get come made may part over new sound take only little work know place year live me back give most very "
    "after thing our just name good sentence man think say great where help through much before line right "
    "too mean old any same tell boy follow came want show also around form three small set put end does "
    "another well large must big even such because turn here why ask went men read need land different home "
    "us move try kind hand picture again change off play spell air away animal house point page letter mother "
    "answer found study still learn should meeting tomorrow deploy release channel message thanks sure"
)
WORDS = _WORDS_TEXT.split()


def english(rng: random.Random, n: int) -> str:
    """English-like ASCII text of exactly n bytes."""
    out: list[str] = []
    size = 0
    sentence_left = rng.randint(5, 14)
    cap = True
    while size < n + 1:
        w = rng.choice(WORDS)
        if cap:
            w = w.capitalize()
            cap = False
        sentence_left -= 1
        if sentence_left == 0:
            w += rng.choice([".", ".", ".", "!", "?"])
            sentence_left = rng.randint(5, 14)
            cap = True
        elif rng.random() < 0.08:
            w += ","
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:n]


def _rand_id(rng: random.Random) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "".join(rng.choice(alphabet) for _ in range(22))


def envelope(rng: random.Random, text_len: int, i: int) -> dict[str, Any]:
    return {
        "type": "room_message",
        "room": "general",
        "from": f"user-{rng.randint(1000, 9999)}",
        "payload": {"text": english(rng, text_len)},
        "timestamp": f"2026-12-03T12:{i % 60:02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999999):06d}Z",
        "id": _rand_id(rng),
        "offset": 123 + i,
        "epoch": "abc",
    }


def big_doc(rng: random.Random, size: int = 50_000) -> dict[str, Any]:
    """A ~50 KB JSON document with repeated keys (a room's member list)."""
    members: list[dict[str, Any]] = []
    doc: dict[str, Any] = {"type": "room_state", "room": "general", "epoch": "abc", "offset": 4567, "members": members}
    while len(orjson.dumps(doc)) < size:
        k = len(members)
        members.append(
            {
                "user": f"user-{rng.randint(1000, 9999)}",
                "name": english(rng, rng.randint(6, 18)).strip(),
                "status": rng.choice(["online", "away", "offline"]),
                "joined_at": f"2026-12-0{rng.randint(1, 3)}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
                "roles": rng.choice([["member"], ["member", "moderator"], ["owner"]]),
                "last_seen_offset": rng.randint(0, 100000),
                "presence": {"device": rng.choice(["web", "ios", "android"]), "away": rng.random() < 0.3},
                "n": k,
            }
        )
    return doc


SIZES = [20, 200, 1000, 8000]
SIZE_LABELS = ["env+20B", "env+200B", "env+1KB", "env+8KB", "json50KB"]


def corpus(variants: int = 8, seed: int = 7) -> dict[str, list[bytes]]:
    """SIZE_LABEL -> `variants` distinct encoded messages of that kind."""
    rng = random.Random(seed)
    out: dict[str, list[bytes]] = {}
    for label, n in zip(SIZE_LABELS, [*SIZES, None], strict=True):
        if n is None:
            out[label] = [orjson.dumps(big_doc(rng)) for _ in range(variants)]
        else:
            out[label] = [orjson.dumps(envelope(rng, n, i)) for i in range(variants)]
    return out


def sequence(n: int = 300, seed: int = 11) -> list[bytes]:
    """A broadcast sequence with exact and near repeats (which context takeover would exploit)."""
    rng = random.Random(seed)
    msgs: list[bytes] = []
    for i in range(n):
        if msgs and rng.random() < 0.25:
            msgs.append(rng.choice(msgs))  # exact repeat of an earlier message
        elif i % 50 == 49:
            msgs.append(orjson.dumps(big_doc(rng, 20_000)))
        else:
            msgs.append(orjson.dumps(envelope(rng, rng.choice(SIZES), i)))
    return msgs


# --------------------------------------------------------------------------- helpers
def bench_us(fn: Callable[[], object], items: int = 1) -> float:
    """Best-of-REPEAT microseconds per item (fn processes `items` items per call)."""
    number = 1
    while True:
        t = timeit.timeit(fn, number=number)
        if t >= TARGET:
            break
        number = max(number * 2, int(number * TARGET / max(t, 1e-9)))
    return min(timeit.repeat(fn, number=number, repeat=REPEAT)) / number / items * 1e6


def table(headers: list[str], rows: list[list[Any]]) -> None:
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    print()


def try_call(fn: Callable[[], object]) -> str:
    try:
        fn()
        return "yes"
    except Exception as e:
        return f"no ({type(e).__name__}: {e})"


def new_comp(m: Any, level: int, wbits: int, mem: int = 8) -> Any:
    return m.compressobj(level, m.DEFLATED, -wbits, mem)


def strip_tail(out: bytes) -> bytes:
    """RFC 7692 7.2.1: the flushed output ends with 00 00 ff ff, which is not sent."""
    assert out.endswith(TAIL), out[-8:].hex()
    return out[:-4]


def comp_full(c: Any, m: Any, data: bytes) -> bytes:
    """Payload (tail stripped) from a shared compressobj flushed with Z_FULL_FLUSH."""
    return strip_tail(c.compress(data) + c.flush(m.Z_FULL_FLUSH))


def comp_new_sync(m: Any, level: int, wbits: int, mem: int, data: bytes) -> bytes:
    """Payload (tail stripped) from a new compressobj flushed with Z_SYNC_FLUSH."""
    c = m.compressobj(level, m.DEFLATED, -wbits, mem)
    return strip_tail(c.compress(data) + c.flush(m.Z_SYNC_FLUSH))


def configs() -> list[tuple[str, Any, int]]:
    return [(name, m, lv) for name, m in LIBS.items() for lv in LEVELS[name]]


def compress_fn(mode: str, m: Any, lv: int, wb: int, mem: int, vs: list[bytes]) -> Callable[[], list[bytes]]:
    """The timed body: compress every message of `vs` the way `mode` says."""
    deflated, full, sync = m.DEFLATED, m.Z_FULL_FLUSH, m.Z_SYNC_FLUSH
    if mode == "a":  # one shared compressobj, Z_FULL_FLUSH after each message
        shared = m.compressobj(lv, deflated, -wb, mem)

        def fn_a() -> list[bytes]:
            return [shared.compress(x) + shared.flush(full) for x in vs]

        return fn_a
    if mode == "b":  # a new compressobj per message, Z_SYNC_FLUSH

        def fn_b() -> list[bytes]:
            out = []
            for x in vs:
                c = m.compressobj(lv, deflated, -wb, mem)
                out.append(c.compress(x) + c.flush(sync))
            return out

        return fn_b
    pristine = m.compressobj(lv, deflated, -wb, mem)  # "c": copy() of a never-used compressobj

    def fn_c() -> list[bytes]:
        out = []
        for x in vs:
            c = pristine.copy()
            out.append(c.compress(x) + c.flush(sync))
        return out

    return fn_c


def inflate_fn(m: Any, payloads: list[bytes], limit: int) -> Callable[[], list[bytes]]:
    def fn() -> list[bytes]:
        return [m.decompressobj(-15).decompress(p + TAIL, limit) for p in payloads]

    return fn


# --------------------------------------------------------------------------- sections
def section_env() -> None:
    print("## Environment\n")
    rows = [["python", platform.python_version()], ["zlib (runtime)", zlib.ZLIB_RUNTIME_VERSION]]
    if "zlib-ng" in LIBS:
        import zlib_ng

        rows.append(["zlib-ng package / library", f"{zlib_ng.__version__} / {LIBS['zlib-ng'].ZLIBNG_VERSION}"])
    if "isal" in LIBS:
        import isal
        import isal._isal

        rows.append(["isal package / ISA-L", f"{isal.__version__} / {isal._isal.ISAL_VERSION}"])
    for mod in ("ormsgpack", "msgpack", "orjson"):
        try:
            m = importlib.import_module(mod)
            rows.append([mod, getattr(m, "__version__", getattr(m, "version", "?"))])
        except ImportError:
            rows.append([mod, "not installed"])
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
        flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
        wanted = ["sse4_2", "pclmulqdq", "avx2", "bmi2", "avx512f", "avx512bw", "vpclmulqdq"]
        rows.append(["cpu", f"{model}; {os.cpu_count()} cpus; " + " ".join(f for f in wanted if f in flags)])
    except OSError:
        pass
    table(["what", "value"], rows)


def section_api() -> None:
    print("## API support (raw deflate, negative wbits)\n")
    data = orjson.dumps(envelope(random.Random(1), 1000, 1))
    rows = []
    for name, m in LIBS.items():
        lv = 1
        comp_w = [w for w in range(8, 16) if try_call(partial(new_comp, m, lv, w)) == "yes"]
        dec_w = [w for w in range(8, 16) if try_call(partial(m.decompressobj, -w)) == "yes"]
        err8 = try_call(partial(new_comp, m, lv, 8))
        levels = [x for x in range(-1, 10) if try_call(partial(new_comp, m, x, 15)) == "yes"]
        mems = [x for x in range(0, 11) if try_call(partial(new_comp, m, lv, 15, x)) == "yes"]
        full = try_call(partial(comp_full, new_comp(m, lv, 15), m, data))
        c = new_comp(m, lv, 15)
        payload = c.compress(data * 4) + c.flush(m.Z_SYNC_FLUSH)
        # zlib's documented way to continue: re-feed unconsumed_tail until it is empty
        d = m.decompressobj(-15)
        got = d.decompress(payload, 100)
        tail_after = len(d.unconsumed_tail)
        while d.unconsumed_tail:
            got += d.decompress(d.unconsumed_tail, 100)
        refeed = len(got)
        # draining with empty input instead
        d = m.decompressobj(-15)
        got = d.decompress(payload, 100)
        while True:
            more = d.decompress(b"", 100)
            if not more:
                break
            got += more
        drain = len(got)
        rows.append(
            [
                name,
                f"{min(comp_w)}..{max(comp_w)} (-8: {err8})",
                f"{min(dec_w)}..{max(dec_w)}",
                f"{levels}",
                f"{mems}",
                full,
                f"unconsumed_tail after 1st call: {tail_after} B; re-feeding it yields {refeed}/{len(data) * 4} B; "
                f"decompress(b'', 100) loop yields {drain}/{len(data) * 4} B",
                "yes" if hasattr(c, "copy") else "no",
            ]
        )
    table(
        [
            "lib",
            "compressobj wbits",
            "decompressobj wbits",
            "levels accepted",
            "memLevel accepted",
            "flush(Z_FULL_FLUSH)",
            "decompress(data, max_length=100)",
            "Compress.copy()",
        ],
        rows,
    )
    # memLevel: does it change the output?
    msgs = corpus(1)
    rows = []
    for name, m, lv in configs():
        sizes = []
        for mem in (1, 5, 8, 9):
            sizes.append(sum(len(comp_new_sync(m, lv, 15, mem, v[0])) for v in msgs.values()))
        rows.append([name, lv, *sizes])
    print("memLevel effect: total compressed bytes of one message of each kind (wbits 15, new obj + SYNC)\n")
    table(["lib", "level", "memLevel 1", "memLevel 5", "memLevel 8", "memLevel 9"], rows)


def _independent_ok(m: Any, out: bytes, msg: bytes, wbits: int) -> bool:
    try:
        return m.decompressobj(-wbits).decompress(out + TAIL) == msg
    except Exception:
        return False


def section_independent() -> None:
    print("## Independence of per-message output (shared compressobj + flush(Z_FULL_FLUSH))\n")
    seq = sequence()
    total = sum(map(len, seq))
    print(f"sequence: {len(seq)} messages, {total} bytes, ~25% exact repeats of earlier messages\n")
    rows = []
    for name, m, lv in configs():
        for wb in (15, 12, 9):
            c = new_comp(m, lv, wb)
            outs = [comp_full(c, m, x) for x in seq]
            # decoded alone by a fresh stdlib zlib raw inflater (what every peer has), window 15 and wb
            ok15 = sum(_independent_ok(zlib, o, x, 15) for o, x in zip(outs, seq, strict=True))
            okwb = sum(_independent_ok(zlib, o, x, wb) for o, x in zip(outs, seq, strict=True))
            # decoded by ONE persistent inflater too (a peer that ignores server_no_context_takeover)
            d = zlib.decompressobj(-15)
            persistent = all(d.decompress(o + TAIL) == x for o, x in zip(outs, seq, strict=True))
            # the parser: no distance reaches before the message's own first byte
            # (the pure-Python parser is slow: the first 100 messages under 3 KB)
            small = [o for o, x in zip(outs, seq, strict=True) if len(x) < 3000][:100]
            parsed = all(deflate_scan(o + TAIL)[1] for o in small)
            same_as_new = sum(o == comp_new_sync(m, lv, wb, 8, x) for o, x in zip(outs, seq, strict=True))
            size_full = sum(map(len, outs))
            size_new = sum(len(comp_new_sync(m, lv, wb, 8, x)) for x in seq)
            # negative control: the same shared object with Z_SYNC_FLUSH keeps the context
            c2 = new_comp(m, lv, wb)
            ctl = [strip_tail(c2.compress(x) + c2.flush(m.Z_SYNC_FLUSH)) for x in seq]
            ctl_fail = sum(not _independent_ok(zlib, o, x, 15) for o, x in zip(ctl, seq, strict=True))
            rows.append(
                [
                    name,
                    lv,
                    wb,
                    f"{ok15}/{len(seq)}",
                    f"{okwb}/{len(seq)}",
                    "yes" if persistent else "NO",
                    "yes" if parsed else "NO",
                    f"{same_as_new}/{len(seq)}",
                    f"{size_full} / {size_new}",
                    f"{ctl_fail}/{len(seq)} fail",
                ]
            )
    table(
        [
            "lib",
            "level",
            "wbits",
            "fresh inflate(-15) ok",
            "fresh inflate(-wbits) ok",
            "one persistent inflater ok",
            "parser (100 msgs): no distance before msg start",
            "bytes identical to new-obj+SYNC",
            "total bytes FULL / new+SYNC",
            "control: shared+SYNC decoded alone",
        ],
        rows,
    )


def section_compress(wbits_list: tuple[int, ...] = (15,), modes: tuple[str, ...] = ("a", "b", "c")) -> None:
    msgs = corpus()
    raw = {k: sum(map(len, v)) / len(v) for k, v in msgs.items()}
    print("Mean raw sizes (bytes): " + ", ".join(f"{k} {v:.0f}" for k, v in raw.items()) + "\n")
    for wb in wbits_list:
        print(f"### Compress one message, wbits={wb}, memLevel 8: microseconds per message (min of {REPEAT})\n")
        print("(a) shared compressobj, compress+flush(Z_FULL_FLUSH); (b) new compressobj + flush(Z_SYNC_FLUSH);")
        print("(c) pristine.copy() + flush(Z_SYNC_FLUSH). Size = compressed bytes without 00 00 ff ff (ratio).\n")
        rows = []
        for name, m, lv in configs():
            for mode in modes:
                if mode == "c" and not hasattr(new_comp(m, lv, wb), "copy"):
                    continue
                cells: list[Any] = [name, lv, mode]
                for label, vs in msgs.items():
                    fn = compress_fn(mode, m, lv, wb, 8, vs)
                    us = bench_us(fn, len(vs))
                    if mode == "a":
                        c = new_comp(m, lv, wb)
                        size = sum(len(comp_full(c, m, x)) for x in vs) / len(vs)
                    else:
                        size = sum(len(comp_new_sync(m, lv, wb, 8, x)) for x in vs) / len(vs)
                    cells.append(f"{us:.1f} us / {size:.0f} B ({size / raw[label]:.2f})")
                rows.append(cells)
        table(["lib", "level", "mode", *SIZE_LABELS], rows)


def section_wbits() -> None:
    print("## Window bits (mode (a): shared compressobj + Z_FULL_FLUSH)\n")
    section_compress(wbits_list=(12, 9), modes=("a",))
    print("### memLevel (mode (a), 1 KB / 8 KB / 50 KB messages): us per message / bytes\n")
    msgs = corpus()
    rows = []
    for name, m, lv in configs():
        if name == "isal" and lv != 2:
            continue
        for wb in (15, 12):
            cells: list[Any] = [name, lv, wb]
            for mem in (8, 5, 1):
                parts = []
                for label in ("env+1KB", "env+8KB", "json50KB"):
                    vs = msgs[label]
                    us = bench_us(compress_fn("a", m, lv, wb, mem, vs), len(vs))
                    c = new_comp(m, lv, wb, mem)
                    size = sum(len(comp_full(c, m, x)) for x in vs) / len(vs)
                    parts.append(f"{us:.0f}/{size:.0f}")
                cells.append(" ; ".join(parts))
            rows.append(cells)
    table(["lib", "level", "wbits", "memLevel 8", "memLevel 5", "memLevel 1"], rows)


def section_inflate() -> None:
    print("## Inflate: fresh decompressobj(-15) per message, decompress(data + tail, max_length)\n")
    msgs = corpus()
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    payloads = {k: [comp_full(c, zlib, x) for x in v] for k, v in msgs.items()}
    limit = 1 << 20
    rows = []
    for name, m in LIBS.items():
        cells: list[Any] = [name]
        for label, ps in payloads.items():
            fn = inflate_fn(m, ps, limit)
            assert fn() == msgs[label]
            us = bench_us(fn, len(ps))
            mb_s = sum(map(len, msgs[label])) / len(ps) / us
            cells.append(f"{us:.1f} us ({mb_s:.0f} MB/s)")
        rows.append(cells)
    # creation alone
    for name, m in LIBS.items():
        us = bench_us(partial(m.decompressobj, -15))
        rows.append([f"{name}: decompressobj(-15) creation only", f"{us:.2f} us"])
    table(["decoder (input: zlib level 6 output)", *SIZE_LABELS], rows)


def section_identity() -> None:
    print("## Byte identity of outputs across libraries (new compressobj + SYNC, wbits 15)\n")
    msgs = corpus(4)
    rows = []
    pairs = [("zlib", 1, "zlib-ng", 1), ("zlib", 6, "zlib-ng", 6), ("zlib", 1, "isal", 1), ("zlib-ng", 1, "isal", 1)]
    for a, la, b, lb in pairs:
        if a not in LIBS or b not in LIBS:
            continue
        same = total = 0
        for vs in msgs.values():
            for x in vs:
                total += 1
                same += comp_new_sync(LIBS[a], la, 15, 8, x) == comp_new_sync(LIBS[b], lb, 15, 8, x)
        rows.append([f"{a} L{la} vs {b} L{lb}", f"{same}/{total} identical"])
    # cross-decoding: every library decodes every library's output
    ok = total = 0
    for _, m, lv in configs():
        for vs in msgs.values():
            out = comp_new_sync(m, lv, 15, 8, vs[0])
            for m2 in LIBS.values():
                total += 1
                ok += m2.decompressobj(-15).decompress(out + TAIL) == vs[0]
    rows.append(["cross-decoding (each lib's output by each lib's decompressobj)", f"{ok}/{total} ok"])
    table(["comparison", "result"], rows)


# ---- memory (one subprocess per configuration, so allocator state starts clean)
class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _mem_now() -> tuple[int, int]:
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _Mallinfo2
        mi = libc.mallinfo2()
        alloc = mi.uordblks + mi.hblkhd
    except (OSError, AttributeError):
        alloc = -1
    return rss, alloc


def _mem_child(lib: str, kind: str, wbits: int, mem: int, level: int, n: int = 1000) -> None:
    m = LIBS[lib]
    data = orjson.dumps(envelope(random.Random(3), 8000, 1))
    comp = zlib.compressobj(6, zlib.DEFLATED, -wbits)  # isal's inflater enforces its window size
    payload = comp_full(comp, zlib, data)
    gc.collect()
    r0, a0 = _mem_now()
    if kind == "comp":
        objs = [m.compressobj(level, m.DEFLATED, -wbits, mem) for _ in range(n)]
    else:
        objs = [m.decompressobj(-wbits) for _ in range(n)]
    r1, a1 = _mem_now()
    for o in objs:
        if kind == "comp":
            o.compress(data)
            o.flush(m.Z_FULL_FLUSH)
        else:
            o.decompress(payload + TAIL, 1 << 20)
    r2, a2 = _mem_now()
    print(
        json.dumps(
            {
                "rss_new": (r1 - r0) / n,
                "alloc_new": (a1 - a0) / n,
                "rss_used": (r2 - r0) / n,
                "alloc_used": (a2 - a0) / n,
            }
        )
    )


def _mem(lib: str, kind: str, wbits: int, mem: int, level: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "_mem", lib, kind, str(wbits), str(mem), str(level)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def section_memory() -> None:
    print("## Memory per object (1,000 objects; RSS delta and glibc malloc in-use delta, KiB per object)\n")
    print("'new' = just created; 'used' = after one compress+Z_FULL_FLUSH of an 8 KB envelope (decompressobj:")
    print("after decompressing one 8 KB message). RSS counts touched pages only; 'alloc' counts what was allocated.\n")
    rows = []
    for name in LIBS:
        level = 1 if name == "isal" else 6
        for wb in (15, 12, 9):
            for mem in (8, 5, 4, 3, 2, 1):
                if wb != 15 and mem not in (8, 5, 1):
                    continue
                r = _mem(name, "comp", wb, mem, level)
                rows.append(
                    [
                        name,
                        f"compressobj L{level}",
                        wb,
                        mem,
                        f"{r['rss_new'] / 1024:.1f}",
                        f"{r['alloc_new'] / 1024:.1f}",
                        f"{r['rss_used'] / 1024:.1f}",
                        f"{r['alloc_used'] / 1024:.1f}",
                    ]
                )
        for wb in (15, 9):
            r = _mem(name, "decomp", wb, 8, 0)
            rows.append(
                [
                    name,
                    "decompressobj",
                    wb,
                    "-",
                    f"{r['rss_new'] / 1024:.1f}",
                    f"{r['alloc_new'] / 1024:.1f}",
                    f"{r['rss_used'] / 1024:.1f}",
                    f"{r['alloc_used'] / 1024:.1f}",
                ]
            )
    table(["lib", "object", "wbits", "memLevel", "RSS new", "alloc new", "RSS used", "alloc used"], rows)


# ---- a small raw-deflate parser (RFC 1951) reporting the largest match distance
# fmt: off
_LBASE = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227,
          258]
_LEXT = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]
_DBASE = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097,
          6145, 8193, 12289, 16385, 24577]
_DEXT = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13]
_CLORDER = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]
# fmt: on


class _Bits:
    __slots__ = ("buf", "cnt", "data", "i")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.i = 0  # next byte to load
        self.buf = 0  # bits loaded, not yet consumed (LSB first)
        self.cnt = 0

    def get(self, k: int) -> int:
        while self.cnt < k:
            if self.i >= len(self.data):
                raise EOFError
            self.buf |= self.data[self.i] << self.cnt
            self.i += 1
            self.cnt += 8
        r = self.buf & ((1 << k) - 1)
        self.buf >>= k
        self.cnt -= k
        return r

    def skip_stored(self) -> int:
        """Byte-align, read LEN/NLEN, skip LEN bytes; return LEN."""
        self.i -= self.cnt // 8  # give back whole bytes still buffered
        self.buf = self.cnt = 0
        if self.i + 4 > len(self.data):
            raise EOFError
        n = int.from_bytes(self.data[self.i : self.i + 2], "little")
        self.i += 4 + n
        return n


def _huff(lengths: list[int]) -> tuple[list[int], list[int]]:
    counts = [0] * 16
    for ln in lengths:
        counts[ln] += 1
    counts[0] = 0
    offs = [0] * 16
    for i in range(1, 15):
        offs[i + 1] = offs[i] + counts[i]
    symbols = [0] * len(lengths)
    for s, ln in enumerate(lengths):
        if ln:
            symbols[offs[ln]] = s
            offs[ln] += 1
    return counts, symbols


def _decode(b: _Bits, h: tuple[list[int], list[int]]) -> int:
    counts, symbols = h
    code = first = index = 0
    for ln in range(1, 16):
        code |= b.get(1)
        count = counts[ln]
        if code - count < first:
            return symbols[index + (code - first)]
        index += count
        first = (first + count) << 1
        code <<= 1
    raise ValueError("bad code")


_FIXED = (_huff([8] * 144 + [9] * 112 + [7] * 24 + [8] * 8), _huff([5] * 30))


def deflate_scan(data: bytes) -> tuple[int, bool]:
    """(largest distance, every distance <= bytes already produced) for one raw deflate message."""
    b = _Bits(data)
    out = 0
    maxd = 0
    valid = True
    while True:
        try:
            final = b.get(1)
        except EOFError:
            break
        btype = b.get(2)
        if btype == 0:
            out += b.skip_stored()
        else:
            if btype == 1:
                lit, dist = _FIXED
            else:
                hlit, hdist, hclen = b.get(5) + 257, b.get(5) + 1, b.get(4) + 4
                cl = [0] * 19
                for i in range(hclen):
                    cl[_CLORDER[i]] = b.get(3)
                clh = _huff(cl)
                lens: list[int] = []
                while len(lens) < hlit + hdist:
                    sym = _decode(b, clh)
                    if sym < 16:
                        lens.append(sym)
                    elif sym == 16:
                        lens += [lens[-1]] * (3 + b.get(2))
                    elif sym == 17:
                        lens += [0] * (3 + b.get(3))
                    else:
                        lens += [0] * (11 + b.get(7))
                lit, dist = _huff(lens[:hlit]), _huff(lens[hlit:])
            while True:
                sym = _decode(b, lit)
                if sym < 256:
                    out += 1
                elif sym == 256:
                    break
                else:
                    length = _LBASE[sym - 257] + b.get(_LEXT[sym - 257])
                    ds = _decode(b, dist)
                    d = _DBASE[ds] + b.get(_DEXT[ds])
                    maxd = max(maxd, d)
                    valid = valid and d <= out
                    out += length
        if final:
            break
    return maxd, valid


def _window_corpus(seed: int = 5) -> list[bytes]:
    rng = random.Random(seed)
    items = [x for vs in corpus(2).values() for x in vs]
    for _ in range(120):  # adversarial: literals + copies from distances 1..600
        k = rng.choice([2, 4, 16, 64, 256])
        buf = bytearray(rng.randrange(k) for _ in range(rng.randint(20, 60)))
        target = rng.randint(300, 3000)
        while len(buf) < target:
            if rng.random() < 0.6 and len(buf) > 10:
                d = rng.randint(1, min(600, len(buf)))
                n = rng.randint(3, 60)
                for _ in range(n):
                    buf.append(buf[-d])
            else:
                buf.extend(rng.randrange(k) for _ in range(rng.randint(1, 12)))
        items.append(bytes(buf))
    return items


def _stepwise_inflate(data: bytes, wbits: int, expect: bytes) -> bool:
    """Decode with max_length=1 so every back-reference is served from the inflater's own window."""
    d = zlib.decompressobj(-wbits)
    out = bytearray(d.decompress(data + TAIL, 1))
    try:
        while d.unconsumed_tail:
            out += d.decompress(d.unconsumed_tail, 1)
        out += d.flush()
    except zlib.error:
        return False
    return bytes(out) == expect


def section_window8() -> None:
    print("## server_max_window_bits=8: can a wbits-9 stream be decoded with a 256-byte window?\n")
    rows = [[f"{name}.compressobj(wbits=-8)", try_call(partial(new_comp, m, 1, 8))] for name, m in LIBS.items()]
    rows += [[f"{name}.decompressobj(-8)", try_call(partial(m.decompressobj, -8))] for name, m in LIBS.items()]
    rows.append(["zlib.compressobj(wbits=+8) (zlib wrapper)", try_call(partial(zlib.compressobj, 6, zlib.DEFLATED, 8))])
    table(["call", "accepted"], rows)
    items = _window_corpus()
    print(
        f"corpus: {len(items)} inputs ({sum(map(len, items))} bytes): envelopes, 50 KB docs, 120 adversarial "
        "inputs with copies at distances 1..600\n"
    )
    rows = []
    cases = [(name, m, lv, 9) for name, m, lv in configs()]
    cases += [("zlib", zlib, 9, 9), ("zlib", zlib, 6, 10), ("zlib", zlib, 6, 15)]  # the last two: controls
    for name, m, lv, wb in cases:
        maxd = 0
        step_fail = oneshot_fail = 0
        for x in items:
            out = comp_new_sync(m, lv, wb, 8, x)
            maxd = max(maxd, deflate_scan(out + TAIL)[0])
            if not _stepwise_inflate(out, 8, x):
                step_fail += 1
            try:
                if zlib.decompressobj(-8).decompress(out + TAIL) != x:
                    oneshot_fail += 1
            except zlib.error:
                oneshot_fail += 1
        rows.append([name, lv, wb, maxd, f"{step_fail}/{len(items)}", f"{oneshot_fail}/{len(items)}"])
    table(
        [
            "lib",
            "level",
            "wbits",
            "largest distance used",
            "zlib inflate(-8) stepwise: failures",
            "zlib inflate(-8) one call: failures",
        ],
        rows,
    )


# ---- MessagePack
def section_msgpack() -> None:
    try:
        import msgpack
        import ormsgpack
    except ImportError:
        print("[ormsgpack/msgpack not installed: msgpack section skipped]")
        return
    print("## MessagePack\n")
    rng = random.Random(9)
    docs = {
        "small (20 B text)": envelope(rng, 20, 1),
        "medium (1 KB text)": envelope(rng, 1000, 2),
        "large (8 KB text)": envelope(rng, 8000, 3),
    }
    rows = []
    for label, d in docs.items():
        j = orjson.dumps(d)
        p1, p2 = ormsgpack.packb(d), msgpack.packb(d)
        assert p1 == p2, "ormsgpack and msgpack encode differently"
        rows.append(
            [
                label,
                len(j),
                len(p1),
                f"{bench_us(lambda d=d: orjson.dumps(d)):.2f}",
                f"{bench_us(lambda d=d: ormsgpack.packb(d)):.2f}",
                f"{bench_us(lambda d=d: msgpack.packb(d)):.2f}",
                f"{bench_us(lambda j=j: orjson.loads(j)):.2f}",
                f"{bench_us(lambda p=p1: ormsgpack.unpackb(p)):.2f}",
                f"{bench_us(lambda p=p1: msgpack.unpackb(p)):.2f}",
                f"{bench_us(lambda j=j: ormsgpack.packb(orjson.loads(j))):.2f}",
                f"{bench_us(lambda j=j: msgpack.packb(orjson.loads(j))):.2f}",
            ]
        )
    table(
        [
            "envelope",
            "JSON B",
            "msgpack B",
            "orjson.dumps",
            "ormsgpack.packb",
            "msgpack.packb",
            "orjson.loads",
            "ormsgpack.unpackb",
            "msgpack.unpackb",
            "ormsgpack.packb(orjson.loads(j))",
            "msgpack.packb(orjson.loads(j))",
        ],
        rows,
    )
    print(f"(microseconds, min of {REPEAT}; msgpack.packb output is byte-identical to ormsgpack.packb for these)\n")

    values: dict[str, Any] = {
        "nested": {"a": [1, {"b": [None, True, False]}], "c": {"d": {"e": "é✓"}}},
        "int 2**63-1": 2**63 - 1,
        "int 2**63": 2**63,
        "int 2**64-1": 2**64 - 1,
        "int -2**63": -(2**63),
        "int 2**64": 2**64,
        "int -2**63-1": -(2**63) - 1,
        "float 0.1": 0.1,
        "float 1e308": 1e308,
        "float nan": float("nan"),
        "float inf": float("inf"),
        "None/bool": [None, True, False],
        "tuple": (1, 2),
        "int key": {1: "x"},
        "bytes": b"\x00\x01",
    }

    def rt(enc: Callable[[Any], bytes], dec: Callable[[bytes], Any], v: Any) -> str:
        try:
            b = enc(v)
        except Exception as e:
            return f"encode: {type(e).__name__}"
        try:
            back = dec(b)
        except Exception as e:
            return f"decode: {type(e).__name__}"
        if back == v and type(back) is type(v):
            return "same"
        if isinstance(v, float) and v != v:
            return f"-> {back!r}"
        return f"-> {back!r}"[:40]

    rows = []
    for label, v in values.items():
        rows.append(
            [
                label,
                rt(orjson.dumps, orjson.loads, v),
                rt(ormsgpack.packb, ormsgpack.unpackb, v),
                rt(msgpack.packb, msgpack.unpackb, v),
            ]
        )
    table(["value", "orjson dumps/loads", "ormsgpack packb/unpackb", "msgpack packb/unpackb"], rows)

    bad = {
        "empty": b"",
        "0xc1 (never used)": b"\xc1",
        "truncated map": b"\x81\xa1a",
        "trailing bytes": msgpack.packb({"a": 1}) + b"\x01",
        "invalid UTF-8 str": b"\x81\xa1a\xa2\xff\xfe",
        "int key in map": b"\x81\x01\x01",
        "bin (bytes) key": b"\x81\xc4\x01a\x01",
        "nesting depth 1,000": b"\x91" * 1000 + b"\xc0",
        "nesting depth 100,000": b"\x91" * 100_000 + b"\xc0",
        "top-level array": b"\x91\x01",
        "top-level int": b"\x01",
        "map32 claiming 2**31 entries": b"\xdf\x80\x00\x00\x00",
    }

    def err(fn: Callable[[bytes], Any], b: bytes) -> str:
        try:
            v = fn(b)
        except Exception as e:
            name = type(e).__name__ if type(e).__module__ == "builtins" else f"{type(e).__module__}.{type(e).__name__}"
            return f"{name}: {str(e)[:45]}"
        return f"accepted: {type(v).__name__} {reprlib.repr(v)}"[:40]

    rows = [[k, err(ormsgpack.unpackb, b), err(msgpack.unpackb, b)] for k, b in bad.items()]
    jbad = {"nesting depth 1,000": b"[" * 1000 + b"]" * 1000, "nesting depth 100,000": b"[" * 100_000}
    table(["malformed input", "ormsgpack.unpackb", "msgpack.unpackb (defaults)"], rows)
    table(["JSON", "orjson.loads"], [[k, err(orjson.loads, b)] for k, b in jbad.items()])

    def deepest(fn: Callable[[Any], Any], make: Callable[[int], Any]) -> int:
        lo, hi = 1, 100_000
        while lo < hi:
            mid = (lo + hi + 1) // 2
            try:
                fn(make(mid))
                lo = mid
            except Exception:
                hi = mid - 1
        return lo

    def nested(depth: int) -> Any:
        v: Any = None
        for _ in range(depth):
            v = [v]
        return v

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200_000)
    try:
        rows = [
            [
                "decode (nested arrays)",
                deepest(orjson.loads, lambda d: b"[" * d + b"null" + b"]" * d),
                deepest(ormsgpack.unpackb, lambda d: b"\x91" * d + b"\xc0"),
                deepest(msgpack.unpackb, lambda d: b"\x91" * d + b"\xc0"),
            ],
            [
                "encode (nested lists)",
                deepest(orjson.dumps, nested),
                deepest(ormsgpack.packb, nested),
                deepest(msgpack.packb, nested),
            ],
        ]
    finally:
        sys.setrecursionlimit(limit)
    print("Deepest nesting accepted (fixed by each library; none has an option to change it):\n")
    table(["", "orjson", "ormsgpack", "msgpack"], rows)


SECTIONS: dict[str, Callable[[], None]] = {
    "env": section_env,
    "api": section_api,
    "independent": section_independent,
    "compress": lambda: (print("## Compress one message (wbits 15)\n"), section_compress())[1],
    "wbits": section_wbits,
    "inflate": section_inflate,
    "identity": section_identity,
    "memory": section_memory,
    "window8": section_window8,
    "msgpack": section_msgpack,
}


def main(argv: list[str]) -> None:
    if argv[:1] == ["_mem"]:
        lib, kind, wbits, mem, level = argv[1:6]
        _mem_child(lib, kind, int(wbits), int(mem), int(level))
        return
    for a in [a for a in argv if a.startswith("--libs=")]:
        keep = a.split("=", 1)[1].split(",")
        for name in list(LIBS):
            if name not in keep:
                del LIBS[name]
        argv = [x for x in argv if x != a]
    unknown = [a for a in argv if a not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    for name in argv or list(SECTIONS):
        SECTIONS[name]()
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
