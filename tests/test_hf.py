"""Hugging Face transformers: quant_method "lutc" (LutcConfig + LutcHfQuantizer), quantizing on load,
save_pretrained and reloading without re-quantization, greedy decoding against the dequantized
reference, torch.compile. Models are built from a config here (no downloads)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

import lutc  # noqa: E402
from lutc.testing import rel_error, tolerance  # noqa: E402

CONFIG = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).eval()
    path = tmp_path_factory.mktemp("float")
    model.save_pretrained(path)
    return path


def _dequantized_reference(qmodel, float_dir):
    """The float model with every lutc layer's weight replaced by its float64 dequantization."""
    ref = transformers.AutoModelForCausalLM.from_pretrained(float_dir).eval()
    for name, m in qmodel.named_modules():
        if isinstance(m, lutc.LUTLinear):
            with torch.no_grad():
                ref.get_submodule(name).weight.copy_(m.packed().dequantize().float())
    return ref


def _greedy(model, seed):
    prompt = torch.randint(0, CONFIG["vocab_size"], (1, 6), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return model.generate(prompt, max_new_tokens=10, do_sample=False)


def test_registered_when_lutc_and_transformers_are_imported():
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
    assert AUTO_QUANTIZER_MAPPING["lutc"] is lutc.hf.LutcHfQuantizer
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["lutc"] is lutc.LutcConfig
    with pytest.raises(lutc.SpecError, match="wbits must be 1, 2, 3 or 4"):
        lutc.LutcConfig(wbits=5)


def test_quantize_on_load_save_and_reload(float_dir, tmp_path):
    cfg = lutc.LutcConfig(wbits=4, group_size=128, table_dtype="float32")   # float tables: exact decoding
    model = transformers.AutoModelForCausalLM.from_pretrained(float_dir, quantization_config=cfg).eval()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, lutc.LUTLinear)}
    assert len(layers) == 14 and type(model.lm_head) is torch.nn.Linear          # 2 x (q k v o gate up down)
    ref = _dequantized_reference(model, float_dir)
    for seed in range(3):
        assert torch.equal(_greedy(model, seed), _greedy(ref, seed))

    model.save_pretrained(tmp_path)
    saved = transformers.AutoConfig.from_pretrained(tmp_path).quantization_config
    assert saved["quant_method"] == "lutc" and saved["wbits"] == 4
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    for name, m in again.named_modules():
        if isinstance(m, lutc.LUTLinear):                                        # no re-quantization
            assert m.layouts == layers[name].layouts
            assert all(torch.equal(a, b) for a, b in zip(m.packed().tensors(), layers[name].packed().tensors()))
    for seed in range(3):
        assert torch.equal(_greedy(again, seed), _greedy(ref, seed))


def test_default_kernels_and_torch_compile(float_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        float_dir, quantization_config=lutc.LutcConfig(wbits=2, group_size=128)).eval()
    layer = model.model.layers[0].mlp.up_proj
    assert isinstance(layer, lutc.LUTLinear)
    ids = torch.randint(0, CONFIG["vocab_size"], (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        eager = model(ids).logits
    explanation = torch._dynamo.explain(lambda i: model(i).logits)(ids)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(lambda i: model(i).logits, fullgraph=True)
    with torch.inference_mode():
        assert rel_error(compiled(ids), eager.double()) < 1e-4
    x = torch.randn(3, 256)
    ref = x.double() @ layer.packed().dequantize().T
    assert rel_error(layer(x), ref) < tolerance(layer.kernel_spec())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_quantize_on_load_onto_cuda_save_and_reload(float_dir, tmp_path):
    cfg = lutc.LutcConfig(wbits=4, group_size=128)
    model = transformers.AutoModelForCausalLM.from_pretrained(float_dir, quantization_config=cfg, dtype=torch.float16,
                                                              device_map="cuda").eval()
    layer = model.model.layers[1].mlp.down_proj
    assert isinstance(layer, lutc.LUTLinear) and layer.planes.is_cuda
    ref = lutc.nn.dequantize_model(model)
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(5)).cuda()
    with torch.inference_mode():
        ours, theirs = model(ids).logits.float(), ref(ids).logits.float()
    assert rel_error(ours, theirs.double()) < 2e-2
    model.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float16, device_map="cuda").eval()
    assert again.model.layers[1].mlp.down_proj.planes.is_cuda
    with torch.inference_mode():
        assert torch.equal(again(ids).logits, model(ids).logits)
