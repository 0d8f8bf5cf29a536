"""What ``lutc.compile`` builds for decode batches (M = 1..24) on the GPU beside each tensor-core
kernel's default: the choice rule (``schedules.default`` and the tuning log) checked against
measurement. Kernel time in a CUDA graph, weights rotating past L2 (``bench_cuda``'s harness),
fp16, group 128, us; the columns of a row timed in turns (``lutc.measure.interleaved_graph_us``:
timed one after another, the later ones ran on a hotter, slower GPU).

    python benchmarks/bench_cuda_choice.py --shapes 28672x8192 8192x28672 --ms 12 16 --wbits 2
    python benchmarks/bench_cuda_choice.py --precompile ...   # no GPU: fill lutc's nvcc cache

A column ``compile`` is the kernel ``lutc.compile`` picks; ``cuda_mma xsm`` appears where that is a
tuned ``cuda_mma`` reading x from global memory (the same knobs with x staged in shared memory);
``--wgmma-knobs`` adds a ``cuda_wgmma`` column per knob set (JSON, over the defaults), e.g.
``--wgmma-knobs '{"splits": 2}' '{"wg": 1, "bm": 64, "splits": 4}'``, and ``--stream-knobs`` a
``cuda_stream`` column per knob set (``--stream-knobs '{"late_scale": 0}'``); ``--format ternary``
times ternary weights (one scale per row; ``--wbits`` is then ignored); ``--humming`` adds Humming
(W uint, group 128, zero points: ``bench_cuda``'s peer) timed the same way in the same run.
"""
import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_cuda as B  # noqa: E402
import lutc  # noqa: E402
import schedules  # noqa: E402
from schedules import contract  # noqa: E402
from lutc.build import choose  # noqa: E402
from lutc.measure import interleaved_graph_us  # noqa: E402
from lutc.testing import random_weights, tolerance  # noqa: E402


def case_spec(N, K, M, w, fmt):
    """The spec timed: uniform W``w`` with ``bench_cuda``'s group, or ternary (a scale per row)."""
    if fmt == "ternary":
        return lutc.MPGemmSpec(M, N, K, format="ternary", group_size=-1, act_dtype="float16")
    return B.lutc_specs(N, K, M, w)


def copies_of(spec, layout, copies):
    """``copies`` GPU copies of one random ``spec`` weight in ``layout`` (formats that
    ``bench_cuda.random_packed`` does not draw), and its float64-exact fp32 dequantization."""
    qw = random_weights(spec.with_(M=1), seed=1)
    packed = lutc.repack(qw, layout).to("cuda")
    clone = lambda q: dataclasses.replace(q, planes=q.planes.clone(), scales=q.scales.clone())  # noqa: E731
    return [packed] + [clone(packed) for _ in range(copies - 1)], qw.dequantize().float().cuda()


def kernels(shapes, ms, wbits, target, wgmma_knobs=(), stream_knobs=(), fmt="uniform"):
    """``(N, K, M, w), spec, {column: (schedule, knobs)}`` for each case."""
    for (N, K) in shapes:
        for M in ms:
            for w in (wbits if fmt == "uniform" else (2,)):
                spec = case_spec(N, K, M, w, fmt)
                c = choose(spec, target)
                name = c.schedule if isinstance(c.schedule, str) else c.schedule.__name__.rsplit(".", 1)[-1]
                cols = {"compile": (name, c.knobs), "cuda_wgmma": ("cuda_wgmma", {})}
                if M <= schedules.cuda_stream.MAX_M:
                    cols["cuda_stream"] = ("cuda_stream", {})
                for module, knob_sets in ((schedules.cuda_wgmma, wgmma_knobs), (schedules.cuda_stream, stream_knobs)):
                    sname = module.__name__.rsplit(".", 1)[-1]
                    for kn in knob_sets:
                        try:
                            if module.supports(spec, lutc.target.resolve(target)):
                                contract.resolve_knobs(module, spec, **kn)
                                cols[f"{sname} {json.dumps(kn)}"] = (sname, kn)
                        except ValueError:
                            pass
                if name == "cuda_mma" and c.knobs.get("xsm") is False:
                    try:
                        contract.resolve_knobs(schedules.cuda_mma, spec, **{**c.knobs, "xsm": True})
                        cols["cuda_mma xsm"] = ("cuda_mma", {**c.knobs, "xsm": True})
                    except ValueError:
                        pass
                yield (N, K, M, w), spec, cols


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=["28672x8192", "8192x28672", "4096x4096"])
    ap.add_argument("--ms", nargs="*", type=int, default=[1, 8, 16, 24])
    ap.add_argument("--wbits", nargs="*", type=int, default=[2, 4])
    ap.add_argument("--wgmma-knobs", nargs="*", type=json.loads, default=[])
    ap.add_argument("--stream-knobs", nargs="*", type=json.loads, default=[])
    ap.add_argument("--format", default="uniform", choices=["uniform", "ternary"])
    ap.add_argument("--precompile", action="store_true")
    ap.add_argument("--humming", action="store_true", help="time Humming beside each row")
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    if args.precompile:
        from lutc.build import precompile
        for _, spec, cols in kernels(shapes, args.ms, args.wbits, "cuda:sm_90a", args.wgmma_knobs, args.stream_knobs,
                                     args.format):
            for s, kn in cols.values():
                precompile(lutc.build(spec, target="cuda:sm_90a", schedule=s, knobs=kn or None))
        return
    import torch
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    gen = torch.Generator(device="cuda").manual_seed(1)
    weights = "uniform, g128" if args.format == "uniform" else f"{args.format}, a scale per row"
    print(f"# {torch.cuda.get_device_name(0)}: kernel us (CUDA graph), fp16, {weights}")
    drawn = {}
    for (N, K, M, w), spec, cols in kernels(shapes, args.ms, args.wbits, "cuda", args.wgmma_knobs, args.stream_knobs,
                                            args.format):
        copies = B.copies_for(B.weight_bytes(N, K, w), l2)
        x = torch.randn(M, K, device="cuda", generator=gen).half()
        weights, launches, labels = {}, {}, {}
        for col, (s, kn) in cols.items():
            kernel = lutc.build(spec, target="cuda", schedule=s, knobs=kn or None)
            if kernel.layout not in weights:
                if args.format == "uniform":
                    qws = [B.random_packed(kernel.layout, N, K, w, gen) for _ in range(copies)]
                    weights[kernel.layout] = qws, B.dequant_packed(qws[0])
                else:   # drawn once per shape and layout: dequantizing on the host takes seconds
                    if (N, K, kernel.layout) not in drawn:
                        drawn[N, K, kernel.layout] = copies_of(spec, kernel.layout, copies)
                    weights[kernel.layout] = drawn[N, K, kernel.layout]
            qws, dense = weights[kernel.layout]
            ref = x.float() @ dense.T
            err = float((kernel(x, qws[0]).float() - ref).abs().max() / ref.abs().max())
            launches[col] = B.rotating(lambda i, kernel=kernel, qws=qws: kernel(x, qws[i]), copies)
            labels[col] = f"{col}={s}{kn or ''}" + ("" if err < tolerance(spec) else f" WRONG ({err:.1e})")
        if args.humming:
            launches["humming"] = B.rotating(B.peer_humming(N, K, M, copies, gen, w), copies)
            labels["humming"] = "humming"
        us = interleaved_graph_us(launches, calls=B.graph_calls(copies))
        weight = f"W{w}" if args.format == "uniform" else args.format
        print(f"{N}x{K} M={M} {weight} | " + " | ".join(f"{labels[c]}: {t:.1f}" for c, t in us.items()), flush=True)
        del weights, launches
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
