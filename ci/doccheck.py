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

**Walkthrough pages.** A page with the line ``<!-- doccheck: walkthrough PORT... -->`` is one
check that follows it from top to bottom, as a reader in a shell would (``--list`` names it
``page:walkthrough``); each listed port number is replaced by a free port in every block of the page:

    <!-- doccheck: serve [PORT] -->  start the block in the background ("in another terminal") and
                                     wait until PORT (default: as for serve above) accepts; it keeps
                                     running until the page ends or a `stop PORT` line
    <!-- doccheck: run -->           run the block (60 s at most); what it leaves running in the
                                     background (`cmd &`) keeps running until the page ends
    <!-- doccheck: file PATH -->     write the block (any language) to PATH in the work directory
    <!-- doccheck: stop PORT -->     (a line of its own) Ctrl-C the server of PORT: SIGINT to its
                                     process group, SIGKILL after 10 s

When the page ends or a block fails, whatever still runs gets SIGTERM (SIGKILL after 10 s), the
last started first. ``<!-- doccheck: needs CMD... -->`` (any page): its checks are skipped when a
command is not installed, and fail instead when ``FASTHUB_REQUIRE_TOOLS`` is set (``ci/test``).

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
MARKER = re.compile(r"^<!--\s*doccheck:\s*(\w+)((?:\s+[^\s>]+)*)\s*-->$")
#: markers that stand on a line of their own (not above a block)
DIRECTIVES = {"walkthrough", "needs", "stop"}
#: the Debian package of a command a page may need (the hint when it is missing)
PACKAGES = {"nginx": "nginx-light", "prometheus": "prometheus", "promtool": "prometheus",
            "redis-server": "redis-server", "openssl": "openssl"}
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
    mark: str | None  # run, serve, file, or None (not run)
    text: str
    args: list[str] = field(default_factory=list)  # the marker's words after its name

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
        if mm and mm.group(1) in DIRECTIVES:
            mm = None
        text = "\n".join(lines[i + 1 : j]) + "\n"
        blocks.append(Block(path, i + 1, lang, mm.group(1) if mm else None, text, mm.group(2).split() if mm else []))
        i = j + 1
    return blocks


@dataclass
class Directive:
    """A marker on a line of its own: ``walkthrough``, ``needs`` or ``stop``."""

    path: Path
    line: int
    name: str
    args: list[str]

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path}:{self.line}"


def parse_directives(path: Path) -> list[Directive]:
    """The page's directive markers (outside fenced blocks), in order."""
    out = []
    prose = re.sub(r"(?ms)^ {0,3}```.*?^ {0,3}```", lambda m: "\n" * m.group(0).count("\n"), path.read_text())
    for n, line in enumerate(prose.splitlines(), 1):
        m = MARKER.match(line.strip())
        if m and m.group(1) in DIRECTIVES:
            out.append(Directive(path, n, m.group(1), m.group(2).split()))
    return out


@dataclass
class Step:
    """One check: a `run` block, or a `serve` block with the `run` block it serves."""

    run: Block
    serve: Block | None = None
    errors: list[str] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)  # commands that must be installed
    #: a walkthrough page: its marked blocks and ``stop`` lines in order, and its port numbers
    walk: list[Block | Directive] | None = None
    ports: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        if self.walk is not None:
            return f"{self.run.where.rpartition(':')[0]}:walkthrough"
        return self.run.where if self.serve is None else f"{self.serve.where}+{self.run.line}"


def plan_page(path: Path) -> list[Step]:
    """The checks of one page: its steps, or one walkthrough; its ``needs`` apply to each."""
    blocks = parse_blocks(path)
    directives = parse_directives(path)
    needs = [name for d in directives if d.name == "needs" for name in d.args]
    walk = [d for d in directives if d.name == "walkthrough"]
    steps = plan_walkthrough(blocks, directives, walk[0]) if walk else plan(blocks)
    for d in directives:
        if d.name == "stop" and not walk:
            steps.append(Step(Block(path, d.line, "", None, ""), None,
                              [f"{d.where}: 'stop' is for walkthrough pages"]))
    for step in steps:
        step.needs = needs
    return steps


def plan_walkthrough(blocks: list[Block], directives: list[Directive], head: Directive) -> list[Step]:
    """A walkthrough page as one step (see the module doc); marking mistakes fail it."""
    items: list[Block | Directive] = [b for b in blocks if b.mark is not None]
    items += [d for d in directives if d.name == "stop"]
    items.sort(key=lambda item: item.line)
    errors = []
    ports = []
    for word in head.args:
        if word.isdigit():
            ports.append(int(word))
        else:
            errors.append(f"{head.where}: 'walkthrough' takes port numbers, not {word!r}")
    for item in items:
        if isinstance(item, Directive):
            if len(item.args) != 1 or not item.args[0].isdigit():
                errors.append(f"{item.where}: 'stop' takes one port number")
            continue
        if item.mark not in ("run", "serve", "file"):
            errors.append(f"{item.where}: unknown marker 'doccheck: {item.mark}' (run, serve or file)")
        elif item.mark == "file":
            if len(item.args) != 1 or item.args[0].startswith("/") or ".." in item.args[0].split("/"):
                errors.append(f"{item.where}: 'file' takes one relative path inside the work directory")
        elif item.lang not in RUNNABLE:
            errors.append(f"{item.where}: a ```{item.lang or '(no language)'} block cannot run (bash, sh or python)")
        elif item.mark == "serve" and (len(item.args) > 1 or (item.args and not item.args[0].isdigit())):
            errors.append(f"{item.where}: 'serve' takes at most a port number")
        elif item.mark == "run" and item.args:
            errors.append(f"{item.where}: 'run' takes no argument in a walkthrough")
    if not any(isinstance(i, Block) and i.mark == "run" for i in items):
        errors.append(f"{head.where}: a walkthrough without a 'run' block")
    first = Block(head.path, head.line, "", None, "")
    return [Step(first, None, errors, walk=items, ports=ports)]


def plan(blocks: list[Block]) -> list[Step]:
    """Pair each `serve` block with the next marked block; a marking mistake becomes a failing step."""
    steps: list[Step] = []
    marked = [b for b in blocks if b.mark is not None]
    i = 0
    while i < len(marked):
        b = marked[i]
        bad = []
        if b.mark == "file":
            bad.append(f"{b.where}: 'file' is for walkthrough pages")
        elif b.mark not in ("run", "serve"):
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


class CheckSkipped(Exception):
    """A check that cannot run here: a command it needs is not installed."""


def check_needs(step: Step, env: dict[str, str]) -> None:
    missing = [name for name in step.needs if shutil.which(name, path=env.get("PATH")) is None]
    if not missing:
        return
    install = " ".join(sorted({PACKAGES.get(name, name) for name in missing}))
    msg = f"{step.name}: needs {', '.join(missing)}, not installed (as root: apt-get install {install}; ci/test does)"
    if os.environ.get("FASTHUB_REQUIRE_TOOLS"):
        raise CheckError(f"{msg}; FASTHUB_REQUIRE_TOOLS is set, so this fails instead of skipping")
    raise CheckSkipped(msg)


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


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """End the block's process group (what it left in the background too): ``sig``, then
    SIGKILL to what is left after 10 s."""
    with_group(proc, sig)
    deadline = time.monotonic() + 10
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if group_alive(proc.pid):
        with_group(proc, signal.SIGKILL)
    proc.wait(5)


def with_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)  # the block's process group only (it was started in a new session)


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies, which nothing may reap, do not count)."""
    try:
        names = os.listdir("/proc")
    except OSError:  # no /proc: ask the kernel (a zombie counts then)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def run_block(block: Block, text: str, work: Path, env: dict[str, str],
              keep: bool = False) -> subprocess.Popen[bytes] | None:
    """Run one block to its end; its output goes to a log file (so a command it leaves in the
    background does not hold it open). ``keep``: return the block's process when something it
    started still runs (a walkthrough stops it later), else end that at once."""
    log = work.parent / f"doccheck-run-{block.line}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command(block, text, work, "run"), cwd=work, env=env, start_new_session=True,
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop(proc)
        msg = f"{block.where}: still running after {RUN_TIMEOUT:.0f} s\n{log.read_text(errors='replace')}"
        raise CheckError(msg) from None
    finally:
        if proc.returncode is None or not keep:
            stop(proc)
    if proc.returncode != 0:
        stop(proc)
        raise CheckError(f"{block.where}: exit status {proc.returncode}\n{log.read_text(errors='replace')}")
    return proc if keep and group_alive(proc.pid) else None


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
    """Run one step in the scratch copy ``work``; raises CheckError with the output on failure
    (CheckSkipped when a command it needs is missing)."""
    if step.errors:
        raise CheckError("\n".join(step.errors))
    check_needs(step, env)
    if step.walk is not None:
        run_walkthrough(step, work, env)
        return
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


def serve_port(block: Block) -> tuple[int, str]:
    """The port a ``serve`` block listens on, and its text (``--port 8080`` appended to a bash
    block that names none)."""
    if block.args:
        return int(block.args[0]), block.text
    m = PORT_IN_TEXT.search(block.text)
    if m:
        return int(m.group(1) or m.group(2)), block.text
    if block.lang == "python":
        raise CheckError(f"{block.where}: a 'serve' python block must name its port (port=N)")
    return 8080, block.text.rstrip("\n") + " --port 8080\n"


def run_walkthrough(step: Step, work: Path, env: dict[str, str]) -> None:
    """Follow a walkthrough page (see the module doc)."""
    assert step.walk is not None
    ports = {old: free_port() for old in step.ports}
    running: list[tuple[int, subprocess.Popen[bytes], Path, str]] = []  # port (0: none), process, log, where

    def sub(text: str) -> str:
        if not ports:
            return text
        pat = re.compile(r"(?<![\d.])(" + "|".join(str(p) for p in ports) + r")(?!\d)")
        return pat.sub(lambda m: str(ports[int(m.group(1))]), text)

    def logs() -> str:
        return "".join(f"\n-- output of {where}:\n{log.read_text(errors='replace')}" for _, _, log, where in running)

    try:
        for item in step.walk:
            if isinstance(item, Directive):  # stop PORT: Ctrl-C
                port = int(item.args[0])
                for entry in running:
                    if entry[0] == port:
                        stop(entry[1], signal.SIGINT)
                        running.remove(entry)
                        break
                else:
                    raise CheckError(f"{item.where}: no server of port {port} is running")
            elif item.mark == "file":
                dest = work / item.args[0]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(sub(item.text))
            elif item.mark == "serve":
                port, text = serve_port(item)
                if port not in ports:
                    ports[port] = free_port()
                log = work.parent / f"doccheck-serve-{item.line}.log"
                with log.open("wb") as out:
                    proc = subprocess.Popen(
                        command(item, sub(text), work, "serve"), cwd=work, env=env, start_new_session=True,
                        stdout=out, stderr=subprocess.STDOUT,
                    )
                running.append((port, proc, log, item.where))
                wait_port(ports[port], proc, log, item.where)
            else:
                left = run_block(item, sub(item.text), work, env, keep=True)
                if left is not None:
                    running.append((0, left, work.parent / f"doccheck-run-{item.line}.log", item.where))
    except CheckError as e:
        raise CheckError(f"{e}{logs()}") from None
    finally:
        for _, proc, _, _ in reversed(running):
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
    return [step for p in block_files(root) for step in plan_page(p)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--list", action="store_true", help="list the fenced blocks and their markers")
    ap.add_argument("--links", action="store_true", help="only check links and paths")
    args = ap.parse_args(argv)
    if args.list:
        for p in link_files():
            directives = parse_directives(p)
            for d in directives:
                if d.name in ("walkthrough", "needs"):
                    print(f"{d.where:28} {'-':8} {d.name} {' '.join(d.args)}")
            items: list[Block | Directive] = [*parse_blocks(p), *(d for d in directives if d.name == "stop")]
            for item in sorted(items, key=lambda i: i.line):
                if isinstance(item, Directive):
                    print(f"{item.where:28} {'-':8} stop {' '.join(item.args)}")
                    continue
                state = item.mark or ("not run" if p in block_files() else "not run (links only)")
                print(f"{item.where:28} {item.lang or '-':8} {' '.join([state, *item.args])}")
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
                except CheckSkipped as e:
                    print(f"skip {e}")
                except CheckError as e:
                    print(f"FAIL {e}")
                    failed += 1
        print(f"doccheck: {len(steps)} marked block checks, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
