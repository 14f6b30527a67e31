"""The in-repo load generator and conformance runner (bench/loadgen, bench/autobahn).

Both are copies of the independent referee in ``../shared``. Checked here: the copies still match
the SHA-256 sums their READMEs record (always), they match the referee's files (only when
``../shared`` is beside the project; skipped otherwise, which is not a pass), and the load
generator builds with gcc and runs a tiny bounded workload against ``fasthub serve`` without
losing a message.
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
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
COPIES = {"loadgen": ROOT / "bench" / "loadgen", "autobahn": ROOT / "bench" / "autobahn"}
OURS = {"README.md", "ruff.toml"}  # written here, not copied


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recorded(folder: Path) -> dict[str, str]:
    """The provenance table of the folder's README: file -> sha256."""
    text = (folder / "README.md").read_text()
    section = text.split("## Provenance", 1)[1]
    return dict(re.findall(r"^\| `([^`]+)` \| `([0-9a-f]{64})` \|$", section, re.M))


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


@pytest.mark.parametrize("name", sorted(COPIES))
def test_copies_match_the_referee(name: str) -> None:
    referee = SHARED / name
    if not referee.is_dir():
        pytest.skip(f"{referee} not found: the copy was NOT compared with the referee (drift unchecked)")
    folder = COPIES[name]
    theirs = files_in(referee, {"README.md"})
    assert theirs == copied_files(folder), f"bench/{name} and {referee} hold different files"
    for rel in theirs:
        assert sha256(folder / rel) == sha256(referee / rel), f"bench/{name}/{rel} drifted from {referee / rel}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_loadgen_builds_and_runs_a_tiny_fanout(tmp_path: Path) -> None:
    """``run.sh`` builds both programs (outside the tree) and measures 20 x 20 deliveries: 0 lost."""
    for tool in ("gcc", "taskset"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: the load generator was NOT built or run")
    cpus = sorted(os.sched_getaffinity(0))
    build = tmp_path / "build"
    env = {
        **os.environ,
        "LOADGEN_BUILD": str(build),
        "RESULTS": str(tmp_path / "results.jsonl"),
        "PORT": str(free_port()),
        "SERVER_CPU": str(cpus[0]),
        "LOADGEN_CPU": str(cpus[-1]),
        "RUN_TIMEOUT": "30",
    }
    cmd = ["bash", "bench/loadgen/run.sh", "fasthub", "custom:fanout", "-n", "20", "-m", "20", "--deadline", "20",
           "--", sys.executable, "-m", "fasthub", "serve", "--port", "{PORT}", "--log-level", "warning"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    assert (build / "loadgen").is_file() and (build / "limit_server").is_file()
    assert not list((ROOT / "bench" / "loadgen").glob("*.o")), "nothing is built inside the source tree"
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    res = rec["result"]
    assert rec["loadgen_rc"] == 0 and rec["server_alive_at_end"], rec
    assert "error" not in res, res
    assert res["connected"] == 21 and res["failed"] == 0, res
    assert res["expected"] == 400 and res["received"] == 400, res
    assert res["lost"] == 0 and res["gaps"] == 0 and res["dup_or_ooo"] == 0, res
    assert json.loads((tmp_path / "results.jsonl").read_text().splitlines()[-1]) == rec
