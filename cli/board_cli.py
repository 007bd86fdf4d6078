"""The board commands of ``qfab``: ``boards``, ``bitstream``, ``deploy``, ``run`` and ``build``.

Argument parsing and printing over `qfab.flow` (which drives `qfab.boards`: board tops,
bitstreams, host driver); `qfab.cli` registers them.
"""

import argparse
import pathlib
import subprocess

from qfab import flow
from qfab.base.errors import QfabError
from qfab.cli_common import (
    add_quant_options,
    board_help,
    boards_fitting,
    build_files,
    fold_command,
    folds_for,
    input_paths,
    positive_float,
    positive_int,
    print_manifest,
    print_notes,
    quant_args,
)

__all__ = ["add_commands"]


def cmd_boards(args):
    from qfab.boards.registry import BOARDS
    print(f"{'board':<12}{'device':<20}{'oscillator':>11}{'default':>9}{'LUTs':>8}{'FFs':>8}{'BRAM kbit':>11}"
          f"{'SPRAM kbit':>12}{'DSPs':>6}  host link")
    for b in BOARDS.values():
        print(f"{b.name:<12}{b.device:<20}{b.clock_mhz:>8g}MHz{b.default_mhz or b.clock_mhz:>6g}MHz{b.luts:>8}"
              f"{b.ffs:>8}{b.bram_bits // 1024:>11}{b.spram_bits // 1024:>12}{b.dsps:>6}  {b.link}")
    print("(default: the clock without --freq; other frequencies come from the PLL)")


def cmd_bitstream(args):
    from qfab.boards.registry import get_board
    from qfab.compiler.buildfolder import Build
    build = Build.load(args.build)
    board = get_board(args.board).name
    fits, why = boards_fitting(build.manifest)[board]
    if not fits and not args.force:
        folded, _ = folds_for(build.load_model(), board)
        advice = (f"to fold it for the {board}: {fold_command(build, board)}" if folded else
                  f"even fully folded it does not fit the {board}: quantize with fewer bits "
                  f"(--wbits/--abits, e.g. qfab compile MODEL.onnx --calib X.npy --wbits 4 --abits 4 "
                  f"--board {board} -o BUILD)")
        raise QfabError(f"build {args.build} does not fit the {board} by its estimate ({why}); {advice} "
                        f"(--force tries anyway)")
    if not fits:
        print(f"warning: by the estimate the build does not fit the {board} ({why}); trying anyway (--force)")
    result = flow.bitstream(build, board, freq_mhz=args.freq, baud=args.baud, retries=0 if args.no_retry else 2)
    print(result.report.format_table(result.build.manifest.estimates.total.as_dict()))
    _print_speed(result)
    return 0


def _print_speed(result):
    manifest, report = result.build.manifest, result.report
    ii = manifest.initiation_interval
    clock = report.requested_mhz
    bytes_per = manifest.input.elements + manifest.output.elements + 10
    link = report.baud / (10 * bytes_per) if report.baud else None
    print(f"accelerator: {ii} cycles per inference at {clock:g} MHz = {result.inferences_per_second:,.0f} inferences/s"
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
        return 0
    print("programming: " + " ".join(map(str, command)))
    done = subprocess.run([str(c) for c in command])
    if done.returncode != 0:
        raise QfabError(f"{command[0]} failed (exit {done.returncode}); is the board plugged in and "
                        f"the USB permission (udev rule) set?")
    print(f"{board.name} programmed with {found[0].name}")
    return 0


def cmd_run(args):
    """Inference on a board (or on its simulated gateware with --sim) through the host link."""
    from qfab.boards.registry import get_board
    from qfab.compiler.buildfolder import Build
    board = get_board(args.board).name
    folder = args.build or flow.last_build(board).get("build")
    build = Build.load(folder) if folder else None
    if build is not None and not args.build:
        print(f"no BUILD given: running {build.folder}, the last build qfab bitstream made for the {board} "
              f"(remembered in {flow.last_build_path(board)})")
    inputs = (args.input, *(build_files(build) if build else ()))
    flow.output_file(args.output, inputs=inputs)
    x = flow.load_array(args.input, "input")
    if x.size == 0:
        raise QfabError(f"input {args.input}: empty array; nothing to run")
    result = flow.run(build, args.board, x, port=args.port, baud=args.baud, timeout=args.timeout, sim=args.sim,
                      sim_divisor=args.sim_divisor, check=args.check, progress=_progress)
    flow.save_outputs(result.graph, result.outputs, args.output, integer=args.int, inputs=inputs)
    print(f"{len(result.outputs)} inferences in {result.seconds:.1f} s; {result.stats['retries']} frames resent; "
          f"wrote {args.output}")
    if result.comparison is not None:
        if not result.comparison.bit_exact:
            raise QfabError(result.comparison.describe())
        print(f"checked: {result.comparison.describe()}")
    return 0


def _progress(done, total):
    if done == total or done % max(1, total // 20) == 0:
        print(f"\r  {done}/{total}", end="\n" if done == total else "", flush=True)


def cmd_build(args):
    """The whole flow: quantize, fold for the board, lower, place and route, report."""
    from qfab.compiler.info import format_table

    def summary(step, result):
        if step == "quantize":
            print_notes(result)
            print(format_table(result.graph))
        elif step == "compile":
            print_manifest(result.manifest)
        else:
            print(result.report.format_table(result.build.manifest.estimates.total.as_dict()))
    flow.output_folder(args.output, "build folder", inputs=input_paths(args))
    calib, config, mixed = quant_args(args)
    done = flow.build(args.model, args.board, args.output, calib=calib, config=config, mixed_budget=mixed,
                      style=args.style, freq_mhz=args.freq, baud=args.baud, on_step=summary,
                      retries=0 if args.no_retry else 2)
    report = done.bitstream.report
    board = report.board
    print(f"\nsummary: {args.model} -> {report.bitstream} in {done.seconds:.0f} s")
    _print_speed(done.bitstream)
    print(f"next: qfab deploy {args.output} --board {board}; then qfab run {args.output} --board {board} "
          f"--port PORT --input X.npy -o Y.npy --check")
    return 0


NO_RETRY_HELP = ("keep the first place and route even if it misses the clock (default: build again at the "
                 "achieved Fmax, up to twice)")


def add_commands(sub):
    from qfab.boards.bitstream import DEFAULT_BAUD
    b = sub.add_parser("boards", help="list the supported boards")
    b.set_defaults(func=cmd_boards)

    s = sub.add_parser("bitstream", help="synthesize, place and route a build for a board; report resources")
    s.add_argument("build", help="build folder from qfab compile")
    s.add_argument("--board", required=True, metavar="NAME", help=board_help("the board"))
    s.add_argument("--freq", type=positive_float, metavar="MHZ",
                   help="clock to request from the PLL (default: the board's)")
    s.add_argument("--baud", type=positive_int, metavar="N", help=f"host link baud rate (default {DEFAULT_BAUD})")
    s.add_argument("--force", action="store_true",
                   help="build even when the estimate says the design does not fit the board")
    s.add_argument("--no-retry", action="store_true", help=NO_RETRY_HELP)
    s.set_defaults(func=cmd_bitstream)

    d = sub.add_parser("deploy", help="program a board with a build's bitstream")
    d.add_argument("build")
    d.add_argument("--board", required=True, metavar="NAME", help=board_help("the board"))
    d.add_argument("--dry-run", action="store_true", help="print the programming command only")
    d.set_defaults(func=cmd_deploy)

    r = sub.add_parser("run", help="run inferences on a board over its UART (or on its simulation with --sim)")
    r.add_argument("build", nargs="?", help="build folder (default: the last one built for the board)")
    r.add_argument("--board", required=True, metavar="NAME", help=board_help("the board"))
    r.add_argument("--port", metavar="DEV", help="serial port, e.g. /dev/ttyUSB1")
    r.add_argument("--baud", type=positive_int, help="default: the bitstream's")
    r.add_argument("--timeout", type=positive_float, default=2.0, help="seconds to wait for each answer")
    r.add_argument("--input", required=True, metavar="X.npy", help="float inputs or integer codes")
    r.add_argument("-o", "--output", required=True, metavar="Y.npy")
    r.add_argument("--int", action="store_true", help="write integer output codes")
    r.add_argument("--check", action="store_true", help="compare every output with the reference")
    r.add_argument("--sim", action="store_true",
                   help="no board: run the board's gateware (UART, link, accelerator) in Verilator")
    r.add_argument("--sim-divisor", type=positive_int, default=8, help=argparse_suppress())
    r.set_defaults(func=cmd_run)

    a = sub.add_parser("build", help="the whole flow in one command: quantize, compile, bitstream")
    a.add_argument("model", help="MODEL.onnx (float with --calib, or QDQ/QOperator) or MODEL.qfab")
    add_quant_options(a)
    a.add_argument("--board", required=True, metavar="NAME", help=board_help("the board to fold and build for"))
    a.add_argument("-o", "--output", required=True, metavar="BUILD")
    a.add_argument("--freq", type=positive_float, metavar="MHZ")
    a.add_argument("--baud", type=positive_int, metavar="N")
    a.add_argument("--style", choices=["bit_parallel", "bit_serial"], default="bit_parallel")
    a.add_argument("--no-retry", action="store_true", help=NO_RETRY_HELP)
    a.set_defaults(func=cmd_build)


def argparse_suppress():
    return argparse.SUPPRESS
