"""lutc: lookup-table (LUT) mixed-precision GEMM kernels for low-bit LLM weights, built with TVM.

    >>> import torch, lutc
    >>> qw = lutc.quantize(torch.randn(512, 1024), wbits=2, group_size=128)
    >>> kernel = lutc.compile((1, 512, 1024), wbits=2, group_size=128)   # this CPU
    >>> y = kernel(torch.randn(1, 1024), qw)                              # [1, 512]

Layers, each importing only the ones before it: ``spec``/``formats`` (the vocabulary and the
weight formats) -> ``frontend`` (what is computed, in TensorIR) -> ``schedules/`` (how, per
target) -> ``tuner`` (which knobs: space, cost model, logs) -> ``build``/``cache`` (compile,
the best tuned candidate, on-disk cache) -> ``runtime`` (the safe callable) and its users:
``autotune`` (the driver that builds and measures candidates), ``torch_ops``
(``torch.ops.lutc.mpgemm``, registered on import), ``nn`` (``LUTLinear``, ``quantize_model``),
``exporter`` (``export``, packed weights as files) and ``cli`` (the ``lutc`` command).

Threads: TVM's CPU thread pool reads ``TVM_NUM_THREADS`` when it starts. lutc sets it to the
number of cores this process may use unless it is already set (TVM's own default used one
thread on a 2-core VM). Set it, or ``LUTC_NUM_THREADS``, before importing lutc to choose.
"""
import os as _os

_os.environ.setdefault(
    "TVM_NUM_THREADS", _os.environ.get("LUTC_NUM_THREADS", str(len(_os.sched_getaffinity(0)))))

from .spec import LAYOUT_VERSION, MPGemmSpec, SpecError  # noqa: E402
from .formats import PackedWeights, quantize, repack  # noqa: E402
from .build import build, compile, cuda_binary, precompile  # noqa: E402
from .runtime import Kernel  # noqa: E402
from .autotune import tune  # noqa: E402
from . import torch_ops  # noqa: E402,F401  (registers torch.ops.lutc.mpgemm: ~30 ms)
from .nn import LUTLinear, quantize_model  # noqa: E402
from .exporter import export, load_weights, save_weights  # noqa: E402

__version__ = "0.1.0"
__all__ = ["MPGemmSpec", "SpecError", "LAYOUT_VERSION", "PackedWeights", "quantize", "repack", "compile",
           "build", "cuda_binary", "precompile", "Kernel", "tune", "LUTLinear", "quantize_model", "export",
           "save_weights", "load_weights", "__version__"]
