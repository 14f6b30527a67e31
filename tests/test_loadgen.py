"""The in-repo load generator and conformance runner (bench/loadgen, bench/autobahn).

Both are copies of the independent referee in ``../shared``. Each README's provenance table
records every copied file's SHA-256 and whether it is a ``copy`` (byte-identical to the referee's)
or a ``modified copy of `<sha256>` `` (ours, changed from the referee's file with that hash; only
the files in ``MODIFIED`` may be). Checked here: the files match the recorded sums (always); the
copies match the referee's files byte for byte and each modified copy's base hash is the referee's
current file (only when ``../shared`` is beside the project; skipped otherwise, which is not a
pass); and the load generator builds with gcc and zlib and runs tiny bounded workloads against
``fasthub serve`` without losing a message, with and without ``--deflate`` (permessage-deflate).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

#: the compiled pass of ci/test runs these; their subject is not the twins (see ci/test)
pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
COPIES = {"loadgen": ROOT / "bench" / "loadgen", "autobahn": ROOT / "bench" / "autobahn"}
OURS = {"README.md", "ruff.toml"}  # written here, not copied
# the copied files we changed on purpose (anything else must stay byte-identical to the referee's)
MODIFIED = {"loadgen": {"loadgen.c", "run.sh"}, "autobahn": set()}
ROW = re.compile(r"^\| `([^`]+)` \| `([0-9a-f]{64})` \|(?: (copy|modified copy of `([0-9a-f]{64})`) \|)?$", re.M)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def provenance(folder: Path) -> dict[str, tuple[str, str | None]]:
    """The provenance table of the folder's README: file -> (sha256 here, the referee's sha256 it
    was modified from, or None for a verbatim copy). A row without a status column is a copy."""
    text = (folder / "README.md").read_text()
    section = text.split("## Provenance", 1)[1]
    return {rel: (digest, base or None) for rel, digest, _status, base in ROW.findall(section)}


def recorded(folder: Path) -> dict[str, str]:
    """The provenance table of the folder's README: file -> sha256."""
    return {rel: digest for rel, (digest, _base) in provenance(folder).items()}


def files_in(folder: Path, skip: set[str]) -> list[str]:
    """Every file under ``folder`` (relative), leaving out ``skip`` and dot/dunder folders such as caches."""
    rels = (p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    return sorted(
        str(r) for r in rels if r.name not in skip and not any(part.startswith((".", "__")) for part in r.parts)
    )


def copied_files(folder: Path) -> list[str]:
    return files_in(folder, OURS)


@pytest.mark.parametrize("name", sorted(COPIES))
def test_copies_match_their_recorded_hashes(name: str) -> None:
    folder = COPIES[name]
    table = recorded(folder)
    assert sorted(table) == copied_files(folder), "every copied file is listed in the README, and only those"
    for rel, digest in table.items():
        assert sha256(folder / rel) == digest, f"bench/{name}/{rel} differs from the hash its README records"
    modified = {rel: base for rel, (_digest, base) in provenance(folder).items() if base}
    assert set(modified) == MODIFIED[name], "only the files we meant to change are recorded as modified copies"
    for rel, base in modified.items():
        assert base != table[rel], f"bench/{name}/{rel} is recorded as modified but has its original hash"


@pytest.mark.parametrize("name", sorted(COPIES))
def test_copies_match_the_referee(name: str) -> None:
    referee = SHARED / name
    if not referee.is_dir():
        pytest.skip(f"{referee} not found: the copy was NOT compared with the referee (drift unchecked)")
    folder = COPIES[name]
    theirs = files_in(referee, {"README.md"})
    assert theirs == copied_files(folder), f"bench/{name} and {referee} hold different files"
    for rel, (_digest, base) in provenance(folder).items():
        if base is None:
            assert sha256(folder / rel) == sha256(referee / rel), f"bench/{name}/{rel} drifted from {referee / rel}"
        else:  # ours is a modified copy: of the referee's current file, and still different from it
            ours, original = folder / rel, referee / rel
            assert sha256(original) == base, f"{original} changed since bench/{name}/{rel} was modified from it"
            assert ours.read_bytes() != original.read_bytes(), f"bench/{name}/{rel} is an unmodified copy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def need_build_tools() -> None:
    """Skip (or fail, under ``FASTHUB_REQUIRE_TOOLS``) without gcc, taskset or zlib's header."""
    missing = [tool for tool in ("gcc", "taskset") if shutil.which(tool) is None]
    if not missing:
        probe = subprocess.run(
            ["gcc", "-E", "-x", "c", "-"], input="#include <zlib.h>\n", capture_output=True, text=True, timeout=30
        )
        if probe.returncode != 0:
            missing.append("zlib.h (apt-get install zlib1g-dev)")
    if missing:
        msg = f"{', '.join(missing)} not found: the load generator was NOT built or run"
        if os.environ.get("FASTHUB_REQUIRE_TOOLS"):
            pytest.fail(f"{msg}; FASTHUB_REQUIRE_TOOLS is set, so this fails instead of skipping")
        pytest.skip(msg)


def run_loadgen(
    tmp_path: Path, loadgen_args: Sequence[str], server_args: Sequence[str] = (), server: Sequence[str] = ()
) -> dict[str, Any]:
    """One bounded ``run.sh fasthub custom:fanout ...`` against ``fasthub serve`` (or ``server``) on
    a free loopback port (run.sh starts and stops it); builds into ``tmp_path/build``. Returns the
    result record."""
    cpus = sorted(os.sched_getaffinity(0))
    env = {
        **os.environ,
        "LOADGEN_BUILD": str(tmp_path / "build"),
        "RESULTS": str(tmp_path / "results.jsonl"),
        "PORT": str(free_port()),
        "SERVER_CPU": str(cpus[0]),
        "LOADGEN_CPU": str(cpus[-1]),
        "RUN_TIMEOUT": "30",
    }
    server = server or [sys.executable, "-m", "fasthub", "serve", "--port", "{PORT}", "--log-level", "warning"]
    cmd = ["bash", "bench/loadgen/run.sh", "fasthub", "custom:fanout", *loadgen_args, "--deadline", "20",
           "--", *server, *server_args]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    rec: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert json.loads((tmp_path / "results.jsonl").read_text().splitlines()[-1]) == rec
    assert rec["server_alive_at_end"], rec
    rec["stderr"] = out.stderr
    return rec


def test_loadgen_builds_and_runs_a_tiny_fanout(tmp_path: Path) -> None:
    """``run.sh`` builds both programs (outside the tree) and measures 20 x 20 deliveries: 0 lost."""
    need_build_tools()
    build = tmp_path / "build"
    rec = run_loadgen(tmp_path, ["-n", "20", "-m", "20"])
    assert (build / "loadgen").is_file() and (build / "limit_server").is_file()
    assert not list((ROOT / "bench" / "loadgen").glob("*.o")), "nothing is built inside the source tree"
    res = rec["result"]
    assert rec["loadgen_rc"] == 0, rec
    assert "error" not in res, res
    assert res["connected"] == 21 and res["failed"] == 0, res
    assert res["expected"] == 400 and res["received"] == 400, res
    assert res["lost"] == 0 and res["gaps"] == 0 and res["dup_or_ooo"] == 0, res
    # without --deflate nothing is offered, so nothing arrives compressed; the wire is still counted
    assert res["deflate"] is False and res["deflate_negotiated"] == 0, res
    assert res["compressed_frames"] == 0 and res["deflate_errors"] == 0, res
    assert res["meas_wire_frames"] == 420 and res["wire_frames"] > 420, res  # 400 deliveries + 20 echoes
    assert res["wire_bytes"] > res["meas_wire_bytes"] > 420 * 60, res


def test_loadgen_deflate_against_fasthub(tmp_path: Path) -> None:
    """``--deflate`` with 400-byte payloads (over the 256-byte threshold): every connection
    negotiates permessage-deflate, every delivery arrives compressed and is inflated and counted
    (0 lost), and costs fewer bytes on the wire than uncompressed; against ``--no-compression`` the
    loadgen says it was not negotiated (exit 4) and nothing arrives compressed."""
    need_build_tools()
    args = ["-n", "20", "-m", "50", "--payload", "400"]
    on = run_loadgen(tmp_path, [*args, "--deflate"])
    res = on["result"]
    assert on["loadgen_rc"] == 0, on
    assert res["connected"] == 21 and res["failed"] == 0, res
    # every connection offers: 20 subscribers and the publisher
    assert res["deflate"] is True and res["deflate_negotiated"] == 21 and res["hs_bad_extension"] == 0, res
    assert res["expected"] == 1000 and res["received"] == 1000 and res["pub_echo"] == 50, res
    assert res["lost"] == 0 and res["gaps"] == 0 and res["dup_or_ooo"] == 0, res
    assert res["deflate_errors"] == 0 and res["compressed_frames"] > 0, res
    assert res["meas_compressed_frames"] == res["meas_wire_frames"] == 1050, res
    # one compression per broadcast: the members' copies are the same bytes, inflated once
    assert res["inflate_reused"] > 0, res
    assert res["inflate_calls"] + res["inflate_reused"] == res["compressed_frames"], res

    off = run_loadgen(tmp_path, [*args, "--deflate"], ["--no-compression"])
    res_off = off["result"]
    assert off["loadgen_rc"] == 4, off
    assert "permessage-deflate negotiated on 0 of 21 connections" in off["stderr"], off["stderr"]
    assert res_off["deflate"] is True and res_off["deflate_negotiated"] == 0, res_off
    assert res_off["compressed_frames"] == 0 and res_off["deflate_errors"] == 0, res_off
    # the run itself still measures, uncompressed: the bytes per delivery can be compared
    assert res_off["received"] == 1000 and res_off["lost"] == 0, res_off
    assert res["wire_bytes_per_delivery"] < 0.5 * res_off["wire_bytes_per_delivery"], (res, res_off)


def test_loadgen_deflate_with_a_server_that_keeps_its_context(tmp_path: Path) -> None:
    """websockets' default permessage-deflate keeps a context per connection: the loadgen follows
    it with one inflater per connection (nothing reused across connections), 0 lost."""
    need_build_tools()
    pytest.importorskip("websockets")
    pytest.importorskip("uvloop")
    peer = [sys.executable, "bench/peers/websockets_hub.py", "--port", "{PORT}", "--compression"]
    rec = run_loadgen(tmp_path, ["-n", "20", "-m", "50", "--payload", "400", "--deflate"], server=peer)
    res = rec["result"]
    assert rec["loadgen_rc"] == 0, rec
    assert res["deflate_negotiated"] == 21 and res["hs_bad_extension"] == 0, res
    assert res["received"] == 1000 and res["lost"] == 0 and res["deflate_errors"] == 0, res
    assert res["compressed_frames"] > 0 and res["inflate_reused"] == 0, res
    assert res["inflate_calls"] == res["compressed_frames"], res
