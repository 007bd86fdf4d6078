"""The ``qfab`` command. It sits above qfab.compiler, qfab.hw, qfab.sim and qfab.boards."""

import argparse
import pathlib
import sys
import time

import numpy as np

from qfab.compiler.errors import QfabError



def _bundled(name):
    from importlib.resources import files
    return pathlib.Path(str(files("qfab.compiler") / "data" / name))


def _load_npy(path, what):
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise QfabError(f"{what} {path}: no such file") from None
    except (ValueError, OSError) as e:
        raise QfabError(f"{what} {path}: not a numpy .npy array readable without pickle ({e})") from None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
        raise QfabError(f"{what} {path}: expected a numeric array, got {getattr(a, 'dtype', type(a))}")
    return a


def _config(args):
    from qfab.compiler.ptq import QuantConfig, load_config
    over = dict(w_bits=args.wbits, a_bits=args.abits, calib_method=args.calib_method,
                multipoint=getattr(args, "multipoint", None))
    if args.config:
        return load_config(args.config, **over)
    return QuantConfig(**{k: v for k, v in over.items() if v is not None})


def _graph(args, need_config=True):
    from qfab.compiler.load import load_graph
    calib = _load_npy(args.calib, "calibration data") if getattr(args, "calib", None) else None
    config = _config(args) if need_config else None
    if getattr(args, "mixed_budget", None):
        return _mixed(args, calib, config)
    notes = []
    graph = load_graph(args.model, calib, config, notes=notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return graph


def _mixed(args, calib, config):
    from qfab.compiler.frontends.onnx_import import import_onnx
    from qfab.compiler.load import is_quantized_onnx
    from qfab.compiler.mixed import mixed_quantize
    from qfab.compiler.reference import to_ir_layout
    if not str(args.model).endswith(".onnx") or calib is None:
        raise QfabError("--mixed-budget needs a float ONNX model and --calib data")
    fg = import_onnx(args.model)
    if is_quantized_onnx(fg):
        raise QfabError(f"{args.model} is already quantized; --mixed-budget applies to float models")
    graph, bits, sens = mixed_quantize(fg, to_ir_layout(fg, np.asarray(calib)), args.mixed_budget, config)
    print("mixed precision, weight bits per layer: " + ", ".join(f"{k}={v}" for k, v in bits.items()))
    return graph


def _add_quant_options(p):
    p.add_argument("--calib", metavar="X.npy", help="calibration inputs (float, the model's layout)")
    p.add_argument("--wbits", type=int, help="weight bits, 1 to 8 (default 8)")
    p.add_argument("--abits", type=int, help="activation bits, 1 to 8 (default 8)")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML quantization config (bits per layer ...)")
    p.add_argument("--calib-method", choices=["minmax", "percentile", "mse"], help="activation range method")
    p.add_argument("--mixed-budget", metavar="BUDGET",
                   help="choose weight bits per layer under a weight-memory budget: '40%%' of 8-bit, '3kB', '2000B'")
    p.add_argument("--multipoint", type=float, metavar="BUDGET",
                   help="multipoint weights: extra points as a fraction of each layer's channels (e.g. 0.1)")


def cmd_quantize(args):
    from qfab.compiler.info import format_table
    from qfab.compiler.modelfile import save
    graph = _graph(args)
    save(graph, args.output)
    print(format_table(graph))
    print(f"wrote {args.output}")


def cmd_reference(args):
    from qfab.compiler import reference
    graph = _graph(args)
    x = _load_npy(args.input, "input")
    if x.dtype.kind == "f":
        codes = reference.quantize_inputs(graph, x)
    else:
        codes = reference.to_ir_layout(graph, x)
    t = time.perf_counter()
    y = reference.run(graph, codes)[graph.outputs[0]]
    dt = time.perf_counter() - t
    out = reference.output_codes(graph, y) if args.int else reference.dequantize_outputs(graph, y)
    np.save(args.output, out.astype(np.int64) if args.int else out.astype(np.float32))
    print(f"{len(codes)} inputs in {dt * 1e3:.1f} ms; wrote {args.output} {out.shape} "
          f"({'integer codes' if args.int else 'dequantized floats'})")


def cmd_info(args):
    from qfab.compiler.info import format_table
    print(format_table(_graph(args)))


def cmd_doctor(args):
    from qfab.doctor import doctor
    return 1 if doctor() else 0


def cmd_demo(args):
    from qfab.compiler import reference
    from qfab.compiler.fgraph import forward
    from qfab.compiler.frontends.onnx_import import import_onnx
    from qfab.compiler.info import format_table
    from qfab.compiler.ptq import QuantConfig, quantize
    from qfab.datasets import digits
    model = _bundled("digits_mlp.onnx")
    x_train, y_train, x_test, y_test = digits("flat")
    fg = import_onnx(model)
    float_acc = float((forward(fg, x_test)[fg.outputs[0]].argmax(-1) == y_test).mean())
    print(f"bundled model: {model.name} (float accuracy {100 * float_acc:.2f}% on {len(y_test)} test digits)")
    results = []
    for bits in (8, 4, 3, 2):
        graph = quantize(fg, x_train, QuantConfig(w_bits=bits, a_bits=bits, calib_method="mse"))
        acc = float((reference.run_float(graph, x_test).argmax(-1) == y_test).mean())
        results.append((bits, acc, graph))
    print(format_table(results[1][2]))
    print("\nbits  accuracy  vs float")
    for bits, acc, _ in results:
        print(f"w{bits}a{bits}  {100 * acc:7.2f}%  {100 * (acc - float_acc):+6.2f}")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from qfab.compiler.modelfile import save
    for bits, _, graph in results:
        save(graph, out / f"digits_mlp_w{bits}a{bits}.qfab")
    print(f"\nwrote {', '.join(f'digits_mlp_w{b}a{b}.qfab' for b, _, _ in results)} to {out}/")


def parser():
    p = argparse.ArgumentParser(prog="qfab", description="Compile quantized neural networks to FPGA accelerators.")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="quantize a float ONNX model (or import a quantized one) to .qfab")
    q.add_argument("model", help="MODEL.onnx (float with --calib, or QDQ/QOperator) or MODEL.qfab")
    _add_quant_options(q)
    q.add_argument("-o", "--output", required=True, metavar="MODEL.qfab")
    q.set_defaults(func=cmd_quantize)

    r = sub.add_parser("reference", help="run the bit-exact integer reference")
    r.add_argument("model", help="MODEL.qfab or MODEL.onnx")
    _add_quant_options(r)
    r.add_argument("--input", required=True, metavar="X.npy",
                   help="float inputs (quantized as the model's input), or integer codes")
    r.add_argument("-o", "--output", required=True, metavar="Y.npy")
    r.add_argument("--int", action="store_true", help="write integer output codes, not dequantized floats")
    r.set_defaults(func=cmd_reference)

    i = sub.add_parser("info", help="layers, shapes, bits, parameter memory, MACs")
    i.add_argument("model")
    _add_quant_options(i)
    i.set_defaults(func=cmd_info)

    d = sub.add_parser("doctor", help="check that every tool of the flow is installed")
    d.set_defaults(func=cmd_doctor)

    m = sub.add_parser("demo", help="the main job on the bundled digits model")
    m.add_argument("--out", default="out", help="folder for the results (default ./out)")
    m.set_defaults(func=cmd_demo)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except QfabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
