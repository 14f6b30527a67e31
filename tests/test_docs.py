"""The docs stay true: ci/doccheck.py's checks under pytest.

One test per marked block of README.md and docs/*.md, and one per walkthrough page (the
convention is at the top of ci/doccheck.py), one for the relative links, and tests that the
mechanism itself reports a failing block, a server that never listens and a bad link, follows a
walkthrough with several servers at once, and skips (or, under FASTHUB_REQUIRE_TOOLS, fails)
a page whose commands are not installed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_doccheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("doccheck", ROOT / "ci" / "doccheck.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["doccheck"] = mod
    spec.loader.exec_module(mod)
    return mod


dc = load_doccheck()
STEPS = dc.all_steps()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    base = tmp_path_factory.mktemp("doccheck")
    yield dc.scratch_copy(base), dc.environment(base)


def test_the_docs_have_marked_blocks() -> None:
    assert len(STEPS) >= 2, "README.md lost its doccheck markers"
    assert "docs/deployment.md:walkthrough" in [s.name for s in STEPS], "the deployment walkthrough is not checked"


@pytest.mark.parametrize("step", STEPS, ids=[s.name for s in STEPS])
def test_marked_block_runs(step: Any, scratch: tuple[Path, dict[str, str]]) -> None:
    work, env = scratch
    try:
        dc.run_step(step, work, env)
    except dc.CheckSkipped as e:
        pytest.skip(str(e))
    except dc.CheckError as e:
        pytest.fail(str(e), pytrace=False)


def test_relative_links_resolve_and_commands_stay_in_the_repo() -> None:
    assert dc.link_errors() == []


def page(tmp: Path, text: str) -> Path:
    """A Markdown page in ``tmp/docs``; ``tmp/work`` is where its blocks run (scripts go in ``tmp``)."""
    (tmp / "docs").mkdir(exist_ok=True)
    (tmp / "work").mkdir(exist_ok=True)
    p = tmp / "docs" / "page.md"
    p.write_text(text)
    return p


def test_a_failing_block_is_reported(tmp_path: Path) -> None:
    p = page(tmp_path, "<!-- doccheck: run -->\n```bash\ntrue\nfalse\necho never\n```\n")
    (step,) = dc.plan(dc.parse_blocks(p))
    with pytest.raises(dc.CheckError, match="exit status 1"):
        dc.run_step(step, tmp_path / "work", dc.environment(tmp_path))


def test_a_server_that_never_listens_is_reported(tmp_path: Path) -> None:
    p = page(
        tmp_path,
        "<!-- doccheck: serve -->\n```bash\nexit 3  # --port 8080\n```\n"
        "<!-- doccheck: run -->\n```bash\ntrue\n```\n",
    )
    (step,) = dc.plan(dc.parse_blocks(p))
    with pytest.raises(dc.CheckError, match=r"server exited \(3\)"):
        dc.run_step(step, tmp_path / "work", dc.environment(tmp_path))


def test_serve_and_run_share_a_free_port(tmp_path: Path) -> None:
    """The serve block's port is replaced in both blocks; the run block reaches that server."""
    serve = 'python3 -m http.server --bind 127.0.0.1 8080'
    p = page(
        tmp_path,
        f"<!-- doccheck: serve -->\n```bash\n{serve}  # port=8080\n```\n\n"
        "<!-- doccheck: run -->\n```bash\ncurl -sf --max-time 5 http://127.0.0.1:8080/ >/dev/null\n```\n",
    )
    (step,) = dc.plan(dc.parse_blocks(p))
    serve_text, run_text = dc.with_port(step, 45678)
    assert "8080" not in serve_text + run_text and "45678" in serve_text and ":45678/" in run_text
    dc.run_step(step, tmp_path / "work", dc.environment(tmp_path))


def test_marking_mistakes_fail(tmp_path: Path) -> None:
    p = page(
        tmp_path,
        "<!-- doccheck: runn -->\n```bash\ntrue\n```\n"
        "<!-- doccheck: run -->\n```json\n{}\n```\n"
        "<!-- doccheck: serve -->\n```bash\nfasthub serve\n```\n",
    )
    steps = dc.plan(dc.parse_blocks(p))
    assert [len(s.errors) for s in steps] == [1, 1, 1]
    assert "unknown marker" in steps[0].errors[0]
    assert "cannot run" in steps[1].errors[0]
    assert "must be followed" in steps[2].errors[0]
    with pytest.raises(dc.CheckError):
        dc.run_step(steps[0], tmp_path / "work", dc.environment(tmp_path))


def test_bad_links_and_shared_commands_are_reported(tmp_path: Path) -> None:
    p = page(
        tmp_path,
        "# Top\n[ok](#top) [missing](../nope.md) [anchor](#nope) [outside](../../x.md)\n"
        "`[in code](ignored.md)`\n```bash\n../shared/loadgen/run.sh\n```\n",
    )
    errors = "\n".join(dc.link_errors([p], root=tmp_path))
    assert "(../nope.md) points at a missing file" in errors
    assert "anchor #nope" in errors
    assert "(../../x.md) points outside the repository" in errors
    assert "uses ../shared/" in errors
    assert "ignored.md" not in errors and "#top" not in errors


WALK = """# A walkthrough
<!-- doccheck: walkthrough 8080 8081 -->

<!-- doccheck: serve 8080 -->
```bash
python3 -m http.server --bind 127.0.0.1 8080
```

<!-- doccheck: file site/note.txt -->
```text
served by 8080, fetched through 8081
```

<!-- doccheck: serve 8081 -->
```bash
cd site && python3 -m http.server --bind 127.0.0.1 8081
```

<!-- doccheck: run -->
```bash
curl -sf --max-time 5 http://127.0.0.1:8081/note.txt | grep -q "served by 8080"   # both ports replaced
curl -sf --max-time 5 -o /dev/null http://127.0.0.1:8080/
sleep 300 &
echo $! > sleeper.pid
```

<!-- doccheck: stop 8080 -->

<!-- doccheck: run -->
```bash
! curl -s --max-time 2 -o /dev/null http://127.0.0.1:8080/      # stopped
kill -0 "$(cat sleeper.pid)"                                       # still running
curl -sf --max-time 5 -o /dev/null http://127.0.0.1:8081/note.txt
```
"""


def test_a_walkthrough_runs_servers_side_by_side_and_stops_everything(tmp_path: Path) -> None:
    p = page(tmp_path, WALK)
    (step,) = dc.plan_page(p)
    assert step.name.endswith("page.md:walkthrough") and step.errors == [] and step.ports == [8080, 8081]
    (tmp_path / "work" / "site").mkdir()
    dc.run_step(step, tmp_path / "work", dc.environment(tmp_path))
    sleeper = int((tmp_path / "work" / "sleeper.pid").read_text())
    deadline = time.monotonic() + 5
    while dc.group_alive(sleeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not dc.group_alive(sleeper), "what a run block left in the background outlived the page"


def test_a_failing_walkthrough_names_the_block_and_shows_the_servers_output(tmp_path: Path) -> None:
    text = WALK.replace("kill -0", "echo the sleeper is fine; false; kill -0")
    p = page(tmp_path, text)
    (step,) = dc.plan_page(p)
    (tmp_path / "work" / "site").mkdir()
    with pytest.raises(dc.CheckError) as info:
        dc.run_step(step, tmp_path / "work", dc.environment(tmp_path))
    msg = str(info.value)
    fence = text.splitlines().index("```bash", text.splitlines().index("<!-- doccheck: stop 8080 -->")) + 1
    assert f"page.md:{fence}: exit status 1" in msg and "the sleeper is fine" in msg
    assert "-- output of " in msg and "GET /note.txt" in msg  # http.server's log of the 8081 server


def test_walkthrough_marking_mistakes_fail(tmp_path: Path) -> None:
    p = page(
        tmp_path,
        "<!-- doccheck: walkthrough 80x -->\n<!-- doccheck: file -->\n```text\nx\n```\n"
        "<!-- doccheck: stop -->\n<!-- doccheck: serve abc -->\n```bash\ntrue\n```\n",
    )
    (step,) = dc.plan_page(p)
    errors = "\n".join(step.errors)
    for expected in ("takes port numbers", "'file' takes one relative path", "'stop' takes one port number",
                     "'serve' takes at most a port number", "without a 'run' block"):
        assert expected in errors
    outside = page(tmp_path, "<!-- doccheck: stop 8080 -->\n<!-- doccheck: file x -->\n```text\nx\n```\n")
    assert ["is for walkthrough pages" in s.errors[0] for s in dc.plan_page(outside)] == [True, True]


def test_a_missing_command_skips_or_fails_under_require(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = page(tmp_path, "<!-- doccheck: needs no-such-command-here -->\n<!-- doccheck: run -->\n```bash\ntrue\n```\n")
    (step,) = dc.plan_page(p)
    monkeypatch.delenv("FASTHUB_REQUIRE_TOOLS", raising=False)
    with pytest.raises(dc.CheckSkipped, match="needs no-such-command-here"):
        dc.run_step(step, tmp_path / "work", dc.environment(tmp_path))
    monkeypatch.setenv("FASTHUB_REQUIRE_TOOLS", "1")
    with pytest.raises(dc.CheckError, match="FASTHUB_REQUIRE_TOOLS is set"):
        dc.run_step(step, tmp_path / "work", dc.environment(tmp_path))
    assert os.environ["FASTHUB_REQUIRE_TOOLS"] == "1"
