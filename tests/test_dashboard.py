"""The live stats page at ``/ws/dashboard`` (fasthub/static/dashboard.html) in a real browser.

A real server (in this process, on a free port, as in conftest), real ``websockets`` clients that
join a room and publish, and Debian's Chromium driven by Playwright: the page polls the stats
endpoint, keeps the samples and exposes what it plotted on ``window.fasthubDashboard``. The tests
check those series against what the server answered and what the test knows (connections, the
publish rate), and decode a screenshot of each checked chart (a small PNG reader below) to see
the series' colours drawn at the height of their values. With a two-node cluster (a real
redis-server) there is one series per node plus the cluster total.

Set FASTHUB_DASHBOARD_SCREENSHOT=/path/to/file.png to save a screenshot of the cluster page.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets

from fasthub import HubConfig
from tests.conftest import query_user, serve, serve_cluster, wait_in_page

PAGE = Path(__file__).resolve().parent.parent / "fasthub" / "static" / "dashboard.html"
METRICS = [
    "connections",
    "messages_in_per_s",
    "messages_out_per_s",
    "bytes_buffered",
    "slow_consumer_closes",
    "memory_per_connection_bytes",
]
TOTAL_COLOR = (0xE8, 0x59, 0x0C)
# write_timeout 1 s: the hub's sweep, which samples the per-second rates, runs every 0.5 s
CONFIG = HubConfig(write_timeout=1.0)
PUBLISH_EVERY = 0.05  # the test publisher: ~20 room messages per second


# -- a small PNG reader (8-bit RGB/RGBA, not interlaced: what Chromium's screenshots are) --------


def png_pixels(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, bytes per pixel, the unfiltered rows joined)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = depth = color = interlace = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
    assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    out = bytearray()
    prev = bytearray(stride)
    i = 0
    for _ in range(height):
        kind, line = raw[i], bytearray(raw[i + 1 : i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + a) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + b) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pred) & 0xFF
        out += line
        prev = line
    return width, height, bpp, bytes(out)


def color_rows(png: bytes, rgb: tuple[int, int, int], tolerance: int = 10) -> list[int]:
    """The row of every pixel of colour ``rgb`` (each channel within ``tolerance``)."""
    width, height, bpp, pixels = png_pixels(png)
    rows = []
    for y in range(height):
        base = y * width * bpp
        for x in range(width):
            p = base + x * bpp
            if all(abs(pixels[p + k] - rgb[k]) <= tolerance for k in range(3)):
                rows.append(y)
    return rows


def hex_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def test_png_reader_decodes_every_filter() -> None:
    """The reader against a PNG built here with each row filter type (0-4)."""
    width, height = 5, 5
    rows = [b"".join(bytes((x * 40 + y, y * 50, (x + y) * 20)) for x in range(width)) for y in range(height)]
    raw = bytearray()
    prev = bytes(width * 3)
    for kind, row in enumerate(rows):  # row y uses filter y
        filtered = bytearray()
        for x in range(len(row)):
            a = row[x - 3] if x >= 3 else 0
            b = prev[x]
            c = prev[x - 3] if x >= 3 else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            paeth = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            pred = [0, a, b, (a + b) // 2, paeth][kind]
            filtered.append((row[x] - pred) & 0xFF)
        raw += bytes([kind]) + filtered
        prev = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(bytes(raw)))
        + chunk(b"IEND", b"")
    )
    assert png_pixels(png) == (width, height, 3, b"".join(rows))
    assert color_rows(png, (2 * 40 + 3, 150, 100), tolerance=0) == [3]


# -- the page's own rules ------------------------------------------------------------------------


def test_page_is_self_contained_and_its_csp_hashes_match() -> None:
    html = PAGE.read_text(encoding="utf-8")
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html)
    assert csp is not None
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        assert len(blocks) == 1, tag
        digest = base64.b64encode(hashlib.sha256(blocks[0].encode("utf-8")).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in csp.group(1), f"update the {directive} hash to sha256-{digest}"
    assert "unsafe-inline" not in csp.group(1) and "unsafe-eval" not in csp.group(1)
    assert "connect-src 'self'" in csp.group(1)
    # nothing loaded from elsewhere, no HTML-injection sinks
    assert re.search(r"https?://", html) is None
    assert "<script src" not in html and "<link" not in html
    code = re.sub(r"/\*.*?\*/|//[^\n]*", "", html, flags=re.S)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in code, sink


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_no_demo_means_no_dashboard() -> None:
    with serve({"demo": False}) as server:
        assert _get(server.http + "/ws/dashboard")[0] == 404
        assert _get(server.http + "/ws/stats")[0] == 200
    with serve({}) as server:
        status, body = _get(server.http + "/ws/dashboard")
        assert status == 200
        assert b'<meta name="fasthub-root" content="">' in body
        assert b'<meta name="fasthub-stats" content="/ws/stats">' in body
        assert b"{{FASTHUB" not in body


def test_cli_no_demo_turns_the_dashboard_off() -> None:
    """``fasthub serve --no-demo``: 404 at /ws/dashboard (the stats stay)."""
    from tests.test_demo_browser import _free_port

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "fasthub", "serve", "--port", str(port), "--no-demo", "--log-level", "warning"]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while _try_get(base + "/ws/stats") != 200:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
            assert _get(base + "/ws/dashboard")[0] == 404
            assert _get(base + "/")[0] == 404
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _try_get(url: str) -> int | None:
    try:
        return _get(url)[0]
    except OSError:
        return None


# -- traffic -------------------------------------------------------------------------------------


class Traffic:
    """Real ``websockets`` clients on their own thread and loop: each joins room ``dash``; the
    first publishes to it every ``PUBLISH_EVERY`` s; all read what arrives."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self.thread.start()
        assert self.ready.wait(15), f"the clients did not connect: {self.error!r}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by __enter__ or the test
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        clients = [await websockets.connect(url) for url in self.urls]
        for ws in clients:
            assert json.loads(await ws.recv())["payload"]["event"] == "connected"
            await ws.send(json.dumps({"type": "join_room", "room": "dash", "id": "j"}))
            while json.loads(await ws.recv()).get("id") != "j":
                pass

        async def read(ws: Any) -> None:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for _ in ws:
                    pass

        readers = [asyncio.create_task(read(ws)) for ws in clients]
        self.ready.set()
        while not self.stop.is_set():
            await clients[0].send(json.dumps({"type": "room_message", "room": "dash", "payload": {"n": 1}}))
            await asyncio.sleep(PUBLISH_EVERY)
        for ws in clients:
            await ws.close()
        await asyncio.gather(*readers)


# -- the browser ---------------------------------------------------------------------------------




def open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1300, "height": 900}, device_scale_factor=1)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(url)
    return page, errors


def dashboard(page: Any) -> dict[str, Any]:
    return page.evaluate("window.fasthubDashboard")  # type: ignore[no-any-return]


def wait_for(page: Any, check: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        d = dashboard(page)
        if d is not None and check(d):
            return d
        assert time.monotonic() < deadline, f"the page never got there: {json.dumps(d)[:3000]}"
        time.sleep(0.25)


def last_values(d: dict[str, Any], metric: str, series: str, n: int) -> list[Any]:
    return [s["values"].get(series, {}).get(metric) for s in d["samples"][-n:]]


def expected_row(chart: dict[str, Any], value: float) -> float:
    plot = chart["plot"]
    return plot["y"] + plot["h"] - (value - chart["min"]) / (chart["max"] - chart["min"]) * plot["h"]


def check_drawn(page: Any, d: dict[str, Any], metric: str, series: list[str]) -> dict[str, int]:
    """A screenshot of ``metric``'s canvas shows each series' colour, most of it on the row of
    the series' current value (the checked values hold still while the screenshot is taken).
    Returns the pixel count of each series' colour."""
    chart = d["charts"][metric]
    png = page.locator(f'section[data-metric="{metric}"] canvas').screenshot()
    counts = {}
    for sid in series:
        drawn = chart["series"][sid]
        rows = color_rows(png, hex_rgb(drawn["color"]))
        assert len(rows) >= 30, (metric, sid, drawn["color"], len(rows))
        # the line at the current value (2-3 px wide) holds the most pixels of its colour
        mode = max(set(rows), key=rows.count)
        assert abs(mode - expected_row(chart, drawn["last"])) <= 2.5, (metric, sid, mode, drawn, chart["plot"])
        counts[sid] = len(rows)
    return counts


def test_dashboard_plots_one_process(browser: Any) -> None:
    n = 3
    with serve({}, CONFIG, ws="fasthub") as server, Traffic([server.ws_url()] * n):
        page, errors = open_page(browser, server.http + "/ws/dashboard")

        def settled(d: dict[str, Any]) -> bool:
            return (
                len(d["samples"]) >= 4
                and last_values(d, "connections", "process", 3) == [n] * 3
                and all((v or 0) > 0 for v in last_values(d, "messages_in_per_s", "process", 2))
            )

        d = wait_for(page, settled)
        assert d["mode"] == "process" and d["errors"] == 0 and d["statsUrl"] == "/ws/stats"
        assert (d["intervalMs"], d["windowMs"]) == (1000, 300_000)  # a poll a second, 5 minutes kept
        gaps = [b["t"] - a["t"] for a, b in zip(d["samples"], d["samples"][1:], strict=False)]
        assert all(900 <= g <= 2500 for g in gaps), gaps
        assert list(d["series"]) == ["process"]
        last = d["last"]  # the server's last answer, as the page received it
        for metric in METRICS:
            chart = d["charts"][metric]
            drawn = chart["series"]["process"]
            assert drawn["last"] == last[metric] == chart["current"], metric
            assert len(drawn["points"]) == len(d["samples"]), metric  # one point per sample
        # what the test knows: n clients, one publishing ~20 messages/s to a room of n
        assert d["charts"]["connections"]["current"] == n
        assert 5 <= d["charts"]["messages_in_per_s"]["current"] <= 40
        assert d["charts"]["messages_out_per_s"]["current"] >= d["charts"]["messages_in_per_s"]["current"]
        assert d["charts"]["slow_consumer_closes"]["current"] == 0
        assert d["charts"]["memory_per_connection_bytes"]["current"] is not None
        stats = server.call(server.hub.stats)
        assert stats["connections"] == n and stats["slow_consumer_closes"] == 0
        # the current value and unit on each chart
        value = page.locator('section[data-metric="connections"] h2 .value')
        assert value.inner_text() == f"{n} conn"
        assert page.locator('section[data-metric="messages_in_per_s"] h2 .value').inner_text().endswith(" msg/s")
        assert re.fullmatch(
            r"-?[\d.]+ (B|KiB|MiB|GiB)/conn",
            page.locator('section[data-metric="memory_per_connection_bytes"] h2 .value').inner_text(),
        )
        assert page.locator("#status").get_attribute("data-state") == "ok"
        # the pixels: the series colour on the connections chart, at the height of n
        check_drawn(page, dashboard(page), "connections", ["process"])
        assert errors == []
        page.close()


def test_dashboard_under_a_prefix(browser: Any) -> None:
    """Mounted at /rt in Starlette: the page polls /rt/ws/stats and links to /rt/."""
    pytest.importorskip("starlette")
    with serve({}, CONFIG, mount=True) as server:
        page, errors = open_page(browser, server.http + "/")  # the demo page links to it
        link = page.locator("#dashboard-link")
        assert link.get_attribute("href") == "/rt/ws/dashboard"
        link.click()
        page.wait_for_url(server.http + "/ws/dashboard")
        d = wait_for(page, lambda d: d["polls"] >= 2)
        assert d["statsUrl"] == "/rt/ws/stats" and d["errors"] == 0
        assert page.locator("#demo-link").get_attribute("href") == "/rt/"
        assert errors == []
        page.close()


def test_dashboard_with_a_stats_token(browser: Any) -> None:
    """With a stats token the page sends ``?token=`` of its own URL as a Bearer header."""
    with serve({"stats_token": "s3cret"}, CONFIG) as server:
        assert _get(server.http + "/ws/stats")[0] == 401
        page, errors = open_page(browser, server.http + "/ws/dashboard?token=s3cret")
        requests: list[dict[str, str]] = []
        page.on("request", lambda r: requests.append(r.headers) if "/ws/stats" in r.url else None)
        d = wait_for(page, lambda d: d["polls"] >= 2)
        assert d["errors"] == 0 and d["last"]["connections"] == 0
        assert requests and requests[-1].get("authorization") == "Bearer s3cret"
        page.close()
        # without it (or with a wrong one): no samples, and the page says why
        for query, reason in (("", "the stats need a token"), ("?token=nope", "the token was refused")):
            page, _ = open_page(browser, server.http + "/ws/dashboard" + query)
            d = wait_for(page, lambda d: d["errors"] >= 1)
            assert d["polls"] == 0 and d["samples"] == [] and "401" in d["lastError"]
            assert page.locator("#status").get_attribute("data-state") == "error"
            assert reason in page.locator("#status").inner_text()
            page.close()
        assert [e for e in errors if "401" not in e] == []


def test_dashboard_without_the_stats_endpoint(browser: Any) -> None:
    with serve({"stats_path": None}) as server:
        page, errors = open_page(browser, server.http + "/ws/dashboard")
        wait_in_page(page, "window.fasthubDashboard !== undefined")
        assert page.locator("#status").inner_text() == "the stats endpoint is off on this server"
        time.sleep(1.2)
        assert dashboard(page)["polls"] == 0 and dashboard(page)["errors"] == 0
        assert errors == []
        page.close()


# -- the cluster -----------------------------------------------------------------------------------


def node_entry(stats: dict[str, Any], pid_and_id: str) -> dict[str, Any]:
    return next(n for n in stats["cluster"]["nodes"] if n["node"] == pid_and_id)


def test_node_stats_carry_buffered_bytes_closes_and_memory_per_connection() -> None:
    """A slow reader closed on node A shows in node A's entry of the cluster view on node B."""
    from tests.test_slow_consumer import RawClient, flood
    from tests.test_slow_consumer import config as slow_config

    with serve_cluster({"authenticate": query_user}, slow_config(write_timeout=1.0)) as cluster:
        a, b = cluster.nodes  # type: ignore[attr-defined]
        a_id, b_id = a.hub.broker.node_id, b.hub.broker.node_id
        for node in (a, b):
            mine = node.call(node.hub.node_stats)
            for key in ("bytes_buffered", "slow_consumer_closes", "memory_per_connection_bytes"):
                assert key in mine, key
            assert mine["bytes_buffered"] == 0 and mine["slow_consumer_closes"] == 0
            assert mine["memory_per_connection_bytes"] is None  # no connections yet

        async def scenario() -> None:
            # a raw client with a 4 KiB receive buffer that never reads, alone in room "r"
            slow = await asyncio.to_thread(RawClient, a, "user=slow")
            a.call(a.hub.join_room, slow.json()["payload"]["connection_id"], "r")
            try:
                await flood(a, lambda h: h.slow_consumer_closes > 0, extra=0)
            finally:
                slow.close()

        # on a thread of its own: Playwright's sync API keeps an event loop on this one
        worker = threading.Thread(target=lambda: asyncio.run(asyncio.wait_for(scenario(), 60)))
        worker.start()
        worker.join(70)
        assert not worker.is_alive()
        mine = a.call(a.hub.node_stats)
        assert mine["slow_consumer_closes"] == a.call(a.hub.stats)["slow_consumer_closes"] == 1
        # node B sees node A's counters as of A's next heartbeat (every ttl / 3 = 0.67 s)
        deadline = time.monotonic() + 10
        while True:
            stats = json.loads(_get(b.http + "/ws/stats")[1])
            if node_entry(stats, a_id)["slow_consumer_closes"] == 1:
                break
            assert time.monotonic() < deadline, stats["cluster"]
            time.sleep(0.2)
        assert node_entry(stats, b_id)["slow_consumer_closes"] == 0
        for node_id in (a_id, b_id):
            entry = node_entry(stats, node_id)
            assert isinstance(entry["bytes_buffered"], int) and entry["bytes_buffered"] >= 0
        # with connections open, memory per connection is a number (RSS growth / connections)
        with Traffic([a.ws_url(), a.ws_url()]):
            both = a.call(lambda: (a.hub.node_stats(), a.hub.stats()))
            assert both[0]["connections"] == 2
            assert isinstance(both[0]["memory_per_connection_bytes"], int)
            assert both[0]["bytes_buffered"] >= 0


def test_dashboard_plots_each_node_and_the_cluster(browser: Any) -> None:
    with serve_cluster({}, CONFIG) as cluster:
        a, b = cluster.nodes  # type: ignore[attr-defined]
        ids = {"node:" + a.hub.broker.node_id: 3, "node:" + b.hub.broker.node_id: 1}
        with Traffic([a.ws_url(), a.ws_url(), a.ws_url(), b.ws_url()]):
            page, errors = open_page(browser, b.http + "/ws/dashboard")

            def settled(d: dict[str, Any]) -> bool:
                if d["mode"] != "cluster" or len(d["samples"]) < 4:
                    return False
                stable = all(last_values(d, "connections", sid, 3) == [n] * 3 for sid, n in ids.items())
                return stable and last_values(d, "connections", "total", 3) == [4] * 3

            d = wait_for(page, settled)
            assert set(d["series"]) == {*ids, "total"}
            assert d["series"]["total"]["label"] == "cluster total" and d["errors"] == 0
            assert d["series"]["node:" + b.hub.broker.node_id]["label"].endswith("(this node)")  # b answered
            assert not d["series"]["node:" + a.hub.broker.node_id]["label"].endswith("(this node)")
            colors = {d["series"][sid]["color"] for sid in d["series"]}
            assert len(colors) == 3
            nodes = {"node:" + n["node"]: n for n in d["last"]["cluster"]["nodes"]}
            assert set(nodes) == set(ids)
            for metric in METRICS:
                chart = d["charts"][metric]
                for sid in ids:  # each node's series holds that node's figure of the last answer
                    assert chart["series"][sid]["last"] == nodes[sid][metric], (metric, sid)
                values = [nodes[sid][metric] for sid in ids]
                if metric == "memory_per_connection_bytes":  # weighted by connections
                    conns = [nodes[sid]["connections"] for sid in ids]
                    want = sum(v * c for v, c in zip(values, conns, strict=True)) / sum(conns)
                else:
                    want = sum(values)
                assert chart["series"]["total"]["last"] == pytest.approx(want), metric
                assert chart["current"] == chart["series"]["total"]["last"], metric
            # node A publishes ~20/s; every node reports its own rate, the total adds them
            assert d["charts"]["messages_in_per_s"]["series"]["node:" + a.hub.broker.node_id]["last"] > 0
            assert page.locator('section[data-metric="connections"] h2 .value').inner_text() == "4 conn"
            legend = page.locator('section[data-metric="connections"] .legend li')
            assert legend.count() == 3
            counts = check_drawn(page, dashboard(page), "connections", [*ids, "total"])
            assert hex_rgb(d["series"]["total"]["color"]) == TOTAL_COLOR and counts["total"] > 0
            shot = os.environ.get("FASTHUB_DASHBOARD_SCREENSHOT")
            if shot:
                page.screenshot(path=shot, full_page=True)
            assert errors == []
            page.close()
