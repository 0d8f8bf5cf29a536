"""On-disk cache of built kernels, so a second process compiles a known kernel in milliseconds.

A kernel is stored as the shared library TVM exports (``export_library``) plus a JSON sidecar
with what :class:`~lutc.runtime.Kernel` needs besides the function (source, scheduled TIR,
schedule, knobs, layout). The key hashes everything that changes the code: the workload, the
target, the schedule and knobs, and the lutc and TVM versions. Files are written under a
temporary name and renamed into place, so a reader never sees a half-written entry and two
processes building the same kernel both succeed. A corrupt or unreadable entry is rebuilt
(with a warning), never fatal.

Only kernels this process can run are cached (a cross-compiled kernel cannot be loaded here).
Export needs a C compiler (``gcc``), as TVM's ``export_library`` does.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from typing import Optional

import tvm
from tvm.runtime.executable import Executable

from .runtime import Kernel
from .spec import MPGemmSpec

FORMAT = 1  # bump when the sidecar's fields change


class KernelCache:
    """Built kernels under ``directory``.

    Example:
        >>> import tempfile, lutc
        >>> cache = KernelCache(tempfile.mkdtemp())
        >>> k1 = lutc.compile((1, 64, 256), group_size=64, cache=cache)   # builds and stores
        >>> k2 = lutc.compile((1, 64, 256), group_size=64, cache=cache)   # loads
        >>> k2.from_cache
        True
    """

    def __init__(self, directory: str):
        self.directory = directory

    @classmethod
    def from_env(cls) -> Optional["KernelCache"]:
        """``$LUTC_CACHE_DIR`` (default ``~/.cache/lutc/kernels``); None if ``LUTC_CACHE=0``."""
        if os.environ.get("LUTC_CACHE", "1") == "0":
            return None
        default = os.path.join(os.path.expanduser("~"), ".cache", "lutc", "kernels")
        return cls(os.environ.get("LUTC_CACHE_DIR") or default)

    @staticmethod
    def key(spec: MPGemmSpec, target: dict, schedule: str, knobs: dict) -> str:
        from . import __version__
        ident = {"format": FORMAT, "spec": spec.key(), "target": target, "schedule": schedule,
                 "knobs": knobs, "lutc": __version__, "tvm": tvm.__version__}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]

    def load(self, key: str, spec: MPGemmSpec) -> Optional[Kernel]:
        """The cached kernel, or None (missing, or corrupt: then it will be rebuilt)."""
        lib, meta = self._paths(key)
        if not (os.path.exists(lib) and os.path.exists(meta)):
            return None
        try:
            with open(meta) as f:
                info = json.load(f)
            module = tvm.runtime.load_module(lib)
            executable = Executable(module)
            kernel = Kernel(spec, info["target"], info["device"], executable["main"], info["source"],
                            info["script"], executable, info["schedule"], info["knobs"], info["layout"])
        except Exception as e:  # any damage means: build again
            warnings.warn(f"kernel cache entry {lib} is unreadable ({e}); rebuilding it", stacklevel=3)
            return None
        kernel.from_cache = True
        return kernel

    def store(self, key: str, kernel: Kernel) -> None:
        """Export ``kernel`` under ``key`` (atomic rename; failures only warn)."""
        lib, meta = self._paths(key)
        os.makedirs(self.directory, exist_ok=True)
        info = {"target": kernel.target, "device": kernel.device, "source": kernel.source,
                "script": kernel.script, "schedule": kernel.schedule, "knobs": kernel.knobs,
                "layout": kernel.layout}
        try:
            tmp_lib = _temp_name(self.directory, ".so")
            kernel.executable.export_library(tmp_lib)
            tmp_meta = _temp_name(self.directory, ".json")
            with open(tmp_meta, "w") as f:
                json.dump(info, f)
            os.replace(tmp_lib, lib)        # the library first: a sidecar means both are whole
            os.replace(tmp_meta, meta)
        except Exception as e:
            warnings.warn(f"could not store kernel in cache {self.directory}: {e}", stacklevel=3)

    def _paths(self, key: str) -> tuple:
        return os.path.join(self.directory, key + ".so"), os.path.join(self.directory, key + ".json")


def _temp_name(directory: str, suffix: str) -> str:
    fd, path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    return path
