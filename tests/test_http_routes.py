"""The app's HTTP side: the demo page and its static files; anything else is 404, never 500."""

from __future__ import annotations

import httpx
import pytest

from fasthub import HubConfig
from tests.conftest import serve


@pytest.mark.parametrize("ws", ["fasthub", "websockets-sansio"])
def test_static_files_and_unknown_paths(ws: str) -> None:
    with serve({}, HubConfig(), ws=ws) as server, httpx.Client(base_url=server.http, timeout=5) as http:
        page = http.get("/")
        assert page.status_code == 200 and b"fasthub" in page.content
        for name in ("fasthub.js", "demo.js"):
            r = http.get(f"/static/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript"), name
        # listed once, never shipped: a missing file is 404 like an unknown one
        for path in ("/static/demo.css", "/static/nope.js", "/static/../hub.py", "/static/demo.html", "/nope"):
            r = http.get(path)
            assert r.status_code == 404, (path, r.status_code)
