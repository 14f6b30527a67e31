"""Chromium against the fast path with permessage-deflate: what browsers do on every connection.

Chromium always offers ``permessage-deflate; client_max_window_bits``; the server's answer and
its compressed frames (which Chromium must inflate) are checked end to end against a real
server (``serve(ws="fasthub")``, what ``fasthub serve`` runs), beside a Python client in the
same room.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from conftest import Server, connect, run, serve

from fasthub import HubConfig

pytestmark = pytest.mark.browser

PAGE = """
async ([url, text]) => {
  const ws = new WebSocket(url);
  const got = [];
  ws.onmessage = (e) => got.push(JSON.parse(e.data));
  await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = fail; });
  const until = async (pred) => {
    for (let i = 0; i < 200; i++) {
      const m = got.find(pred);
      if (m) return m;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error("timed out: " + JSON.stringify(got.map((m) => m.type)));
  };
  await until((m) => m.type === "system" && m.payload.event === "connected");
  ws.send(JSON.stringify({type: "join_room", room: "r", id: "j"}));
  await until((m) => m.id === "j");
  ws.send(JSON.stringify({type: "room_message", room: "r", payload: {text: text}}));
  const echo = await until((m) => m.type === "room_message" && m.payload.text === text);
  const other = await until((m) => m.type === "room_message" && m.payload.text === "from python " + text);
  window.__ws = ws;
  return {extensions: ws.extensions, echo: echo.payload.text.length, other: other.payload.text.length};
}
"""


@pytest.mark.parametrize("compression", [True, False], ids=["on", "off"])
def test_chromium_compresses_both_ways(browser: Any, compression: bool) -> None:
    text = "a chat message that repeats itself, " * 40  # about 1.4 KB: compressed both ways
    config = HubConfig(compression=compression, member_events_limit=0)
    with serve(ws="fasthub", config=config) as server:
        page = browser.new_page()
        try:

            async def python_side(s: Server) -> None:
                c = await connect(s)
                await c.join("r")
                msg = await c.expect("room_message", timeout=10)
                assert msg["payload"]["text"] == text  # Chromium's message, inflated by the server
                await c.send({"type": "room_message", "room": "r", "payload": {"text": "from python " + text}})
                await c.expect("room_message")
                await c.close()

            errors: list[BaseException] = []

            def side() -> None:
                try:
                    run(python_side(server))
                except BaseException as exc:  # reported below
                    errors.append(exc)

            thread = threading.Thread(target=side)
            thread.start()
            # the Python client joins first, so it hears the page's message
            for _ in range(100):
                if server.call(server.hub.local_room_size, "r"):
                    break
                time.sleep(0.02)
            page.goto(server.http + "/")
            result = page.evaluate(PAGE, [server.ws_url(), text])
            thread.join(15)
            assert not errors, errors
            assert result["echo"] == len(text) and result["other"] == len("from python " + text)
            stats = server.call(server.hub.stats)["compression"]
            if compression:
                expected = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
                assert result["extensions"] == expected
                assert stats["compressed"] >= 2 and stats["bytes_out"] < stats["bytes_in"] // 5
            else:
                assert result["extensions"] == ""
                assert stats["compressed"] == 0
        finally:
            page.close()

