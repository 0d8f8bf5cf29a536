"""lutc's disk caches, under one directory (:func:`cache_root`) and one switch (``LUTC_CACHE=0``):
built kernels (:class:`KernelCache`), so a second process compiles a known kernel in
milliseconds, and nvcc's binaries (:func:`nvcc_fatbin`).

A kernel is stored as the shared library TVM exports (``export_library``) plus a JSON sidecar
with what :class:`~lutc.runtime.Kernel` needs besides the function (source, scheduled TIR,
schedule, knobs, layout). The key hashes everything that changes the code: the workload, the
target, the schedule and knobs, and the lutc and TVM versions. Files are written under a
temporary name and renamed into place, so a reader never sees a half-written entry and two
processes building the same kernel both succeed. The sidecar records the library's size and
SHA-256, checked before the library is loaded (loading a truncated one would kill the process
with SIGBUS), and both files are fsynced before the rename: a corrupt or unreadable entry is
rebuilt (with a warning), never fatal. The key includes a hash of lutc's sources, so an edited
schedule never finds a kernel built from its old text.

Only kernels this process can run are cached (a cross-compiled kernel cannot be loaded here).
Export needs a C compiler (``gcc``), as TVM's ``export_library`` does.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import tempfile
import warnings
from typing import Callable, Optional

import tvm
from tvm.runtime.executable import Executable

from .runtime import Kernel
from .spec import MPGemmSpec

FORMAT = 2  # bump when the sidecar's fields change


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
        """``cache_root()/kernels``; None if ``LUTC_CACHE=0``."""
        root = cache_root()
        return None if root is None else cls(os.path.join(root, "kernels"))

    @staticmethod
    def key(spec: MPGemmSpec, target: dict, schedule: str, knobs: dict) -> str:
        from . import __version__
        ident = {"format": FORMAT, "spec": spec.key(), "target": target, "schedule": schedule,
                 "knobs": knobs, "lutc": __version__, "tvm": tvm.__version__, "source": source_fingerprint()}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]

    def load(self, key: str, spec: MPGemmSpec) -> Optional[Kernel]:
        """The cached kernel, or None (missing, or corrupt: then it will be rebuilt)."""
        lib, meta = self._paths(key)
        if not (os.path.exists(lib) and os.path.exists(meta)):
            return None
        try:
            # Loading a damaged shared library can kill the process (SIGBUS on a truncated
            # file) before any Python check runs: verify its size and hash first.
            info = read_verified(lib, meta)
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
            write_verified(lib, meta, kernel.executable.export_library, info)
        except Exception as e:
            warnings.warn(f"could not store kernel in cache {self.directory}: {e}", stacklevel=3)

    def _paths(self, key: str) -> tuple:
        return os.path.join(self.directory, key + ".so"), os.path.join(self.directory, key + ".json")


def cache_root() -> Optional[str]:
    """The one directory of lutc's disk caches: ``$LUTC_CACHE_DIR``, default ``~/.cache/lutc``
    (``kernels/``: built kernels, ``nvcc/``: nvcc binaries); None when ``LUTC_CACHE=0``."""
    if os.environ.get("LUTC_CACHE", "1") == "0":
        return None
    return os.environ.get("LUTC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "lutc")


@functools.lru_cache(maxsize=1)
def _nvcc_version() -> str:
    try:
        return subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    except OSError:
        return "no nvcc"


def nvcc_fatbin(code: str, arch: str) -> tuple:
    """``(fatbin bytes, path or None)``: nvcc's fatbin of CUDA ``code`` for ``arch`` (the current
    TVM target scope), from ``cache_root()/nvcc`` when a verified entry is there, else compiled
    (and stored, unless caching is off or the directory is read-only)."""
    from tvm.support import nvcc
    root = cache_root()
    path = None
    if root is not None:
        key = hashlib.sha256("\0".join((code, arch, _nvcc_version())).encode()).hexdigest()[:32]
        path = os.path.join(root, "nvcc", key + ".fatbin")
        if os.path.exists(path) and os.path.exists(path + ".json"):
            try:
                read_verified(path, path + ".json")
                with open(path, "rb") as f:
                    return bytearray(f.read()), path
            except (OSError, ValueError) as e:
                warnings.warn(f"nvcc cache entry {path} is unreadable ({e}); compiling again", stacklevel=3)
    binary = nvcc.compile_cuda(code, target_format="fatbin", compiler="nvcc")
    if path is not None:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                f.write(bytes(binary))
        try:
            write_verified(path, path + ".json", write, {})
        except OSError:  # a read-only cache still compiles
            pass
    return binary, path


def write_verified(path: str, meta_path: str, write: Callable[[str], None], info: dict) -> None:
    """Write a cache entry: ``write(tmp)`` makes the file under a temporary name, the sidecar
    ``meta_path`` gets ``info`` plus its size and SHA-256, both are fsynced and renamed into
    place (the file first: a sidecar means both are whole)."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = _temp_name(directory, os.path.splitext(path)[1])
    write(tmp)
    info = dict(info, bytes=os.path.getsize(tmp), sha256=file_sha256(tmp))
    tmp_meta = _temp_name(directory, ".json")
    with open(tmp_meta, "w") as f:
        json.dump(info, f)
    _fsync(tmp)
    _fsync(tmp_meta)
    os.replace(tmp, path)
    os.replace(tmp_meta, meta_path)


def read_verified(path: str, meta_path: str) -> dict:
    """The sidecar of a cache entry once the file matches its recorded size and hash;
    ``ValueError`` saying how it differs otherwise."""
    with open(meta_path) as f:
        info = json.load(f)
    problem = verify_file(path, info.get("bytes"), info.get("sha256"))
    if problem:
        raise ValueError(problem)
    return info


@functools.lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """A hash of lutc's and the schedules' Python sources: a kernel cached by one version of the
    code is never loaded by another (an edited template would otherwise find its old kernel)."""
    import schedules
    digest = hashlib.sha256()
    for package in (os.path.dirname(__file__), os.path.dirname(schedules.__file__)):
        for root, _, files in sorted(os.walk(package)):
            for name in sorted(f for f in files if f.endswith(".py")):
                with open(os.path.join(root, name), "rb") as f:
                    digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()[:16]


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str, size: Optional[int], sha256: Optional[str]) -> Optional[str]:
    """Why the file at ``path`` is not the one recorded (size, then content hash), or None."""
    if size is None or sha256 is None:
        return "no size and hash recorded (an entry of an older lutc)"
    actual = os.path.getsize(path)
    if actual != size:
        return f"{actual} bytes, {size} recorded (truncated or replaced)"
    if file_sha256(path) != sha256:
        return "content differs from the recorded hash"
    return None


def _fsync(path: str) -> None:
    """Flush ``path`` to the disk before it is renamed into place (a crash after the rename
    must not leave a named but empty file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(directory: str, suffix: str) -> str:
    fd, path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    return path
