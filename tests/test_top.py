"""``fasthub top``: its sparklines, its URL rule, ``--once`` against real servers (one process and
a two-node cluster on a real redis-server, with real ``websockets`` traffic) and its errors."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

import pytest

from fasthub.cli import main as cli_main
from fasthub.top import BLOCKS, TopError, format_bytes, sparkline, stats_url
from tests.conftest import free_socket, serve, serve_cluster
from tests.test_dashboard import CONFIG, Traffic


def test_sparkline() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == BLOCKS == "▁▂▃▄▅▆▇█"
    assert sparkline([0, 0, 0]) == "▁▁▁"  # all at the bound
    assert sparkline([5, 5]) == "██"  # the bound is 0: a steady 5 is full height
    assert sparkline([0, 10, 5]) == "▁█▅"
    assert sparkline([-2, 0, 2]) == "▁▅█"  # a negative value lowers the bound
    assert sparkline([None, 0, None, 7]) == " ▁ █"  # missing samples are gaps
    assert sparkline([None, None]) == "  "
    assert sparkline([]) == ""
    assert sparkline([7, 0, 1, 2, 3], width=4) == "▁▃▆█"  # only the last `width` (the 7 is gone)
    assert sparkline(list(range(20))) == sparkline(range(8, 20))  # SPARK_WIDTH is 12


def test_stats_url() -> None:
    assert stats_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080/ws/stats"
    assert stats_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080/ws/stats"
    assert stats_url("127.0.0.1:8080") == "http://127.0.0.1:8080/ws/stats"
    assert stats_url("https://hub.example/rt/ws/stats") == "https://hub.example/rt/ws/stats"
    assert stats_url("ws://hub.example:8080") == "http://hub.example:8080/ws/stats"
    with pytest.raises(TopError):
        stats_url("ftp://hub.example")


def test_format_bytes() -> None:
    assert [format_bytes(v) for v in (0, 1023, 1024, 1536, 150 * 1024, 3 * 1024**3, -2048)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "150 KiB",
        "3.0 GiB",
        "-2.0 KiB",
    ]


def get_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def row(out: str, label: str) -> list[str]:
    """The cells of the table row that starts with ``label`` (its first line: the values)."""
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 2 and cells[1].startswith(label):
            return cells[1:-1]
    raise AssertionError(f"no row {label!r} in:\n{out}")


def spark_row(out: str, label: str) -> list[str]:
    """The sparklines under row ``label`` (the line after its values)."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 2 and cells[1].startswith(label):
            return [c.strip() for c in lines[i + 1].split("│")][2:-1]
    raise AssertionError(f"no row {label!r} in:\n{out}")


def rate(v: float) -> str:
    return f"{v:,.1f}"


def test_once_shows_what_the_server_reports(capsys: pytest.CaptureFixture[str]) -> None:
    n = 3
    with serve({}, CONFIG, ws="fasthub") as server, Traffic([server.ws_url()] * n):
        url = server.http + "/ws/stats"
        deadline = time.monotonic() + 10
        while get_stats(url)["messages_in_per_s"] <= 0:  # the hub samples its rates every 0.5 s here
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for _ in range(10):  # the rates move every 0.5 s, and RSS now and then: read right before and after
            start = time.monotonic()
            before = get_stats(url)
            assert cli_main(["top", server.http, "--once"]) == 0
            after = get_stats(url)
            memory = (before["memory_per_connection_bytes"], after["memory_per_connection_bytes"])
            if time.monotonic() - start < 0.45 and abs(memory[0] - memory[1]) <= 0.05 * abs(memory[1]):
                break  # at most one move of the rates in between, RSS still
            capsys.readouterr()
        out = capsys.readouterr().out
        assert f"fasthub top · {url} · one process" in out
        cells = row(out, "process")
        assert cells[1] == str(n) == str(after["connections"])
        # ~20 messages/s published into a room of n: the figures of one of the two answers
        assert cells[2] in (rate(before["messages_in_per_s"]), rate(after["messages_in_per_s"]))
        assert cells[3] in (rate(before["messages_out_per_s"]), rate(after["messages_out_per_s"]))
        assert 5 <= float(cells[2]) <= 40 and float(cells[3].replace(",", "")) >= float(cells[2])
        assert cells[4] in (format_bytes(before["bytes_buffered"]), format_bytes(after["bytes_buffered"]))
        assert cells[5] == "0" == str(after["slow_consumer_closes"])
        shown, unit = cells[6].split()
        value = float(shown) * {"B": 1, "KiB": 1024, "MiB": 1024**2}[unit]
        slack = 0.05 * abs(memory[1]) + {"B": 1, "KiB": 1024, "MiB": 0.1 * 1024**2}[unit]  # RSS moved; rounding
        assert min(memory) - slack <= value <= max(memory) + slack, (cells[6], memory)
        sparks = spark_row(out, "process")
        assert len(sparks) == 6 and all(len(s) == 1 and s in BLOCKS for s in sparks[:5])  # one sample each


def test_once_shows_each_node_and_the_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    with serve_cluster({}, CONFIG) as cluster:
        a, b = cluster.nodes  # type: ignore[attr-defined]
        with Traffic([a.ws_url(), a.ws_url(), a.ws_url(), b.ws_url()]):
            url = a.http + "/ws/stats"
            deadline = time.monotonic() + 10
            while sorted(n["connections"] for n in get_stats(url)["cluster"]["nodes"]) != [1, 3]:
                assert time.monotonic() < deadline  # b's counters come with its heartbeat
                time.sleep(0.1)
            assert cli_main(["top", url, "--once"]) == 0
            out = capsys.readouterr().out
        assert "· 2 nodes ·" in out
        a_cells = row(out, f"{get_stats_host_pid(url, a.hub.broker.node_id)}")
        b_cells = row(out, f"{get_stats_host_pid(url, b.hub.broker.node_id)}")
        assert a_cells[0].endswith(" *") and not b_cells[0].endswith(" *")  # a answered
        assert (a_cells[1], b_cells[1]) == ("3", "1")
        total = row(out, "cluster total")
        assert total[1] == "4"
        assert float(total[2]) == pytest.approx(float(a_cells[2]) + float(b_cells[2]), abs=0.11)
        assert total[5] == "0"


def get_stats_host_pid(url: str, node_id: str) -> str:
    node = next(n for n in get_stats(url)["cluster"]["nodes"] if n["node"] == node_id)
    return f"{node['host']}:{node['pid']} {node_id[:6]}"


def closed_port_url() -> str:
    sock = free_socket()  # bound, never listening: connections are refused
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fasthub top: "), err
    return lines[0]


def test_errors_are_one_line_and_exit_1(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTHUB_STATS_TOKEN", raising=False)
    url = closed_port_url()
    assert cli_main(["top", url, "--once"]) == 1
    assert "cannot reach " + url + "/ws/stats" in one_error_line(capsys.readouterr().err)
    with serve({"stats_token": "s3cret"}) as server:
        assert cli_main(["top", server.http, "--once"]) == 1
        assert "401 Unauthorized: the stats need a token (--token or FASTHUB_STATS_TOKEN)" in one_error_line(
            capsys.readouterr().err
        )
        assert cli_main(["top", server.http, "--once", "--token", "nope"]) == 1
        assert "401 Unauthorized: the token was refused" in one_error_line(capsys.readouterr().err)
        assert cli_main(["top", server.http, "--once", "--token", "s3cret"]) == 0
        assert "one process" in capsys.readouterr().out
        monkeypatch.setenv("FASTHUB_STATS_TOKEN", "s3cret")
        assert cli_main(["top", server.http, "--once"]) == 0
        assert row(capsys.readouterr().out, "process")[1] == "0"
        # an answer that is not JSON (the dashboard page), and a path that is not there
        assert cli_main(["top", server.http + "/ws/dashboard", "--once"]) == 1
        assert "did not answer with JSON" in one_error_line(capsys.readouterr().err)
        assert cli_main(["top", server.http + "/ws/nothing-here", "--once"]) == 1
        assert "HTTP 404" in one_error_line(capsys.readouterr().err)


def test_json_that_is_not_stats(capsys: pytest.CaptureFixture[str]) -> None:
    """A server that answers JSON, but not stats (a plain http.server here)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"status": "ok"}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{httpd.server_address[1]}/healthz"
            assert cli_main(["top", url, "--once"]) == 1
            assert "answered JSON without stats" in one_error_line(capsys.readouterr().err)
        finally:
            httpd.shutdown()


def test_the_command_exits_1_on_error() -> None:
    """``python -m fasthub top`` as a process: the exit code and the one line on stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "fasthub", "top", closed_port_url(), "--once"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert "cannot reach" in one_error_line(proc.stderr)
    bad = subprocess.run(
        [sys.executable, "-m", "fasthub", "top", "http://127.0.0.1:1", "--interval", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "must be > 0" in bad.stderr
