"""The ``lutc`` command line (``lutc = lutc.cli:main``; also ``python -m lutc``).

    lutc export --shape 1,4096,4096 --wbits 2 --group-size 128 -o out/ [--target host]
                [--name NAME] [--symbol SYM] [--emit so,o,c] [--weights w.pt]
    lutc tune --shapes 1x4096x4096,1x11008x4096 --wbits 2 [--trials 64] [--target cuda]
    lutc tune --shapes 1x4096x4096 --target TARGET --rpc-tracker HOST:9190 --rpc-key KEY

Subcommands register themselves in :data:`COMMANDS`: a function that adds its parser to the
subparsers and sets ``run`` (``args -> exit code``). The weight-format options
(:func:`add_format_args`) are shared by ``export`` and ``tune``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

# The vocabulary only (no torch, no TVM): `lutc --help` answers at once.
from .spec import ACT_DTYPES, ACT_GROUPS, BIT_WIDTHS, FORMATS, GROUP_SIZES, SCALE_DTYPES, TABLE_DTYPES
from .model_shapes import MODELS, linear_shapes as model_linear_shapes

#: Every subcommand's help shows each option's default.
HELP_FORMAT = argparse.ArgumentDefaultsHelpFormatter


def add_format_args(g) -> None:
    """The weight-format, activation and target options every subcommand shares."""
    g.add_argument("--wbits", type=int, default=2, choices=BIT_WIDTHS, help="bits per weight")
    g.add_argument("--group-size", type=int, default=None, choices=GROUP_SIZES,
                   help="weights per scale, -1 for one scale per row (default: 128; -1 for ternary)")
    g.add_argument("--format", default="uniform", choices=FORMATS, help="weight format")
    g.add_argument("--zero-point", action="store_true", help="uniform: per-group zero points")
    g.add_argument("--act-dtype", default="float32", choices=ACT_DTYPES, help="dtype of x and y")
    g.add_argument("--target", default=None,
                   help="host (default), llvm/x86, arm, arm-i8mm, cuda, cuda:sm_XX (see lutc.target)")


def add_workload_args(p: argparse.ArgumentParser) -> None:
    """The options naming one workload and target, as :func:`lutc.compile` takes them."""
    g = p.add_argument_group("workload (see lutc.compile)")
    g.add_argument("--shape", required=True, help="M,N,K: x is [M, K], the weight [N, K]")
    add_format_args(g)
    g.add_argument("--scale-dtype", default="float16", choices=SCALE_DTYPES, help="dtype of the coefficients")
    g.add_argument("--g", type=int, default=4, choices=ACT_GROUPS, help="activations per table group")
    g.add_argument("--no-symmetrize", action="store_true", help="store full tables")
    g.add_argument("--table-dtype", default=None, choices=TABLE_DTYPES,
                   help="default: the target's (int8 where a SIMD lookup kernel exists, as lutc.compile)")
    g.add_argument("--schedule", default=None, help="a module of schedules/ (default: the target's)")
    g.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE",
                   help="schedule knob, repeatable (e.g. --knob n_block=32)")


def compile_from_args(args: argparse.Namespace):
    """``lutc.compile`` of the workload options."""
    import lutc
    try:
        shape = tuple(int(v) for v in args.shape.split(","))
    except ValueError:
        raise ValueError(f"--shape must be M,N,K integers, got {args.shape!r}") from None
    return lutc.compile(shape, wbits=args.wbits, group_size=args.group_size, format=args.format,
                        zero_point=args.zero_point, act_dtype=args.act_dtype,
                        scale_dtype=args.scale_dtype, g=args.g, symmetrize=not args.no_symmetrize,
                        table_dtype=args.table_dtype, target=args.target, schedule=args.schedule,
                        knobs=_knobs(args.knob))


def add_export(sub) -> None:
    p = sub.add_parser(
        "export", formatter_class=HELP_FORMAT, help="compile a kernel and write it for other runtimes",
        description="Compile one kernel and write it as a tvm-ffi shared library, an object, C or "
                    "CUDA source, with a header documenting the packed layout, the signature and "
                    "the launch configuration (see lutc.exporter).")
    add_workload_args(p)
    p.add_argument("-o", "--out", required=True, help="output directory (created if missing)")
    p.add_argument("--name", default=None, help="file stem and C prefix (default: from the workload)")
    p.add_argument("--symbol", default="main",
                   help="entry symbol __tvm_ffi_SYMBOL (default main); unique per kernel to link several")
    p.add_argument("--emit", default=None,
                   help="comma list of so,o,c (CPU) or cu,so (CUDA); default: all that apply")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="a float weight [N, K] (.pt tensor or .npy) to quantize in this format and "
                        "write as NAME.lutcw, which lutc_weights.h reads")
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    import lutc
    kernel = compile_from_args(args)
    emit = [e.strip() for e in args.emit.split(",") if e.strip()] if args.emit else None
    result = lutc.export(kernel, args.out, name=args.name, symbol=args.symbol, emit=emit)
    if args.weights:
        weight = _load_weight(args.weights)
        spec = kernel.spec
        if tuple(weight.shape) != (spec.N, spec.K):
            raise ValueError(f"--weights has shape {tuple(weight.shape)}, expected [N, K] = "
                             f"{(spec.N, spec.K)} for --shape {args.shape}")
        qw = lutc.quantize(weight, wbits=spec.wbits, group_size=spec.group_size, format=spec.format,
                           zero_point=spec.zero_point, scale_dtype=spec.scale_dtype)
        # in the kernel's own layout: the exported header checks it (NAME_LAYOUT_CODE)
        result.files["weights"] = lutc.save_weights(qw, Path(args.out) / f"{result.name}.lutcw",
                                                    layout=kernel.layout)
    print(f"{kernel!r}")
    for kind, path in result.files.items():
        print(f"  {kind:<8} {path}")
    for kind, why in result.skipped.items():
        print(f"  {kind:<8} skipped: {why}")
    return 0


def add_tune(sub) -> None:
    p = sub.add_parser(
        "tune", formatter_class=HELP_FORMAT, help="tune kernels for shapes or a model's Linear layers",
        description="Tune lutc kernels (lutc.tune); records go to the tuning logs. Examples: "
                    "lutc tune --shapes 1x4096x4096,1x11008x4096 --wbits 2 --trials 64; "
                    "lutc tune --model mypkg.models:build_model --m 1,16 --wbits 4 --seconds 120 --report tuned.md; "
                    "lutc tune --model-shapes llama-3-8b --m 1,16,128 --wbits 2; "
                    "lutc tune --stale --target cuda (after an upgrade: re-tune records judged against an older default)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shapes", help="comma-separated MxNxK, e.g. 1x4096x4096,16x11008x4096")
    src.add_argument("--model", help="module:callable returning an nn.Module; its Linear layers are tuned")
    src.add_argument("--model-shapes", choices=sorted(MODELS),
                     help="the Linear shapes of a known open model (lutc.model_shapes)")
    src.add_argument("--stale", action="store_true",
                     help="this device's logged workloads whose run did not time today's default (it has changed "
                          "since: lutc.autotune.stale_workloads); their records may now lose to it")
    p.add_argument("--m", default="1", help="with --model or --model-shapes: comma-separated M values")
    add_format_args(p)
    p.add_argument("--table-dtype", default=None, choices=TABLE_DTYPES,
                   help="default: the target's (int8 where a SIMD lookup kernel exists)")
    p.add_argument("--trials", type=int, default=64, help="measurements per shape")
    p.add_argument("--seconds", type=float, default=None, help="time budget per shape")
    p.add_argument("--total-seconds", type=float, default=None,
                   help="time budget for the whole run: no shape starts that would overrun it (the "
                        "longest so far is the estimate); those left are named, for a later run")
    p.add_argument("--log", default=None, help="tuning log file (default: tuning_logs/<family>.jsonl)")
    p.add_argument("--report", default=None, help="also write the closing table (Markdown) here")
    p.add_argument("--pool-mib", type=int, default=512, help="weight copies rotated while timing")
    g = p.add_argument_group("a fleet (lutc.fleet): build here, measure on TVM RPC servers")
    g.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT",
                   help="the tracker (python -m tvm.exec.rpc_tracker); with --rpc-key")
    g.add_argument("--rpc-key", default=None, help="the servers' key (python -m tvm.exec.rpc_server --key)")
    g.add_argument("--rpc-device", default=None, help="the hardware's name in the records (default rpc:KEY)")
    p.set_defaults(run=run_tune, parser=p)


def run_tune(args: argparse.Namespace) -> int:
    import importlib
    from .autotune import linear_shapes, report, stale_workloads, tune
    from .tuner import TuningLog
    if args.shapes:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
        if any(len(s) != 3 for s in shapes):
            args.parser.error("--shapes takes MxNxK triples, e.g. 1x4096x4096")
    elif args.model_shapes:
        shapes = model_linear_shapes(args.model_shapes, [int(m) for m in args.m.split(",")])
    elif args.stale:
        from .fleet import fleet_device
        device = fleet_device(args.rpc_key, args.rpc_device) if args.rpc_tracker else None
        shapes = stale_workloads(args.target, log=TuningLog(args.log) if args.log else None, device=device)
        print(f"{len(shapes)} workload(s) whose tuning run did not time today's default", file=sys.stderr)
        if not shapes:
            return 0
    else:
        module_name, _, attr = args.model.partition(":")
        model = getattr(importlib.import_module(module_name), attr or "model")
        model = model() if callable(model) and not hasattr(model, "modules") else model
        shapes = linear_shapes(model, [int(m) for m in args.m.split(",")])
        if not shapes:
            args.parser.error(f"{args.model} has no nn.Linear layers")
    results = tune(shapes, target=args.target, trials=args.trials, seconds=args.seconds,
                   log=TuningLog(args.log) if args.log else None, pool_mib=args.pool_mib,
                   wbits=args.wbits, group_size=args.group_size, format=args.format,
                   zero_point=args.zero_point, act_dtype=args.act_dtype, table_dtype=args.table_dtype,
                   rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key, rpc_device=args.rpc_device,
                   total_seconds=args.total_seconds)
    text = report(results)
    print(text)
    if args.report:
        with open(args.report, "w") as f:
            f.write(text + "\n")
    return 0


#: Subcommand registrars, in help order.
COMMANDS: list = [add_export, add_tune]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``lutc`` command; returns its exit code (2 for a bad request)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="lutc", description="lutc: LUT mixed-precision GEMM kernels")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, RuntimeError, OSError) as e:  # SpecError is a ValueError
        print(f"lutc {args.command}: error: {e}", file=sys.stderr)
        return 2


def _knobs(items: Sequence[str]) -> dict:
    knobs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--knob takes NAME=VALUE, got {item!r}")
        knobs[name] = int(value) if value.lstrip("-").isdigit() else value
    return knobs


def _load_weight(path: str):
    import numpy as np
    import torch
    if path.endswith(".npy"):
        return torch.from_numpy(np.load(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, torch.Tensor):
        raise TypeError(f"{path} holds a {type(obj).__name__}; expected one float tensor [N, K]")
    return obj


if __name__ == "__main__":
    sys.exit(main())
