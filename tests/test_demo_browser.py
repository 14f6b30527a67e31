"""End-to-end test of the demo page (fasthub/static/demo.html + fasthub.js + demo.js) in a real browser.

Drives Debian's Chromium (/usr/bin/chromium) with Playwright's sync API against a real
``python -m fasthub serve`` subprocess: two pages connect, join a room, exchange room and user
messages, and an XSS check verifies that hostile payloads (sent from a page and from a raw
``websockets`` client) are shown as literal text and never executed or turned into elements.

Set FASTHUB_DEMO_SCREENSHOT=/path/to/file.png to save a screenshot of the receiving page.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parent.parent
STATIC = REPO_ROOT / "fasthub" / "static"

PLACEHOLDER = "\u2013"  # what the page shows before it knows a value
XSS_IMG = '<img src=x onerror="window.__xss=1">'
XSS_SCRIPT = "<script>window.__xss=2</script>"

# Records CSP violations (there should be none: the page's own scripts/styles must be allowed).
INIT_SCRIPT = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__csp.push(e.violatedDirective + " " + e.blockedURI);
});
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The same hub mounted under a prefix in a Starlette app (root_path "/rt").
PREFIX_APP = """
import sys
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from fasthub import create_app

app = Starlette(routes=[Mount("/rt", app=create_app())])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


@contextlib.contextmanager
def _serve(argv: list[str], stats_url: str) -> Iterator[None]:
    """Run a server subprocess until it answers `stats_url`; kill it on exit."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

        def output() -> str:
            out.seek(0)
            return out.read().decode(errors="replace")

        try:
            deadline = time.monotonic() + 20
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"server exited with {proc.returncode}:\n{output()}")
                try:
                    with urllib.request.urlopen(stats_url, timeout=1) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"server did not answer {stats_url} in 20 s:\n{output()}")
                time.sleep(0.1)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Base URL of a `python -m fasthub serve` subprocess."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "fasthub", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with _serve(argv, f"{base}/ws/stats"):
        yield base


@pytest.fixture(scope="module")
def prefixed_server() -> Iterator[str]:
    """Base URL (ending in /rt) of the hub mounted at /rt in Starlette."""
    pytest.importorskip("starlette", reason="starlette is not installed (test extra)")
    port = _free_port()
    base = f"http://127.0.0.1:{port}/rt"
    with _serve([sys.executable, "-c", PREFIX_APP, str(port)], f"{base}/ws/stats"):
        yield base




def test_csp_style_hash_matches_style_block() -> None:
    """The CSP <meta> allows the inline <style> by hash; editing the CSS requires updating it."""
    html = (STATIC / "demo.html").read_text(encoding="utf-8")
    style = re.search(r"<style>(.*?)</style>", html, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode("utf-8")).digest()).decode()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html)
    assert csp is not None
    assert f"style-src 'sha256-{digest}'" in csp.group(1), f"update the style-src hash to sha256-{digest}"
    assert "unsafe-inline" not in csp.group(1)
    assert "unsafe-eval" not in csp.group(1)
    # No HTML-injection sinks in the page logic.
    for name in ("demo.js", "fasthub.js"):
        code = (STATIC / name).read_text(encoding="utf-8")
        code = re.sub(r"/\*.*?\*/|//[^\n]*", "", code, flags=re.S)  # ignore comments
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in code, f"{name} uses {sink}"


def _open_demo(browser: object, base: str):  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page = browser.new_page()  # type: ignore[attr-defined]
    page.add_init_script(INIT_SCRIPT)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(base + "/")
    page.click("#connect")
    expect(page.locator("#status")).to_have_attribute("data-state", "open", timeout=5000)
    expect(page.locator("#me-user")).not_to_have_text(PLACEHOLDER, timeout=5000)
    expect(page.locator("#me-conn")).not_to_have_text(PLACEHOLDER, timeout=5000)
    return page, errors


def _join(page, room: str) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page.fill("#room-input", room)
    page.click("#join-btn")
    expect(page.locator(f'#room-list li[data-room="{room}"] .members')).to_contain_text("member", timeout=5000)


def _entry(page, type_: str, text: str):  # type: ignore[no-untyped-def]
    return page.locator(f'#log li[data-type="{type_}"]', has_text=text)


def _exact(text: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(text) + "$")


def _expect_payload(page, type_: str, payload: object) -> None:  # type: ignore[no-untyped-def]
    """A log entry of `type_` shows `payload` as compact JSON (what JSON.stringify gives), as text."""
    from playwright.sync_api import expect

    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    shown = page.locator(f'#log li[data-type="{type_}"] pre.payload').filter(has_text=_exact(text))
    expect(shown).to_have_count(1, timeout=5000)


def _reply_to(raw, id_: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    """Read frames from a raw websockets client until the one answering envelope `id_`."""
    deadline = time.monotonic() + 5
    while True:
        msg = json.loads(raw.recv(timeout=max(0.1, deadline - time.monotonic())))
        if msg.get("id") == id_:
            return msg  # type: ignore[no-any-return]


def test_demo_page_end_to_end(browser: object, server: str) -> None:
    from playwright.sync_api import expect
    from websockets.sync.client import connect as ws_connect

    # The server fills in the root prefix (empty here) and the page loads its scripts from it.
    with urllib.request.urlopen(server + "/", timeout=5) as resp:
        html = resp.read().decode("utf-8")
    assert "{{FASTHUB_ROOT}}" not in html
    assert '<meta name="fasthub-root" content="">' in html
    assert 'src="/static/fasthub.js"' in html

    page_a, errors_a = _open_demo(browser, server)
    page_b, errors_b = _open_demo(browser, server)
    user_a = page_a.locator("#me-user").inner_text()
    user_b = page_b.locator("#me-user").inner_text()

    room = "room-" + uuid.uuid4().hex[:8]
    _join(page_a, room)
    _join(page_b, room)
    # A sees B arrive (user_joined) and the member count reach 2.
    expect(_entry(page_a, "system", "user_joined")).to_have_count(1, timeout=5000)
    expect(page_a.locator(f'#room-list li[data-room="{room}"] .members')).to_have_text("2 members", timeout=5000)

    # Room message A -> B.
    page_a.fill("#room-msg-room", room)
    page_a.fill("#room-msg-text", "hello from A")
    page_a.click("#send-room")
    got = _entry(page_b, "room_message", "hello from A")
    expect(got).to_have_count(1, timeout=5000)
    expect(got.locator(".field", has_text="room")).to_contain_text(room)
    expect(got.locator(".field", has_text="from")).to_contain_text(user_a)
    expect(got.locator("pre.payload")).to_have_text('{"text":"hello from A"}')

    # User message A -> B (by B's user id).
    page_a.fill("#user-to", user_b)
    page_a.fill("#user-text", '{"greeting": "hi B", "n": 1}')
    page_a.click("#send-user")
    dm = _entry(page_b, "user_message", "hi B")
    expect(dm).to_have_count(1, timeout=5000)
    expect(dm.locator("pre.payload")).to_have_text('{"greeting":"hi B","n":1}')

    # App-level ping shows a round-trip time; stats poll shows both connections.
    page_a.click("#ping")
    expect(page_a.locator("#rtt")).to_contain_text("ms", timeout=5000)
    expect(page_a.locator("#stat-connections")).to_have_text(re.compile(r"^[2-9]\d*$"), timeout=6000)
    expect(page_a.locator("#stat-room-list")).to_contain_text(room, timeout=6000)

    # Errors are shown distinctly: a room message to a room A is not in.
    page_a.fill("#room-msg-room", room + "-elsewhere")
    page_a.fill("#room-msg-text", "nobody home")
    page_a.click("#send-room")
    err = page_a.locator('#log li[data-type="error"].kind-error')
    expect(err).to_have_count(1, timeout=5000)
    expect(err.locator(".error-line")).to_contain_text("not_member")

    # XSS from the page: hostile text in a room message and a broadcast.
    page_a.fill("#room-msg-room", room)
    page_a.fill("#room-msg-text", XSS_IMG)
    page_a.click("#send-room")
    page_a.fill("#broadcast-text", XSS_SCRIPT)
    page_a.click("#send-broadcast")
    for page in (page_a, page_b):
        _expect_payload(page, "room_message", {"text": XSS_IMG})
        _expect_payload(page, "broadcast", {"text": XSS_SCRIPT})

    # XSS from a raw websockets client, as a room message, a user message and a broadcast.
    ws_url = server.replace("http://", "ws://") + "/ws"
    with ws_connect(ws_url, open_timeout=5) as raw:
        hello = json.loads(raw.recv(timeout=5))
        assert hello["type"] == "system" and hello["payload"]["event"] == "connected"
        raw.send(json.dumps({"type": "join_room", "room": room, "id": "raw-join"}))
        joined = _reply_to(raw, "raw-join")
        assert joined["type"] == "system" and joined["payload"]["event"] == "joined", joined
        hostile = {"text": XSS_IMG, "html": XSS_SCRIPT, XSS_IMG: [XSS_SCRIPT, {"n": 1}]}
        raw.send(json.dumps({"type": "room_message", "room": room, "payload": hostile}))
        raw.send(json.dumps({"type": "user_message", "to": user_b, "payload": {"dm": XSS_SCRIPT}}))
        raw.send(json.dumps({"type": "broadcast", "payload": {"b": XSS_IMG}}))
        # A hostile room *name* (if the server accepts it) reaches the page through the stats poll.
        raw.send(json.dumps({"type": "join_room", "room": XSS_SCRIPT, "id": "raw-evil"}))
        evil_room_joined = _reply_to(raw, "raw-evil")["type"] == "system"

        _expect_payload(page_b, "room_message", hostile)
        _expect_payload(page_b, "user_message", {"dm": XSS_SCRIPT})
        _expect_payload(page_b, "broadcast", {"b": XSS_IMG})
        if evil_room_joined:
            chip = page_b.locator("#stat-room-list li.chip").filter(has_text=_exact(XSS_SCRIPT))
            expect(chip).to_have_count(1, timeout=6000)

    for page in (page_a, page_b):
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert page.locator("#log img, #log script").count() == 0
        assert page.locator("body img").count() == 0
        assert page.locator("body script").count() == 2  # only fasthub.js and demo.js
        assert page.evaluate("window.__csp") == []
    # The hostile text is there literally, character for character.
    log_text = page_b.locator("#log").inner_text()
    assert XSS_SCRIPT in log_text
    assert json.dumps(XSS_IMG) in log_text  # inside JSON, so its quotes are escaped

    # Leaving: A's list drops the room, B is told.
    page_a.locator(f'#room-list li[data-room="{room}"] button', has_text="Leave").click()
    expect(page_a.locator(f'#room-list li[data-room="{room}"]')).to_have_count(0, timeout=5000)
    expect(_entry(page_b, "system", "user_left")).not_to_have_count(0, timeout=5000)

    shot = os.environ.get("FASTHUB_DEMO_SCREENSHOT")
    if shot:
        page_b.set_viewport_size({"width": 1280, "height": 900})
        page_b.screenshot(path=shot, full_page=True)

    # Disconnect returns the page to its idle state.
    page_a.click("#connect")
    expect(page_a.locator("#status")).to_have_attribute("data-state", "closed", timeout=5000)
    expect(page_a.locator("#send-room")).to_be_disabled()

    assert errors_a == [] and errors_b == [], (errors_a, errors_b)
    with contextlib.suppress(Exception):
        page_a.close()
        page_b.close()


def test_demo_page_under_prefix(browser: object, prefixed_server: str) -> None:
    """Mounted at /rt, the page derives /rt/ws, /rt/ws/stats and /rt/static/* from its meta tag."""
    from playwright.sync_api import expect

    base = prefixed_server
    with urllib.request.urlopen(base + "/", timeout=5) as resp:
        html = resp.read().decode("utf-8")
    assert '<meta name="fasthub-root" content="/rt">' in html
    assert 'src="/rt/static/fasthub.js"' in html

    page, errors = _open_demo(browser, base)
    port = base.split(":")[2].split("/")[0]
    expect(page.locator("#ws-url")).to_have_text(f"ws://127.0.0.1:{port}/rt/ws")
    room = "rt-" + uuid.uuid4().hex[:8]
    _join(page, room)
    page.fill("#room-msg-room", room)
    page.fill("#room-msg-text", "under a prefix")
    page.click("#send-room")
    _expect_payload(page, "room_message", {"text": "under a prefix"})
    expect(page.locator("#stat-room-list")).to_contain_text(room, timeout=6000)
    expect(page.locator("#stats-status")).to_contain_text("updated")
    assert page.evaluate("window.__csp") == []
    assert errors == []
    page.close()
