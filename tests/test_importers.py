"""Quantized checkpoints in: GPTQ, AWQ, compressed-tensors, GGUF, exact against each format's own
dequantization (reference packers of the formats where a package has one, else packers written
here from the format's spec and checked on hand-computed words)."""
import numpy as np
import pytest
import torch

import lutc
from lutc.importers import AWQ_ORDER, pack_bitstream, unpack_bitstream
from lutc.testing import reference, rel_error, tolerance

GEN = torch.Generator().manual_seed(11)


# --- reference packers, written from the formats' code (AutoGPTQ QuantLinear.pack, AutoAWQ) ---
def autogptq_pack(intweight: np.ndarray, bits: int) -> np.ndarray:
    """AutoGPTQ's v1 packing loop, literally: ``intweight`` [K, N] -> qweight [K * bits / 32, N]."""
    intweight = intweight.astype(np.uint32)
    qweight = np.zeros((intweight.shape[0] // 32 * bits, intweight.shape[1]), dtype=np.uint32)
    i = row = 0
    while row < qweight.shape[0]:
        if bits in (2, 4, 8):
            for j in range(i, i + (32 // bits)):
                qweight[row] |= intweight[j] << (bits * (j - i))
            i += 32 // bits
            row += 1
        else:   # 3 bits: 10 codes, a code split across words, 10 codes, a split code, 10 codes
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i))
            i += 10
            qweight[row] |= intweight[i] << 30
            row += 1
            qweight[row] |= (intweight[i] >> 2) & 1
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i) + 1)
            i += 10
            qweight[row] |= intweight[i] << 31
            row += 1
            qweight[row] |= (intweight[i] >> 1) & 0x3
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i) + 2)
            i += 10
            row += 1
    return qweight.view(np.int32)


def autogptq_pack_zeros(zeros: np.ndarray, bits: int) -> np.ndarray:
    """AutoGPTQ packs qzeros [G, N] along N with the same loop (v1: zero - 1 stored)."""
    return autogptq_pack(((zeros - 1) & (2 ** bits - 1)).T, bits).T.copy()


def autoawq_pack(intweight: np.ndarray) -> np.ndarray:
    """AutoAWQ's GEMM packing: [K, N] 4-bit codes -> int32 [K, N / 8], order 0 2 4 6 1 3 5 7."""
    K, N = intweight.shape
    q = np.zeros((K, N // 8), dtype=np.uint32)
    for col in range(N // 8):
        for i in range(8):
            q[:, col] |= intweight[:, col * 8 + AWQ_ORDER[i]].astype(np.uint32) << (i * 4)
    return q.view(np.int32)


def test_bitstream_on_hand_computed_words():
    # 3-bit codes 0..31 (mod 8): word 0 holds codes 0..9 and the low 2 bits of code 10 (= 2)
    codes = (torch.arange(32) % 8)[None]
    words = pack_bitstream(codes, 3)
    expected0 = sum((j % 8) << (3 * j) for j in range(10)) | ((10 % 8) & 3) << 30
    assert words.shape == (1, 3) and (int(words[0, 0]) & 0xFFFFFFFF) == expected0
    assert torch.equal(unpack_bitstream(words, 32, 3), codes)
    assert torch.equal(torch.from_numpy(autogptq_pack(codes.T.numpy(), 3)).T, words)
    four = pack_bitstream(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 15]]), 4)
    assert (int(four[0, 0]) & 0xFFFFFFFF) == 0xF7654321


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group_size", [32, 128, -1])
@pytest.mark.parametrize("sym", [True, False])
def test_gptq_v1_is_exact(bits, group_size, sym):
    N, K = 96, 256
    G = 1 if group_size == -1 else K // group_size
    q = torch.randint(0, 2 ** bits, (K, N), generator=GEN)
    zeros = (torch.full((G, N), 2 ** (bits - 1)) if sym
             else torch.randint(0, 2 ** bits, (G, N), generator=GEN))
    zeros[0, 0] = 0 if not sym else zeros[0, 0]          # v1's zero - 1 underflow, kept as the format does
    scales = (torch.rand(G, N, generator=GEN) * 0.01 + 1e-3).half()
    tensors = {"qweight": torch.from_numpy(autogptq_pack(q.numpy(), bits)),
               "qzeros": torch.from_numpy(autogptq_pack_zeros(zeros.numpy(), bits)),
               "scales": scales, "g_idx": torch.arange(K) // (K if group_size == -1 else group_size)}
    qw = lutc.import_weights(tensors, format="gptq", bits=bits, group_size=group_size)
    gs = K if group_size == -1 else group_size
    z_format = zeros.double().clone()
    if not sym:     # AutoGPTQ v1: stored (z - 1) & mask, read back + 1: z = 0 comes back as 2^bits
        z_format = ((zeros - 1) & (2 ** bits - 1)).double() + 1
    ref = (scales.double().repeat_interleave(gs, 0) * (q.double() - z_format.repeat_interleave(gs, 0))).T
    assert qw.format == "uniform" and qw.zero_point and qw.wbits == bits
    assert torch.equal(qw.dequantize(), ref)


def test_gptq_v2_and_refusals():
    N, K, bits = 64, 256, 4
    q = torch.randint(0, 16, (K, N), generator=GEN)
    zeros = torch.randint(0, 16, (2, N), generator=GEN)
    scales = torch.rand(2, N, generator=GEN).half()
    tensors = {"qweight": torch.from_numpy(autogptq_pack(q.numpy(), bits)),
               "qzeros": pack_bitstream(zeros, bits), "scales": scales}
    qw = lutc.import_weights(tensors, "gptq", bits=4, group_size=128, checkpoint_format="gptq_v2")
    ref = (scales.double().repeat_interleave(128, 0) * (q.double() - zeros.double().repeat_interleave(128, 0))).T
    assert torch.equal(qw.dequantize(), ref)
    with pytest.raises(ValueError, match=r"g_idx does not give each of the 2 groups 128 columns"):
        lutc.import_weights(dict(tensors, g_idx=torch.zeros(K, dtype=torch.int32)), "gptq", bits=4, group_size=128)
    with pytest.raises(ValueError, match=r"bits=8: lutc imports 2-, 3- and 4-bit codes"):
        lutc.import_weights(tensors, "gptq", bits=8, group_size=128)
    with pytest.raises(ValueError, match=r"group_size=256: lutc's kernels take groups of"):
        lutc.import_weights(tensors, "gptq", bits=4, group_size=256)
    with pytest.raises(ValueError, match=r"scales is torch.float16 \(2, 64\), expected a float tensor \(4, 64\)"):
        lutc.import_weights(tensors, "gptq", bits=4, group_size=64)
    with pytest.raises(ValueError, match=r"qzeros is torch.int32 \(2, 8\), expected int32 \(4, 8\)"):
        lutc.import_weights(dict(tensors, scales=torch.rand(4, N).half()), "gptq", bits=4, group_size=64)
    with pytest.raises(ValueError, match=r"format must be one of"):
        lutc.import_weights(tensors, "exl2", bits=4)


@pytest.mark.parametrize("group_size", [64, 128])
def test_awq_gemm_is_exact(group_size):
    N, K = 128, 512
    G = K // group_size
    q = torch.randint(0, 16, (K, N), generator=GEN)
    zeros = torch.randint(0, 16, (G, N), generator=GEN)
    scales = (torch.rand(G, N, generator=GEN) * 0.02).half()
    tensors = {"qweight": torch.from_numpy(autoawq_pack(q.numpy())),
               "qzeros": torch.from_numpy(autoawq_pack(zeros.numpy())), "scales": scales}
    qw = lutc.import_weights(tensors, format="awq", bits=4, group_size=group_size)
    ref = ((q.double() - zeros.double().repeat_interleave(group_size, 0))
           * scales.double().repeat_interleave(group_size, 0)).T
    assert torch.equal(qw.dequantize(), ref)


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("sym", [True, False])
def test_compressed_tensors_pack_quantized_is_exact(bits, sym):
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    N, K, gs = 96, 256, 128
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = torch.randint(lo, hi + 1, (N, K), generator=GEN).to(torch.int8)
    scale = (torch.rand(N, K // gs, generator=GEN) * 0.02).to(torch.bfloat16)
    tensors = {"weight_packed": helpers.pack_to_int32(q, bits), "weight_scale": scale,
               "weight_shape": torch.tensor([N, K])}
    zp = torch.zeros(N, K // gs, dtype=torch.int8)
    if not sym:
        zp = torch.randint(lo, hi + 1, (N, K // gs), generator=GEN).to(torch.int8)
        tensors["weight_zero_point"] = helpers.pack_to_int32(zp, bits, packed_dim=0)
    unpacked = helpers.unpack_from_int32(tensors["weight_packed"], bits, torch.Size([N, K]))
    assert torch.equal(unpacked, q)                         # the package's own reader agrees
    ref = scale.double().repeat_interleave(gs, 1) * (q.double() - zp.double().repeat_interleave(gs, 1))
    qw = lutc.import_weights(tensors, format="compressed-tensors", bits=bits, group_size=gs)
    assert qw.scale_dtype == "float32" and torch.equal(qw.dequantize(), ref)


def _gguf_file(tmp_path, name, data, qtype):
    gguf = pytest.importorskip("gguf")
    path = str(tmp_path / "t.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _random_blocks(gguf, qtype, N, K):
    """Random raw blocks of a type (any bytes are a valid block) with finite fp16 scales."""
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(5).integers(0, 256, (N, K // block, nbytes), dtype=np.uint8)
    f16 = (np.random.default_rng(6).random((N, K // block, 2)) * 0.01).astype(np.float16).view(np.uint8)
    raw[..., 0:4] = f16.reshape(N, K // block, 4)            # d (and dmin / m) of each block
    return raw.reshape(N, -1)


@pytest.mark.parametrize("qtype_name", ["Q4_0", "Q4_1", "Q4_K", "TQ2_0", "TQ1_0"])
def test_gguf_tensors_are_exact(tmp_path, qtype_name):
    gguf = pytest.importorskip("gguf")
    from gguf import quants
    qtype = gguf.GGMLQuantizationType[qtype_name]
    N, K = 64, 512
    if qtype_name in ("Q4_0", "TQ2_0", "TQ1_0"):     # through gguf's own quantizer
        data = quants.quantize(np.random.default_rng(1).standard_normal((N, K)).astype(np.float32) * 0.02, qtype)
    else:                        # gguf has no K-quant quantizer: random valid blocks
        data = _random_blocks(gguf, qtype, N, K)
    path = _gguf_file(tmp_path, "blk.0.ffn_up.weight", data, qtype)
    qw = lutc.import_gguf(path, "blk.0.ffn_up.weight")
    ref = torch.from_numpy(quants.dequantize(data, qtype).astype(np.float64))
    assert qw.N == N and qw.K == K and qw.group_size == (128 if qtype_name.startswith("TQ") else 32)
    if qtype_name in ("Q4_0", "TQ2_0", "TQ1_0"):
        assert torch.equal(qw.dequantize(), ref)
    else:   # d q + m in float32 there, s (q - z) with z = -m / d in float32 here
        assert float((qw.dequantize() - ref).abs().max() / ref.abs().max()) < 1e-6


@pytest.mark.parametrize("qtype_name", ["Q2_K", "Q6_K", "Q8_0"])
def test_gguf_types_lutc_cannot_hold_are_named(tmp_path, qtype_name):
    gguf = pytest.importorskip("gguf")
    qtype = gguf.GGMLQuantizationType[qtype_name]
    path = _gguf_file(tmp_path, "w", _random_blocks(gguf, qtype, 8, 256), qtype)
    with pytest.raises(ValueError, match=rf"GGUF tensor 'w' is {qtype_name}; lutc imports"):
        lutc.import_gguf(path, "w")
    with pytest.raises(ValueError, match=r"no tensor 'nope'"):
        lutc.import_gguf(path, "nope")


def test_imported_weights_run_on_the_front_doors():
    N, K = 96, 512       # GPTQ packs zeros along N: N a multiple of 8 (96: not of any SIMD tile)
    q = torch.randint(0, 16, (K, N), generator=GEN)
    zeros = torch.randint(0, 16, (4, N), generator=GEN)
    scales = (torch.rand(4, N, generator=GEN) * 0.01).half()
    qw = lutc.import_weights({"qweight": torch.from_numpy(autogptq_pack(q.numpy(), 4)),
                              "qzeros": torch.from_numpy(autogptq_pack_zeros(zeros.numpy(), 4)),
                              "scales": scales}, "gptq", bits=4, group_size=128)
    layer = lutc.LUTLinear.from_packed(qw)
    x = torch.randn(3, K, generator=GEN)
    assert rel_error(layer(x), reference(x, qw)) < tolerance(layer.kernel_spec())
    kernel = lutc.compile((3, N, K), wbits=4, group_size=128, zero_point=True)
    assert rel_error(kernel(x, qw), reference(x, qw)) < tolerance(kernel.spec)


def _gptq_checkpoint(tmp_path):
    """A GPTQ checkpoint directory (config.json + safetensors) of a Llama built here (no
    download), its config and the float reference model holding the dequantized weights."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file
    import json
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(cfg).eval()
    tensors, bits, gs = {}, 4, 128
    for name, m in ref.named_modules():
        if isinstance(m, torch.nn.Linear) and name != "lm_head":
            K, N = m.in_features, m.out_features
            q = torch.randint(0, 16, (K, N), generator=GEN)
            zeros = torch.randint(4, 12, (K // gs, N), generator=GEN)
            scales = (torch.rand(K // gs, N, generator=GEN) * 0.01 + 0.002).half()
            tensors.update({f"{name}.qweight": torch.from_numpy(autogptq_pack(q.numpy(), bits)),
                            f"{name}.qzeros": torch.from_numpy(autogptq_pack_zeros(zeros.numpy(), bits)),
                            f"{name}.scales": scales, f"{name}.g_idx": torch.arange(K, dtype=torch.int32) // gs})
            w = (scales.double().repeat_interleave(gs, 0) * (q.double() - zeros.double().repeat_interleave(gs, 0))).T
            with torch.no_grad():
                m.weight.copy_(w.float())
    for key, t in ref.state_dict().items():
        if not any(key == f"{n}.weight" for n, m in ref.named_modules()
                   if isinstance(m, torch.nn.Linear) and n != "lm_head"):
            tensors[key] = t.contiguous()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    config = dict(cfg.to_dict(), quantization_config={"quant_method": "gptq", "bits": 4, "group_size": 128,
                                                       "desc_act": False, "sym": False, "checkpoint_format": "gptq"})
    (tmp_path / "config.json").write_text(json.dumps(config))
    return cfg, config, ref


def test_load_a_gptq_checkpoint_into_a_transformers_model(tmp_path):
    """The checkpoint loads onto lutc layers and decodes greedily token for token as the
    reference model holding the dequantized weights."""
    import json
    transformers = pytest.importorskip("transformers")
    cfg, config, ref = _gptq_checkpoint(tmp_path)
    model = lutc.load_checkpoint(transformers.LlamaForCausalLM(cfg).eval(), tmp_path, table_dtype="float32")
    assert isinstance(model.model.layers[1].mlp.down_proj, lutc.LUTLinear)
    assert type(model.lm_head) is torch.nn.Linear
    for seed in range(3):
        prompt = torch.randint(0, 512, (1, 6), generator=torch.Generator().manual_seed(seed))
        with torch.inference_mode():
            ours = model.generate(prompt, max_new_tokens=10, do_sample=False)
            theirs = ref.generate(prompt, max_new_tokens=10, do_sample=False)
        assert torch.equal(ours, theirs)

    (tmp_path / "config.json").write_text(json.dumps(dict(config, quantization_config=dict(
        config["quantization_config"], quant_method="exl2"))))
    with pytest.raises(ValueError, match=r"quant_method='exl2'; lutc imports"):
        lutc.load_checkpoint(transformers.LlamaForCausalLM(cfg), tmp_path)


def _float_dtypes(model) -> set:
    return {t.dtype for name, t in model.state_dict().items()
            if t.is_floating_point() and not isinstance(model.get_submodule(name.rpartition(".")[0]), lutc.LUTLinear)}


def test_load_checkpoint_keeps_a_half_model_half(tmp_path):
    """The checkpoint's norms and embeddings are float32; a float16 model stays float16 (they were
    assigned as stored, and every lutc layer then repacked for float32 with a warning)."""
    import warnings
    transformers = pytest.importorskip("transformers")
    cfg, _, _ = _gptq_checkpoint(tmp_path)
    model = lutc.load_checkpoint(transformers.LlamaForCausalLM(cfg).half().eval(), tmp_path)
    assert _float_dtypes(model) == {torch.float16}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.inference_mode():
            logits = model(torch.randint(0, 512, (1, 5), generator=torch.Generator().manual_seed(1))).logits
    assert logits.dtype == torch.float16 and torch.isfinite(logits).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_load_a_gptq_checkpoint_onto_cuda(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg, _, ref = _gptq_checkpoint(tmp_path)
    model = lutc.load_checkpoint(transformers.LlamaForCausalLM(cfg).half().eval(), tmp_path, device="cuda")
    layer = model.model.layers[1].mlp.down_proj
    assert isinstance(layer, lutc.LUTLinear) and layer.planes.is_cuda
    assert _float_dtypes(model) == {torch.float16}
    ref = ref.half().cuda()
    prompt = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.inference_mode():
        ours, theirs = model(prompt).logits.float(), ref(prompt).logits.float()
    assert rel_error(ours, theirs.double()) < 2e-2
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() > 0.9


def _act_order_gptq(N, K, bits=4, gs=128):
    """An act-order GPTQ layer as AutoGPTQ writes it: codes in the original column order, group of
    column k = g_idx[k], groups assigned along a random column order (its Hessian order)."""
    order = torch.randperm(K, generator=GEN)
    g_idx = torch.empty(K, dtype=torch.int32)
    g_idx[order] = (torch.arange(K) // gs).int()
    q = torch.randint(0, 2 ** bits, (K, N), generator=GEN)
    zeros = torch.randint(0, 2 ** bits, (K // gs, N), generator=GEN)
    scales = (torch.rand(K // gs, N, generator=GEN) * 0.01 + 1e-3).half()
    tensors = {"qweight": torch.from_numpy(autogptq_pack(q.numpy(), bits)),
               "qzeros": torch.from_numpy(autogptq_pack_zeros(zeros.numpy(), bits)), "scales": scales, "g_idx": g_idx}
    g = g_idx.long()
    ref = (scales.double()[g] * (q.double() - (((zeros - 1) & (2 ** bits - 1)) + 1).double()[g])).T   # [N, K]
    return tensors, ref


def test_gptq_act_order_is_exact_on_every_front_door():
    N, K = 96, 512
    tensors, ref = _act_order_gptq(N, K)
    qw = lutc.import_weights(tensors, "gptq", bits=4, group_size=128)
    assert qw.perm is not None and torch.equal(qw.dequantize(), ref)
    x = torch.randn(5, K, generator=GEN)
    y_ref = x.double() @ ref.T
    kernel = lutc.compile((5, N, K), wbits=4, group_size=128, zero_point=True)
    assert rel_error(kernel(x, qw), y_ref) < tolerance(kernel.spec)
    assert rel_error(lutc.torch_ops.linear(x, qw), y_ref) < tolerance(kernel.spec)
    layer = lutc.LUTLinear.from_packed(qw)
    assert rel_error(layer(x), y_ref) < tolerance(layer.kernel_spec())
    compiled = torch.compile(layer, fullgraph=True)
    assert rel_error(compiled(x), y_ref) < tolerance(layer.kernel_spec())
    again = lutc.LUTLinear(K, N, bias=False, wbits=4, group_size=128, zero_point=True)
    again.load_state_dict(layer.state_dict())
    assert torch.equal(again.perm, layer.perm) and torch.equal(again(x), layer(x))


def test_act_order_weights_are_refused_by_weight_files(tmp_path):
    qw = lutc.import_weights(_act_order_gptq(64, 256)[0], "gptq", bits=4, group_size=128)
    with pytest.raises(ValueError, match=r"column order \(act-order, PackedWeights.perm\)"):
        lutc.save_weights(qw, tmp_path / "w.lutcw")
