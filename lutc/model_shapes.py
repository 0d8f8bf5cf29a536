"""The Linear shapes of the open models people run, for ``lutc tune --model-shapes NAME``.

Each model is named by the five numbers of its Hugging Face ``config.json`` that decide its
linear layers: ``hidden_size``, ``intermediate_size``, ``num_attention_heads``,
``num_key_value_heads`` and the head dimension (``hidden_size / num_attention_heads`` unless
the config says otherwise). A decoder layer then has ``q_proj``/``o_proj`` (heads x head_dim by
hidden), ``k_proj``/``v_proj`` (kv heads x head_dim by hidden), ``gate_proj``/``up_proj``
(intermediate by hidden) and ``down_proj`` (hidden by intermediate); lutc's shapes are
``(M, N, K)`` with ``N`` the output features. The LM head is left out (usually kept in 16 bits).

=====================  ======  ============  =====  ========  ========
name                   hidden  intermediate  heads  kv heads  head dim
=====================  ======  ============  =====  ========  ========
``llama-3-8b``         4096    14336         32     8         128
``llama-3-70b``        8192    28672         64     8         128
``mistral-7b``         4096    14336         32     8         128
``qwen2.5-7b``         3584    18944         28     4         128
``qwen2.5-32b``        5120    27648         40     8         128
``qwen3-8b``           4096    12288         32     8         128
``bitnet-2b``          2560    6912          20     5         128
=====================  ======  ============  =====  ========  ========

Example:
    >>> sorted({(n, k) for _, n, k in linear_shapes("llama-3-8b", [1])})
    [(1024, 4096), (4096, 4096), (4096, 14336), (14336, 4096)]
"""
from __future__ import annotations

from typing import Iterable

#: name -> (hidden, intermediate, heads, kv heads, head dim), from each model's config.json
#: (``bitnet-2b``: microsoft/bitnet-b1.58-2B-4T).
MODELS = {
    "llama-3-8b": (4096, 14336, 32, 8, 128),
    "llama-3-70b": (8192, 28672, 64, 8, 128),
    "mistral-7b": (4096, 14336, 32, 8, 128),
    "qwen2.5-7b": (3584, 18944, 28, 4, 128),
    "qwen2.5-32b": (5120, 27648, 40, 8, 128),
    "qwen3-8b": (4096, 12288, 32, 8, 128),
    "bitnet-2b": (2560, 6912, 20, 5, 128),
}


def linear_shapes(name: str, ms: Iterable[int]) -> list:
    """``(M, N, K)`` of every distinct Linear of model ``name`` (:data:`MODELS`) for each M in
    ``ms``, in the order q/o, k/v, gate/up, down; ValueError naming the known models."""
    try:
        hidden, inter, heads, kv_heads, head_dim = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}: lutc knows the shapes of {', '.join(sorted(MODELS))}") from None
    nk = dict.fromkeys([(heads * head_dim, hidden), (hidden, heads * head_dim), (kv_heads * head_dim, hidden),
                        (inter, hidden), (hidden, inter)])
    return [(M, N, K) for N, K in nk for M in ms]
