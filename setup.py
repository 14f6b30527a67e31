"""Build the compiled twins of fasthub's hot-path modules.

Each compiled module is a Cython-friendly ``*_py.py`` file compiled under the ``*_c`` name, so
the augmenting ``*_c.pxd`` beside it types it (aiohttp's ``_websocket/reader_c`` pattern); a
``.pyx`` is used only where raw pointers are needed. ``FASTHUB_NO_EXTENSIONS=1`` at build time
gives a pure-Python install; a failed compile (no C compiler) installs the pure twins with a
warning, unless ``FASTHUB_REQUIRE_EXTENSIONS=1`` makes it fatal (CI sets it). Both variables are
read by ``fasthub/_ext.py``, loaded here by path (it needs only the standard library; the package
itself may not import at build time), so "0", "false" or "no" mean the same here as at run time.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# (extension module name, source file)
COMPILED = [
    ("fasthub._core.outbox_c", "fasthub/_core/outbox_py.py"),
    ("fasthub._core.limits_c", "fasthub/_core/limits_py.py"),
    ("fasthub._core.conn_c", "fasthub/_core/conn_py.py"),
    ("fasthub._core.relay_c", "fasthub/_core/relay_py.py"),
    ("fasthub._core.streams_c", "fasthub/_core/streams_py.py"),
    ("fasthub._core.splice_c", "fasthub/_core/splice_c.pyx"),
    ("fasthub._core.sockio_c", "fasthub/_core/sockio_c.pyx"),
    ("fasthub._core.reactor_c", "fasthub/_core/reactor_c.pyx"),
    ("fasthub._wire.frames_c", "fasthub/_wire/frames_py.py"),
    ("fasthub._wire.protocol_c", "fasthub/_wire/protocol_py.py"),
    ("fasthub._wire.mask_c", "fasthub/_wire/mask_c.pyx"),
    ("fasthub._wire.utf8_c", "fasthub/_wire/utf8_c.pyx"),
    ("fasthub._wire.handshake_c", "fasthub/_wire/handshake_c.pyx"),
]


def _load_ext() -> ModuleType:
    """``fasthub/_ext.py`` by path: the run-time rule, without importing the package."""
    spec = importlib.util.spec_from_file_location("_fasthub_ext", Path(__file__).parent / "fasthub" / "_ext.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_EXT = _load_ext()


def no_extensions(environ: Mapping[str, str] = os.environ) -> bool:
    """Build no extension: ``FASTHUB_NO_EXTENSIONS`` as ``fasthub._ext`` reads it, or not CPython."""
    return bool(_EXT.no_extensions(environ)) or sys.implementation.name != "cpython"


NO_EXTENSIONS = no_extensions()
OPTIONAL = not _EXT.env_flag("FASTHUB_REQUIRE_EXTENSIONS", os.environ)


def extensions() -> list[Extension]:
    if NO_EXTENSIONS:
        return []
    from Cython.Build import cythonize

    exts = [
        Extension(name, [src], extra_compile_args=["-O3", "-g0"], optional=OPTIONAL)
        for name, src in COMPILED
    ]
    cythonized = cythonize(
        exts,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
            # the .pxd is the type spec; annotations in *_py.py are for mypy
            "annotation_typing": False,
        },
        quiet=True,
    )
    # cythonize builds new Extension objects and drops ``optional`` (Cython 3.3.1): set it again,
    # or a failed compile fails the install instead of falling back to the pure twins
    for ext in cythonized:
        ext.optional = OPTIONAL
    return cythonized


class BuildExt(build_ext):
    """setuptools' build_ext, which says once, at the end, what a failed optional compile means."""

    def initialize_options(self) -> None:
        super().initialize_options()
        self.fasthub_failed: list[str] = []

    def run(self) -> None:
        super().run()
        if self.fasthub_failed:
            names = ", ".join(self.fasthub_failed)
            bar = "*" * 78
            self.warn(
                f"\n{bar}\nfasthub: {len(self.fasthub_failed)} of {len(self.extensions)} compiled modules could not be"
                f" built ({names}): no working C compiler?\nfasthub: installing the pure-Python twins instead;"
                " fasthub works, slower (fasthub.compiled() is False).\nfasthub: install a C compiler"
                " and reinstall for the compiled hot path; FASTHUB_REQUIRE_EXTENSIONS=1 makes this an error."
                f"\n{bar}"
            )

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception:
            self.fasthub_failed.append(ext.name)
            raise


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
