"""What the two command modules (`qfab.cli`, `qfab.board_cli`) share: the quantization options,
loading a model from them, and printing a build's summary. The work itself is in `qfab.flow`."""

import argparse
import pathlib
import sys

from qfab import flow
from qfab.base.errors import QfabError

__all__ = ["add_quant_options", "graph_from_args", "print_manifest", "bundled", "positive_int", "positive_float",
           "non_negative_int", "fraction", "input_paths", "build_files", "distinct", "check_plot", "check_trace",
           "board_help", "boards_fitting", "folds_for", "fold_command"]


def _number(kind, test, wanted):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{wanted}, not {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{wanted}, not {text!r}")
        return value
    parse.__name__ = wanted      # argparse names the type in its messages
    return parse


positive_int = _number(int, lambda v: v > 0, "must be a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "must be an integer >= 0")
positive_float = _number(float, lambda v: v > 0 and v != float("inf"), "must be a positive number")
fraction = _number(float, lambda v: 0.0 <= v < 1.0, "must be a number in [0, 1)")


def input_paths(args):
    """The files a command reads (model, data, configuration), which no output may replace."""
    names = ("model", "input", "calib", "config", "folding")
    return tuple(getattr(args, n) for n in names if isinstance(getattr(args, n, None), str))


def build_files(build):
    """The files of a loaded build folder (its manifest and every file it names), which no output
    may replace: the build would no longer match its hashes."""
    from qfab.compiler.buildfolder import MANIFEST
    return tuple(str(build.folder / name) for name in (MANIFEST, *build.manifest.files.names()))


def distinct(*outputs):
    """Refuse two outputs (``(option, path)`` pairs; None: not given) naming the same file."""
    import os
    seen = {}
    for option, path in outputs:
        if path is None:
            continue
        key = os.path.realpath(path)
        if key in seen:
            raise QfabError(f"{option} {path}: the same file as {seen[key]}; give each output its own name")
        seen[key] = f"{option} {path}"


def check_plot(path, inputs=()):
    """Check ``--plot`` before the work: a new file in an existing folder, with a suffix
    matplotlib can write (it needs the [plot] extra)."""
    if path is None:
        return
    p = flow.output_file(path, "plot", inputs=inputs)
    from qfab.compiler.plots import plot_formats
    formats = plot_formats()
    if p.suffix.lstrip(".").lower() not in formats:
        raise QfabError(f"plot {path}: matplotlib cannot write {p.suffix or 'a file without a suffix'}; "
                        f"use one of " + ", ".join("." + f for f in sorted(formats)))


def check_trace(path, inputs=()):
    """Check ``--trace`` before the simulation: a new ``.fst`` or ``.vcd`` file in an existing folder."""
    if path is not None:
        flow.output_file(path, "trace", inputs=inputs, suffixes=(".fst", ".vcd"))


def bundled(name):
    """The path of a file bundled with the compiler (``digits_mlp.onnx`` ...)."""
    from importlib.resources import files
    return pathlib.Path(str(files("qfab.compiler") / "data" / name))


def add_quant_options(p):
    p.add_argument("--calib", metavar="X.npy", help="calibration inputs (float, the model's layout)")
    p.add_argument("--wbits", type=int, help="weight bits, 1 to 8 (default 8)")
    p.add_argument("--abits", type=int, help="activation bits, 1 to 8 (default 8)")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML quantization config (bits per layer ...)")
    p.add_argument("--calib-method", choices=["minmax", "percentile", "mse"], help="activation range method")
    p.add_argument("--mixed-budget", metavar="BUDGET",
                   help="choose weight bits per layer under a weight-memory budget: '40%%' of 8-bit, '3kB', '2000B'")
    p.add_argument("--multipoint", type=float, metavar="BUDGET",
                   help="multipoint weights: extra points as a fraction of each layer's channels (e.g. 0.1)")


def quant_args(args):
    """``(calib, config, mixed_budget)`` for `flow.quantize` from the options of `add_quant_options`."""
    calib = flow.load_array(args.calib, "calibration data") if getattr(args, "calib", None) else None
    config = flow.quant_config(w_bits=args.wbits, a_bits=args.abits, calib_method=args.calib_method,
                               multipoint=getattr(args, "multipoint", None), config_file=args.config)
    return calib, config, getattr(args, "mixed_budget", None)


def print_notes(result):
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)


def graph_from_args(args):
    """The IR graph of ``args.model`` quantized with the options of `add_quant_options`."""
    calib, config, mixed = quant_args(args)
    result = flow.quantize(args.model, calib, config, mixed_budget=mixed)
    print_notes(result)
    return result.graph


def print_manifest(manifest):
    """A build's stages, folding, cycles and estimates, as ``qfab compile`` prints them."""
    est = manifest.estimates
    print(f"\n{'stage':<22}{'kind':<9}{'PE':>4}{'SIMD':>6}  {'style':<13}{'requant':<11}{'cycles':>9}{'LUTs':>8}"
          f"{'FFs':>7}{'BRAM bits':>11}")
    for s in manifest.stages:
        e = est.per_layer.get(s.name)
        luts, ffs, bram = (e.luts, e.ffs, e.bram_bits) if e is not None else ("", "", "")
        print(f"{s.name:<22}{s.kind:<9}{s.pe or '':>4}{s.simd or '':>6}  {s.style or '':<13}{s.requant or '':<11}"
              f"{s.cycles or '':>9}{luts:>8}{ffs:>7}{bram:>11}")
    t = est.total
    ii = manifest.initiation_interval
    print(f"{'total (with streams)':<65}{ii:>9}{t.luts:>8}{t.ffs:>7}{t.bram_bits:>11}")
    print(f"initiation interval {ii} cycles per inference (the slowest stage); "
          f"estimated latency {manifest.latency_estimate} cycles; DSPs {t.dsps}"
          + (f"; {t.logic_cells} iCE40 logic cells" if t.logic_cells is not None else ""))


def board_help(text):
    """``text`` followed by the supported boards' names (for a ``--board`` option's help)."""
    from qfab.boards.registry import BOARDS
    return f"{text}: {', '.join(BOARDS)}"


def boards_fitting(manifest):
    """``{board name: (fits, why)}``: the build's estimated total against each board's budget
    (`qfab.boards.registry.budget_for`: the device less its host link and board top). The
    estimates are counted for the build's family; on a board of the other family they are an
    approximation (LUT4s both)."""
    from qfab.boards.registry import BOARDS, budget_for
    return {name: budget_for(board).check(manifest.estimates.total) for name, board in BOARDS.items()}


def folds_for(graph, board):
    """Whether ``graph`` fits ``board`` when folded for it (what ``qfab compile --board`` would
    choose), without lowering it: ``(fits, why)``."""
    from qfab.boards.registry import budget_for
    from qfab.compiler import estimate
    from qfab.compiler.compile import design_estimates
    from qfab.compiler.folding import choose_folding, stages_of
    budget = budget_for(board)
    stages = stages_of(graph)
    try:
        choose_folding(stages, budget=lambda folds: budget.check(design_estimates(graph, stages, folds,
                                                                                  budget.family)[2]),
                       cost=estimate.cost_luts)
    except QfabError as e:
        return False, str(e)
    return True, ""


def fold_command(build, board):
    """The command that folds the model of ``build`` (a loaded `Build`) for ``board``."""
    model = build.folder / build.manifest.files.model
    return f"qfab compile {model} --board {board} -o {build.folder}_{board}"
