"""Which twin is live, and the constants the compiled modules redeclare."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fasthub._ext as ext
import fasthub._wire as wire
from fasthub._ext import LIVE, NO_EXTENSIONS
from fasthub._wire import codes
from fasthub._wire.exceptions import InvalidState, ProtocolError, WireError

WIRE_DIR = Path(wire.__file__).parent
ROOT = WIRE_DIR.parent.parent

#: every module fasthub.compiled(detail=True) reports
LIVE_KEYS = {
    *wire.TWINS,
    "fasthub._core.outbox_c",
    "fasthub._core.conn_c",
    "fasthub._core.relay_c",
    "fasthub._core.streams_c",
    "fasthub._core.limits_c",
    "fasthub._core.sockio_c",
    "fasthub._core.reactor_c",
    "fasthub._core.splice_c",
}

#: FASTHUB_NO_EXTENSIONS values -> pure twins?
FLAG_VALUES = {
    "": False,
    "0": False,
    " 0 ": False,
    "false": False,
    "False": False,
    "NO": False,
    "off": False,
    "1": True,
    "yes": True,
    "true": True,
    "2": True,
    "pure": True,
}


@pytest.mark.skipif(NO_EXTENSIONS, reason="FASTHUB_NO_EXTENSIONS is set")
def test_compiled_twins_are_live_when_built() -> None:
    built = [name for name in wire.TWINS if importlib.util.find_spec(name) is not None]
    if not built:
        pytest.skip("extensions not built")
    for name in wire.TWINS:
        assert LIVE[name] is (name in built), name
    if "fasthub._wire.protocol_c" in built:
        assert wire.ServerProtocol is importlib.import_module("fasthub._wire.protocol_c").ServerProtocol
    if "fasthub._wire.frames_c" in built:
        assert wire.build_frame is importlib.import_module("fasthub._wire.frames_c").build_frame


@pytest.mark.skipif(not NO_EXTENSIONS, reason="FASTHUB_NO_EXTENSIONS is not set")
def test_no_extensions_uses_pure_twins() -> None:
    assert not any(LIVE[name] for name in wire.TWINS)
    assert wire.ServerProtocol.__module__ == "fasthub._wire.protocol_py"


def test_no_extensions_env_selects_pure_twins() -> None:
    code = (
        "import fasthub._wire as w, fasthub._ext as e;"
        "assert w.ServerProtocol.__module__ == 'fasthub._wire.protocol_py', w.ServerProtocol;"
        "assert w.build_frame.__module__ == 'fasthub._wire.frames_py';"
        "assert not any(e.LIVE[k] for k in w.TWINS), e.LIVE"
    )
    env = {**os.environ, "FASTHUB_NO_EXTENSIONS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=WIRE_DIR.parent.parent)


@pytest.mark.parametrize("pxd", ["protocol_c.pxd", "frames_c.pxd"])
def test_pxd_constants_match_codes(pxd: str) -> None:
    """The .pxd files redeclare opcodes and states as C enums; they must equal codes.py."""
    text = (WIRE_DIR / pxd).read_text()
    declared = dict(re.findall(r"^\s+((?:OP_|OPEN|CLOSING|CLOSED)\w*) = (0x[0-9A-Fa-f]+|\d+)", text, re.M))
    assert declared
    for name, value in declared.items():
        assert getattr(codes, name) == int(value, 0), name


def test_public_api() -> None:
    assert (wire.OP_CONT, wire.OP_TEXT, wire.OP_BINARY) == (0, 1, 2)
    assert (wire.OP_CLOSE, wire.OP_PING, wire.OP_PONG) == (8, 9, 10)
    assert (wire.OPEN, wire.CLOSING, wire.CLOSED) == (1, 2, 3)
    assert int(wire.CloseCode.MESSAGE_TOO_BIG) == 1009
    assert int(wire.CloseCode.NO_STATUS) == 1005
    assert wire.build_frame(wire.OP_TEXT, b"hi") == b"\x81\x02hi"
    assert wire.build_header(wire.OP_BINARY, 70000) == b"\x82\x7f" + (70000).to_bytes(8, "big")
    assert wire.build_close(1000) == b"\x88\x02\x03\xe8"
    assert wire.apply_mask(b"\x00\x00\x00\x00\x00", b"abcd") == b"abcda"
    assert wire.is_valid_utf8("€".encode())
    p = wire.ServerProtocol(max_message_size=10)
    assert p.max_message_size == 10
    assert p.state == wire.OPEN
    for name in wire.__all__:
        assert hasattr(wire, name), name


def test_exceptions() -> None:
    exc = ProtocolError(1002, "reserved opcode")
    assert (exc.code, exc.reason, str(exc)) == (1002, "reserved opcode", "1002: reserved opcode")
    assert isinstance(exc, WireError)
    assert issubclass(InvalidState, AssertionError)
    assert issubclass(InvalidState, WireError)


def test_pure_twins_work_without_cython() -> None:
    """A pure-Python install has no Cython at run time: the twins fall back to _nocython."""
    code = (
        "import sys; sys.modules['cython'] = None\n"
        "from fasthub._wire import protocol_py, frames_py\n"
        "from fasthub._wire.testing import encode_frame\n"
        "p = protocol_py.ServerProtocol()\n"
        "p.receive_data(encode_frame(1, b'hi') + encode_frame(9, b'x'))\n"
        "assert p.events_received() == [(1, b'hi'), (9, b'x')], 'events'\n"
        "assert p.data_to_send() == [b'\\x8a\\x01x'], 'writes'\n"
        "assert frames_py.cython.__name__ == 'fasthub._wire._nocython'\n"
    )
    env = {**os.environ, "FASTHUB_NO_EXTENSIONS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=WIRE_DIR.parent.parent)


@pytest.mark.parametrize(("value", "pure"), FLAG_VALUES.items())
def test_no_extensions_values(value: str, pure: bool) -> None:
    assert ext.no_extensions({"FASTHUB_NO_EXTENSIONS": value}) is pure
    assert ext.env_flag("FASTHUB_REQUIRE_EXTENSIONS", {"FASTHUB_REQUIRE_EXTENSIONS": value}) is pure


def test_no_extensions_unset() -> None:
    assert ext.no_extensions({}) is False
    assert ext.no_extensions({"OTHER": "1"}) is False
    assert ext.NO_EXTENSIONS is ext.no_extensions(os.environ)


def test_setup_py_decides_like_ext() -> None:
    """setup.py (which cannot import fasthub) builds nothing exactly when _ext runs the twins."""
    code = f"""
import importlib.util, json, os, sys, types
calls = []
fake = types.ModuleType("setuptools")  # setup() records instead of building
fake.Extension = lambda name, sources, **kw: types.SimpleNamespace(name=name, **kw)
fake.setup = lambda **kw: calls.append(kw)
sys.modules["setuptools"] = fake
command = types.ModuleType("setuptools.command.build_ext")
command.build_ext = type("build_ext", (), {{}})
sys.modules["setuptools.command"] = types.ModuleType("setuptools.command")
sys.modules["setuptools.command.build_ext"] = command
build = types.ModuleType("Cython.Build")
build.cythonize = lambda exts, **kw: list(exts)
sys.modules["Cython"] = types.ModuleType("Cython")
sys.modules["Cython.Build"] = build
out = {{}}
for value in {list(FLAG_VALUES)!r}:
    os.environ["FASTHUB_NO_EXTENSIONS"] = value
    spec = importlib.util.spec_from_file_location("fasthub_setup", "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    built = calls.pop()["ext_modules"]
    out[value] = [mod.NO_EXTENSIONS, mod.no_extensions({{"FASTHUB_NO_EXTENSIONS": value}}), len(built)]
out["imported fasthub"] = "fasthub" in sys.modules
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if k != "FASTHUB_NO_EXTENSIONS"}
    result = subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, capture_output=True, text=True)
    decided = json.loads(result.stdout)
    assert decided.pop("imported fasthub") is False
    for value, pure in FLAG_VALUES.items():
        assert ext.no_extensions({"FASTHUB_NO_EXTENSIONS": value}) is pure
        no_ext, no_ext_fn, n_built = decided[value]
        assert (no_ext, no_ext_fn) == (pure, pure), value
        assert (n_built == 0) is pure, value


def test_load_group_is_all_or_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ext, "LIVE", {})
    monkeypatch.setattr(ext, "NO_EXTENSIONS", False)
    pairs = [
        ("fasthub._wire.frames_c", "fasthub._wire.frames_py"),
        ("fasthub._wire.no_such_c", "fasthub._wire.mask_py"),
    ]
    frames, mask = ext.load_group(pairs)
    assert (frames.__name__, mask.__name__) == ("fasthub._wire.frames_py", "fasthub._wire.mask_py")
    assert ext.LIVE == {"fasthub._wire.frames_c": False, "fasthub._wire.no_such_c": False}
    assert ext.load("fasthub._wire.no_such_c", "fasthub._wire.codes").__name__ == "fasthub._wire.codes"


def test_load_honours_no_extensions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ext, "LIVE", {})
    monkeypatch.setattr(ext, "NO_EXTENSIONS", True)
    assert ext.load("fasthub._wire.frames_c", "fasthub._wire.frames_py").__name__ == "fasthub._wire.frames_py"
    assert ext.LIVE == {"fasthub._wire.frames_c": False}
    monkeypatch.setattr(ext, "NO_EXTENSIONS", False)
    if importlib.util.find_spec("fasthub._wire.frames_c") is None:
        pytest.skip("extensions not built")
    assert ext.load("fasthub._wire.frames_c", "fasthub._wire.frames_py").__name__ == "fasthub._wire.frames_c"
    assert ext.LIVE == {"fasthub._wire.frames_c": True}


@pytest.mark.parametrize("value", ["0", "false", "1", "yes"])
def test_env_value_selects_every_module(value: str) -> None:
    """In a fresh process, "0"/"false" run every built module compiled; "1"/"yes" run none."""
    pure = FLAG_VALUES[value]
    if not pure and not all(importlib.util.find_spec(name) is not None for name in LIVE_KEYS):
        pytest.skip("extensions not built")
    code = "import fasthub, json; print(json.dumps([fasthub.compiled(), fasthub.compiled(detail=True)]))"
    env = {**os.environ, "FASTHUB_NO_EXTENSIONS": value}
    result = subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, capture_output=True, text=True)
    all_compiled, detail = json.loads(result.stdout)
    assert set(detail) == LIVE_KEYS
    assert all_compiled is (not pure)
    assert set(detail.values()) == {not pure}
