"""lutc: lookup-table (LUT) mixed-precision GEMM kernels for low-bit LLM weights, built with TVM.

    >>> import torch, lutc
    >>> qw = lutc.quantize(torch.randn(512, 1024), wbits=2, group_size=128)
    >>> kernel = lutc.compile((1, 512, 1024), wbits=2, group_size=128)   # this CPU
    >>> y = kernel(torch.randn(1, 1024), qw)                              # [1, 512]

Layers, each importing only the ones before it: ``spec``/``formats`` (the vocabulary and the
weight formats) -> ``frontend`` (what is computed, in TensorIR) -> ``schedules/`` (how, per
target) -> ``tuner`` (which knobs: space, cost model, logs) -> ``build``/``cache`` (compile,
the best tuned candidate, on-disk cache) -> ``runtime`` (the safe callable) and its users:
``autotune`` (the driver that builds and measures candidates; ``measure`` times a kernel as
the tuner and the benchmarks do), ``torch_ops``
(``torch.ops.lutc.mpgemm``, registered on import), ``nn`` (``LUTLinear``, ``quantize_model``),
``exporter`` (``export``), ``weight_files`` (packed weights as files) and ``cli`` (the ``lutc``
command).

Imports: ``import lutc`` loads the vocabulary only; every other name loads on first use, and
when torch is already imported ``torch.ops.lutc.mpgemm`` is registered at once (``import
lutc.torch_ops`` registers it in any case).

Threads: TVM's CPU thread pool reads ``TVM_NUM_THREADS`` when it starts. lutc sets it to the
number of cores this process may use unless it is already set (TVM's own default used one
thread on a 2-core VM). Set it, or ``LUTC_NUM_THREADS``, before importing lutc to choose.
lutc also sets ``OMP_WAIT_POLICY=PASSIVE`` (unless set) when torch is not imported yet: torch's
OpenMP threads otherwise busy-wait after each op on the cores TVM's pool needs next, which made
a whole model on lutc layers 7x slower (SmolLM2-135M greedy decoding on 2 cores: 3.6 s, 0.50 s
passive, float 1.06 s either way). libgomp reads it once, when torch loads, so a process that
imports torch first should export it itself; lutc says so once, at its first CPU kernel build.
"""
import os as _os
import sys as _sys

_os.environ.setdefault(
    "TVM_NUM_THREADS", _os.environ.get("LUTC_NUM_THREADS", str(len(_os.sched_getaffinity(0)))))
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .spec import LAYOUT_VERSION, MPGemmSpec, SpecError  # noqa: E402  (no torch, no TVM)

#: Public names -> the module that defines them. They load on first use (PEP 562), so that
#: ``lutc --help`` answers without importing torch and TVM (~2.5 s).
_LAZY = {"PackedWeights": "formats", "quantize": "formats", "repack": "formats",
         "build": "build", "compile": "build", "cuda_binary": "build", "precompile": "build",
         "Kernel": "runtime", "tune": "autotune", "LUTLinear": "nn", "quantize_model": "nn",
         "export": "exporter", "load_weights": "weight_files", "save_weights": "weight_files",
         "import_weights": "importers", "import_gguf": "importers", "load_checkpoint": "importers",
         "LutcConfig": "hf", "load_gguf": "hf"}
_MODULES = ("layouts", "formats", "frontend", "target", "build", "cache", "runtime", "testing", "measure",
            "autotune", "torch_ops", "nn", "exporter", "weight_files", "importers", "hf", "tuner", "dtypes", "cli")

__version__ = "0.1.0"
__all__ = ["MPGemmSpec", "SpecError", "LAYOUT_VERSION", "PackedWeights", "quantize", "repack", "compile",
           "build", "cuda_binary", "precompile", "Kernel", "tune", "LUTLinear", "quantize_model", "export",
           "save_weights", "load_weights", "import_weights", "import_gguf", "load_checkpoint", "LutcConfig",
           "load_gguf", "__version__"]


def __getattr__(name: str):
    import importlib
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'lutc' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_MODULES))


class _Package(type(_sys)):
    """lutc's module type: the import system sets a package attribute for each submodule it
    loads, and ``lutc.build`` names the function, not the module ``lutc/build.py``."""

    def __setattr__(self, name, value):
        if name == "build" and isinstance(value, type(_sys)):
            value = value.build
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package

class _RegisterWithTransformers:
    """A one-shot import hook: once transformers is imported, ``quant_method: "lutc"`` is
    registered (``lutc.hf``), so ``from_pretrained`` of a lutc checkpoint finds it whether lutc or
    transformers was imported first, and ``import lutc`` never pays for importing transformers."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        _sys.meta_path.remove(self)
        import importlib.util
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            from . import hf  # noqa: F401  (registers LutcConfig and LutcHfQuantizer)

        spec.loader.exec_module = exec_module
        return spec


if "transformers" in _sys.modules:
    from . import hf  # noqa: E402,F401
elif not any(isinstance(f, _RegisterWithTransformers) for f in _sys.meta_path):
    _sys.meta_path.insert(0, _RegisterWithTransformers())

if "torch" in _sys.modules:
    # Code that imported torch uses lutc from PyTorch: register torch.ops.lutc.mpgemm now, as
    # `import lutc` always did (~1 s for TVM); the command line stays fast.
    from . import torch_ops  # noqa: E402,F401
