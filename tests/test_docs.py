"""The docs stay true: ci/doccheck.py's checks under pytest.

One test per marked block of README.md and docs/*.md (the convention is at the top of
ci/doccheck.py), one for the relative links, and tests that the mechanism itself reports a
failing block, a server that never listens and a bad link.
"""

from __future__ import annotations

import importlib.util
import sys
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


@pytest.mark.parametrize("step", STEPS, ids=[s.name for s in STEPS])
def test_marked_block_runs(step: Any, scratch: tuple[Path, dict[str, str]]) -> None:
    work, env = scratch
    try:
        dc.run_step(step, work, env)
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
