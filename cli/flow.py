"""The qfab flow as plain functions, for a script or a notebook; the ``qfab`` command is a thin
layer over them (argument parsing, printing, exit codes).

Each step takes explicit arguments and returns a result object::

    from qfab import flow
    q = flow.quantize("digits_mlp.onnx", calib=x_train, config=flow.quant_config(w_bits=4, a_bits=4))
    c = flow.compile(q.graph, "build", target_ii=64)
    s = flow.simulate(c.build, x_test)          # saves reports/simulation.json in the build
    assert s.comparison.bit_exact
    b = flow.bitstream(c.build, "icebreaker")
    r = flow.run(c.build, "icebreaker", x_test, sim=True, check=True)

Every step takes ``log``, a callable that receives progress lines (``print`` by default). Errors
a user can fix are `qfab.base.errors.QfabError`. The helpers below the steps (`load_array`,
`input_codes`, `save_outputs`, `compare`) are what every step that takes inputs shares.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from qfab.base.errors import QfabError
from qfab.compiler.buildfolder import Build, Manifest
from qfab.report import step_done as _report_step

if TYPE_CHECKING:
    from qfab.boards.report import Report
    from qfab.compiler.compile import Budget
    from qfab.compiler.ir import Graph
    from qfab.compiler.ptq import QuantConfig
    from qfab.sim.accelerator import SimResult

__all__ = ["Log", "QuantizeResult", "CompileResult", "StageUtilization", "SimulationReport", "SimulateResult",
           "BitstreamResult", "RunResult", "BuildResult", "Comparison",
           "quant_config", "quantize", "compile", "simulate", "bitstream", "run", "build",
           "load_array", "input_codes", "save_outputs", "output_file", "output_folder", "write_output", "compare",
           "last_build", "last_build_path"]

Log = Callable[[str], None]
PathLike = str | os.PathLike


# -- inputs, outputs and the reference ------------------------------------------------------------

def load_array(path: PathLike, what: str = "input") -> np.ndarray:
    """A numeric numpy ``.npy`` array (never unpickled); ``what`` names it in errors.

    The header is checked first (a numeric dtype, and data that the file really holds), so a
    header declaring a huge array is refused before any memory is allocated for it."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            try:
                version = fmt.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"unsupported .npy format version {version}")
                read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, fortran, dtype = read_header(f)
            except (ValueError, EOFError) as e:
                raise QfabError(f"{what} {path}: not a numpy .npy array readable without pickle ({e})") from None
            if dtype.hasobject:
                raise QfabError(f"{what} {path}: holds Python objects (dtype {dtype}); qfab reads numeric "
                                ".npy arrays without pickle only")
            if dtype.kind not in "biuf" or dtype.itemsize > 8:
                raise QfabError(f"{what} {path}: expected a numeric array (integers or floats), got {dtype}")
            need = int(np.prod(shape, dtype=object)) * dtype.itemsize
            have = os.fstat(f.fileno()).st_size - f.tell()
            if need > have:
                raise QfabError(f"{what} {path}: the header declares shape {shape} ({need} bytes of {dtype}), "
                                f"but the file holds {have} bytes of data (truncated or corrupt)")
            f.seek(0)
            a = np.load(f, allow_pickle=False)
    except FileNotFoundError:
        raise QfabError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise QfabError(f"{what} {path}: is a folder, not a .npy file") from None
    except (ValueError, OSError, EOFError) as e:
        raise QfabError(f"{what} {path}: not a numpy .npy array readable without pickle ({e})") from None
    return a


CLIP_WARNING = 0.01      # warn when more than this share of float input elements is clipped


def input_codes(graph: Graph, x: np.ndarray, *, warn: Log | None = None) -> np.ndarray:
    """The accelerator's input codes (channels-last) for a batch ``x`` in the model's layout:
    floats are quantized as the model's input (docs/semantics.md, section 1: infinities saturate,
    NaN is refused), integers are taken as codes and checked. Errors name the item and element.
    When more than `CLIP_WARNING` of the float elements lie beyond the input's range (by more
    than half a step: rounding is not clipping), one line says how many to ``warn`` (default:
    printed on stderr): data in another scale (raw pixels) is accepted but loses accuracy."""
    from qfab.compiler import reference
    from qfab.compiler.ir import Layout
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise QfabError(f"inputs must be floats or integer codes, not {x.dtype}")
    t = graph.tensors[graph.inputs[0]]
    item = tuple(t.shape)
    if graph.input_layout is Layout.NCHW and len(item) == 3:
        item = (item[2], item[0], item[1])
    want = f"(N, {', '.join(map(str, item))})"
    if x.shape == item:
        raise QfabError(f"input has shape {x.shape}, one item without the batch axis: qfab expects a batch "
                        f"of shape {want} (for a single item use shape {(1, *item)})")
    if x.ndim == 0 or x.shape[1:] != item:
        raise QfabError(f"input has shape {x.shape}; the model expects a batch of shape {want} "
                        f"(a batch axis first, then {item} per item)")
    if len(x) == 0:
        raise QfabError(f"input holds no items (shape {x.shape}); give at least one of shape {item}")
    if x.dtype.kind == "f":
        bad = np.isnan(x)
        if bad.any():
            b, *rest = (int(i) for i in np.argwhere(bad)[0])
            raise QfabError(f"input item {b}, element {tuple(rest)} is NaN, which has no code "
                            f"({int(bad.sum())} NaN elements in all; infinities saturate, NaN does not)")
        _warn_clipping(t.qtype, x, warn)
        return reference.quantize_inputs(graph, x)
    q = t.qtype
    bad = (x < q.qmin) | (x > q.qmax)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise QfabError(f"input item {index[0]}, element {index[1:]} is {x[index]}, outside the codes "
                        f"[{q.qmin}, {q.qmax}] of the model's input type {q.describe()} "
                        f"({int(bad.sum())} elements out of range; give floats to have them quantized)")
    return reference.to_ir_layout(graph, x.astype(np.int64))


def _warn_clipping(q, x, warn):
    lo, hi = (q.qmin - q.zero_point) * q.scale, (q.qmax - q.zero_point) * q.scale
    clipped = int(((x < lo - q.scale / 2) | (x > hi + q.scale / 2)).sum())
    if clipped > CLIP_WARNING * x.size:
        message = (f"warning: {clipped:,} of {x.size:,} input elements ({clipped / x.size:.1%}) lie outside the "
                   f"model's input range [{lo:.4g}, {hi:.4g}] ({q.describe()}) and were clipped; "
                   f"are the inputs scaled as the model's training data?")
        if warn is None:
            import sys
            print(message, file=sys.stderr)
        else:
            warn(message)


def save_outputs(graph: Graph, outputs: np.ndarray, path: PathLike, *, integer: bool = False,
                 inputs: tuple[PathLike | None, ...] = ()) -> np.ndarray:
    """Save output codes (channels-last, as the accelerator gives them) to exactly ``path`` (no
    ``.npy`` added; checked with `output_file`, never one of ``inputs``) in the model's layout:
    integer codes (int64) with ``integer``, else dequantized floats (float32). Returns what was
    saved."""
    from qfab.compiler import reference
    output_file(path, inputs=inputs)
    if integer:
        out = reference.output_codes(graph, outputs).astype(np.int64)
    else:
        out = reference.dequantize_outputs(graph, outputs).astype(np.float32)
    write_output(path, lambda f: np.save(f, out, allow_pickle=False))
    return out


def output_file(path: PathLike, what: str = "output", *, inputs: tuple[PathLike | None, ...] = (),
                suffixes: tuple[str, ...] | None = None) -> pathlib.Path:
    """Check that a new file can be written at exactly ``path`` (``what`` names it in errors) and
    return it: not a folder, its folder exists, not one of ``inputs`` (the same file under any
    name), and ending in one of ``suffixes`` (lower case, with the dot) if given."""
    if path is None or str(path) == "":
        raise QfabError(f"{what}: give a file name")
    p = pathlib.Path(path)
    if p.is_dir():
        raise QfabError(f"{what} {path}: is a folder; give a file name")
    if not p.absolute().parent.is_dir():
        raise QfabError(f"{what} {path}: the folder {p.absolute().parent} does not exist")
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise QfabError(f"{what} {path}: must end in {' or '.join(suffixes)}")
    for src in inputs:
        if src is not None and _same_file(p, src):
            raise QfabError(f"{what} {path}: is the input {src}; writing it would destroy the input, "
                            f"choose another name")
    return p


def output_folder(path: PathLike, what: str = "output folder", *, inputs: tuple[PathLike | None, ...] = ()
                  ) -> pathlib.Path:
    """Check that ``path`` can become (or be replaced by) a folder of outputs and return it: not
    a file, its parent folder exists, and none of ``inputs`` lies inside it."""
    if path is None or str(path) == "":
        raise QfabError(f"{what}: give a folder name")
    p = pathlib.Path(path)
    if p.exists() and not p.is_dir():
        raise QfabError(f"{what} {path}: exists and is not a folder")
    if not p.absolute().parent.is_dir():
        raise QfabError(f"{what} {path}: the folder {p.absolute().parent} does not exist")
    top = os.path.realpath(p)
    for src in inputs:
        if src is not None and os.path.commonpath([top, os.path.realpath(src)]) == top:
            raise QfabError(f"{what} {path}: holds the input {src}, and the folder is replaced whole; "
                            f"choose another folder or move the input out")
    return p


def _same_file(a: pathlib.Path, b: PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def write_output(path: PathLike, write: Callable[[Any], None], what: str = "output") -> pathlib.Path:
    """Write exactly the file ``path`` (no suffix added) with ``write(binary file object)``:
    into a temporary file beside it that then replaces it, so an interrupted write leaves the old
    file (or none), never half a file. Returns the path."""
    p = pathlib.Path(path)
    if p.exists() and not p.is_file():          # a device or pipe (/dev/null): write straight to it
        with open(p, "wb") as f:
            write(f)
        return p
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.absolute().parent)
    except OSError as e:
        raise QfabError(f"{what} {path}: cannot write there ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        mode = p.stat().st_mode & 0o7777 if p.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass(frozen=True)
class Comparison:
    """How many of the output elements differ from the bit-exact reference."""
    mismatches: int
    elements: int

    @property
    def bit_exact(self) -> bool:
        return self.mismatches == 0

    def describe(self) -> str:
        if self.bit_exact:
            return f"all {self.elements} output elements equal the reference"
        return f"MISMATCH: {self.mismatches} of {self.elements} output elements differ from the reference"


def compare(graph: Graph, codes: np.ndarray, outputs: np.ndarray) -> Comparison:
    """Run the reference on ``codes`` and compare every element of ``outputs`` (channels-last
    codes of the same batch) with it."""
    from qfab.compiler import reference
    want = reference.run(graph, codes)[graph.outputs[0]]
    got = np.asarray(outputs).reshape(want.shape)
    return Comparison(mismatches=int((got != want).sum()), elements=int(want.size))


# -- quantize ------------------------------------------------------------------------------------

def quant_config(*, w_bits: int | None = None, a_bits: int | None = None, calib_method: str | None = None,
                 multipoint: float | None = None, config_file: PathLike | None = None) -> QuantConfig:
    """A `QuantConfig` from a JSON/TOML file (if given) with the given options overriding it."""
    from qfab.compiler.ptq import QuantConfig, load_config
    over = dict(w_bits=w_bits, a_bits=a_bits, calib_method=calib_method, multipoint=multipoint)
    if config_file:
        return load_config(config_file, **over)
    return QuantConfig(**{k: v for k, v in over.items() if v is not None})


@dataclass(frozen=True)
class QuantizeResult:
    """The quantized model; ``notes`` are the importer's remarks; ``weight_bits`` the bits per
    layer that ``mixed_budget`` chose (else None)."""
    graph: Graph
    notes: tuple[str, ...] = ()
    weight_bits: Mapping[str, int] | None = None


def quantize(model: PathLike, calib: np.ndarray | None = None, config: QuantConfig | None = None, *,
             mixed_budget: str | None = None, log: Log = print) -> QuantizeResult:
    """Load ``model`` (.qfab, quantized ONNX, or float ONNX with ``calib`` data in its own layout)
    as an IR graph. ``mixed_budget`` (a float ONNX model only): choose weight bits per layer under
    a weight-memory budget (``"40%"`` of 8-bit, ``"3kB"``, ``"2000B"``)."""
    if mixed_budget:
        return _mixed(model, calib, config, mixed_budget, log)
    from qfab.compiler.load import load_graph
    notes = []
    graph = load_graph(model, calib, config, notes=notes)
    return QuantizeResult(graph=graph, notes=tuple(notes))


def _mixed(model, calib, config, budget, log):
    from qfab.compiler.frontends.onnx_import import import_onnx
    from qfab.compiler.load import calib_for, is_quantized_onnx
    from qfab.compiler.mixed import mixed_quantize
    if not str(model).endswith(".onnx") or calib is None:
        raise QfabError("--mixed-budget needs a float ONNX model and --calib data")
    fg = import_onnx(model)
    if is_quantized_onnx(fg):
        raise QfabError(f"{model} is already quantized; --mixed-budget applies to float models")
    graph, bits, _ = mixed_quantize(fg, calib_for(fg, calib), budget, config)
    log("mixed precision, weight bits per layer: " + ", ".join(f"{k}={v}" for k, v in bits.items()))
    return QuantizeResult(graph=graph, weight_bits=dict(bits))


# -- compile -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CompileResult:
    """The build folder ``qfab compile`` wrote, and the budget it was folded for (None: none)."""
    build: Build
    budget: Budget | None = None

    @property
    def manifest(self) -> Manifest:
        return self.build.manifest


def compile(graph: Graph, out_dir: PathLike, *, target_ii: int | None = None, board: str | None = None,
            folding: PathLike | Mapping[str, Any] | None = None, style: str = "bit_parallel",
            log: Log = print) -> CompileResult:
    """Lower ``graph`` to an accelerator and write the build folder ``out_dir``.

    ``target_ii``: cycles per inference to reach; ``board``: instead, the fastest design that fits
    that board (less its host link and board top); ``folding``: a JSON file or a mapping of
    `qfab.compiler.folding.Fold` per layer that overrides the choice for those layers.
    """
    from qfab.compiler.compile import compile_graph, load_folding
    if target_ii is not None and board is not None:
        raise QfabError("give a target interval or a board to fold for, not both")
    budget = None
    if board is not None:
        from qfab.boards.registry import budget_for, get_board
        spec = get_board(board)
        budget = budget_for(spec)
        cells = f"{budget.logic_cells} logic cells, " if budget.logic_cells else ""
        log(f"board {spec.name}: the accelerator may use {cells}{budget.luts} LUTs, {budget.ffs} FFs, "
            f"{budget.dsps} DSPs, {budget.bram_bits} block RAM bits (the device less the host link and board top)")
    if folding is not None and not isinstance(folding, Mapping):
        folding = load_folding(folding)
    b = compile_graph(graph, out_dir, target_ii=target_ii, budget=budget, folding=folding, style=style, log=log)
    _report_step(b, "compile", log=log, board=board, target_ii=target_ii, style=style)
    return CompileResult(build=b, budget=budget)


def _build(build_or_folder):
    return build_or_folder if isinstance(build_or_folder, Build) else Build.load(build_or_folder)


# -- simulate ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StageUtilization:
    """Shares of the simulated cycles: the stage's analytical compute, and the cycles a beat
    waited on its input (the stage busy) or output (the next stage busy)."""
    compute: float
    input_blocked: float
    output_blocked: float


@dataclass(frozen=True)
class SimulationReport:
    """What ``qfab simulate`` leaves in the build folder (``reports/simulation.json``)."""
    inferences: int
    cycles: int
    latency: int
    interval: float
    bound: int
    ratio: float
    stall: float
    seed: int
    utilization: Mapping[str, StageUtilization]
    verdict: str                    # "bit-exact" or "mismatch"
    mismatches: int
    elements: int
    build_seconds: float
    run_seconds: float
    gap_cycles: int = 0             # cycles the random input gaps held back a beat (stall > 0)
    hold_cycles: int = 0            # cycles the random output stalls held back a valid beat


@dataclass(frozen=True)
class SimulateResult:
    """Output codes (channels-last, ``(B, *output shape)``), the simulator's `SimResult`, the
    comparison with the reference and the report saved in the build; the input ``codes`` and the
    model (``graph``) they went through."""
    outputs: np.ndarray
    sim: SimResult
    comparison: Comparison
    report: SimulationReport
    codes: np.ndarray = field(repr=False)
    graph: Graph = field(repr=False, default=None)

    @property
    def bit_exact(self) -> bool:
        return self.comparison.bit_exact


def simulate(build: Build | PathLike, inputs: np.ndarray, *, stall: float = 0.0, seed: int = 1,
             trace: PathLike | None = None, save_report: bool = True, log: Log = print) -> SimulateResult:
    """Run ``inputs`` (floats or integer codes, the model's layout) through the build's
    accelerator in Verilator and compare every output element with the reference. With
    ``save_report``, the results go into the build folder as the ``simulation`` report.

    A mismatch is not an error here: see ``result.comparison``.
    """
    from qfab.sim.accelerator import StalledError, simulate as run_sim
    from qfab.sim.plots import stage_shares
    b = _build(build)
    graph = b.load_model()
    codes = input_codes(graph, inputs)
    try:
        res = run_sim(b, codes, stall=stall, seed=seed, trace=trace, log=log)
    except (StalledError, ValueError) as e:
        raise QfabError(str(e)) from None
    outputs = res.outputs
    comparison = compare(graph, codes, outputs)
    shares = {name: StageUtilization(compute, blocked_in, blocked_out)
              for name, compute, blocked_in, blocked_out in (stage_shares(res, b.manifest) if res.stages else [])}
    report = SimulationReport(
        inferences=len(codes), cycles=res.cycles, latency=res.latency, interval=res.interval, bound=res.bound,
        ratio=res.ratio, stall=stall, seed=seed, utilization=shares,
        verdict="bit-exact" if comparison.bit_exact else "mismatch", mismatches=comparison.mismatches,
        elements=comparison.elements, build_seconds=res.build_seconds, run_seconds=res.run_seconds,
        gap_cycles=res.gap_cycles, hold_cycles=res.hold_cycles)
    if save_report:
        b.write_report("simulation", report)
        _report_step(b, "simulate", log=log, inferences=len(codes), stall=stall, seed=seed)
    return SimulateResult(outputs=outputs, sim=res, comparison=comparison, report=report, codes=codes, graph=graph)


# -- boards: bitstream, run ----------------------------------------------------------------------

def last_build_path(board: str) -> pathlib.Path:
    """The cache file where `bitstream` remembers the last build for ``board`` (``$QFAB_CACHE``
    or ``~/.cache/qfab``, then ``boards/<board>.json``); `run` without a build uses it."""
    root = os.environ.get("QFAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qfab")
    return pathlib.Path(root) / "boards" / f"{board}.json"


def last_build(board: str) -> dict[str, Any]:
    """What `bitstream` last recorded for ``board`` (``build``, ``bitstream``, ``baud``,
    ``clock_mhz``, ``fmax_mhz``), or ``{}``."""
    path = last_build_path(board)
    return json.loads(path.read_text()) if path.is_file() else {}


def _remember(board, folder, report):
    path = last_build_path(board)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"build": str(pathlib.Path(folder).resolve()), "bitstream": str(report.bitstream),
                                "baud": report.baud, "clock_mhz": report.requested_mhz,
                                "fmax_mhz": report.fmax_mhz}))


@dataclass(frozen=True)
class BitstreamResult:
    """The bitstream's `qfab.boards.report.Report` (resources, Fmax, the file) for ``build``."""
    build: Build
    report: Report

    @property
    def inferences_per_second(self) -> float:
        """At the requested clock, one result every initiation interval."""
        return self.report.requested_mhz * 1e6 / self.build.manifest.initiation_interval


def bitstream(build: Build | PathLike, board: str, *, freq_mhz: float | None = None, baud: int | None = None,
              log: Log = print, retries: int = 2) -> BitstreamResult:
    """Synthesize, place and route the build for ``board``; the report also goes into the build
    folder (``bitstream_<board>``), and the board remembers this build for `run`. A missed clock
    is built again at the achieved Fmax, up to ``retries`` times (`qfab.boards.bitstream.build_bitstream`)."""
    from qfab.boards.bitstream import build_bitstream
    from qfab.boards.registry import get_board
    b = _build(build)
    name = get_board(board).name
    report = build_bitstream(b.folder, name, freq_mhz=freq_mhz, baud=baud, log=log, retries=retries)
    b.write_report(f"bitstream_{name}", report.as_dict())
    _remember(name, b.folder, report)
    _report_step(b, "bitstream", log=log, board=name, freq_mhz=freq_mhz, baud=baud)
    return BitstreamResult(build=b, report=report)


@dataclass(frozen=True)
class RunResult:
    """Output codes (channels-last, ``(B, *output shape)``) from the board (or its simulation),
    the driver's statistics, the comparison with the reference if asked for, and the build and
    model that ran."""
    outputs: np.ndarray
    stats: Mapping[str, Any]
    seconds: float
    comparison: Comparison | None
    simulated: bool
    build: Build = field(repr=False, default=None)
    graph: Graph = field(repr=False, default=None)


def run(build: Build | PathLike | None, board: str, inputs: np.ndarray, *, port: str | None = None,
        baud: int | None = None, timeout: float = 2.0, sim: bool = False, sim_divisor: int = 8,
        check: bool = False, log: Log = print, progress: Callable[[int, int], None] | None = None) -> RunResult:
    """Inferences of ``inputs`` (floats or integer codes, the model's layout) on ``board`` over
    its serial ``port``, or with ``sim`` on the board's gateware (UART, link, accelerator) in
    Verilator, through the host driver. ``build`` None: the last one `bitstream` built for the
    board. ``check``: compare every output element with the reference."""
    from qfab.boards.registry import get_board
    spec = get_board(board)
    remembered = last_build(spec.name)
    if build is None:
        build = remembered.get("build")
        if build is None:
            raise QfabError(f"which build runs on the {spec.name}? give the build folder (qfab run BUILD ...); "
                            f"none was recorded by qfab bitstream for this board")
    b = _build(build)
    graph = b.load_model()
    codes = input_codes(graph, inputs)
    flat = codes.reshape(len(codes), -1)
    t = time.perf_counter()
    if sim:
        from qfab.boards.link_sim import simulate_link
        log(f"running {len(flat)} inputs through the simulated {spec.name} gateware (UART, link, accelerator) "
            f"with the host driver ...")
        res = simulate_link(b, flat, divisor=sim_divisor, log=log)
        out, stats = res.outputs, res.stats
        log(f"simulated {res.cycles} cycles; build {res.build_seconds:.1f} s"
            f"{' (cached)' if not res.built else ''}, run {res.run_seconds:.1f} s")
    else:
        from qfab.boards.host import Device, LinkError, SerialTransport
        if port is None:
            raise QfabError(f"give the serial port of the {spec.name} (--port; its link: {spec.link})")
        device = Device(SerialTransport(port, baud or remembered.get("baud") or 115200), timeout=timeout)
        try:
            info = device.check(b.manifest, b.verilog)
            log(f"board on {port}: design {info.design_id:08x}, {info.in_elements} inputs -> "
                f"{info.out_elements} outputs; running {len(flat)} inferences ...")
            out = device.run(flat, progress=progress)
        except LinkError as e:
            raise QfabError(str(e)) from None
        finally:
            device.transport.close()
        stats = dict(device.stats.__dict__)
    seconds = time.perf_counter() - t
    outputs = out.reshape((len(codes),) + tuple(b.manifest.output.shape))
    return RunResult(outputs=outputs, stats=stats, seconds=seconds,
                     comparison=compare(graph, codes, outputs) if check else None, simulated=sim, build=b,
                     graph=graph)


# -- the whole flow ------------------------------------------------------------------------------

@dataclass(frozen=True)
class BuildResult:
    """Each step's result of `build`, and the seconds it took."""
    quantized: QuantizeResult
    compiled: CompileResult
    bitstream: BitstreamResult
    seconds: float


def build(model: PathLike, board: str, out_dir: PathLike, *, calib: np.ndarray | None = None,
          config: QuantConfig | None = None, mixed_budget: str | None = None, style: str = "bit_parallel",
          freq_mhz: float | None = None, baud: int | None = None, log: Log = print,
          on_step: Callable[[str, Any], None] | None = None, retries: int = 2) -> BuildResult:
    """Quantize ``model``, fold it for the fastest design that fits ``board``, lower it into
    ``out_dir`` and build its bitstream. ``on_step(name, result)`` is called after each of
    ``"quantize"``, ``"compile"`` and ``"bitstream"`` (to print a step's summary)."""
    from qfab.boards.registry import get_board
    spec = get_board(board)
    t0 = time.perf_counter()
    on_step = on_step or (lambda name, result: None)
    log(f"[1/3] quantizing {model}")
    q = quantize(model, calib, config, mixed_budget=mixed_budget, log=log)
    on_step("quantize", q)
    log(f"[2/3] lowering for the {spec.name} ({spec.luts} LUTs, {spec.dsps} DSPs, "
        f"{spec.bram_bits // 1024} kbit block RAM)")
    c = compile(q.graph, out_dir, board=spec.name, style=style, log=log)
    on_step("compile", c)
    log(f"[3/3] bitstream for the {spec.name}")
    bs = bitstream(c.build, spec.name, freq_mhz=freq_mhz, baud=baud, log=log, retries=retries)
    on_step("bitstream", bs)
    return BuildResult(quantized=q, compiled=c, bitstream=bs, seconds=time.perf_counter() - t0)
