"""fasthub.js in Chromium keeps every message across a server-side connection drop.

The page (the demo page, which loads fasthub.js) joins a room through ``FastHubClient``; a
``websockets`` publisher sends 300 numbered messages; midway the page sends an oversize frame,
so the server closes its connection (1009). The client reconnects, resumes its session with the
token of its ``connected`` message, and must end with every message exactly once, in order, and
its pending ``publish`` acked once.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import websockets

from tests import test_demo_browser as demo
from tests.conftest import wait_in_page

# the browser fixture is conftest's; the ``fasthub serve`` fixtures are the demo test's
server = demo.server

pytestmark = pytest.mark.browser

TOTAL = 300

PAGE_SCRIPT = """
([url]) => new Promise((resolve) => {
  window.__got = [];
  window.__events = [];
  const hub = new FastHubClient(url, { minDelay: 50, maxDelay: 500 });
  window.__hub = hub;
  hub.on("room_message", (env) => window.__got.push([env.offset, env.payload.n]));
  hub.on("resumed", (p) => window.__events.push(["resumed", p.resumed]));
  hub.on("unrecovered", (e) => window.__events.push(["unrecovered", e.reason]));
  hub.on("close", (e) => window.__events.push(["close", e.code]));
  hub.on("system", (env) => { if (env.payload.event === "joined") resolve(env.payload); });
  hub.joinRoom("rec");
  hub.connect();
})
"""


def test_the_page_keeps_every_message_across_a_server_side_drop(browser: object, server: str) -> None:
    ws_url = server.replace("http://", "ws://") + "/ws"
    page = browser.new_page()  # type: ignore[attr-defined]
    try:
        page.goto(server + "/")
        wait_in_page(page, "typeof window.FastHubClient === 'function'")
        joined = page.evaluate(PAGE_SCRIPT, [ws_url])
        assert joined["offset"] == 0 and joined["epoch"]

        page_drop = threading.Event()

        async def publish() -> None:
            async with websockets.connect(ws_url) as pub:
                await pub.recv()
                await pub.send(json.dumps({"type": "join_room", "room": "rec", "id": "j"}))
                for n in range(TOTAL):
                    await pub.send(json.dumps({"type": "room_message", "room": "rec", "payload": {"n": n}}))
                    await asyncio.sleep(0.003)
                    if n == TOTAL // 3:
                        page_drop.set()
                await asyncio.sleep(0.5)

        # Playwright's sync API owns this thread's event loop: the publisher runs in another
        publisher = threading.Thread(target=asyncio.run, args=(publish(),))
        publisher.start()
        assert page_drop.wait(20)
        # a publish in flight, then the server closes the page's connection (oversize frame: 1009)
        page.evaluate(
            "() => { window.__hub.publish('rec', {n: -1}).then((a) => { window.__ack = a; });"
            " window.__hub.ws.send('x'.repeat(600 * 1024)); }"
        )
        publisher.join(30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            got = page.evaluate("window.__got")
            if len([g for g in got if g[1] >= 0]) >= TOTAL and page.evaluate("window.__ack !== undefined"):
                break
            time.sleep(0.1)
        got = page.evaluate("window.__got")
        events = page.evaluate("window.__events")
        numbers = [n for _, n in got if n >= 0]
        assert numbers == list(range(TOTAL)), (len(numbers), events)
        offsets = [o for o, _ in got]
        assert offsets == sorted(set(offsets))  # once each, in order
        assert ["close", 1009] in events and ["resumed", True] in events
        assert not [e for e in events if e[0] == "unrecovered"]
        ack = page.evaluate("window.__ack")
        assert ack["offset"] > 0 and [n for _, n in got].count(-1) == 1  # the publish, stored once
    finally:
        page.close()
