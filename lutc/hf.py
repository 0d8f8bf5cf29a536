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

from typing import Optional

import torch
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from .dtypes import dtype_name
from .nn import LUTLinear, quantize_model
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
        MPGemmSpec(1, 128, 128 if self.group_size in (None, -1) else max(128, self.group_size),
                   wbits=self.wbits, format=self.format, group_size=self.group_size,
                   zero_point=self.zero_point, scale_dtype=self.scale_dtype, table_dtype=self.table_dtype or "float32")

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


__all__ = ["LutcConfig", "LutcHfQuantizer", "METHOD"]
