"""The source distribution: complete, and installable without a C compiler (the pure twins).

Slow (an sdist build and a fresh venv with the runtime dependencies, about a minute), so marked
``packaging``: ``ci/test`` runs these once, outside its two suite runs
(``pytest -m packaging tests/test_packaging.py``). ``ci/wheel`` covers the compiled wheel.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "ci" / "wheel_smoke.py"

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(900)]


def compiled_sources() -> list[tuple[str, str]]:
    """setup.py's COMPILED list (extension name, source), read without running setup()."""
    text = (ROOT / "setup.py").read_text()
    pairs = re.findall(r'\("(fasthub\.[\w.]+)", "(fasthub/[\w/]+\.(?:py|pyx))"\)', text)
    assert len(pairs) >= 9, pairs
    return pairs


def snapshot(dest: Path) -> Path:
    """The checkout's files as git sees them (tracked, or untracked and not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, (item.decode() for item in listed)):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the build switches, so setup.py takes its defaults."""
    env = {k: v for k, v in os.environ.items() if k not in ("FASTHUB_NO_EXTENSIONS", "FASTHUB_REQUIRE_EXTENSIONS")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("sdist")
    src = snapshot(base / "src")
    out = base / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(src)],
        check=True,
        capture_output=True,
        env=clean_env(),
    )
    (archive,) = out.glob("fasthub-*.tar.gz")
    return archive


def test_sdist_has_the_sources_and_no_generated_c(sdist: Path) -> None:
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    needed = {"README.md", "SECURITY.md", "pyproject.toml", "setup.py", "MANIFEST.in", "fasthub/_ext.py"}
    needed |= {f"fasthub/static/{p.name}" for p in (ROOT / "fasthub" / "static").iterdir() if p.is_file()}
    for name, source in compiled_sources():
        package, module = name.rsplit(".", 1)
        folder = package.replace(".", "/")
        needed.add(source)  # the *_py.py or .pyx Cython compiles
        needed.add(f"{folder}/{module}.pyi")
        pure = f"{folder}/{module.removesuffix('_c')}_py.py"
        needed.add(pure)  # the twin
        if (ROOT / folder / f"{module}.pxd").exists():
            needed.add(f"{folder}/{module}.pxd")
    assert needed - names == set()
    # Cython (a build requirement) regenerates the C; no built module slips in either
    assert [n for n in names if n.endswith((".c", ".so", ".pyd"))] == []


def test_sdist_installs_without_a_c_compiler(sdist: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # CC/CXX=false: every compile command is `false ...`, which fails; setup.py must fall back
    env = clean_env(CC="false", CXX="false")
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "-v", str(sdist)],
        env=env,
        capture_output=True,
        text=True,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]

    count = len(compiled_sources())
    # the build found the (failing) compiler and tried it: one `false ... -c <source>.c` per module
    attempts = re.findall(r"^\s*false .* -c (fasthub/\S+\.c) ", log, re.MULTILINE)
    assert len(attempts) == count, log[-6000:]
    assert len(re.findall(r'building extension "fasthub\.[\w.]+" failed', log)) == count
    # the warning setup.py prints once (pip shows it with -v)
    assert f"fasthub: {count} of {count} compiled modules could not be built" in log
    assert "fasthub: installing the pure-Python twins instead" in log

    site = Path(
        subprocess.run(
            [str(python), "-c", "import fasthub, os; print(os.path.dirname(fasthub.__file__))"],
            cwd=tmp_path,
            env=clean_env(),
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    assert site.is_relative_to(env_dir)
    assert [p.name for p in site.rglob("*") if p.suffix in (".so", ".pyd", ".c")] == []

    # works, pure: compiled() False, serve + connect + join + room message
    smoke = subprocess.run(
        [str(python), str(SMOKE), "--expect", "pure"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    assert "wheel_smoke: ok" in smoke.stdout
