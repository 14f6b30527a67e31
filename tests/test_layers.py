"""The package's structure, checked: layers import downwards only, and private names stay home.

A name with one leading underscore is private to the module that defines it; other modules use
public methods (``Hub.register``, ``Connection.send_payload``, ``Room.member_map``, ...). The
check reads every module's syntax tree: an attribute ``x._name`` (``x`` not ``self``, ``cls`` or
``super()``) or an ``import`` of ``_name`` is an error unless that module defines ``_name``
itself. Private *modules* (``_core``, ``_wire``, ``_ext``) are the layers and may be imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fasthub"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "build" not in p.parts)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_slots(target: ast.expr) -> bool:
    return isinstance(target, ast.Name) and target.id == "__slots__"


def _defined(tree: ast.AST) -> set[str]:
    """Every name the module defines: functions, classes, assigned names and attributes, slots."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Store):
            names.add(node.id if isinstance(node, ast.Name) else node.attr)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.Assign) and any(_is_slots(t) for t in node.targets):
            slots = ast.walk(node.value)
            names.update(e.value for e in slots if isinstance(e, ast.Constant) and isinstance(e.value, str))
    return names


def _is_module(module: Path, level: int, base: str | None, name: str) -> bool:
    """Whether ``from <base> import name`` (relative ``level``) names a module or package of ours."""
    if level:
        folder = module.parent
        for _ in range(level - 1):
            folder = folder.parent
    else:
        folder = PACKAGE.parent
    if base:
        folder = folder.joinpath(*base.split("."))
    return (folder / f"{name}.py").exists() or (folder / name / "__init__.py").exists()


def private_uses(module: Path) -> list[str]:
    tree = ast.parse(module.read_text(), str(module))
    own = _defined(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue
            found.append(f"{module.relative_to(PACKAGE.parent)}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if _private(alias.name) and not _is_module(module, node.level, node.module, alias.name):
                    found.append(f"{module.relative_to(PACKAGE.parent)}:{node.lineno}: import {alias.name}")
    return found


def test_the_check_sees_a_private_name_crossing_modules(tmp_path: Path) -> None:
    """The checker itself: a foreign ``hub._deliver`` and an imported ``_HANDSHAKE`` are found."""
    sample = PACKAGE / "server" / "_layers_sample.py"
    sample.write_text(
        "from .protocol import _HANDSHAKE\n"
        "def f(hub, conn):\n"
        "    conn._ok = 1\n"
        "    return hub._deliver(conn._ok), _HANDSHAKE\n"
    )
    try:
        assert private_uses(sample) == [
            "fasthub/server/_layers_sample.py:1: import _HANDSHAKE",
            "fasthub/server/_layers_sample.py:4: ._deliver",
        ]
    finally:
        sample.unlink()


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_crosses_modules(module: Path) -> None:
    assert private_uses(module) == []


def _imports(module: Path) -> set[str]:
    """Absolute names of the fasthub modules ``module`` imports (relative imports resolved)."""
    tree = ast.parse(module.read_text())
    package = ".".join(module.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {n for n in out if n.startswith("fasthub")}


@pytest.mark.parametrize("layer", ["_wire", "_core"])
def test_engine_and_core_do_not_import_the_layers_above(layer: str) -> None:
    """``_wire`` and ``_core`` know nothing of the hub, the dispatcher or the server."""
    above = ("fasthub.hub", "fasthub.dispatch", "fasthub.server", "fasthub.broker", "fasthub.room")
    for module in (PACKAGE / layer).glob("*.py"):
        bad = sorted(n for n in _imports(module) if n.startswith(above))
        assert bad == [], f"{module.name} imports {bad}"


def test_the_readme_layout_names_every_module() -> None:
    """The README's Layout block matches the tree: every package, module and folder is named."""
    readme = (PACKAGE.parent / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    named = set(block.replace(",", " ").replace("(", " ").replace(")", " ").split())
    missing = []
    for entry in sorted(PACKAGE.iterdir()):
        if entry.name.startswith("__") or entry.suffix in (".c", ".so") or entry.name == "py.typed":
            continue
        if entry.is_dir() and not (entry / "__init__.py").exists() and entry.name != "static":
            continue
        name = entry.name + "/" if entry.is_dir() else entry.name
        if name not in named:
            missing.append(name)
    for module in sorted((PACKAGE / "server").glob("*.py")):
        if module.name != "__init__.py" and module.name not in named:
            missing.append(f"server/{module.name}")
    for folder in ("bench/", "docs/", "tests/"):
        if folder not in named:
            missing.append(folder)
    assert missing == []
