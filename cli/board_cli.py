"""The board commands of ``qfab``: ``boards``, ``bitstream``, ``deploy``, ``run`` and ``build``.

They sit above `qfab.boards` (board tops, bitstreams, host driver) the way `qfab.cli` sits above
the compiler; `qfab.cli` registers them.
"""

import json
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

from qfab.base.errors import QfabError

__all__ = ["add_commands"]


def _load_npy(path, what):
    from qfab.cli import _load_npy as load
    return load(path, what)


def _last_build_file(board):
    import os
    root = os.environ.get("QFAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qfab")
    return pathlib.Path(root) / "boards" / f"{board}.json"


def _remember(board, build, bitstream, report):
    path = _last_build_file(board)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"build": str(pathlib.Path(build).resolve()), "bitstream": str(bitstream),
                                **report}))


def cmd_boards(args):
    from qfab.boards.registry import BOARDS
    print(f"{'board':<12}{'device':<20}{'oscillator':>11}{'default':>9}{'LUTs':>8}{'FFs':>8}{'BRAM kbit':>11}"
          f"{'SPRAM kbit':>12}{'DSPs':>6}  host link")
    for b in BOARDS.values():
        print(f"{b.name:<12}{b.device:<20}{b.clock_mhz:>8g}MHz{b.default_mhz or b.clock_mhz:>6g}MHz{b.luts:>8}"
              f"{b.ffs:>8}{b.bram_bits // 1024:>11}{b.spram_bits // 1024:>12}{b.dsps:>6}  {b.link}")
    print("(default: the clock without --freq; other frequencies come from the PLL)")


def _build_manifest(build):
    from qfab.sim.accelerator import load_build
    try:
        return load_build(build)
    except (FileNotFoundError, ValueError) as e:
        raise QfabError(str(e)) from None


def cmd_bitstream(args):
    from qfab.boards.bitstream import build_bitstream
    build = _build_manifest(args.build)
    report = build_bitstream(args.build, args.board, freq_mhz=args.freq, baud=args.baud)
    print(report.format_table(build.manifest["estimates"]["total"]))
    _remember(args.board, args.build, report.bitstream, {"baud": report.baud, "clock_mhz": report.requested_mhz,
                                                                  "fmax_mhz": report.fmax_mhz})
    _print_speed(build.manifest, report)
    return 0


def _print_speed(manifest, report):
    ii = manifest["initiation_interval"]
    clock = report.requested_mhz
    bytes_per = manifest["input"]["elements"] + manifest["output"]["elements"] + 10
    link = report.baud / (10 * bytes_per) if report.baud else None
    print(f"accelerator: {ii} cycles per inference at {clock:g} MHz = {clock * 1e6 / ii:,.0f} inferences/s"
          + (f" (Fmax {report.fmax_mhz:.1f} MHz would allow {report.fmax_mhz * 1e6 / ii:,.0f})"
             if report.fmax_mhz else ""))
    if link:
        print(f"host link: {report.baud} baud carries {bytes_per} bytes per inference = {link:,.0f} inferences/s "
              f"over the UART")


def cmd_deploy(args):
    from qfab.boards.bitstream import find_programmer, program_command
    from qfab.boards.registry import get_board
    board = get_board(args.board)
    bitstream = pathlib.Path(args.build) / "bitstream" / board.name
    found = sorted(bitstream.glob("*.bin")) + sorted(bitstream.glob("*.bit"))
    if not found:
        raise QfabError(f"no bitstream for {board.name} in {bitstream}: run qfab bitstream {args.build} "
                        f"--board {board.name} first")
    command = program_command(board, found[0])
    if find_programmer(board) is None or args.dry_run:
        print(f"{'no programmer on PATH; ' if not args.dry_run else ''}to program the board, run:\n  "
              + " ".join(map(str, command)))
        if not args.dry_run:
            print(f"({command[0]} comes with your OS packages or https://github.com/trabucayre/openFPGALoader)")
            return 1
        return 0
    print("programming: " + " ".join(map(str, command)))
    done = subprocess.run([str(c) for c in command])
    if done.returncode != 0:
        raise QfabError(f"{command[0]} failed (exit {done.returncode}); is the board plugged in and "
                        f"the USB permission (udev rule) set?")
    print(f"{board.name} programmed with {found[0].name}")
    return 0


def _inputs(graph, path):
    from qfab.compiler import reference
    x = _load_npy(path, "input")
    if x.dtype.kind == "f":
        return reference.quantize_inputs(graph, x)
    from qfab.compiler.reference import _check_codes
    return _check_codes(graph, graph.inputs[0], reference.to_ir_layout(graph, x))


def cmd_run(args):
    """Inference on a board (or on its simulated gateware with --sim) through the host link."""
    from qfab.boards.host import Device, LinkError, SerialTransport
    from qfab.boards.registry import get_board
    from qfab.compiler import reference
    from qfab.compiler.modelfile import load
    board = get_board(args.board)
    remembered = {}
    if _last_build_file(board.name).is_file():
        remembered = json.loads(_last_build_file(board.name).read_text())
    build_dir = args.build or remembered.get("build")
    if build_dir is None:
        raise QfabError(f"which build runs on the {board.name}? give the build folder (qfab run BUILD ...); "
                        f"none was recorded by qfab bitstream for this board")
    build = _build_manifest(build_dir)
    graph = load(build.graph_path)
    codes = _inputs(graph, args.input)
    flat = codes.reshape(len(codes), -1)
    t = time.perf_counter()
    if args.sim:
        from qfab.boards.link_sim import simulate_link
        print(f"running {len(flat)} inputs through the simulated {board.name} gateware (UART, link, accelerator) "
              f"with the host driver ...")
        res = simulate_link(build_dir, flat, divisor=args.sim_divisor)
        out, stats = res.outputs, res.stats
        print(f"simulated {res.cycles} cycles; build {res.build_seconds:.1f} s"
              f"{' (cached)' if not res.built else ''}, run {res.run_seconds:.1f} s")
    else:
        if args.port is None:
            raise QfabError(f"give the serial port of the {board.name} (--port; its link: {board.link})")
        baud = args.baud or remembered.get("baud") or 115200
        device = Device(SerialTransport(args.port, baud), timeout=args.timeout)
        try:
            info = device.check(build.manifest, (build.folder / build.manifest["verilog"]).read_text())
            print(f"board on {args.port}: design {info.design_id:08x}, {info.in_elements} inputs -> "
                  f"{info.out_elements} outputs; running {len(flat)} inferences ...")
            out = device.run(flat, progress=_progress)
        except LinkError as e:
            raise QfabError(str(e)) from None
        finally:
            device.transport.close()
        stats = device.stats.__dict__
    dt = time.perf_counter() - t
    y = out.reshape((len(codes),) + tuple(build.manifest["output"]["shape"]))
    result = reference.output_codes(graph, y) if args.int else reference.dequantize_outputs(graph, y)
    np.save(args.output, result.astype(np.int64) if args.int else result.astype(np.float32))
    print(f"{len(flat)} inferences in {dt:.1f} s; {stats['retries']} frames resent; wrote {args.output}")
    if args.check:
        want = reference.run(graph, codes)[graph.outputs[0]]
        bad = int((y.reshape(want.shape) != want).sum())
        if bad:
            raise QfabError(f"MISMATCH: {bad} of {want.size} output elements differ from the reference")
        print(f"checked: all {want.size} output elements equal the reference")
    return 0


def _progress(done, total):
    if done == total or done % max(1, total // 20) == 0:
        print(f"\r  {done}/{total}", end="\n" if done == total else "", flush=True)


def cmd_build(args):
    """The whole flow: quantize, fold for the board, lower, place and route, report."""
    from qfab.boards.bitstream import build_bitstream
    from qfab.boards.registry import budget_for, get_board
    from qfab.cli import _graph, _print_manifest
    from qfab.compiler.compile import compile_graph
    from qfab.compiler.info import format_table
    board = get_board(args.board)
    t0 = time.perf_counter()
    print(f"[1/3] quantizing {args.model}")
    graph = _graph(args)
    print(format_table(graph))
    print(f"[2/3] lowering for the {board.name} ({board.luts} LUTs, {board.dsps} DSPs, "
          f"{board.bram_bits // 1024} kbit block RAM)")
    manifest = compile_graph(graph, args.output, budget=budget_for(board), style=args.style)
    _print_manifest(manifest)
    print(f"[3/3] bitstream for the {board.name}")
    report = build_bitstream(args.output, board.name, freq_mhz=args.freq, baud=args.baud)
    print(report.format_table(manifest["estimates"]["total"]))
    _remember(board.name, args.output, report.bitstream, {"baud": report.baud, "clock_mhz": report.requested_mhz,
                                                                  "fmax_mhz": report.fmax_mhz})
    print(f"\nsummary: {args.model} -> {report.bitstream} in {time.perf_counter() - t0:.0f} s")
    _print_speed(manifest, report)
    print(f"next: qfab deploy {args.output} --board {board.name}; then qfab run {args.output} --board {board.name} "
          f"--port PORT --input X.npy -o Y.npy --check")
    return 0


def add_commands(sub):
    from qfab.cli import _add_quant_options
    b = sub.add_parser("boards", help="list the supported boards")
    b.set_defaults(func=cmd_boards)

    s = sub.add_parser("bitstream", help="synthesize, place and route a build for a board; report resources")
    s.add_argument("build", help="build folder from qfab compile")
    s.add_argument("--board", required=True, metavar="NAME")
    s.add_argument("--freq", type=float, metavar="MHZ", help="clock to request from the PLL (default: the board's)")
    s.add_argument("--baud", type=int, metavar="N", help="host link baud rate (default 1000000)")
    s.set_defaults(func=cmd_bitstream)

    d = sub.add_parser("deploy", help="program a board with a build's bitstream")
    d.add_argument("build")
    d.add_argument("--board", required=True, metavar="NAME")
    d.add_argument("--dry-run", action="store_true", help="print the programming command only")
    d.set_defaults(func=cmd_deploy)

    r = sub.add_parser("run", help="run inferences on a board over its UART (or on its simulation with --sim)")
    r.add_argument("build", nargs="?", help="build folder (default: the last one built for the board)")
    r.add_argument("--board", required=True, metavar="NAME")
    r.add_argument("--port", metavar="DEV", help="serial port, e.g. /dev/ttyUSB1")
    r.add_argument("--baud", type=int, help="default: the bitstream's")
    r.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each answer")
    r.add_argument("--input", required=True, metavar="X.npy", help="float inputs or integer codes")
    r.add_argument("-o", "--output", required=True, metavar="Y.npy")
    r.add_argument("--int", action="store_true", help="write integer output codes")
    r.add_argument("--check", action="store_true", help="compare every output with the reference")
    r.add_argument("--sim", action="store_true",
                   help="no board: run the board's gateware (UART, link, accelerator) in Verilator")
    r.add_argument("--sim-divisor", type=int, default=8, help=argparse_suppress())
    r.set_defaults(func=cmd_run)

    a = sub.add_parser("build", help="the whole flow in one command: quantize, compile, bitstream")
    a.add_argument("model", help="MODEL.onnx (float with --calib, or QDQ/QOperator) or MODEL.qfab")
    _add_quant_options(a)
    a.add_argument("--board", required=True, metavar="NAME")
    a.add_argument("-o", "--output", required=True, metavar="BUILD")
    a.add_argument("--freq", type=float, metavar="MHZ")
    a.add_argument("--baud", type=int, metavar="N")
    a.add_argument("--style", choices=["bit_parallel", "bit_serial"], default="bit_parallel")
    a.set_defaults(func=cmd_build)


def argparse_suppress():
    import argparse
    return argparse.SUPPRESS
