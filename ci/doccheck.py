#!/usr/bin/env python3
"""Check that the docs stay true: their marked commands run, and their relative links resolve.

    .venv/bin/python ci/doccheck.py            run every marked block, check every link
    .venv/bin/python ci/doccheck.py --list     show the fenced blocks and how each is marked
    .venv/bin/python ci/doccheck.py --links    only the links

tests/test_docs.py runs the same checks under pytest (one test per marked block).

**Which blocks run.** Only fenced blocks (```bash or ```python) of README.md and docs/*.md whose
nearest non-blank line above the opening fence is a marker comment (invisible on GitHub):

    <!-- doccheck: run -->       run the block; it must exit 0 within 60 s
                                 (```bash: as a `bash -euo pipefail` script; ```python: as a script)
    <!-- doccheck: serve -->     the block starts a long-running server (one command): it is started
                                 in the background, the check waits (up to 30 s) until its port
                                 accepts TCP connections, runs the NEXT marked block (which must be
                                 `run`) against it, then stops the server (SIGTERM to its process
                                 group, SIGKILL after 10 s). The port is the block's `--port N` or
                                 `port=N` (a bash block without one gets `--port` appended: fasthub's
                                 default, 8080, is the N); N is replaced by a free port in both blocks.

Unmarked blocks are not run (install commands, benchmarks, fragments); `--list` shows them.

**Where they run.** In a scratch copy of the repository (the files git tracks plus untracked files
not ignored, as a fresh clone would have them, with ``.venv`` linked to the real one), with the
directory of the Python running this script first on PATH (so ``fasthub`` is the installed
command, as in an activated venv) and HOME and TMPDIR inside the scratch directory. Python blocks
run with that same Python.

**Links and paths.** Every relative link ``[text](target)`` in README.md, SECURITY.md, docs/*.md
and bench/**/README.md must point at a file or folder inside the repository, and a ``#anchor``
into a Markdown file at one of its headings (GitHub's slugs). No fenced block of those files may
use ``../shared/``: commands must work from a clone of this repository alone (the independent
referee in ../shared may be named in prose).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 60.0
SERVE_WAIT = 30.0
MARKER = re.compile(r"^<!--\s*doccheck:\s*(\w+)\s*-->$")
FENCE = re.compile(r"^ {0,3}(`{3,})\s*([\w+-]*)")
RUNNABLE = {"bash", "sh", "python"}


def block_files(root: Path = ROOT) -> list[Path]:
    """The pages whose marked blocks run."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def link_files(root: Path = ROOT) -> list[Path]:
    """The pages whose links and blocks are checked."""
    extra = [root / "SECURITY.md", *sorted((root / "bench").glob("**/README.md"))]
    return [*block_files(root), *(p for p in extra if p.is_file())]


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    mark: str | None  # run, serve, or None (not run)
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path}:{self.line}"


def parse_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, with the doccheck marker above it (if any)."""
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        ticks, lang = m.group(1), m.group(2).lower()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(ticks):
            j += 1
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        mm = MARKER.match(lines[k].strip()) if k >= 0 else None
        blocks.append(Block(path, i + 1, lang, mm.group(1) if mm else None, "\n".join(lines[i + 1 : j]) + "\n"))
        i = j + 1
    return blocks


@dataclass
class Step:
    """One check: a `run` block, or a `serve` block with the `run` block it serves."""

    run: Block
    serve: Block | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.run.where if self.serve is None else f"{self.serve.where}+{self.run.line}"


def plan(blocks: list[Block]) -> list[Step]:
    """Pair each `serve` block with the next marked block; a marking mistake becomes a failing step."""
    steps: list[Step] = []
    marked = [b for b in blocks if b.mark is not None]
    i = 0
    while i < len(marked):
        b = marked[i]
        bad = []
        if b.mark not in ("run", "serve"):
            bad.append(f"{b.where}: unknown marker 'doccheck: {b.mark}' (run or serve)")
        elif b.lang not in RUNNABLE:
            bad.append(f"{b.where}: a ```{b.lang or '(no language)'} block cannot run (bash, sh or python)")
        if b.mark == "serve" and not bad:
            nxt = marked[i + 1] if i + 1 < len(marked) else None
            if nxt is None or nxt.mark != "run" or nxt.path != b.path or nxt.lang not in RUNNABLE:
                bad.append(f"{b.where}: a 'serve' block must be followed by a runnable 'run' block in the same file")
            else:
                steps.append(Step(nxt, b))
                i += 2
                continue
        steps.append(Step(b, None, bad))
        i += 1
    return steps


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


PORT_IN_TEXT = re.compile(r"--port[ =](\d+)|\bport=(\d+)")


def with_port(step: Step, port: int) -> tuple[str, str]:
    """The serve and run blocks' text with the serve block's port replaced by ``port``."""
    assert step.serve is not None
    serve, run = step.serve.text, step.run.text
    m = PORT_IN_TEXT.search(serve)
    if m:
        old = m.group(1) or m.group(2)
    else:
        if step.serve.lang == "python":
            raise CheckError(f"{step.serve.where}: a 'serve' python block must name its port (port=N)")
        old = "8080"
        serve = serve.rstrip("\n") + f" --port {port}\n"
    pat = re.compile(rf"(?<![\d.]){re.escape(old)}(?!\d)")
    return pat.sub(str(port), serve), pat.sub(str(port), run)


class CheckError(Exception):
    pass


def scratch_copy(dest: Path, root: Path = ROOT) -> Path:
    """A copy of the repository as a clone would have it (tracked + untracked-not-ignored files)."""
    work = dest / "repo"
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root, capture_output=True, check=True,
        ).stdout.decode()
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but caches
        names = [
            str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and not any(part.startswith((".", "__")) or part == "build" for part in
                                       p.relative_to(root).parts)
        ]
    for name in names:
        src = root / name
        if not src.is_file():  # deleted in the work tree
            continue
        dst = work / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    if (root / ".venv").exists():
        (work / ".venv").symlink_to(root / ".venv")
    return work


def environment(scratch: Path) -> dict[str, str]:
    home, tmp = scratch / "home", scratch / "tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(HOME=str(home), TMPDIR=str(tmp), PYTHONDONTWRITEBYTECODE="1")
    return env


def command(block: Block, text: str, work: Path, tag: str) -> list[str]:
    script = work.parent / f"doccheck-{tag}-{block.line}.{'py' if block.lang == 'python' else 'sh'}"
    if block.lang == "python":
        script.write_text(text)
        return [sys.executable, str(script)]
    script.write_text("set -euo pipefail\n" + text)
    return ["bash", str(script)]


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End the block's process group (what it left in the background too)."""
    with_group(proc, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with_group(proc, signal.SIGKILL)
        proc.wait(5)


def with_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)  # the block's process group only (it was started in a new session)


def run_block(block: Block, text: str, work: Path, env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        command(block, text, work, "run"), cwd=work, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop(proc)
        out, _ = proc.communicate()
        msg = f"{block.where}: still running after {RUN_TIMEOUT:.0f} s\n{out.decode(errors='replace')}"
        raise CheckError(msg) from None
    finally:
        stop(proc)
    if proc.returncode != 0:
        raise CheckError(f"{block.where}: exit status {proc.returncode}\n{out.decode(errors='replace')}")


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, where: str) -> None:
    deadline = time.monotonic() + SERVE_WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CheckError(f"{where}: the server exited ({proc.returncode}) before it listened\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise CheckError(f"{where}: nothing listened on port {port} after {SERVE_WAIT:.0f} s\n{log.read_text()}")


def run_step(step: Step, work: Path, env: dict[str, str]) -> None:
    """Run one step in the scratch copy ``work``; raises CheckError with the output on failure."""
    if step.errors:
        raise CheckError("\n".join(step.errors))
    if step.serve is None:
        run_block(step.run, step.run.text, work, env)
        return
    port = free_port()
    serve_text, run_text = with_port(step, port)
    log = work.parent / f"doccheck-serve-{step.serve.line}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command(step.serve, serve_text, work, "serve"), cwd=work, env=env, start_new_session=True,
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_port(port, proc, log, step.serve.where)
        try:
            run_block(step.run, run_text, work, env)
        except CheckError as e:
            raise CheckError(f"{e}\n-- server output ({step.serve.where}):\n{log.read_text()}") from None
    finally:
        stop(proc)


GITHUB_DROP = re.compile(r"[^\w\- ]")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip()).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return GITHUB_DROP.sub("", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    text = re.sub(r"(?ms)^ {0,3}```.*?^ {0,3}```", "", path.read_text())
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        s = slug(m.group(1))
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def link_errors(paths: list[Path] | None = None, root: Path = ROOT) -> list[str]:
    """Relative links that point at nothing, and fenced blocks that use ../shared."""
    errors = []
    for path in paths or link_files(root):
        rel = path.relative_to(root)
        for b in parse_blocks(path):
            if "../shared/" in b.text:
                errors.append(f"{rel}:{b.line}: a command block uses ../shared/ (use the in-repo copy)")
        text = path.read_text()
        prose = re.sub(r"(?ms)^ {0,3}```.*?^ {0,3}```", lambda m: "\n" * m.group(0).count("\n"), text)
        prose = re.sub(r"`[^`\n]*`", lambda m: " " * len(m.group(0)), prose)
        for m in LINK.finditer(prose):
            target = m.group(1)
            line = prose.count("\n", 0, m.start()) + 1
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{rel}:{line}: ({target})"
            if not dest.is_relative_to(root.resolve()):
                errors.append(f"{where} points outside the repository")
            elif not dest.exists():
                errors.append(f"{where} points at a missing file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                errors.append(f"{where}: no heading of {dest.relative_to(root.resolve())} has the anchor #{anchor}")
    return errors


def all_steps(root: Path = ROOT) -> list[Step]:
    return plan([b for p in block_files(root) for b in parse_blocks(p)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--list", action="store_true", help="list the fenced blocks and their markers")
    ap.add_argument("--links", action="store_true", help="only check links and paths")
    args = ap.parse_args(argv)
    if args.list:
        for p in link_files():
            for b in parse_blocks(p):
                state = b.mark or ("not run" if p in block_files() else "not run (links only)")
                print(f"{b.where:28} {b.lang or '-':8} {state}")
        return 0
    failed = 0
    for e in link_errors():
        print(f"FAIL {e}")
        failed += 1
    if not args.links:
        steps = all_steps()
        with tempfile.TemporaryDirectory(prefix="doccheck-") as tmp:
            work = scratch_copy(Path(tmp))
            env = environment(Path(tmp))
            for step in steps:
                try:
                    run_step(step, work, env)
                    print(f"ok   {step.name}")
                except CheckError as e:
                    print(f"FAIL {e}")
                    failed += 1
        print(f"doccheck: {len(steps)} marked block checks, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
