"""The ``qfab`` command. It sits above qfab.compiler, qfab.hw, qfab.sim and qfab.boards."""

import argparse
import pathlib
import sys
import time

import numpy as np

from qfab.base.errors import QfabError



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
    """Quantize the bundled digits MLP, compile it, simulate the whole test set in Verilator."""
    from qfab.compiler import reference
    from qfab.compiler.compile import compile_graph
    from qfab.compiler.fgraph import forward
    from qfab.compiler.frontends.onnx_import import import_onnx
    from qfab.compiler.info import format_table
    from qfab.compiler.modelfile import save
    from qfab.compiler.ptq import QuantConfig, quantize
    from qfab.compiler.datasets import digits
    from qfab.sim.accelerator import load_build, simulate
    model = _bundled("digits_mlp.onnx")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = digits("flat")
    fg = import_onnx(model)
    float_acc = float((forward(fg, x_test)[fg.outputs[0]].argmax(-1) == y_test).mean())
    print(f"[1/4] bundled model {model.name}: float accuracy {100 * float_acc:.2f}% on {len(y_test)} test digits")
    print("[2/4] post-training quantization (MSE calibration on the 1437 training digits)")
    results = {}
    for bits in (8, 4, 3, 2):
        graph = quantize(fg, x_train, QuantConfig(w_bits=bits, a_bits=bits, calib_method="mse"))
        results[bits] = (float((reference.run_float(graph, x_test).argmax(-1) == y_test).mean()), graph)
        save(graph, out / f"digits_mlp_w{bits}a{bits}.qfab")
    print("      bits  accuracy  vs float")
    for bits, (acc, _) in results.items():
        print(f"      w{bits}a{bits}  {100 * acc:7.2f}%  {100 * (acc - float_acc):+6.2f}")
    graph = results[args.bits][1]
    print(format_table(graph))
    print(f"[3/4] compiling the w{args.bits}a{args.bits} model for an initiation interval of {args.target_ii} cycles")
    manifest = compile_graph(graph, out / "build", target_ii=args.target_ii, log=lambda m: print("      " + m))
    _print_manifest(manifest)
    print(f"[4/4] simulating all {len(x_test)} test digits in Verilator (first build takes about a minute)")
    codes = reference.quantize_inputs(graph, x_test)
    res = simulate(load_build(out / "build"), codes, log=lambda m: print("      " + m))
    want = reference.run(graph, codes)[graph.outputs[0]]
    got = res.outputs.reshape(want.shape)
    bad = int((got != want).sum())
    hw_acc = float((got.argmax(-1) == y_test).mean())
    print(f"      {res.cycles} cycles; latency {res.latency}; interval {res.interval:g} cycles per inference "
          f"(bound {res.bound}, ratio {res.ratio:.3f})")
    print(f"      accuracy of the simulated hardware: {100 * hw_acc:.2f}%; "
          + ("bit-exact: every one of the " + str(want.size) + " outputs equals the reference" if not bad
             else f"MISMATCH in {bad} of {want.size} outputs"))
    print(f"results in {out}/ (quantized models, build/ with Verilog and manifest)")
    return 1 if bad else 0


def cmd_train(args):
    """Quantization-aware training on digits (needs the [train] extra)."""
    try:
        from qfab.compiler.train import train_qat
    except ImportError as e:
        raise QfabError(str(e)) from None
    from qfab.compiler.modelfile import save
    print(f"training the digits {args.model} at w{args.wbits}a{args.abits}, target sparsity {args.sparsity:.0%}, "
          f"{args.epochs} epochs ...")
    graph, report = train_qat(args.model, w_bits=args.wbits, a_bits=args.abits, sparsity=args.sparsity,
                              epochs=args.epochs, seed=args.seed)
    print(f"accuracy: float {100 * report['float_accuracy']:.2f}%, trained integer model "
          f"{100 * report['accuracy']:.2f}% (agrees with the torch model on {100 * report['agreement']:.1f}% "
          f"of images); weight sparsity {100 * report['weight_sparsity']:.1f}%; {report['train_seconds']:.1f} s")
    print(f"{'layer':<14}{'weights':>9}{'sparsity':>10}{'Huffman bits':>14}{'ratio vs fp32':>15}")
    for name, c in report["compression"].items():
        print(f"{name:<14}{c['weights']:>9}{100 * c['sparsity']:>9.1f}%{c['huffman_bits']:>14}{c['ratio']:>14.2f}x")
    save(graph, args.output)
    print(f"wrote {args.output}")
    if args.qdq:
        from qfab.compiler.frontends.onnx_qdq_write import save_qdq
        save_qdq(graph, args.qdq)
        print(f"wrote {args.qdq} (QDQ ONNX)")


def cmd_compile(args):
    from qfab.compiler.compile import compile_graph, load_folding
    graph = _graph(args)
    budget = None
    if args.board:
        from qfab.boards.registry import budget_for, get_board
        board = get_board(args.board)
        budget = budget_for(board)
        cells = f"{budget.logic_cells} logic cells, " if budget.logic_cells else ""
        print(f"board {board.name}: the accelerator may use {cells}{budget.luts} LUTs, {budget.ffs} FFs, "
              f"{budget.dsps} DSPs, {budget.bram_bits} block RAM bits (the device less the host link and board top)")
    folding = load_folding(args.folding) if args.folding else None
    manifest = compile_graph(graph, args.output, target_ii=args.target_ii, budget=budget, folding=folding,
                             style=args.style)
    _print_manifest(manifest)
    if args.plot:
        from qfab.compiler.plots import build_plot
        build_plot(manifest, args.plot)
        print(f"pipeline and resources plot: {args.plot}")


def _print_manifest(manifest):
    est = manifest["estimates"]
    print(f"\n{'stage':<22}{'kind':<9}{'PE':>4}{'SIMD':>6}  {'style':<13}{'cycles':>9}{'LUTs':>8}{'FFs':>7}{'BRAM bits':>11}")
    for s in manifest["stages"]:
        e = est["per_layer"].get(s["name"], {})
        print(f"{s['name']:<22}{s['kind']:<9}{s['pe'] or '':>4}{s['simd'] or '':>6}  {s['style'] or '':<13}"
              f"{s['cycles'] or '':>9}{e.get('luts', ''):>8}{e.get('ffs', ''):>7}{e.get('bram_bits', ''):>11}")
    t = est["total"]
    print(f"{'total (with streams)':<54}{manifest['initiation_interval']:>9}{t['luts']:>8}{t['ffs']:>7}{t['bram_bits']:>11}")
    print(f"initiation interval {manifest['initiation_interval']} cycles per inference (the slowest stage); "
          f"estimated latency {manifest['latency_estimate']} cycles; DSPs {t['dsps']}"
          + (f"; {t['logic_cells']} iCE40 logic cells" if "logic_cells" in t else ""))


def cmd_simulate(args):
    from qfab.compiler import reference
    from qfab.compiler.modelfile import load
    from qfab.sim.accelerator import StalledError, load_build, simulate
    try:
        build = load_build(args.build)
    except (FileNotFoundError, ValueError) as e:
        raise QfabError(str(e)) from None
    graph = load(build.graph_path)
    x = _load_npy(args.input, "input")
    codes = reference.quantize_inputs(graph, x) if x.dtype.kind == "f" else reference.to_ir_layout(graph, x)
    if x.dtype.kind != "f":
        from qfab.compiler.reference import _check_codes
        codes = _check_codes(graph, graph.inputs[0], codes)
    print(f"simulating {len(codes)} inputs in Verilator (stall probability {args.stall}) ...")
    try:
        res = simulate(build, codes, stall=args.stall, seed=args.seed, trace=args.trace)
    except StalledError as e:
        raise QfabError(str(e)) from None
    except ValueError as e:
        raise QfabError(str(e)) from None
    want = reference.run(graph, codes)[graph.outputs[0]]
    got = res.outputs.reshape(want.shape)
    bad = int((got != want).sum())
    out = reference.output_codes(graph, got) if args.int else reference.dequantize_outputs(graph, got)
    np.save(args.output, out.astype(np.int64) if args.int else out.astype(np.float32))
    print(f"build {res.build_seconds:.1f} s{' (cached)' if not res.built else ''}, run {res.run_seconds:.1f} s: "
          f"{res.cycles} cycles, {res.cycles / max(res.run_seconds, 1e-9) / 1e6:.2f} M cycles/s, "
          f"{len(codes) / max(res.run_seconds, 1e-9):.0f} inferences/s")
    print(f"latency of the first result {res.latency} cycles; steady-state interval {res.interval:g} cycles "
          f"per inference; analytical bound {res.bound} (ratio {res.ratio:.3f})")
    _print_utilization(res, build.manifest)
    if args.plot:
        from qfab.sim.plots import utilization_plot
        utilization_plot(res, build.manifest, args.plot)
        print(f"utilization plot: {args.plot}")
    if args.trace:
        print(f"waveform: {args.trace}")
    print(f"wrote {args.output}")
    if bad:
        raise QfabError(f"MISMATCH: {bad} of {want.size} output elements differ from the reference")
    print(f"bit-exact: all {want.size} output elements equal the reference")


def _print_utilization(res, manifest):
    if not res.stages:
        return
    from qfab.sim.plots import stage_shares
    print(f"{'stage':<22}{'compute':>9}{'in blocked':>12}{'out blocked':>13}")
    for name, compute, blocked_in, blocked_out in stage_shares(res, manifest):
        print(f"{name:<22}{100 * compute:>8.1f}%{100 * blocked_in:>11.1f}%{100 * blocked_out:>12.1f}%")
    print("(compute: the stage's analytical cycles over all cycles; blocked: a beat waited, on the input "
          "because the stage was busy, on the output because the next stage was)")


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

    c = sub.add_parser("compile", help="lower a model to a dataflow accelerator (Verilog + manifest)")
    c.add_argument("model", help="MODEL.qfab or MODEL.onnx (float with --calib, or QDQ/QOperator)")
    _add_quant_options(c)
    c.add_argument("-o", "--output", required=True, metavar="BUILD", help="build folder")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--target-ii", type=int, metavar="N", help="cycles per inference to reach (fold to balance)")
    g.add_argument("--board", metavar="NAME", help="fold for the fastest design that fits this board")
    c.add_argument("--folding", metavar="FILE", help="JSON: {layer: {pe, simd, style}} overrides")
    c.add_argument("--style", choices=["bit_parallel", "bit_serial"], default="bit_parallel",
                   help="MAC style of the matrix-vector engines (default bit_parallel)")
    c.add_argument("--plot", metavar="FILE.png", help="plot the pipeline's balance and the estimated resources per layer")
    c.set_defaults(func=cmd_compile)

    s = sub.add_parser("simulate", help="run a build in Verilator, bit-exact against the reference")
    s.add_argument("build", help="build folder from qfab compile")
    s.add_argument("--input", required=True, metavar="X.npy", help="float inputs or integer codes")
    s.add_argument("-o", "--output", required=True, metavar="Y.npy")
    s.add_argument("--int", action="store_true", help="write integer output codes")
    s.add_argument("--stall", type=float, default=0.0, metavar="P",
                   help="probability of a random input gap and output stall per cycle")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--plot", metavar="FILE.png", help="plot the per-stage utilization")
    s.add_argument("--trace", metavar="FILE.fst", help="write a waveform (.fst or .vcd)")
    s.set_defaults(func=cmd_simulate)

    t = sub.add_parser("train", help="quantization-aware training on digits (needs pip install -e '.[train]')")
    t.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    t.add_argument("--wbits", type=int, default=4)
    t.add_argument("--abits", type=int, default=4)
    t.add_argument("--sparsity", type=float, default=0.0, help="target weight sparsity (pruning), e.g. 0.75")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("-o", "--output", required=True, metavar="MODEL.qfab")
    t.add_argument("--qdq", metavar="MODEL.onnx", help="also export QDQ ONNX")
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("demo", help="the main job on the bundled digits model")
    m.add_argument("--out", default="out", help="folder for the results (default ./out)")
    m.add_argument("--bits", type=int, default=4, choices=[8, 4, 3, 2], help="which model to build (default 4)")
    m.add_argument("--target-ii", type=int, default=64, help="cycles per inference (default 64)")
    m.set_defaults(func=cmd_demo)

    from qfab.board_cli import add_commands
    add_commands(sub)
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
