"""Hugging Face transformers integration: ``quant_method: "lutc"``.

Follows transformers' contract for quantization methods: :class:`LutcConfig` (a
``QuantizationConfigMixin``) and :class:`LutcHfQuantizer` (an ``HfQuantizer``), registered under
``"lutc"`` as soon as both lutc and transformers are imported (in either order)::

    import lutc, transformers
    cfg = lutc.LutcConfig(wbits=4, group_size=128)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, quantization_config=cfg)
    model.generate(...)                     # lutc kernels (LUTLinear); torch.compile(model) works
    model.save_pretrained(out)              # portable bitplane weights + quantization_config
    transformers.AutoModelForCausalLM.from_pretrained(out)    # lutc layers again, no re-quantization

Quantizing (a float checkpoint and a ``LutcConfig``): the float weights load as usual, then every
``nn.Linear`` except ``modules_to_not_convert`` (default: the output embedding, as transformers
picks it) becomes a :class:`lutc.LUTLinear` (:func:`lutc.quantize_model`, with its progress
line): the float model is in memory once while it is quantized. Loading a lutc checkpoint: the
layers are created empty on the meta device, the ``bitplane`` tensors of the checkpoint fill them,
and each layer repacks once into its device's kernel layout. GPTQ / AWQ / compressed-tensors
checkpoints keep their own ``quant_method``; :func:`lutc.load_checkpoint` puts them on lutc
layers.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import torch
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from .dtypes import dtype_name
from .nn import LUTLinear, Progress, quantize_model, replace_layer
from .spec import MPGemmSpec

METHOD = "lutc"


@register_quantization_config(METHOD)
class LutcConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of lutc models: the weight format of :func:`lutc.quantize` and
    the :class:`lutc.LUTLinear` knobs.

    Args:
        wbits, group_size, format, zero_point, scale_dtype: the weight format.
        table_dtype, single_layout: the layers' knobs (None: the device's default table dtype).
        modules_to_not_convert: qualified names (or name fragments, as transformers matches
            them) of Linear layers kept in float; default: the output embedding.

    Example:
        >>> cfg = LutcConfig(wbits=2, group_size=64)
        >>> cfg.to_dict()["quant_method"], cfg.wbits
        ('lutc', 2)
    """

    def __init__(self, wbits: int = 4, group_size: Optional[int] = 128, format: str = "uniform",
                 zero_point: bool = False, scale_dtype: str = "float16", table_dtype: Optional[str] = None,
                 single_layout: bool = False, modules_to_not_convert: Optional[list] = None, **kwargs):
        self.quant_method = METHOD
        self.wbits, self.group_size, self.format = wbits, group_size, format
        self.zero_point, self.scale_dtype = zero_point, scale_dtype
        self.table_dtype, self.single_layout = table_dtype, single_layout
        self.modules_to_not_convert = modules_to_not_convert
        self.post_init()

    def post_init(self) -> None:
        """Refuse a format lutc cannot build, naming the field (SpecError)."""
        MPGemmSpec.of_weight(128, 128 if self.group_size in (None, -1) else max(128, self.group_size), self,
                             table_dtype=self.table_dtype or "float32")

    def weight_format(self) -> dict:
        return dict(wbits=self.wbits, group_size=self.group_size, format=self.format,
                    zero_point=self.zero_point, scale_dtype=self.scale_dtype)

    def knobs(self) -> dict:
        return dict(table_dtype=self.table_dtype, single_layout=self.single_layout)


@register_quantizer(METHOD)
class LutcHfQuantizer(HfQuantizer):
    """transformers' hooks for lutc models (module docstring)."""

    requires_calibration = False

    def __init__(self, quantization_config: LutcConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self.modules_to_not_convert: list = []

    def validate_environment(self, *args, **kwargs) -> None:
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError("lutc layers cannot be offloaded to disk (device_map has 'disk')")

    def _process_model_before_weight_loading(self, model, keep_in_fp32_modules=None, **kwargs):
        self.modules_to_not_convert = self.get_modules_to_not_convert(
            model, self.quantization_config.modules_to_not_convert, keep_in_fp32_modules or
            getattr(model, "_keep_in_fp32_modules", None))
        if self.pre_quantized:   # empty layers (meta device) that the checkpoint's bitplane tensors fill
            self._convert(model, empty=True)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        if not self.pre_quantized:
            self._convert(model, empty=False)
        else:
            act = model.dtype if model.dtype.is_floating_point else torch.float32
            for layer in model.modules():
                if isinstance(layer, LUTLinear):   # bitplane tensors now loaded: repack once for the device
                    layer.act_dtype = dtype_name(act)
                    layer.load_bitplane(layer.planes.device)
        return model

    def _convert(self, model, empty: bool) -> None:
        skip = self.modules_to_not_convert
        quantize_model(model, **self.quantization_config.weight_format(), empty=empty,
                       exclude=lambda name, m: any(s == name or s in name.split(".") or name.endswith("." + s)
                                                   for s in skip),
                       **self.quantization_config.knobs())

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    @property
    def is_compileable(self) -> bool:
        return True


def load_gguf(path: Union[str, os.PathLike], device=None, dtype: torch.dtype = torch.float32,
              progress: Optional[bool] = None, **knobs) -> torch.nn.Module:
    """A llama.cpp GGUF file as a transformers causal LM whose quantized layers run on lutc.

    transformers reads the architecture and config from the file's metadata. Every ``nn.Linear``
    whose GGUF tensor is of a type lutc imports (:data:`lutc.importers.GGUF_TYPES`) becomes a
    :class:`lutc.LUTLinear` holding it exactly (:func:`lutc.import_gguf`, rows in transformers'
    order: llama.cpp interleaves the rotary halves of ``attn_q``/``attn_k``, and transformers'
    own tensor processor for the architecture says how to undo it). Every other tensor (norms,
    embeddings, an ``output`` in Q6_K or Q8_0, types lutc does not import) is dequantized by
    ``gguf`` into ``dtype`` as transformers' GGUF loader does; such Linear layers stay float,
    named in a warning when they are not the output head. The float skeleton is created without
    initialising it, at ``dtype``, and each imported layer's float storage is dropped as it
    is replaced; pass ``dtype=torch.float16`` or ``bfloat16`` to halve the peak.

    Args:
        path: the ``.gguf`` file (one file; split GGUFs are not read).
        device: where the model ends up (default: CPU).
        dtype: activations and float tensors.
        progress: layers done and ETA on stderr (default: when stderr is a terminal).
        knobs: for the ``LUTLinear`` layers (``table_dtype``, ``single_layout``, ...).

    Example:
        >>> model = lutc.load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")          # doctest: +SKIP
        >>> tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=file)   # doctest: +SKIP
    """
    import warnings

    import numpy as np
    import transformers
    from torch import nn
    from transformers.initialization import no_init_weights
    from transformers.modeling_gguf_pytorch_utils import (TENSOR_PROCESSORS, TensorProcessor,
                                                          get_gguf_hf_weights_map, load_gguf_checkpoint,
                                                          read_field)

    from .importers import GGUF_TYPES, import_gguf, open_gguf

    path = os.path.abspath(os.fspath(path))
    reader = open_gguf(path)
    import gguf     # present: open_gguf needed it
    parsed = load_gguf_checkpoint(path, return_tensors=False)
    parsed["tensors"] = {}      # where some processors put tensors they split or rename (MoE experts)
    config = transformers.AutoConfig.for_model(**parsed["config"])
    with no_init_weights():
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    processor = TENSOR_PROCESSORS.get(read_field(reader, "general.architecture")[0], TensorProcessor)(
        config=parsed["config"])
    hf_names = get_gguf_hf_weights_map(model, processor)          # GGUF name -> parameter name
    linears = {f"{name}.weight": name for name, m in model.named_modules() if type(m) is nn.Linear}

    def processed(name: str, weights: np.ndarray, into: dict = parsed):
        return processor.process(weights=weights, name=name, tensor_key_mapping=hf_names,
                                 parsed_parameters=into)

    def row_order(t) -> Optional[np.ndarray]:
        """The processor's row permutation of ``t`` (None: it does more than reorder rows)."""
        rows = np.arange(int(t.shape[-1]), dtype=np.float64)[:, None]
        try:       # a scratch "tensors": processors that split tensors write there
            out = processed(t.name, rows, dict(parsed, tensors={}))
        except (ValueError, IndexError, KeyError, TypeError):    # it reshapes by K, or splits
            return None
        order = np.asarray(out.weights).reshape(-1)
        if out.name != t.name or np.asarray(out.weights).shape != rows.shape or \
                not np.array_equal(np.sort(order), rows[:, 0]):
            return None
        return order.astype(np.int64)

    lut = [(t, linears[hf_names[t.name]]) for t in reader.tensors
           if hf_names.get(t.name) in linears and gguf.GGMLQuantizationType(int(t.tensor_type)).name in GGUF_TYPES]
    lut = [(t, name, order) for t, name in lut for order in [row_order(t)] if order is not None]
    device = torch.device(device if device is not None else "cpu")
    report = Progress("lutc.load_gguf", len(lut), progress)
    done = set()
    for t, name, order in lut:
        qw = import_gguf(reader, t.name, rows=None if np.array_equal(order, np.arange(len(order))) else order)
        linear = model.get_submodule(name)
        if (qw.N, qw.K) != (linear.out_features, linear.in_features):
            raise ValueError(f"{path}: {t.name} is [{qw.N}, {qw.K}], the model's {name} is "
                             f"[{linear.out_features}, {linear.in_features}]")
        layer = LUTLinear.from_packed(qw, bias=None if linear.bias is None else torch.zeros(qw.N, dtype=dtype),
                                      device=device, dtype=dtype, **knobs)
        replace_layer(model, name, layer)
        done.add(t.name)
        report.step(name)
    report.close()
    state = {}
    for t in reader.tensors:
        if t.name in done:
            continue
        out = processed(t.name, gguf.dequantize(t.data, t.tensor_type))
        if out.name in hf_names:
            state[hf_names[out.name]] = torch.from_numpy(np.copy(out.weights)).to(dtype)
    state.update({k: torch.as_tensor(v).to(dtype) for k, v in parsed.pop("tensors").items()})
    kept = sorted(linears[k] for k in state if k in linears and not linears[k].endswith(("lm_head", "output")))
    if kept:
        warnings.warn(f"{path}: {len(kept)} Linear layers stay float (GGUF types lutc does not "
                      f"import: it reads {list(GGUF_TYPES)}): {kept[:6]}{'...' if len(kept) > 6 else ''}",
                      stacklevel=2)
    result = model.load_state_dict(state, strict=False, assign=True)
    converted = tuple(f"{name}." for _, name, _ in lut)      # filled above, not from the state dict
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = [k for k in result.missing_keys
               if (k.endswith(".bias") or not k.startswith(converted)) and k not in tied]
    if missing:
        raise ValueError(f"{path}: the GGUF file has no tensors for {missing[:8]}{'...' if len(missing) > 8 else ''}")
    if tied:
        model.tie_weights()
    return model.to(device).eval()


__all__ = ["LutcConfig", "LutcHfQuantizer", "METHOD", "load_gguf"]
