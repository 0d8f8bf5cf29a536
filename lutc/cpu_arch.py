"""The CPU architecture a target's code runs on, read one way everywhere: ``lutc.target``
(native or cross), the tuning logs' file names (``cpu-x86_64.jsonl``) and the schedules' SIMD
family (``schedules.common.arch``) ask :func:`machine`."""
from __future__ import annotations

import platform

#: Other spellings of architectures (``platform.machine()`` on Windows and macOS) -> LLVM's.
_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def machine(triple: str = "") -> str:
    """The CPU architecture code for an LLVM ``triple`` runs on, in LLVM's spelling (``x86_64``,
    ``aarch64``, ...): the triple's first part, or this machine's for an empty triple (a host
    target names none).

    Example:
        >>> machine("aarch64-linux-gnu"), machine("AMD64-pc-windows")
        ('aarch64', 'x86_64')
    """
    name = (triple or platform.machine()).split("-")[0].lower()
    return _ALIASES.get(name, name)
