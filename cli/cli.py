"""The ``qfab`` command: argument parsing, printing and exit codes over `qfab.flow`. It sits above
qfab.compiler, qfab.hw, qfab.sim and qfab.boards; the board commands are in `qfab.board_cli`."""

import argparse
import sys
import time

import numpy as np

from qfab import flow
from qfab.base.errors import QfabError
from qfab.cli_common import (
    add_quant_options,
    board_help,
    boards_fitting,
    build_files,
    bundled,
    check_plot,
    check_trace,
    distinct,
    fold_command,
    fraction,
    graph_from_args,
    input_paths,
    non_negative_int,
    positive_int,
    print_manifest,
)


def save_model(graph, path):
    """Write ``graph`` as a .qfab file at exactly ``path`` (replaced whole)."""
    from qfab.compiler.modelfile import save
    return flow.write_output(path, lambda f: save(graph, f))


def cmd_quantize(args):
    from qfab.compiler.info import format_table
    out = flow.output_file(args.output, inputs=input_paths(args))
    graph = graph_from_args(args)
    save_model(graph, out)
    print(format_table(graph))
    print(f"wrote {out}")


def cmd_reference(args):
    from qfab.compiler import reference
    inputs = input_paths(args)
    flow.output_file(args.output, inputs=inputs)
    graph = graph_from_args(args)
    codes = flow.input_codes(graph, flow.load_array(args.input, "input"))
    t = time.perf_counter()
    y = reference.run(graph, codes)[graph.outputs[0]]
    dt = time.perf_counter() - t
    out = flow.save_outputs(graph, y, args.output, integer=args.int, inputs=inputs)
    print(f"{len(codes)} inputs in {dt * 1e3:.1f} ms; wrote {args.output} {out.shape} "
          f"({'integer codes' if args.int else 'dequantized floats'})")


def cmd_info(args):
    import pathlib

    from qfab.compiler.info import float_info, format_table
    if pathlib.Path(args.model).is_dir():              # a build folder: its model
        from qfab.compiler.buildfolder import Build
        build = Build.load(args.model)
        args.model = str(build.folder / build.manifest.files.model)
        print(f"build {build.folder}: model {args.model}")
    structure = None if getattr(args, "calib", None) else float_info(args.model)   # a float model: its structure
    print(structure or format_table(graph_from_args(args)))


def cmd_doctor(args):
    from qfab.doctor import doctor
    return 1 if doctor() else 0


def cmd_demo(args):
    """Quantize the bundled digits MLP, compile it, simulate the whole test set in Verilator."""
    from qfab.compiler import reference
    from qfab.compiler.datasets import digits
    from qfab.compiler.fgraph import forward
    from qfab.compiler.frontends.onnx_import import import_onnx
    from qfab.compiler.info import format_table
    from qfab.compiler.ptq import QuantConfig, quantize
    model = bundled("digits_mlp.onnx")
    out = flow.output_folder(args.out, "--out")
    if out.is_dir():
        for name in [f"digits_mlp_w{bits}a{bits}.qfab" for bits in (8, 4, 3, 2)]:
            flow.output_file(out / name)
        for name in DEMO_DATA:
            flow.output_file(out / name)
        flow.output_folder(out / "build")
    out.mkdir(exist_ok=True)
    x_train, y_train, x_test, y_test = digits("flat")
    flow.write_output(out / DEMO_DATA[0], lambda f: np.save(f, x_test, allow_pickle=False))
    flow.write_output(out / DEMO_DATA[1], lambda f: np.save(f, y_test, allow_pickle=False))
    fg = import_onnx(model)
    float_acc = float((forward(fg, x_test)[fg.outputs[0]].argmax(-1) == y_test).mean())
    print(f"[1/4] bundled model {model.name}: float accuracy {100 * float_acc:.2f}% on {len(y_test)} test digits")
    print("[2/4] post-training quantization (MSE calibration on the 1437 training digits)")
    results = {}
    for bits in (8, 4, 3, 2):
        graph = quantize(fg, x_train, QuantConfig(w_bits=bits, a_bits=bits, calib_method="mse"))
        results[bits] = (float((reference.run_float(graph, x_test).argmax(-1) == y_test).mean()), graph)
        save_model(graph, out / f"digits_mlp_w{bits}a{bits}.qfab")
    print("      bits  accuracy  vs float")
    for bits, (acc, _) in results.items():
        print(f"      w{bits}a{bits}  {100 * acc:7.2f}%  {100 * (acc - float_acc):+6.2f}")
    graph = results[args.bits][1]
    print(format_table(graph))
    print(f"[3/4] compiling the w{args.bits}a{args.bits} model for an initiation interval of {args.target_ii} cycles")

    def indent(m):
        print("      " + m)
    compiled = flow.compile(graph, out / "build", target_ii=args.target_ii, log=indent)
    print_manifest(compiled.manifest)
    print(f"[4/4] simulating all {len(x_test)} test digits in Verilator (first build takes about a minute)")
    from qfab.report import record_accuracy
    record_accuracy(compiled.build, [{"w_bits": b, "a_bits": b, "accuracy": acc, "samples": len(y_test),
                                      "this_build": b == args.bits} for b, (acc, _) in results.items()],
                    dataset=f"scikit-learn digits, {len(y_test)} test images", float_accuracy=float_acc)
    sim = flow.simulate(compiled.build, x_test, log=indent)
    res, check = sim.sim, sim.comparison
    hw_acc = float((sim.outputs.reshape(len(y_test), -1).argmax(-1) == y_test).mean())
    print(f"      {res.cycles} cycles; latency {res.latency}; interval {res.interval:g} cycles per inference "
          f"(bound {res.bound}, ratio {res.ratio:.3f})")
    print(f"      accuracy of the simulated hardware: {100 * hw_acc:.2f}%; "
          + ("bit-exact: every one of the " + str(check.elements) + " outputs equals the reference"
             if check.bit_exact else f"MISMATCH in {check.mismatches} of {check.elements} outputs"))
    print(f"results in {out}/ (quantized models, build/ with Verilog, manifest and reports/simulation.json, "
          f"the test digits in {DEMO_DATA[0]} (the model's layout: 64 pixels divided by 16) and their labels "
          f"in {DEMO_DATA[1]})")
    _print_fits(compiled.build)
    for line in demo_next_steps(out, args.bits):
        print(line)
    return 0 if check.bit_exact else 1


DEMO_DATA = ("test_inputs.npy", "test_labels.npy")


def demo_next_steps(out, bits):
    """The commands that carry on from ``qfab demo --out OUT``, with the files it left there."""
    model, x = out / f"digits_mlp_w{bits}a{bits}.qfab", out / DEMO_DATA[0]
    board = out / "build_icebreaker"
    return ["next steps, with the files the demo left:",
            f"  qfab reference {model} --input {x} -o {out / 'y_reference.npy'}",
            f"  qfab simulate {out / 'build'} --input {x} -o {out / 'y_simulated.npy'}",
            f"  qfab compile {model} --board icebreaker -o {board}",
            f"  qfab run {board} --board icebreaker --sim --input {x} -o {out / 'y_board.npy'} --check",
            f"  qfab bitstream {board} --board icebreaker   (then qfab deploy, qfab run --port)"]


def _print_fits(build):
    """Which boards the build fits by its estimate, and how to fold it for one when it fits none."""
    fits = boards_fitting(build.manifest)
    good = [name for name, (ok, _) in fits.items() if ok]
    if good:
        print(f"by the estimate, this build fits: {', '.join(good)}"
              + (f" (not {', '.join(n for n in fits if n not in good)})" if len(good) < len(fits) else ""))
        return
    from qfab.cli_common import folds_for
    graph = build.load_model()
    foldable = [name for name in fits if folds_for(graph, name)[0]]
    print(f"by the estimate, this build fits no board (e.g. {next(iter(fits))}: {next(iter(fits.values()))[1]})")
    if foldable:
        print(f"to fold it for the {foldable[0]}: {fold_command(build, foldable[0])}")
    else:
        print("even fully folded it fits no board: quantize with fewer bits (--wbits/--abits)")


def cmd_train(args):
    """Quantization-aware training on digits (needs the [train] extra)."""
    try:
        from qfab.compiler.train import train_qat
    except ImportError as e:
        raise QfabError(str(e)) from None
    out = flow.output_file(args.output)
    qdq = flow.output_file(args.qdq, "--qdq") if args.qdq else None
    distinct(("-o", args.output), ("--qdq", args.qdq))
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
    save_model(graph, out)
    print(f"wrote {out}")
    if qdq:
        from qfab.compiler.frontends.onnx_qdq_write import qdq_model
        model = qdq_model(graph, "input", "output")
        flow.write_output(qdq, lambda f: f.write(model.SerializeToString()))
        print(f"wrote {qdq} (QDQ ONNX)")


def cmd_compile(args):
    from qfab.compiler.buildfolder import MANIFEST
    inputs = input_paths(args)
    out = flow.output_folder(args.output, "build folder", inputs=inputs)
    if out.is_dir() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise QfabError(f"build folder {out}: not empty and not a qfab build folder; refusing to replace it "
                        f"(choose a new or empty folder)")
    check_plot(args.plot, inputs)
    graph = graph_from_args(args)
    compiled = flow.compile(graph, args.output, target_ii=args.target_ii, board=args.board, folding=args.folding,
                            style=args.style)
    print_manifest(compiled.manifest)
    _print_fits(compiled.build)
    if args.plot:
        from qfab.compiler.plots import build_plot
        build_plot(compiled.manifest, args.plot, budget=compiled.budget)
        print(f"pipeline and resources plot: {args.plot}")


def cmd_simulate(args):
    from qfab.compiler.buildfolder import Build
    build = Build.load(args.build)
    inputs = (args.input, *build_files(build))
    flow.output_file(args.output, inputs=inputs)
    check_plot(args.plot, inputs)
    check_trace(args.trace, inputs)
    distinct(("-o", args.output), ("--plot", args.plot), ("--trace", args.trace))
    x = flow.load_array(args.input, "input")
    if x.size == 0:
        raise QfabError(f"input {args.input}: empty array; nothing to simulate")
    print(f"simulating {len(x)} inputs in Verilator"
          + (f" (random input gaps and output stalls, each with probability {args.stall} per cycle, seed {args.seed})"
             if args.stall else "") + " ...")
    sim = flow.simulate(build, x, stall=args.stall, seed=args.seed, trace=args.trace)
    res = sim.sim
    flow.save_outputs(sim.graph, sim.outputs, args.output, integer=args.int, inputs=inputs)
    speed = (f"{res.cycles / max(res.run_seconds, 1e-9) / 1e6:.2f} M cycles/s, "
             f"{len(sim.codes) / max(res.run_seconds, 1e-9):.0f} inferences/s" if res.cycles >= 100_000 else
             "too short to measure the simulator's speed (start-up dominates)")
    print(f"build {res.build_seconds:.1f} s{' (cached)' if not res.built else ''}, run {res.run_seconds:.1f} s: "
          f"{res.cycles} cycles, {speed}")
    if args.stall:
        print(f"injected: input gaps held back a beat in {res.gap_cycles} cycles, output stalls held back a "
              f"valid beat in {res.hold_cycles} cycles")
    print(f"latency of the first result {res.latency} cycles (estimate {build.manifest.latency_estimate}); "
          f"steady-state interval {res.interval:g} cycles per inference; analytical bound {res.bound} (ratio {res.ratio:.3f})")
    _print_utilization(sim.report)
    if args.plot:
        from qfab.sim.plots import utilization_plot
        utilization_plot(res, build.manifest, args.plot)
        print(f"utilization plot: {args.plot}")
    if args.trace:
        print(f"waveform: {args.trace}")
    print(f"wrote {args.output}; results in {build.folder / 'reports' / 'simulation.json'}")
    if not sim.bit_exact:
        raise QfabError(sim.comparison.describe())
    print(f"bit-exact: {sim.comparison.describe()}")


def _print_utilization(report):
    if not report.utilization:
        return
    print(f"{'stage':<22}{'compute':>9}{'in blocked':>12}{'out blocked':>13}")
    for name, u in report.utilization.items():
        print(f"{name:<22}{100 * u.compute:>8.1f}%{100 * u.input_blocked:>11.1f}%{100 * u.output_blocked:>12.1f}%")
    print("(compute: the stage's analytical cycles over all cycles; blocked: a beat waited, on the input "
          "because the stage was busy, on the output because the next stage was)")


def cmd_report(args):
    """Write BUILD/report.html again from what the build folder holds."""
    from qfab.report import build_report
    path = build_report(args.build)
    print(path)
    if args.open:
        import webbrowser
        webbrowser.open(path.absolute().as_uri())


def _version():
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("qfab")
    except PackageNotFoundError:
        from qfab import __version__
        return __version__


def parser():
    p = argparse.ArgumentParser(prog="qfab", description="Compile quantized neural networks to FPGA accelerators.")
    p.add_argument("--version", action="version", version=f"qfab {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="quantize a float ONNX model (or import a quantized one) to .qfab")
    q.add_argument("model", help="MODEL.onnx (float with --calib, or QDQ/QOperator) or MODEL.qfab")
    add_quant_options(q)
    q.add_argument("-o", "--output", required=True, metavar="MODEL.qfab")
    q.set_defaults(func=cmd_quantize)

    r = sub.add_parser("reference", help="run the bit-exact integer reference")
    r.add_argument("model", help="MODEL.qfab or MODEL.onnx")
    add_quant_options(r)
    r.add_argument("--input", required=True, metavar="X.npy",
                   help="float inputs (quantized as the model's input), or integer codes")
    r.add_argument("-o", "--output", required=True, metavar="Y.npy")
    r.add_argument("--int", action="store_true", help="write integer output codes, not dequantized floats")
    r.set_defaults(func=cmd_reference)

    i = sub.add_parser("info", help="layers, shapes, bits, parameter memory, MACs")
    i.add_argument("model")
    add_quant_options(i)
    i.set_defaults(func=cmd_info)

    d = sub.add_parser("doctor", help="check that every tool of the flow is installed")
    d.set_defaults(func=cmd_doctor)

    c = sub.add_parser("compile", help="lower a model to a dataflow accelerator (Verilog + manifest)")
    c.add_argument("model", help="MODEL.qfab or MODEL.onnx (float with --calib, or QDQ/QOperator)")
    add_quant_options(c)
    c.add_argument("-o", "--output", required=True, metavar="BUILD", help="build folder")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--target-ii", type=positive_int, metavar="N", help="cycles per inference to reach (fold to balance)")
    g.add_argument("--board", metavar="NAME", help=board_help("fold for the fastest design that fits this board"))
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
    s.add_argument("--stall", type=fraction, default=0.0, metavar="P",
                   help="probability of a random input gap and output stall per cycle")
    s.add_argument("--seed", type=non_negative_int, default=1)
    s.add_argument("--plot", metavar="FILE.png", help="plot the per-stage utilization")
    s.add_argument("--trace", metavar="FILE.fst", help="write a waveform (.fst or .vcd)")
    s.set_defaults(func=cmd_simulate)

    t = sub.add_parser("train", help="quantization-aware training on digits (needs pip install -e '.[train]')")
    t.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    t.add_argument("--wbits", type=int, default=4)
    t.add_argument("--abits", type=int, default=4)
    t.add_argument("--sparsity", type=fraction, default=0.0, help="target weight sparsity (pruning), e.g. 0.75")
    t.add_argument("--epochs", type=positive_int, default=30)
    t.add_argument("--seed", type=non_negative_int, default=0)
    t.add_argument("-o", "--output", required=True, metavar="MODEL.qfab")
    t.add_argument("--qdq", metavar="MODEL.onnx", help="also export QDQ ONNX")
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("demo", help="the main job on the bundled digits model")
    m.add_argument("--out", default="out", help="folder for the results (default ./out)")
    m.add_argument("--bits", type=int, default=4, choices=[8, 4, 3, 2], help="which model to build (default 4)")
    m.add_argument("--target-ii", type=positive_int, default=64, help="cycles per inference (default 64)")
    m.set_defaults(func=cmd_demo)

    rp = sub.add_parser("report", help="write BUILD/report.html: model, folding, resources, timing, simulation")
    rp.add_argument("build", help="build folder from qfab compile")
    rp.add_argument("--open", action="store_true", help="open the page in the web browser")
    rp.set_defaults(func=cmd_report)

    from qfab.board_cli import add_commands
    add_commands(sub)
    from qfab.sweep import add_command as add_sweep
    add_sweep(sub)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    from qfab.report import command_line
    try:
        with command_line(["qfab", *(sys.argv[1:] if argv is None else argv)]):
            return args.func(args) or 0
    except QfabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
