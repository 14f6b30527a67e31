"""The one place that chooses between a compiled module and its pure-Python twin.

Every hot-path module exists twice: ``*_c`` (Cython) and ``*_py`` (same behaviour). Package
``__init__`` files and ``outbox_py`` pick theirs only through ``load`` / ``load_group``, and
``setup.py`` loads this file by path for ``no_extensions``, so the build and the run time read
``FASTHUB_NO_EXTENSIONS`` the same way. The twin is used when the variable says so, or when the
compiled module cannot be imported (not built, non-CPython). ``LIVE`` records each choice for
``fasthub.compiled()``. Standard library only: ``setup.py`` runs before dependencies exist.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from types import ModuleType

#: values of a flag variable that mean "not set" (case-insensitive, surrounding blanks ignored)
FALSE_VALUES = frozenset({"", "0", "false", "no", "off"})


def env_flag(name: str, environ: Mapping[str, str] = os.environ) -> bool:
    """True when ``name`` is set to anything but "", "0", "false", "no" or "off" (any case)."""
    return environ.get(name, "").strip().lower() not in FALSE_VALUES


def no_extensions(environ: Mapping[str, str] = os.environ) -> bool:
    """True when ``FASTHUB_NO_EXTENSIONS`` asks for the pure twins (see ``env_flag``).

    ``FASTHUB_NO_EXTENSIONS=1`` (or ``yes``, ``true``...) means pure; unset, ``0``, ``false``
    or ``no`` mean compiled when built. ``setup.py`` uses this same function at build time.
    """
    return env_flag("FASTHUB_NO_EXTENSIONS", environ)


#: read once at import: the whole process runs one way
NO_EXTENSIONS: bool = no_extensions()

#: compiled module name (e.g. "fasthub._wire.frames_c") -> True when it is the live one
LIVE: dict[str, bool] = {}


def load(compiled: str, pure: str) -> ModuleType:
    """Import ``compiled`` unless ``NO_EXTENSIONS`` or it is not importable, else ``pure``.

    Names are absolute; the choice is recorded as ``LIVE[compiled]``.
    """
    return load_group([(compiled, pure)])[0]


def load_group(pairs: Sequence[tuple[str, str]]) -> list[ModuleType]:
    """Load ``(compiled, pure)`` pairs all compiled, or else all pure (in order).

    For modules bound at C level (``conn_c.Connection`` extends ``outbox_c.Outbox``): one
    missing compiled module makes the whole group pure. Records ``LIVE[compiled]`` for each.
    """
    if not NO_EXTENSIONS:
        try:
            modules = [importlib.import_module(compiled) for compiled, _ in pairs]
        except ImportError:  # not built (or not CPython): the pure twins
            pass
        else:
            for compiled, _ in pairs:
                LIVE[compiled] = True
            return modules
    modules = [importlib.import_module(pure) for _, pure in pairs]
    for compiled, _ in pairs:
        LIVE[compiled] = False
    return modules
